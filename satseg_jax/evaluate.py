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
    """Ground pixel size of a dataset, from the transform of its first example."""
    from satseg_jax.input_pipeline import _split_dataset

    split = next(s for s, n in meta.num_examples.items() if n)
    ex = next(iter(_split_dataset(meta, split).take(1).as_numpy_iterator()))
    if "transform" not in ex:
        raise SatsegError(f"{meta.data_dir}: examples carry no transform; cannot resample "
                          "to the training pixel size")
    return float(abs(ex["transform"][0]))


def evaluate_workdir(workdir: str | Path, split: str = "test", checkpoint: str = "best",
                     save_predictions: bool = False, data_dir: str | None = None,
                     resample_to_train_gsd: bool = False) -> dict:
    """Evaluate WORKDIR's checkpoint on ``split``; write metrics_<split>.json and a PNG.

    ``data_dir`` evaluates on another built dataset (same bands and classes), e.g. from
    another sensor or resolution; ``resample_to_train_gsd`` then resamples its patches
    to the training pixel size first (an 8 m model on 2 m patches sees 8 m pixels).
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

    on_batch = None
    pred_dir = workdir / f"predictions_{split}"
    if save_predictions:
        pred_dir.mkdir(parents=True, exist_ok=True)
        on_batch = _prediction_writer(runner, pred_dir, config.task, meta.patch_size)
    cm = confusion_over_split(runner, state, meta, split, int(config.eval.batch_size),
                              config.task, on_batch=None if resize_to else on_batch,
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
    manager.close()
    return result


def _prediction_writer(runner, out_dir: Path, task: str, patch_size: int):
    """Save each predicted mask as a uint8 GeoTIFF with its patch's georeference."""
    import rasterio
    from affine import Affine

    def on_batch(batch, state):
        if task != "segmentation":
            return
        logits = runner.predict(state, runner.shard({"image": batch["image"]})["image"])
        preds = np.asarray(jax.device_get(logits)).argmax(-1).astype(np.uint8)
        preds = preds.reshape(-1, *preds.shape[-2:])
        for i in np.flatnonzero(batch["valid"]):
            pid = batch["patch_id"][i].decode()
            crs = batch["crs"][i].decode() or None
            t = Affine(*batch["transform"][i][:6])
            pred = preds[i]
            h, w = pred.shape
            if h != patch_size:  # cropped / valid-conv: the prediction covers the centre
                off = (patch_size - h) // 2
                t = t * Affine.translation(off, off)
            profile = {"driver": "GTiff", "height": h, "width": w, "count": 1,
                       "dtype": "uint8", "crs": crs, "transform": t, "nodata": 255,
                       "compress": "deflate"}
            tmp = out_dir / f".{pid}.tif.tmp"
            with rasterio.open(tmp, "w", **profile) as dst:
                dst.write(pred, 1)
            tmp.replace(out_dir / f"{pid}.tif")

    return on_batch
