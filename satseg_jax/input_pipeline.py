"""tf.data over a built satseg dataset: normalise, augment, shuffle, batch, shard per host.

Why it is shaped this way:

- **Exact resume.** The training stream is a pure function of ``(seed, examples
  consumed)``: epoch ``e`` is the split shuffled with a seed derived from ``(seed, e)``
  (``reshuffle_each_iteration=False``), epochs are concatenated, and every example's
  augmentation draws from a stateless RNG keyed by its global position in the stream.
  A run resumed at step ``s`` therefore rebuilds the stream from epoch
  ``s * B // N`` and skips the remainder — it sees exactly the batches an uninterrupted
  run would have seen. The position (``step * global_batch``) is saved with every
  checkpoint.
- **Per-host input.** Each process reads a disjoint 1/P of every epoch (sharded after
  the epoch shuffle, which is identical on every host) and yields its
  ``global_batch / P`` slice of every global batch.
- **Augmentation** (``augment.py``): random (resized) crop, flips, rotations, and
  per-band brightness/contrast after normalisation; all drawn from the stateless seed.
- **Normalisation** uses the per-band mean/std of the *train* split stored in
  ``satseg_dataset.json``; nodata pixels are set to 0 (the mean) after normalising, and
  their mask is already the ignore label 255.
- TensorFlow never sees an accelerator: JAX owns them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from satseg_jax import augment
from satseg_jax.classes import IGNORE_LABEL
from satseg_jax.datasets.tfenv import import_tf, import_tfds
from satseg_jax.errors import SatsegError


@dataclass(frozen=True)
class DatasetMeta:
    """What the model and pipeline need to know about a built dataset."""

    data_dir: str
    bands: tuple[str, ...]
    num_classes: int
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    nodata: float | None
    patch_size: int
    num_examples: dict[str, int]
    class_weights: tuple[float, ...]
    task: str
    info: dict[str, Any]

    @property
    def num_bands(self) -> int:
        return len(self.bands)


def load_meta(data_dir: str) -> DatasetMeta:
    """Read ``satseg_dataset.json`` (validated by the datasets package)."""
    from satseg_jax.datasets.build import load_dataset_info

    info = load_dataset_info(data_dir)
    return DatasetMeta(
        data_dir=str(data_dir),
        bands=tuple(info["bands"]),
        num_classes=int(info["num_classes"]),
        class_names=tuple(info["class_names"]),
        # None in a test-only dataset: evaluate brings the run's statistics
        mean=tuple(float(x) for x in info["mean"] or ()),
        std=tuple(float(x) for x in info["std"] or ()),
        nodata=info.get("nodata"),
        patch_size=int(info["patch_size"]),
        num_examples={k: int(v) for k, v in info["num_examples"].items()},
        class_weights=tuple(float(x) for x in info.get("class_weights") or ()),
        task=info.get("task", "segmentation"),
        info=info,
    )


def split_dataset(meta: DatasetMeta, split: str):
    """The tf.data.Dataset of one split of a built dataset, in file order (unbatched);
    a missing or empty split is a SatsegError saying how to rebuild."""
    from satseg_jax.datasets.build import builder_for

    if split not in meta.num_examples:
        raise SatsegError(
            f"{meta.data_dir}: no split {split!r}; available: {sorted(meta.num_examples)}"
        )
    if meta.num_examples[split] == 0:
        raise SatsegError(f"{meta.data_dir}: split {split!r} is empty; rebuild with other "
                          "--split fractions or more patches")
    # No tfds auto-cache: it silently caches every small split in memory, so a partial
    # read (the first example of ``ground_pixel_size``) discarded that cache with a
    # TensorFlow warning in every training run's output, and a training run held the
    # split twice; ``config.data.cache`` is the one switch for caching.
    read_config = import_tfds().ReadConfig(try_autocache=False)
    builder = builder_for(meta.data_dir)
    return builder.as_dataset(split=split, shuffle_files=False, read_config=read_config)


def _normalise(tf, image, meta: DatasetMeta):
    """uint/float bands -> float32 (x - mean) / std; nodata, NaN and ±inf pixels -> 0
    (the pixels ``satseg patches`` and the build statistics treat as nodata)."""
    return _normalise_valid(tf, image, meta)[0]


def _normalise_valid(tf, image, meta: DatasetMeta):
    """``_normalise``'s image and the (H, W) boolean mask of its invalid pixels."""
    x = tf.cast(image, tf.float32)
    invalid = tf.reduce_any(tf.logical_not(tf.math.is_finite(x)), axis=-1)
    if meta.nodata is not None and not (isinstance(meta.nodata, float) and math.isnan(meta.nodata)):
        invalid |= tf.reduce_all(tf.equal(x, float(meta.nodata)), axis=-1)
    mean = tf.constant(meta.mean, tf.float32)
    std = tf.constant([s if s > 0 else 1.0 for s in meta.std], tf.float32)
    x = (x - mean) / std
    return tf.where(invalid[..., None], tf.zeros_like(x), x), invalid


def augment_settings(data_config) -> dict:
    """The augmentation fields of ``config.data`` (absent fields: off), checked."""
    from satseg_jax.training_control import option

    out = {"scale_range": tuple(float(x) for x in option(data_config, "scale_range", (1, 1))),
           "aspect_range": tuple(float(x) for x in option(data_config, "aspect_range", (1, 1))),
           "brightness": float(option(data_config, "brightness", 0.0)),
           "contrast": float(option(data_config, "contrast", 0.0))}
    for key in ("scale_range", "aspect_range"):
        lo_hi = out[key]
        if len(lo_hi) != 2 or not 0 < lo_hi[0] <= lo_hi[1] or not math.isfinite(lo_hi[1]):
            raise SatsegError(f"config.data.{key}={lo_hi}: expected (low, high) with "
                              "0 < low <= high, e.g. (0.75, 1.33); (1, 1) = off")
    if not 0 <= out["brightness"] < 100 or not 0 <= out["contrast"] < 1:
        raise SatsegError(f"config.data.brightness={out['brightness']:g} / contrast="
                          f"{out['contrast']:g}: expected brightness >= 0 (band std units) "
                          "and 0 <= contrast < 1; 0 = off")
    return out


def _id_key(element_spec: dict) -> str:
    """The feature naming each example: ``patch_id`` (segmentation) or ``example_id``."""
    for k in ("patch_id", "example_id"):
        if k in element_spec:
            return k
    raise SatsegError(f"the dataset's examples carry no patch_id/example_id (features: "
                      f"{sorted(element_spec)}); rebuild it with `satseg build`")


def _local_batch(global_batch: int, process_count: int) -> int:
    if global_batch % process_count:
        raise SatsegError(
            f"config.train.batch_size={global_batch} is not divisible by the "
            f"{process_count} processes; choose a multiple"
        )
    return global_batch // process_count


def _train_crop(data_config, meta: DatasetMeta) -> int:
    """The random crop side, 0 for none (a crop of the whole patch is no crop)."""
    crop = int(data_config.crop_size or 0)
    if crop and crop > meta.patch_size:
        raise SatsegError(f"config.data.crop_size={crop} is larger than the dataset's "
                          f"patch size {meta.patch_size}")
    return 0 if crop == meta.patch_size else crop


def _epoch_stream(tf, base, *, buffer: int, seed: int, per_host: int, consumed: int,
                  process_index: int, process_count: int):
    """(global position, example) pairs of this host from example ``consumed`` on.

    Why positions: they key the stateless augmentation, so a resumed run draws exactly
    the crops and flips an uninterrupted run would have drawn. Epoch ``e`` is the split
    shuffled with a seed from ``(seed, e)``, the same order on every host, then a
    disjoint 1/P per host with equal counts.
    """
    def epoch(e):
        ds = base.shuffle(buffer, seed=seed * 1_000_003 + e + 1, reshuffle_each_iteration=False)
        return ds.take(per_host * process_count).shard(process_count, process_index)

    start_epoch, offset = divmod(consumed, per_host)
    ds = tf.data.Dataset.range(start_epoch, 2**62).flat_map(epoch).skip(offset)
    return tf.data.Dataset.zip(tf.data.Dataset.range(consumed, 2**62), ds)


def _train_example_fn(tf, meta: DatasetMeta, data_config, *, seed: int, crop: int, task: str,
                      with_ids: bool, process_index: int, process_count: int):
    """``prepare(pos, ex)``: normalise, then augment with a key from (seed, global
    position); a classification image is augmented with a dummy mask."""
    aug = augment_settings(data_config)
    geo = {"scale_range": aug["scale_range"], "aspect_range": aug["aspect_range"]}

    def prepare(pos, ex):
        image, invalid = _normalise_valid(tf, ex["image"], meta)
        seed_t = tf.stack([tf.constant(seed, tf.int64), pos * process_count + process_index])
        if aug["brightness"] or aug["contrast"]:
            image = augment.photometric(tf, image, tf.logical_not(invalid),
                                        augment.sub_seed(tf, seed_t, 2), aug["brightness"],
                                        aug["contrast"])
        ids = {"example_id": ex["example_id"]} if with_ids else {}
        if task == "segmentation":
            image, mask = augment.geometric(tf, image, ex["mask"], seed_t, crop,
                                            data_config.augment, **geo)
            return {"image": image, "mask": mask, **ids}
        dummy = tf.zeros(tf.shape(image)[:2], tf.uint8)
        image, _ = augment.geometric(tf, image, dummy, seed_t, crop, data_config.augment, **geo)
        return {"image": image, "label": tf.cast(ex["label"], tf.int32), **ids}

    return prepare


def _deterministic(tf, ds, num_parallel_calls: int):
    """``ds`` with deterministic order and a private thread pool of the configured size."""
    options = tf.data.Options()
    options.deterministic = True
    options.threading.private_threadpool_size = max(1, int(num_parallel_calls))
    return ds.with_options(options)


def train_iterator(
    meta: DatasetMeta,
    data_config,
    *,
    global_batch: int,
    seed: int,
    start_step: int = 0,
    task: str = "segmentation",
    process_index: int = 0,
    process_count: int = 1,
    keep_ids: bool = False,
) -> Iterator[dict[str, np.ndarray]]:
    """Endless iterator of this process's slice of each training batch, from ``start_step``.

    Yields dicts of numpy arrays: ``image`` float32 (b, H, W, C) and ``mask`` int32
    (b, H, W) for segmentation, or ``label`` int32 (b,) for classification.
    ``keep_ids`` adds ``example_id`` (object array of bytes: the dataset's ``patch_id`` or
    ``example_id``), so a caller can audit which examples each host consumed; the
    parallel helpers drop object arrays before anything reaches a device.

    The global batch at every step is the same set of examples for any process count
    that divides the split size (host ``p`` takes every ``P``-th example of the shared
    epoch order), so a run's loss curve does not depend on how many hosts feed it.
    """
    tf = import_tf()
    split = data_config.train_split
    base = split_dataset(meta, split)
    n = meta.num_examples[split]
    per_host = n // process_count
    if per_host == 0:
        raise SatsegError(f"split {split!r} has {n} examples, fewer than {process_count} hosts")
    local_batch = _local_batch(global_batch, process_count)
    crop = _train_crop(data_config, meta)
    key = "mask" if task == "segmentation" else "label"
    id_key = _id_key(base.element_spec) if keep_ids else None

    def strip(ex):
        out = {"image": ex["image"], key: ex[key]}
        if id_key:
            out["example_id"] = ex[id_key]
        return out

    base = base.map(strip, num_parallel_calls=tf.data.AUTOTUNE)
    if data_config.cache:
        base = base.cache()
    ds = _epoch_stream(tf, base, buffer=max(1, min(int(data_config.shuffle_buffer), n)),
                       seed=seed, per_host=per_host, consumed=start_step * local_batch,
                       process_index=process_index, process_count=process_count)
    prepare = _train_example_fn(tf, meta, data_config, seed=seed, crop=crop, task=task,
                                with_ids=bool(id_key), process_index=process_index,
                                process_count=process_count)
    ds = ds.map(prepare, num_parallel_calls=int(data_config.num_parallel_calls) or None,
                deterministic=True)
    ds = ds.batch(local_batch, drop_remainder=True).prefetch(2)
    yield from _deterministic(tf, ds, data_config.num_parallel_calls).as_numpy_iterator()


def eval_batches(
    meta: DatasetMeta,
    split: str,
    *,
    global_batch: int,
    task: str = "segmentation",
    process_index: int = 0,
    process_count: int = 1,
    keep_metadata: bool = False,
    crop_size: int = 0,
    resize_to: int = 0,
) -> Iterator[dict[str, np.ndarray]]:
    """This process's slice of every evaluation batch over the whole split, in order.

    ``crop_size`` > 0 centre-crops image and mask (a valid-convolution model only accepts
    certain input sizes); 0 evaluates the whole patch. ``resize_to`` > 0 first resamples
    each patch to that side (image bilinear / area, mask nearest): evaluating a model on
    data of another pixel size at the training pixel size.

    The last batches are padded (mask / label = 255, ``valid`` = False) so that every
    host yields the same number of full batches: collectives never wait on a host that
    ran out, and padded examples add nothing to the confusion matrix.
    """
    tf = import_tf()
    local_batch = _local_batch(global_batch, process_count)
    n = meta.num_examples[split]
    num_batches = math.ceil(math.ceil(n / process_count) / local_batch)
    ds = split_dataset(meta, split).shard(process_count, process_index)
    key = "mask" if task == "segmentation" else "label"

    if crop_size and crop_size > meta.patch_size:
        raise SatsegError(f"eval crop {crop_size} is larger than the patch size {meta.patch_size}")
    off = (meta.patch_size - crop_size) // 2 if crop_size else 0
    end = off + crop_size if crop_size else meta.patch_size

    if resize_to:
        off = (resize_to - crop_size) // 2 if crop_size else 0
        end = off + crop_size if crop_size else resize_to

    def prepare(ex):
        image = _normalise(tf, ex["image"], meta)
        label = tf.cast(ex[key], tf.int32)
        if resize_to:
            method = "area" if resize_to < meta.patch_size else "bilinear"
            image = tf.image.resize(image, (resize_to, resize_to), method=method)
            if task == "segmentation":
                label = tf.image.resize(label[..., None], (resize_to, resize_to),
                                        method="nearest")[..., 0]
        out = {"image": image[off:end, off:end], key: label}
        if task == "segmentation":
            out[key] = out[key][off:end, off:end]
        if keep_metadata:
            for k in ("patch_id", "crs", "transform"):
                if k in ex:
                    out[k] = ex[k]
        return out

    ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).batch(local_batch).prefetch(2)
    count = 0
    for batch in ds.as_numpy_iterator():
        yield pad_batch(batch, local_batch, key)
        count += 1
    template = None
    while count < num_batches:
        if template is None:
            spec = ds.element_spec
            template = {
                k: np.zeros((0, *s.shape[1:]), dtype=s.dtype.as_numpy_dtype)
                for k, s in spec.items()
            }
        yield pad_batch(template, local_batch, key)
        count += 1


def pad_batch(batch: dict[str, np.ndarray], size: int, key: str) -> dict[str, np.ndarray]:
    """Pad a partial batch to ``size`` rows; padded labels are the ignore label."""
    n = len(batch[key])
    out = {}
    for k, v in batch.items():
        v = np.asarray(v)
        if n < size:
            fill = IGNORE_LABEL if k == key else 0
            pad = np.full((size - n, *v.shape[1:]), fill, dtype=v.dtype) if v.dtype != object \
                else np.array([b""] * (size - n), dtype=object)
            v = np.concatenate([v, pad], axis=0)
        out[k] = v
    out["valid"] = np.arange(size) < n
    return out


def ground_pixel_size(meta: DatasetMeta) -> float | None:
    """Ground pixel size of a dataset's patches (CRS units), from its first example's
    transform; None when its patches carry no CRS or no transform.

    Patches without a CRS (cut from plain JPEG/PNG images) carry an identity-based
    transform whose "pixel size" of 1 means nothing on the ground, so it is not
    reported: resampling by it would silently rescale the patches.
    """
    split = next((s for s, n in meta.num_examples.items() if n), None)
    if split is None:
        return None
    ex = next(iter(split_dataset(meta, split).take(1).as_numpy_iterator()))
    if "transform" not in ex or not ex.get("crs"):
        return None
    return float(abs(ex["transform"][0]))
