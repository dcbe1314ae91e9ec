"""Band composition: single-band rasters -> one tiled, compressed multi-band GeoTIFF.

Why strict: bands delivered as separate files (CBERS-4A WPM B1..B4, Landsat B2..B5)
are only stackable pixel for pixel when they share CRS, transform, size and dtype. A
silent mismatch shifts one band against the others and poisons every label; so a
mismatch is an error naming the file and the field, unless the user asks to reproject
every band onto a reference grid (``resample_to``, through a windowed WarpedVRT).

Memory: the output is written by windows one row of 256-px tiles high and at most
``CHUNK_COLS`` wide, reading the same window from each input, so memory does not grow
with the scene. The file is written under a temporary name and renamed at the end: a
failure (corrupt input half way through, Ctrl-C) leaves nothing behind.

``open_raster`` and ``read_window`` are the project's guarded rasterio entry points:
every other module opens and reads rasters through them so that a missing, truncated
or corrupt file is a one-line SatsegError naming the file, never a GDAL traceback.
"""

from __future__ import annotations

import math
import os
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from satseg_jax.errors import SatsegError
from satseg_jax.io_utils import atomic_path

BLOCK = 256  # output tile size
CHUNK_COLS = 8 * BLOCK  # widest window read/written at once (memory bound per window)
RESAMPLING = ("nearest", "bilinear", "cubic", "average")
# GDAL's block cache defaults to 5% of RAM and keeps written tiles until it is full, so
# peak memory would grow with the scene (up to gigabytes on a big machine). A fixed cache
# keeps it flat at no cost in speed; set GDAL_CACHEMAX in the environment to override.
CACHE_MB = 256


def gdal_env():
    """``rasterio.Env`` with a bounded block cache (unless GDAL_CACHEMAX is set)."""
    import rasterio

    if os.environ.get("GDAL_CACHEMAX"):
        return rasterio.Env()
    return rasterio.Env(GDAL_CACHEMAX=CACHE_MB)


def open_raster(path: str | Path):
    """``rasterio.open`` with a SatsegError naming the file when missing or unreadable."""
    import rasterio
    from rasterio.errors import RasterioError

    path = Path(path)
    if not path.exists():
        raise SatsegError(f"{path}: file not found")
    if path.is_dir():
        raise SatsegError(f"{path}: is a folder, expected a raster file")
    try:
        return rasterio.open(path)
    except RasterioError as e:
        raise SatsegError(f"{path}: cannot be read as a raster ({_one_line(e)}); is it a "
                          "complete GeoTIFF? Re-download or re-export it") from None


def read_window(ds, window, path: str | Path, indexes=None, **kwargs) -> np.ndarray:
    """``ds.read`` that turns a corrupt/truncated file into a SatsegError naming it."""
    from rasterio.errors import RasterioError

    try:
        return ds.read(indexes, window=window, **kwargs)
    except RasterioError as e:
        raise SatsegError(f"{path}: pixel data is corrupt or truncated ({_one_line(e)}); "
                          "re-download or re-export the file") from None


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def grid_mismatch(ref, ds) -> str | None:
    """The first grid field of ``ds`` that differs from ``ref`` ("crs ...", "size ...",
    "transform ..."), or None when the two rasters are pixel-aligned."""
    if ref.crs != ds.crs:
        return f"crs {ds.crs} differs from {ref.crs}"
    if (ref.width, ref.height) != (ds.width, ds.height):
        return f"size {ds.width}x{ds.height} differs from {ref.width}x{ref.height}"
    tol = 1e-9 * max(abs(ref.transform.a), abs(ref.transform.e), 1e-12)
    if not ref.transform.almost_equals(ds.transform, precision=tol):
        return f"transform {tuple(ds.transform)[:6]} differs from {tuple(ref.transform)[:6]}"
    return None


def block_windows(height: int, width: int, block: int = BLOCK, max_cols: int = CHUNK_COLS):
    """Row-major rasterio windows, ``block`` rows high, aligned to ``block``-px tiles."""
    from rasterio.windows import Window

    step = max(block, (max_cols // block) * block)
    return [Window(c, r, min(step, width - c), min(block, height - r))
            for r in range(0, height, block) for c in range(0, width, step)]


def _nodata_key(v: float | None):
    if v is None:
        return None
    return "nan" if math.isnan(v) else float(v)


def compose_bands(bands: list[Path], out: Path, names: list[str] | None = None,
                  resample_to: Path | None = None, resampling: str = "bilinear",
                  progress: bool = True) -> Path:
    """Stack single-band rasters into ``out``; return ``out``.

    Band descriptions are ``names`` or the file stems; nodata is carried over. Without
    ``resample_to`` every band must match the first one's CRS, transform, size and
    dtype (else SatsegError naming the file and the field); with it, every band whose
    grid differs from the reference raster's is reprojected onto it (``resampling``).
    """
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT
    from tqdm import tqdm

    bands = [Path(b) for b in bands]
    out = Path(out)
    if not bands:
        raise SatsegError("compose: give at least one band file with --bands")
    names = list(names) if names else [b.stem for b in bands]
    if len(names) != len(bands):
        raise SatsegError(f"--names has {len(names)} names for {len(bands)} band files; "
                          "give one name per band")
    if len(set(names)) != len(names):
        raise SatsegError(f"--names: band names must be unique, got {names}")
    if resampling not in RESAMPLING:
        raise SatsegError(f"--resampling {resampling!r}: expected one of {', '.join(RESAMPLING)}")
    method = Resampling[resampling]
    if any(out.resolve() == b.resolve() for b in bands):
        raise SatsegError(f"{out}: the output is one of the input bands; choose another --out")

    with ExitStack() as stack:
        stack.enter_context(gdal_env())
        srcs = [stack.enter_context(open_raster(b)) for b in bands]
        for path, ds in zip(bands, srcs):
            if ds.count != 1:
                raise SatsegError(f"{path}: band count is {ds.count}; compose takes single-band "
                                  "files (pass each band as its own file)")
        first = srcs[0]
        if resample_to is not None:
            ref = stack.enter_context(open_raster(Path(resample_to)))
            grid = {"crs": ref.crs, "transform": ref.transform, "width": ref.width,
                    "height": ref.height}
            if ref.crs is None:
                raise SatsegError(f"{resample_to}: reference raster has no crs; pick a "
                                  "georeferenced --resample-to")
            for path, ds in zip(bands, srcs):
                if grid_mismatch(ref, ds) and ds.crs is None:
                    raise SatsegError(f"{path}: has no crs, so it cannot be reprojected onto "
                                      f"{resample_to}; georeference it first")
            srcs = [stack.enter_context(WarpedVRT(ds, resampling=method, **grid))
                    if grid_mismatch(ref, ds) else ds for ds in srcs]
            height, width, crs, transform = ref.height, ref.width, ref.crs, ref.transform
        else:
            for path, ds in zip(bands[1:], srcs[1:]):
                problem = grid_mismatch(first, ds)
                if problem:
                    raise SatsegError(f"{path}: {problem} of {bands[0]}; align the bands "
                                      "or pass --resample-to REFERENCE.tif")
            height, width = first.height, first.width
            crs, transform = first.crs, first.transform
        for path, ds in zip(bands[1:], srcs[1:]):
            if ds.dtypes[0] != first.dtypes[0]:
                raise SatsegError(f"{path}: dtype {ds.dtypes[0]} differs from {first.dtypes[0]} "
                                  f"of {bands[0]}; convert the bands to one dtype")

        nodatas = {_nodata_key(ds.nodata) for ds in srcs} - {None}
        if len(nodatas) > 1:
            ref_key = next(k for k in map(_nodata_key, (ds.nodata for ds in srcs))
                           if k is not None)
            odd, odd_nodata = next((p, ds.nodata) for p, ds in zip(bands, srcs)
                                   if _nodata_key(ds.nodata) not in (None, ref_key))
            raise SatsegError(f"{odd}: nodata {odd_nodata} differs from "
                              f"{ref_key} of the other bands; set one nodata value on every "
                              "band (gdal_edit.py -a_nodata VALUE)")
        nodata = next((ds.nodata for ds in srcs if ds.nodata is not None), None)
        dtype = np.dtype(first.dtypes[0])
        profile = {
            "driver": "GTiff", "height": height, "width": width, "count": len(srcs),
            "dtype": dtype.name, "crs": crs, "transform": transform, "nodata": nodata,
            "tiled": True, "blockxsize": BLOCK, "blockysize": BLOCK, "compress": "deflate",
            "predictor": 3 if dtype.kind == "f" else 2, "interleave": "pixel",
            "BIGTIFF": "IF_SAFER",
        }
        windows = block_windows(height, width)
        with atomic_path(out) as tmp:
            with rasterio.open(tmp, "w", **profile) as dst:
                for i, n in enumerate(names, start=1):
                    dst.set_band_description(i, n)
                for w in tqdm(windows, desc=f"compose {out.name}", unit="win",
                              disable=not progress, leave=False):
                    chunk = np.empty((len(srcs), int(w.height), int(w.width)), dtype)
                    for i, (path, ds) in enumerate(zip(bands, srcs)):
                        chunk[i] = read_window(ds, w, path, 1)
                    dst.write(chunk, window=w)
    return out
