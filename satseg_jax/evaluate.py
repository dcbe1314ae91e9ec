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

from satseg_jax import metrics
from satseg_jax.errors import SatsegError
from satseg_jax.io_utils import (
    atomic_path,
    refuse_overwriting_inputs,
    sweep_folder_leftovers,
    temporary_name,
)
from satseg_jax.steps import confusion_over_split


def _with_run_statistics(run, data_dir: str | None):
    """The dataset to evaluate on, normalised with the *run's* train statistics (the model
    was fitted to them): ``data_dir``, or the run's training dataset (provenance)."""
    from satseg_jax import input_pipeline

    card = run.card
    if not data_dir:
        data_dir = card.provenance.get("data_dir") or str(run.config.data.data_dir)
        if not (Path(data_dir) / "satseg_dataset.json").exists():
            raise SatsegError(f"{data_dir}: the run's training dataset is not there; evaluate "
                              "on a copy of it, or on another dataset, with --data DATA_DIR")
    other = input_pipeline.load_meta(data_dir)
    if (other.bands, other.class_names) != (card.bands, card.class_names):
        raise SatsegError(
            f"{data_dir}: bands {list(other.bands)} / classes {list(other.class_names)} do "
            f"not match the run's {list(card.bands)} / {list(card.class_names)}"
        )
    return input_pipeline.DatasetMeta(**{**other.__dict__, "mean": card.mean, "std": card.std})


def _resampled_size(run, meta) -> int:
    """Patch side that gives ``meta``'s patches the run's training pixel size (an 8 m
    model on 2 m patches sees 8 m pixels), rounded to what the model accepts."""
    from satseg_jax.input_pipeline import ground_pixel_size

    train_gsd, gsd = run.card.pixel_size, ground_pixel_size(meta)
    for name, value in (("the run's training", train_gsd), (str(meta.data_dir), gsd)):
        if value is None:
            raise SatsegError(
                f"{name} patches have no CRS, so their ground pixel size is unknown; "
                "--resample-to-train-gsd needs georeferenced datasets (the run's and "
                "--data's). Evaluate without it, or resample the images to the training "
                "pixel size before 'satseg patches'")
    config = run.config
    resize_to = max(1, round(meta.patch_size * gsd / train_gsd))
    if config.model.name == "unet_original":
        from satseg_jax.models import largest_valid_input

        resize_to = largest_valid_input(resize_to, int(config.model.get("depth", 4))) \
            or resize_to
    else:  # same-padded models need multiples of theirs (2**depth for U-Nets, 32 for fpn)
        from satseg_jax.models.registry import input_multiple

        f = input_multiple(config.model)
        resize_to = max(f, resize_to - resize_to % f)
    print(f"resampling {meta.patch_size}-px patches of {gsd:g} m to {resize_to} px "
          f"({train_gsd:g} m, the training pixel size)", flush=True)
    return resize_to


def evaluate_workdir(workdir: str | Path, split: str = "test", checkpoint: str = "best",
                     save_predictions: bool = False, data_dir: str | None = None,
                     resample_to_train_gsd: bool = False, overlays: int = 0,
                     tta: bool = False, ema: bool = True) -> dict:
    """Evaluate WORKDIR's checkpoint on ``split``; write metrics_<split>.json and a PNG.

    ``data_dir`` evaluates on another built dataset (same bands and classes), e.g. from
    another sensor or resolution, or on a copy of the training data when the run was
    moved; ``resample_to_train_gsd`` then resamples its patches to the training pixel
    size first. ``overlays`` > 0 draws that many patches, spread evenly over the split, as
    image | truth | prediction | errors rows in WORKDIR/overlays_<split>.png. ``tta``
    predicts each patch as the average of its flips and rotations (satseg_jax.tta). The
    paths written are listed under ``result["written"]``. ``ema`` False scores the raw
    weights of a run trained with an EMA (``result["weights"]`` says which were scored).
    """
    from satseg_jax.runs import load_run

    workdir = Path(workdir)
    refuse_overwriting_inputs(
        {"metrics": [workdir / f"{name}_{split}{ext}" for name, ext in (
            ("metrics", ".json"), ("confusion", ".png"), ("overlays", ".png"))],
         "predictions": workdir / f"predictions_{split}" if save_predictions else None},
        {"data_dir": data_dir}, folders=("predictions",))
    if resample_to_train_gsd and not data_dir:
        raise SatsegError("--resample-to-train-gsd needs --data OTHER_DATA_DIR")
    run = load_run(workdir, checkpoint, ema=ema)
    config = run.config
    if overlays and config.task != "segmentation":
        raise SatsegError("--overlays draws segmentation masks; this run is a "
                          f"{config.task} run")
    meta = _with_run_statistics(run, data_dir)
    if split not in meta.num_examples:
        raise SatsegError(f"--split {split}: {meta.data_dir} has no such split; valid "
                          f"splits: {', '.join(meta.num_examples)}")
    resize_to = _resampled_size(run, meta) if resample_to_train_gsd else 0
    pred_dir = workdir / f"predictions_{split}"
    if save_predictions:
        pred_dir.mkdir(parents=True, exist_ok=True)
        if jax.process_index() == 0:  # before any process writes (the eval is collective)
            sweep_folder_leftovers(pred_dir, ".tif")  # of a run killed while writing
    runner = run.runner
    if tta:
        from satseg_jax.tta import tta_runner

        runner = tta_runner(run)
    collector = _PatchCollector(runner, pred_dir if save_predictions else None,
                                config.task, meta.patch_size, overlays,
                                meta.num_examples.get(split, 0), resize_to=resize_to)
    on_batch = collector if (save_predictions or overlays) else None
    cm = confusion_over_split(runner, run.state, meta, split, int(config.eval.batch_size),
                              config.task, on_batch=on_batch,
                              crop_size=int(config.eval.get("crop_size", 0)),
                              resize_to=resize_to)
    result = metrics.metrics_from_confusion(cm, list(meta.class_names))
    result.update(checkpoint_step=int(run.step), split=split, data_dir=str(meta.data_dir),
                  tta=tta, weights=run.weights)
    if resize_to:
        result["resampled_to"] = resize_to
    written = _write_outputs(run, cm, result, collector, split, meta.num_examples.get(split, 0))
    if save_predictions:
        written.append(pred_dir)
    result["written"] = [str(p) for p in written]
    return result


def _write_outputs(run, cm: np.ndarray, result: dict, collector, split: str,
                   split_size: int) -> list[Path]:
    """metrics_<split>.json, confusion_<split>.png and overlays_<split>.png (process 0)."""
    from satseg_jax import plots
    from satseg_jax.classes import parse_colour

    if jax.process_index() != 0:
        return []
    workdir, card, step = run.path, run.card, run.step
    written = write_metrics(run, cm, result, split)
    if collector.samples:
        colours = [parse_colour(c["colour"], str(workdir / "run.json")) for c in card.classes]
        path = workdir / f"overlays_{split}.png"
        plots.patch_overlays_png(
            collector.samples, list(card.class_names), colours, path,
            rgb=plots.rgb_band_indices(card.bands),
            title=f"{split}, step {step}: {len(collector.samples)} of {split_size} patches")
        written.append(path)
    return written


def write_metrics(run, cm: np.ndarray, result: dict, split: str) -> list[Path]:
    """RUN/metrics_<split>.json and RUN/confusion_<split>.png, the format every scoring
    of a run shares (a split of a dataset, or whole images: evaluate --images)."""
    from satseg_jax import plots

    out = run.path / f"metrics_{split}.json"
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(metrics.to_jsonable(result), indent=2) + "\n")
    cm_png = run.path / f"confusion_{split}.png"
    plots.confusion_matrix_png(cm, list(run.card.class_names), cm_png,
                               title=f"{split}, step {run.step}")
    return [out, cm_png]


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
        out = self.pred_dir / f"{pid}.tif"
        tmp = temporary_name(out)  # swept by the next run if this one is killed
        try:
            with warnings.catch_warnings():  # no CRS (plain images) is expected
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                with rasterio.open(tmp, "w", **profile) as dst:
                    dst.write(pred, 1)
            tmp.replace(out)
        finally:  # a failed write, SIGTERM, Ctrl-C: no half-written patch left
            tmp.unlink(missing_ok=True)
