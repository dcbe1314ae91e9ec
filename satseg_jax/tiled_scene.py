"""One scene through the tile loop into a finished map file, and the checks before it.

Why a module of its own, without JAX: the same checks (output names, tiling, the scene's
bands against the model's), the same tile loop and the same COG/PNG writing serve a
restored Flax run (:class:`satseg_jax.predict.ScenePredictor`) and an exported SavedModel
(:mod:`satseg_jax.export.serving`, ``satseg predict --model``), which must run where JAX
is not installed. What differs between the two is only ``TileSetup.probabilities_of``.
"""

from __future__ import annotations

import time
from pathlib import Path

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


def pixel_area_m2(crs, transform) -> float | None:
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


def map_scene(setup, card, image: str | Path, out: str | Path | None, overlap: int,
              probabilities: str | Path | None = None, progress: bool = True,
              on_rows=None, before=None, inputs: dict | None = None) -> dict:
    """Map one scene into ``out`` (COG, or palette PNG for ``*.png``) with ``setup``
    (a :class:`satseg_jax.sliding_window.TileSetup`) and return the summary of
    :func:`satseg_jax.predict.predict_scene` (less what only a run knows). ``out`` None
    writes no map: ``on_rows(classes, top)`` receives each finished block of rows
    instead. ``before(raw_dtype)`` runs once the scene is checked (the compile, once per
    process: ``seconds`` leaves it out, ``seconds_compile`` holds it);
    ``inputs`` names more files that must not be overwritten (the run or model)."""
    from satseg_jax.raster.io import gdal_env
    from satseg_jax.raster.map_files import to_cog, to_png, verify_written
    from satseg_jax.raster.masks import quiet_georeference
    from satseg_jax.sliding_window import (
        MapWriter,
        Tiler,
        covering_rows,
        map_profile,
        strip_tile_rows,
    )

    image = Path(image)
    refuse_overwriting_inputs({"out": out, "probabilities": probabilities},
                              {"image": image, **(inputs or {})})
    as_png = check_outputs(image, Path(out), probabilities) if out is not None else False
    t0 = time.perf_counter()
    # A bounded GDAL block cache: by default it grows to 5 % of RAM with the scene.
    with gdal_env(), quiet_georeference(), open_scene(image) as src:
        raw_dtype, nodata, notes = check_scene(src, card, image)
        t_compile = time.perf_counter()
        if before is not None:
            before(raw_dtype)
        t_compile = time.perf_counter() - t_compile
        profile = map_profile(src)
        tile_rows = strip_tile_rows(src.width, setup.tile, overlap, setup.batch)
        strip = covering_rows(src.height, src.width, setup.tile, overlap, tile_rows)
        with (atomic_path(Path(out)) if out is not None else _null()) as tmp_map, (
                atomic_path(Path(probabilities)) if probabilities else _null()) as tmp_prob:
            writer = MapWriter(tmp_map, tmp_prob, profile, card, strip, on_rows)
            tiler = Tiler(setup, writer, raw_dtype)
            t_start = time.perf_counter()
            tiler.run(src, image, overlap, nodata, progress, tile_rows)
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
            "crs": crs.to_wkt() if crs is not None else None,
            "height": profile["height"], "width": profile["width"],
            "tiles": tiler.tiles_done, "seconds": time.perf_counter() - t0 - t_compile,
            "seconds_compile": t_compile, "seconds_loop": t_loop - t_start,
            "seconds_cog": t_cog, "batch": setup.batch,
            "class_pixels": dict(zip(card.class_names, writer.counts.tolist())),
            "pixel_area_m2": pixel_area_m2(crs, profile["transform"]), "notes": notes}
