"""Whole-scene inference: sliding window -> blended class map -> Cloud-Optimised GeoTIFF.

Why this shape:

- **Memory bounded by a strip, not the scene.** Tiles are visited row by row; blended
  probabilities are accumulated in a buffer one tile-row high (plus the overlap) and
  as soon as no later tile can touch a row, that row is argmax-ed and written. Peak
  memory is ``width × tile × classes`` floats, whatever the scene height.
- **Seamless.** Overlapping tiles are blended with a separable weight window
  (``gaussian`` by default: centre pixels, which saw the most context, count most);
  ``mean`` weighs all pixels equally; ``none`` lets the later tile win.
- **Same normalisation and bands as training**: the run's train-split mean/std and band
  order; a scene with other bands is refused.
- **Valid-convolution models** (unet_original) predict a smaller centre: each tile's
  input is the output tile plus the model's context margin on every side, read
  boundless (filled with nodata), so every output pixel is predicted.
- **Plain images work too.** A JPEG/PNG/TIFF without a CRS (published tile sets are
  rarely georeferenced) gives a map of the same size: ``--out map.png`` writes a palette
  PNG (pixel value = class id, palette = the run's class colours, nodata = 255 drawn
  white and transparent), any other name a GeoTIFF without a CRS. A PNG cannot hold a
  CRS, so a georeferenced scene with ``--out *.png`` is refused rather than silently
  losing its georeference. Without a CRS the summary has pixel counts, never km².
- **Many scenes, one restore.** :class:`ScenePredictor` holds the restored run and its
  compiled tile function; ``satseg predict --images``, ``satseg evaluate --images`` and
  ``satseg map`` map every file with it. The tile loop and the strip writer live in
  :mod:`satseg_jax.sliding_window`, the checks and the per-scene map writing in
  :mod:`satseg_jax.tiled_scene` (JAX-free: exported models use them too); ``tta``
  averages each tile over its 8 flips and rotations (:mod:`satseg_jax.tta`).
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import numpy as np

from satseg_jax.errors import SatsegError
from satseg_jax.io_utils import refuse_overwriting_inputs
from satseg_jax.tiled_scene import blend_window, check_outputs, check_tiling


def model_context(config, tile: int) -> tuple[int, int]:
    """(input tile size, margin) so that the model's output covers ``tile`` pixels.

    For a valid-convolution model the output starts ``margin`` pixels inside the input
    (and may be a few pixels larger than ``tile``: the excess is cropped).
    """
    if config.model.name == "unet_original":
        from satseg_jax.models import valid_input_size, valid_output_size

        depth = int(config.model.get("depth", 4))
        inp = valid_input_size(tile, depth)
        out = valid_output_size(inp, depth)
        return inp, (inp - out) // 2
    from satseg_jax.models.registry import input_multiple

    f = input_multiple(config.model)
    if tile % f:
        raise SatsegError(f"--tile {tile} must be divisible by {f} for {config.model.name}")
    return tile, 0


def batch_probabilities(runner, tile: int, mean: np.ndarray | None = None,
                        std: np.ndarray | None = None, weights: np.ndarray | None = None):
    """``fn(state, x[, valid]) -> (batch, classes, tile, tile)`` softmax probabilities.

    With ``mean``/``std`` (per band), ``x`` is the raw tiles as read, (b, H, W, C) in the
    scene's dtype, and ``valid`` their (b, H, W) data mask: normalisation (train
    statistics, nodata pixels to 0, NaN/inf to 0) runs on the devices, fused by XLA into
    one pass, and the host only stacks raw pixels (half the bytes of float32 for uint16
    scenes). Without them, ``x`` is already normalised float32.

    The softmax, the crop of a valid-conv model's excess output and the channels-first
    transpose also run inside XLA, and the result is returned without waiting for it
    (JAX dispatches asynchronously): the caller reads the next batch while the devices
    compute this one, and only blocks when it needs the numbers.

    ``weights`` (tile, tile) multiplies every tile's probabilities by the blending window
    on the devices, fused into the softmax: the host then only adds tiles into its
    strip (``TileSetup.weighted``).
    """

    def normalise(raw: jax.Array, valid: jax.Array) -> jax.Array:
        x = (raw.astype(jax.numpy.float32) - mean) / std
        x = jax.numpy.where(valid[..., None], x, 0.0)
        return jax.numpy.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)

    def post(logits: jax.Array) -> jax.Array:
        logits = logits.reshape(-1, *logits.shape[-3:])[:, :tile, :tile]
        probs = jax.nn.softmax(logits.astype(jax.numpy.float32), axis=-1).transpose(0, 3, 1, 2)
        return probs if weights is None else probs * weights

    # Three programs, not one: jitting normalise + model + post together gave no
    # measurable gain on 2 cores (map of 30 scenes: +26.6 % vs +27.3 % over the raw
    # model) and raised the peak RSS from 722 to 1,205 MiB.
    normalise_jit, post_jit = jax.jit(normalise), jax.jit(post)

    def fn(state, x: np.ndarray, valid: np.ndarray | None = None) -> jax.Array:
        if mean is None:
            return post_jit(runner.predict(state, runner.shard({"image": x})["image"]))
        placed = runner.shard({"image": x, "valid": valid})
        return post_jit(runner.predict(state, normalise_jit(placed["image"], placed["valid"])))

    return fn


def _load(run_or_workdir, checkpoint: str, ema: bool = True):
    from satseg_jax.runs import Run, load_run

    run = run_or_workdir if isinstance(run_or_workdir, Run) else load_run(
        run_or_workdir, checkpoint, ema=ema)
    if run.config.task != "segmentation":
        raise SatsegError(f"{run.path} is a {run.config.task} run; predict makes "
                          "segmentation maps")
    return run


def predict_scene(workdir, image: str | Path, out: str | Path,
                  checkpoint: str = "best", tile: int = 256, overlap: int = 64,
                  blend: str = "gaussian", probabilities: str | Path | None = None,
                  batch: int = 8, progress: bool = True, tta: bool = False,
                  ema: bool = True) -> dict:
    """Predict a class map for a whole scene or plain image; return a summary.

    ``workdir`` is a run folder or a loaded ``runs.Run``. The summary holds sizes, time,
    tiles, ``crs`` (WKT, or None for a plain image), ``format`` (COG or PNG),
    ``class_pixels``, ``pixel_area_m2`` (None without a projected CRS: then there are
    pixel counts only) and ``notes`` for the user (e.g. an input dtype other than the
    training data's). ``out`` ending in ``.png`` writes a palette PNG and needs an input
    without a CRS; any other name writes a GeoTIFF. ``tta`` averages the probabilities
    over the 8 flips and rotations of each tile (:mod:`satseg_jax.tta`). Everything is
    checked before the first byte is written, so a refused input leaves nothing behind.
    ``ema`` False predicts with the raw weights of a run trained with an EMA
    (``weights`` in the summary says which were used). Many scenes:
    :class:`ScenePredictor` restores and compiles once.
    """
    image, out = Path(image), Path(out)
    refuse_overwriting_inputs({"out": out, "probabilities": probabilities},
                              {"image": image, "workdir": getattr(workdir, "path", workdir)})
    check_tiling(tile, overlap, batch)
    check_outputs(image, out, probabilities)
    t0 = time.perf_counter()
    predictor = ScenePredictor(_load(workdir, checkpoint, ema), tile=tile, overlap=overlap,
                               blend=blend, batch=batch, tta=tta)
    summary = predictor.predict(image, out, probabilities=probabilities, progress=progress)
    summary["seconds"] = time.perf_counter() - t0
    return summary


class ScenePredictor:
    """A run ready to map any number of scenes: restored once (by the caller), its
    tile function built once, and compiled once per input pixel dtype (not once per
    scene: every tile batch has the same shape, whatever the scene size)."""

    def __init__(self, run, tile: int = 256, overlap: int = 64, blend: str = "gaussian",
                 batch: int = 8, tta: bool = False, checkpoint: str = "best") -> None:
        from satseg_jax.sliding_window import TileSetup

        check_tiling(tile, overlap, batch)
        self.run, self.overlap, self.tta = _load(run, checkpoint), overlap, tta
        card = self.run.card
        in_tile, margin = model_context(self.run.config, tile)
        n_dev = jax.device_count()
        runner = self.run.runner
        if tta:
            from satseg_jax.tta import tta_runner

            runner = tta_runner(self.run)
        mean = np.asarray(card.mean, np.float32)
        std = np.asarray([s if s > 0 else 1.0 for s in card.std], np.float32)
        window = blend_window(tile, blend)
        self.setup = TileSetup(
            state=self.run.state, probabilities_of=batch_probabilities(
                runner, tile, mean, std, weights=None if blend == "none" else window),
            batch=max(n_dev, batch - batch % n_dev), tile=tile, in_tile=in_tile,
            margin=margin, weights=window, blend=blend, num_bands=card.num_bands,
            min_batch=n_dev, weighted=blend != "none")
        self._compiled: set[str] = set()

    def compile(self, raw_dtype: np.dtype) -> None:
        """Compile for ``raw_dtype`` tiles (one full batch of zeros), once per dtype, so
        scene timings are not mostly compilation. The smaller batch a scene's last tiles
        may go in (``sliding_window.padded_batch``) compiles when first needed: compiling
        every such shape up front took 3.9 s instead of 1.3 s (2 cores), mostly for
        shapes a set of same-sized scenes never uses."""
        if raw_dtype.str in self._compiled:
            return
        st = self.setup
        np.asarray(st.probabilities_of(
            st.state, np.zeros((st.batch, st.in_tile, st.in_tile, st.num_bands), raw_dtype),
            np.zeros((st.batch, st.in_tile, st.in_tile), bool)))
        self._compiled.add(raw_dtype.str)

    def predict(self, image: str | Path, out: str | Path | None,
                probabilities: str | Path | None = None, progress: bool = True,
                on_rows=None) -> dict:
        """Map one scene into ``out`` (COG, or palette PNG for ``*.png``) and return the
        summary of :func:`predict_scene`. ``out`` None writes no map: ``on_rows(classes,
        top)`` receives each finished block of rows instead (evaluate --images)."""
        from satseg_jax.tiled_scene import map_scene

        summary = map_scene(self.setup, self.run.card, image, out, self.overlap,
                            probabilities=probabilities, progress=progress, on_rows=on_rows,
                            before=self.compile, inputs={"workdir": self.run.path})
        return {**summary, "weights": self.run.weights, "checkpoint_step": int(self.run.step),
                "tta": self.tta}
