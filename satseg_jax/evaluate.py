"""Evaluate a trained workdir on a split: one confusion matrix over the whole split.

The confusion matrix is accumulated on the devices over every batch of the split (and
summed across devices and hosts by the eval step), with the ignore label excluded;
every reported number is derived from it by ``metrics.metrics_from_confusion``, so
pixel accuracy, F1 and IoU can never disagree about which pixels counted.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np

from satseg_jax import checkpoints, metrics
from satseg_jax.errors import SatsegError
from satseg_jax.metrics import format_metrics_table  # noqa: F401  (re-exported for the CLI)


def confusion_over_split(runner, state, meta, split: str, batch_size: int, task: str,
                         on_batch=None, crop_size: int = 0, resize_to: int = 0) -> np.ndarray:
    """Sum the eval step's confusion matrices over every batch of ``split``.

    ``on_batch(batch, state)`` is called with each host batch (used to save predictions).
    """
    from satseg_jax import input_pipeline

    parallel_batch = batch_size - batch_size % jax.device_count() or jax.device_count()
    total = None
    for batch in input_pipeline.eval_batches(
        meta, split, global_batch=parallel_batch, task=task,
        process_index=jax.process_index(), process_count=jax.process_count(),
        keep_metadata=on_batch is not None, crop_size=crop_size, resize_to=resize_to,
    ):
        # Accumulate on the host in int64: int32 overflows past ~2.1e9 pixels.
        cm = np.asarray(runner.unreplicate_metric(runner.eval_step(state, runner.shard(batch))),
                        dtype=np.int64)
        total = cm if total is None else total + cm
        if on_batch is not None:
            on_batch(batch, state)
    if total is None:
        raise SatsegError(f"{meta.data_dir}: split {split!r} has no examples")
    return total


def load_trained(workdir: str | Path, checkpoint: str | int = "best"):
    """(config, dataset meta, Runner, placed TrainState, step, manager) of a trained run.

    The restore target is built from the run's own config, so a checkpoint restores on
    whatever devices this process has.
    """
    from satseg_jax import input_pipeline
    from satseg_jax.train import (
        Runner,
        build_model,
        create_optimizer,
        create_train_state,
        input_hw,
        load_workdir_config,
    )

    workdir = Path(workdir)
    config = load_workdir_config(workdir)
    meta = input_pipeline.load_meta(config.data.data_dir)
    manager = checkpoints.make_manager(workdir, read_only=True)
    step = checkpoints.resolve_step(manager, checkpoint)
    if step is None:
        raise SatsegError(f"{workdir}/checkpoints: no checkpoint; train first")
    runner = Runner(config, lambda axis: build_model(config, meta.num_classes, axis),
                    meta.num_classes)
    hw = input_hw(config, meta.patch_size)
    tx, _ = create_optimizer(config)  # the restore target needs the optimizer state's shape
    template = create_train_state(0, build_model(config, meta.num_classes),
                                  tx, (1, hw, hw, meta.num_bands))
    state, _ = checkpoints.restore(manager, step, runner.abstract_state(template))
    return config, meta, runner, runner.place_state(state), step, manager


def pixel_size(meta) -> float:
    """Ground pixel size of a dataset, from the transform of its first example.

    Patches without a CRS (cut from plain JPEG/PNG images) carry an identity-based
    transform whose "pixel size" of 1 means nothing on the ground: resampling by it
    would silently rescale the patches, so such a dataset is refused.
    """
    from satseg_jax.input_pipeline import split_dataset

    split = next(s for s, n in meta.num_examples.items() if n)
    ex = next(iter(split_dataset(meta, split).take(1).as_numpy_iterator()))
    if "transform" not in ex:
        raise SatsegError(f"{meta.data_dir}: examples carry no transform; cannot resample "
                          "to the training pixel size")
    if not ex.get("crs"):
        raise SatsegError(f"{meta.data_dir}: its patches have no CRS, so their ground pixel "
                          "size is unknown; --resample-to-train-gsd needs georeferenced "
                          "datasets (the run's and --data's). Evaluate without it, or "
                          "resample the images to the training pixel size before 'satseg "
                          "patches'")
    return float(abs(ex["transform"][0]))


def evaluate_workdir(workdir: str | Path, split: str = "test", checkpoint: str = "best",
                     save_predictions: bool = False, data_dir: str | None = None,
                     resample_to_train_gsd: bool = False, overlays: int = 0) -> dict:
    """Evaluate WORKDIR's checkpoint on ``split``; write metrics_<split>.json and a PNG.

    ``data_dir`` evaluates on another built dataset (same bands and classes), e.g. from
    another sensor or resolution; ``resample_to_train_gsd`` then resamples its patches
    to the training pixel size first (an 8 m model on 2 m patches sees 8 m pixels).
    ``overlays`` > 0 draws that many patches, spread evenly over the split, as
    image | truth | prediction | errors rows in WORKDIR/overlays_<split>.png.
    """
    from satseg_jax import input_pipeline, plots

    workdir = Path(workdir)
    config, meta, runner, state, step, manager = load_trained(workdir, checkpoint)
    if data_dir:
        other = input_pipeline.load_meta(data_dir)
        if (other.bands, other.class_names) != (meta.bands, meta.class_names):
            raise SatsegError(
                f"{data_dir}: bands {list(other.bands)} / classes {list(other.class_names)} do "
                f"not match the run's {list(meta.bands)} / {list(meta.class_names)}"
            )
        # Normalise with the *training* statistics: the model was fitted to them.
        train_meta = meta
        meta = input_pipeline.DatasetMeta(**{**other.__dict__, "mean": meta.mean,
                                             "std": meta.std})
    resize_to = 0
    if resample_to_train_gsd:
        if not data_dir:
            raise SatsegError("--resample-to-train-gsd needs --data OTHER_DATA_DIR")
        train_gsd, gsd = pixel_size(train_meta), pixel_size(meta)
        resize_to = max(1, round(meta.patch_size * gsd / train_gsd))
        depth = int(config.model.get("depth", 0))
        if config.model.name == "unet_original":
            from satseg_jax.models import largest_valid_input

            resize_to = largest_valid_input(resize_to, depth) or resize_to
        elif depth:  # same-padded U-Nets need multiples of 2**depth
            resize_to = max(2**depth, resize_to - resize_to % 2**depth)
        print(f"resampling {meta.patch_size}-px patches of {gsd:g} m to {resize_to} px "
              f"({train_gsd:g} m, the training pixel size)", flush=True)

    if overlays and config.task != "segmentation":
        raise SatsegError("--overlays draws segmentation masks; this run is a "
                          f"{config.task} run")
    pred_dir = workdir / f"predictions_{split}"
    if save_predictions:
        pred_dir.mkdir(parents=True, exist_ok=True)
    collector = _PatchCollector(runner, pred_dir if save_predictions else None, config.task,
                                meta.patch_size, overlays, meta.num_examples.get(split, 0),
                                resize_to=resize_to)
    on_batch = collector if (save_predictions or overlays) else None
    cm = confusion_over_split(runner, state, meta, split, int(config.eval.batch_size),
                              config.task, on_batch=on_batch,
                              crop_size=int(config.eval.get("crop_size", 0)),
                              resize_to=resize_to)
    result = metrics.metrics_from_confusion(cm, list(meta.class_names))
    result["checkpoint_step"] = int(step)
    result["split"] = split
    result["data_dir"] = str(meta.data_dir)
    if resize_to:
        result["resampled_to"] = resize_to
    if jax.process_index() == 0:
        out = workdir / f"metrics_{split}.json"
        tmp = out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(metrics.to_jsonable(result), indent=2) + "\n")
        tmp.replace(out)
        plots.confusion_matrix_png(cm, list(meta.class_names), workdir / f"confusion_{split}.png",
                                   title=f"{split}, step {step}")
        if collector.samples:
            from satseg_jax.classes import parse_colour

            colours = [parse_colour(c["colour"], str(meta.data_dir))
                       for c in meta.info["classes"]]
            plots.patch_overlays_png(
                collector.samples, list(meta.class_names), colours,
                workdir / f"overlays_{split}.png", rgb=plots.rgb_band_indices(meta.bands),
                title=f"{split}, step {step}: {len(collector.samples)} of "
                      f"{meta.num_examples.get(split, 0)} patches")
    manager.close()
    return result


class _PatchCollector:
    """Per-batch hook: predict once, then save prediction GeoTIFFs and/or keep a few
    patches (every ``len(split) // overlays``-th, in split order, so the sample is
    deterministic and spread over the split) for the overlay figure.

    Predictions are saved with their patch's georeference; a cropped or valid-conv
    prediction covers the patch centre, so its transform is shifted accordingly. A
    patch without a CRS (a dataset of plain images) gives a GeoTIFF without one.
    """

    def __init__(self, runner, pred_dir: Path | None, task: str, patch_size: int,
                 overlays: int, split_size: int, resize_to: int = 0) -> None:
        self.runner, self.pred_dir, self.task, self.patch_size = runner, pred_dir, task, patch_size
        self.resize_to = resize_to
        self.overlays = overlays
        self.every = max(1, split_size // overlays) if overlays else 0
        self.seen = 0
        self.samples: list[dict] = []

    def __call__(self, batch, state) -> None:
        if self.task != "segmentation":
            return
        logits = self.runner.predict(state, self.runner.shard({"image": batch["image"]})["image"])
        preds = np.asarray(jax.device_get(logits)).argmax(-1).astype(np.uint8)
        preds = preds.reshape(-1, *preds.shape[-2:])
        for i in np.flatnonzero(batch["valid"]):
            pred = preds[i]
            if self.pred_dir is not None:
                self._save(batch, i, pred)
            if (self.overlays and len(self.samples) < self.overlays
                    and self.seen % self.every == 0):
                h = pred.shape[0]
                o = (batch["image"].shape[1] - h) // 2
                m = (batch["mask"].shape[1] - h) // 2
                self.samples.append({
                    "patch_id": batch["patch_id"][i].decode(),
                    "image": np.asarray(batch["image"][i, o:o + h, o:o + h]),
                    "truth": np.asarray(batch["mask"][i, m:m + h, m:m + h]),
                    "pred": pred,
                })
            self.seen += 1

    def _save(self, batch, i: int, pred: np.ndarray) -> None:
        import warnings

        import rasterio
        from affine import Affine
        from rasterio.errors import NotGeoreferencedWarning

        pid = batch["patch_id"][i].decode()
        crs = batch["crs"][i].decode() or None
        t = Affine(*batch["transform"][i][:6])
        h, w = pred.shape
        side = self.resize_to or self.patch_size  # pixels per patch side the model saw
        if side != self.patch_size:  # resampled to the training pixel size
            t = t * Affine.scale(self.patch_size / side)
        if h != side:  # cropped / valid-conv: the prediction covers the centre
            off = (side - h) // 2
            t = t * Affine.translation(off, off)
        profile = {"driver": "GTiff", "height": h, "width": w, "count": 1,
                   "dtype": "uint8", "crs": crs, "transform": t, "nodata": 255,
                   "compress": "deflate"}
        tmp = self.pred_dir / f".{pid}.tif.tmp"
        with warnings.catch_warnings():  # no CRS (plain images) is expected, not a problem
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(tmp, "w", **profile) as dst:
                dst.write(pred, 1)
        tmp.replace(self.pred_dir / f"{pid}.tif")
