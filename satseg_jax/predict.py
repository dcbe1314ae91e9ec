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
  compiled tile function; ``satseg predict --images`` and ``satseg evaluate --images``
  map every file of a folder with it. The tile loop and the strip writer live in
  :mod:`satseg_jax.sliding_window`; ``tta`` averages each tile over its 8 flips and
  rotations (:mod:`satseg_jax.tta`).
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import numpy as np

from satseg_jax.errors import SatsegError
from satseg_jax.io_utils import atomic_path, refuse_overwriting_inputs


def _representable(value, dtype: np.dtype) -> bool:
    """``value`` can occur in an array of ``dtype`` (a uint16 run's nodata 65535 cannot
    occur in an 8-bit JPEG: no pixel of it is nodata, and it is no boundless fill)."""
    if value is None or not np.issubdtype(dtype, np.integer):
        return value is not None
    info = np.iinfo(dtype)
    v = float(value)
    return v.is_integer() and info.min <= v <= info.max


def blend_window(size: int, mode: str) -> np.ndarray:
    """(size, size) float32 weights for blending overlapping tiles."""
    if mode in ("mean", "none"):
        return np.ones((size, size), np.float32)
    if mode == "gaussian":
        x = np.arange(size, dtype=np.float64) - (size - 1) / 2
        g = np.exp(-0.5 * (x / (size / 4)) ** 2)
        w = np.outer(g, g)
        return np.maximum(w / w.max(), 1e-3).astype(np.float32)
    raise SatsegError(f"--blend {mode!r}: expected gaussian, mean or none")


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
                        std: np.ndarray | None = None):
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
    """

    @jax.jit
    def normalise(raw: jax.Array, valid: jax.Array) -> jax.Array:
        x = (raw.astype(jax.numpy.float32) - mean) / std
        x = jax.numpy.where(valid[..., None], x, 0.0)
        return jax.numpy.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)

    @jax.jit
    def post(logits: jax.Array) -> jax.Array:
        logits = logits.reshape(-1, *logits.shape[-3:])[:, :tile, :tile]
        return jax.nn.softmax(logits.astype(jax.numpy.float32), axis=-1).transpose(0, 3, 1, 2)

    def fn(state, x: np.ndarray, valid: np.ndarray | None = None) -> jax.Array:
        if mean is None:
            return post(runner.predict(state, runner.shard({"image": x})["image"]))
        placed = runner.shard({"image": x, "valid": valid})
        return post(runner.predict(state, normalise(placed["image"], placed["valid"])))

    return fn


def check_outputs(image: Path, out: Path, probabilities: str | Path | None) -> bool:
    """Refuse output names that cannot hold the result, from headers only and before the
    (slower) model restore; return whether the map is a PNG."""
    as_png = out.suffix.lower() == ".png"
    if out.suffix.lower() in (".jpg", ".jpeg"):
        raise SatsegError(f"{out}: JPEG compression would blur class ids into other values; "
                          "name the map .png (plain images) or .tif")
    if probabilities and Path(probabilities).suffix.lower() in (".png", ".jpg", ".jpeg"):
        raise SatsegError(f"{probabilities}: --probabilities holds one band per class, which "
                          "only a GeoTIFF can; name it .tif")
    if as_png:
        from satseg_jax.raster.masks import quiet_georeference

        with quiet_georeference(), open_scene(image) as src:
            if src.crs is not None:
                raise SatsegError(f"{out}: {image} is georeferenced ({src.crs}) and a PNG "
                                  "cannot keep its CRS; name the map .tif (a Cloud-Optimised "
                                  "GeoTIFF), or draw a preview with 'satseg plot'")
    return as_png


def check_tiling(tile: int, overlap: int, batch: int) -> None:
    """Refuse a tile, overlap or batch that cannot cover a scene, before the restore."""
    if tile <= 0:
        raise SatsegError(f"--tile {tile}: the tile size must be a positive number of "
                          "pixels, e.g. --tile 256")
    if not 0 <= overlap < tile:
        raise SatsegError(f"--overlap {overlap}: the overlap must be at least 0 and less "
                          f"than --tile {tile}, e.g. --overlap {tile // 4}")
    if batch <= 0:
        raise SatsegError(f"--batch {batch}: the number of tiles per model call must be "
                          "at least 1, e.g. --batch 8")


def open_scene(image: Path):
    """The scene opened for reading (rasterio dataset, one clear error when unreadable)."""
    from satseg_jax.raster.io import open_raster

    return open_raster(image)


def check_scene(src, card, image: Path) -> tuple[np.dtype, float | None, list[str]]:
    """(pixel dtype, nodata, notes) of a scene the run can map; other bands are refused."""
    if src.count != card.num_bands:
        raise SatsegError(f"{image}: has {src.count} bands; the run was trained on "
                          f"{card.num_bands} ({', '.join(card.bands)})")
    from satseg_jax.raster.io import COLOUR_NAMES, colour_band_names

    # Either naming may be the run's: a folder set whose tiles carry per-tile
    # descriptions (the Amazon set's tile1_Amazon_1052...) is named by its colours. A
    # colour naming refuses only a run named by colours (a plain RGBA PNG says nothing
    # about a run of blue/green/red/nir bands).
    bands = list(card.bands)
    names = [d for d in src.descriptions if d]
    names = names if len(names) == src.count else None
    colours = colour_band_names(src)
    named_by_colour = colours is not None and set(bands) <= COLOUR_NAMES
    if bands not in (names, colours) and (names or named_by_colour):
        raise SatsegError(f"{image}: bands {names or colours} differ from the run's "
                          f"{bands}; compose the scene with the same bands in the same order")
    raw_dtype = np.dtype(src.dtypes[0])
    nodata = src.nodata if src.nodata is not None else card.nodata
    if not _representable(nodata, raw_dtype):
        nodata = None  # e.g. a uint16 run's 65535 in an 8-bit JPEG: nothing is nodata
    notes = []
    if card.image_dtype and np.dtype(card.image_dtype) != raw_dtype:
        # Not an error: the run's train mean/std are applied whatever the dtype (the
        # arithmetic is float32 on the devices); only the user knows whether the values
        # are on the same scale (8-bit RGB tiles vs uint16 reflectance are not).
        notes.append(f"{image.name} is {raw_dtype} but the run was trained on "
                     f"{card.image_dtype} patches; it is normalised with the run's train "
                     "mean/std, so the map is only meaningful if the pixel values are "
                     "on the same scale")
    return raw_dtype, nodata, notes


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
        self.setup = TileSetup(
            state=self.run.state, probabilities_of=batch_probabilities(runner, tile, mean, std),
            batch=max(n_dev, batch - batch % n_dev), tile=tile, in_tile=in_tile,
            margin=margin, weights=blend_window(tile, blend), blend=blend,
            num_bands=card.num_bands)
        self._compiled: set[str] = set()

    def compile(self, raw_dtype: np.dtype) -> None:
        """Compile for ``raw_dtype`` tiles (one batch of zeros), once per dtype, so the
        first scene's timing is not mostly compilation."""
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
        from satseg_jax.raster.io import gdal_env
        from satseg_jax.raster.map_files import to_cog, to_png, verify_written
        from satseg_jax.raster.masks import quiet_georeference
        from satseg_jax.sliding_window import MapWriter, Tiler, covering_rows, map_profile

        image = Path(image)
        refuse_overwriting_inputs({"out": out, "probabilities": probabilities},
                                  {"image": image, "workdir": self.run.path})
        as_png = check_outputs(image, Path(out), probabilities) if out is not None else False
        t0 = time.perf_counter()
        run, st = self.run, self.setup
        # A bounded GDAL block cache: by default it grows to 5 % of RAM with the scene.
        with gdal_env(), quiet_georeference(), open_scene(image) as src:
            raw_dtype, nodata, notes = check_scene(src, run.card, image)
            self.compile(raw_dtype)
            profile = map_profile(src)
            strip = covering_rows(src.height, src.width, st.tile, self.overlap)
            with (atomic_path(Path(out)) if out is not None else _null()) as tmp_map, (
                    atomic_path(Path(probabilities)) if probabilities else _null()) as tmp_prob:
                writer = MapWriter(tmp_map, tmp_prob, profile, run.card, strip, on_rows)
                tiler = Tiler(st, writer, raw_dtype)
                t_start = time.perf_counter()
                tiler.run(src, image, self.overlap, nodata, progress)
                writer.close()
                t_loop = time.perf_counter()
                if tmp_map is not None:
                    (to_png if as_png else to_cog)(tmp_map)
                    # GDAL may fail only in a log line (full disk): read the map back.
                    verify_written(tmp_map, [writer.map_sum])
                if tmp_prob:
                    to_cog(tmp_prob)
                    verify_written(tmp_prob, writer.prob_sums)
                t_cog = time.perf_counter() - t_loop
        crs = profile["crs"]
        return {"map": str(out) if out is not None else None,
                "probabilities": str(probabilities) if probabilities else None,
                "format": "PNG" if as_png else "COG",
                "crs": crs.to_wkt() if crs is not None else None, "weights": run.weights,
                "height": profile["height"], "width": profile["width"],
                "tiles": tiler.tiles_done, "checkpoint_step": int(run.step),
                "seconds": time.perf_counter() - t0, "seconds_loop": t_loop - t_start,
                "seconds_cog": t_cog, "batch": st.batch, "tta": self.tta,
                "class_pixels": dict(zip(run.card.class_names, writer.counts.tolist())),
                "pixel_area_m2": _pixel_area_m2(crs, profile["transform"]), "notes": notes}


def _pixel_area_m2(crs, transform) -> float | None:
    """Area of one pixel in m² on a projected grid; None without a CRS (a plain image's
    pixels have no ground size) or on a geographic one (it varies by row: ``satseg
    area`` computes those ellipsoidal areas)."""
    if crs is None or crs.is_geographic:
        return None
    from satseg_jax.area import row_pixel_areas_m2

    return float(row_pixel_areas_m2(transform, crs, np.zeros(1))[0])


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False
