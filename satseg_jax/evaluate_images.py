"""``satseg evaluate --workdir RUN --images ... --masks ... --classes classes.json``:
score a run on whole labelled images, the way published benchmarks do.

Why not patches: a benchmark's number is computed over its test images as they are,
edges and all; scoring 256-px patches of them (``patches`` + ``build`` + ``evaluate
--data``) leaves out what ``--edge drop`` or ``--min-valid`` dropped, and sees each
pixel with only its patch's context. Here each image is mapped exactly as ``satseg
predict`` maps it (the same sliding window, blending and ``--tta``), and each block of
finished map rows is compared with the same rows of its mask as soon as it is ready: no
patch, no map and no temporary file is written, and memory stays bounded by a strip.

Same rules as the rest of the project, by reuse rather than by copy:

- **pairing** (``--pair``, globs of region folders, ``--skip-unpaired``) is
  :func:`satseg_jax.raster.pairing.find_pairs`, as for ``satseg patches --images``;
- **mask decoding** (index, RGB and palette masks, ``--mask-mode``,
  ``--colour-tolerance``, undeclared values listed with their pixel counts) is
  :class:`satseg_jax.raster.masks.MaskReader`; pixels that are nodata in the image are
  ignored (255), as they are in patches;
- **metrics** come from one confusion matrix over every image
  (:func:`satseg_jax.metrics.metrics_from_confusion`) and are written as
  ``RUN/metrics_NAME.json`` + ``RUN/confusion_NAME.png`` by the code that writes
  ``satseg evaluate``'s (``NAME`` = ``images`` unless given).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from satseg_jax.classes import IGNORE_LABEL
from satseg_jax.errors import SatsegError


def _check_classes(classes, card, path: Path) -> None:
    """The masks' classes.json must declare the run's classes, in the run's order."""
    if tuple(classes.names) != tuple(card.class_names):
        raise SatsegError(f"{path}: classes {classes.names} differ from the run's "
                          f"{list(card.class_names)}; give the classes.json the run was "
                          "trained with (same names, same ids)")


def _check_pair(pair, img, mask) -> None:
    """Image and mask must cover the same pixels (as ``satseg patches`` requires)."""
    from satseg_jax.raster.io import grid_mismatch

    if (img.width, img.height) != (mask.width, mask.height):
        raise SatsegError(f"{pair.image} is {img.width}x{img.height} px but its mask "
                          f"{pair.mask} is {mask.width}x{mask.height} px; image and mask of a "
                          "pair must have the same size")
    if img.crs is not None and mask.crs is not None:
        problem = grid_mismatch(img, mask)
        if problem:
            raise SatsegError(f"{pair.mask}: mask {problem} of its image {pair.image}; "
                              "warp the mask onto the image grid")


class RowScorer:
    """``on_rows`` hook of the map writer: adds the confusion of each finished block of
    predicted rows against the same rows of the mask, read in square chunks (the mask
    reader pads to squares; a chunk as wide as the block is high keeps it small)."""

    def __init__(self, reader, width: int, num_classes: int) -> None:
        self.reader, self.width, self.k = reader, width, num_classes
        self.cm = np.zeros((num_classes, num_classes), np.int64)

    def __call__(self, pred: np.ndarray, top: int) -> None:
        from satseg_jax.raster.windows import Win

        n = pred.shape[0]
        for col in range(0, self.width, n):
            w = min(n, self.width - col)
            p = pred[:, col:col + w]
            truth = self.reader.read(Win(top, col, n, w), n, p != IGNORE_LABEL)[:n, :w]
            keep = truth != IGNORE_LABEL
            idx = truth[keep].astype(np.int64) * self.k + p[keep]
            self.cm += np.bincount(idx, minlength=self.k * self.k).reshape(self.k, self.k)


def evaluate_images(workdir, images: str | Path, masks: str | Path, classes: str | Path,
                    pair: str | None = None, skip_unpaired: bool = False,
                    mask_mode: str = "auto", colour_tolerance: int | None = None,
                    checkpoint: str = "best", tile: int = 256, overlap: int = 64,
                    blend: str = "gaussian", batch: int = 8, tta: bool = False,
                    name: str = "images", progress: bool = True, ema: bool = True) -> dict:
    """Score the run on every image/mask pair; write RUN/metrics_<name>.json and
    RUN/confusion_<name>.png; return the metrics (as ``evaluate_workdir`` does, with
    ``written``, ``num_images``, ``skipped_unpaired`` and ``confusion_per_image``).
    ``ema`` False scores the raw weights of a run trained with an EMA."""
    from tqdm import tqdm

    from satseg_jax import metrics
    from satseg_jax.classes import load_classes
    from satseg_jax.evaluate import write_metrics
    from satseg_jax.predict import ScenePredictor
    from satseg_jax.raster.io import gdal_env, open_raster
    from satseg_jax.raster.masks import MaskReader, quiet_georeference
    from satseg_jax.raster.pairing import find_pairs
    from satseg_jax.runs import load_run
    from satseg_jax.tiled_scene import check_tiling

    t0 = time.perf_counter()
    check_tiling(tile, overlap, batch)
    class_set = load_classes(classes)
    pairing = find_pairs(images, masks, pair)
    skipped = pairing.check_complete(skip_unpaired)
    run = load_run(workdir, checkpoint, ema=ema)
    _check_classes(class_set, run.card, Path(classes))
    predictor = ScenePredictor(run, tile=tile, overlap=overlap, blend=blend, batch=batch,
                               tta=tta)
    k = run.card.num_classes
    cm = np.zeros((k, k), np.int64)
    per_image = {}
    with gdal_env(), quiet_georeference():
        for p in tqdm(pairing.pairs, desc="evaluate", unit="image", disable=not progress):
            with open_raster(p.image) as img, open_raster(p.mask) as mask:
                _check_pair(p, img, mask)
                reader = MaskReader(mask, p.mask, class_set, mask_mode, colour_tolerance)
                scorer = RowScorer(reader, img.width, k)
                predictor.predict(p.image, None, progress=False, on_rows=scorer)
            cm += scorer.cm
            per_image[p.key] = scorer.cm.tolist()
    result = metrics.metrics_from_confusion(cm, list(run.card.class_names))
    result.update(checkpoint_step=int(run.step), split=name, images=str(images),
                  weights=run.weights,
                  masks=str(masks), pair=pair, num_images=len(pairing.pairs),
                  skipped_unpaired=skipped, tta=tta, tile=tile, overlap=overlap,
                  blend=blend, seconds=round(time.perf_counter() - t0, 2),
                  confusion_per_image=per_image)
    result["written"] = [str(p) for p in write_metrics(run, cm, result, name)]
    return result
