"""Band composition: single-band rasters -> one tiled, compressed multi-band GeoTIFF.

Why strict: bands delivered as separate files (CBERS-4A WPM B1..B4, Landsat B2..B5)
are only stackable pixel for pixel when they share CRS, transform, size and dtype. A
silent mismatch shifts one band against the others and poisons every label; so a
mismatch is an error naming the file and the field, unless the user asks to reproject
every band onto a reference grid (``resample_to``).

Memory: the output is written block by block (256×256 tiles), reading the same window
from each input, so memory does not grow with scene size.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import numpy as np

from satseg_jax.errors import SatsegError
from satseg_jax.io_utils import atomic_path

BLOCK = 256


def open_raster(path: Path):
    """rasterio.open with a SatsegError naming the file when it is missing or unreadable."""
    import rasterio
    from rasterio.errors import RasterioIOError

    path = Path(path)
    if not path.exists():
        raise SatsegError(f"{path}: file not found")
    try:
        return rasterio.open(path)
    except RasterioIOError as e:
        raise SatsegError(f"{path}: cannot be read as a raster ({e}); is it a complete "
                          "GeoTIFF? Re-download or re-export it") from None


def read_window(ds, window, path: Path, indexes=None, **kwargs) -> np.ndarray:
    """``ds.read`` that turns a corrupt/truncated file into a SatsegError naming it."""
    from rasterio.errors import RasterioError

    try:
        return ds.read(indexes, window=window, **kwargs)
    except RasterioError as e:
        raise SatsegError(f"{path}: pixel data is corrupt or truncated ({e}); re-download or "
                          "re-export the file") from None


def _grid_mismatch(ref, ds) -> str | None:
    if ref.crs != ds.crs:
        return f"crs {ds.crs} differs from {ref.crs}"
    if (ref.width, ref.height) != (ds.width, ds.height):
        return f"size {ds.width}x{ds.height} differs from {ref.width}x{ref.height}"
    if not ref.transform.almost_equals(ds.transform, precision=1e-9 * abs(ref.transform.a)):
        return f"transform {tuple(ds.transform)[:6]} differs from {tuple(ref.transform)[:6]}"
    return None


def compose_bands(bands: list[Path], out: Path, names: list[str] | None = None,
                  resample_to: Path | None = None, resampling: str = "bilinear",
                  progress: bool = True) -> Path:
    """Stack single-band rasters into ``out`` (band descriptions = ``names`` or file stems).

    Without ``resample_to`` every band must match the first one's CRS, transform, size
    and dtype; with it, every band is reprojected onto the reference raster's grid.
    """
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT
    from rasterio.windows import Window
    from tqdm import tqdm

    bands = [Path(b) for b in bands]
    if not bands:
        raise SatsegError("compose: give at least one band file with --bands")
    names = list(names) if names else [b.stem for b in bands]
    if len(names) != len(bands):
        raise SatsegError(f"--names has {len(names)} names for {len(bands)} band files")
    if len(set(names)) != len(names):
        raise SatsegError(f"band names must be unique, got {names}")
    try:
        method = Resampling[resampling]
    except KeyError:
        raise SatsegError(f"--resampling {resampling!r} is not a rasterio resampling") from None

    with ExitStack() as stack:
        srcs = [stack.enter_context(open_raster(b)) for b in bands]
        for path, ds in zip(bands, srcs):
            if ds.count != 1:
                raise SatsegError(f"{path}: has {ds.count} bands; compose takes single-band "
                                  "files (split it, or pass each band file)")
        if resample_to is not None:
            ref = stack.enter_context(open_raster(Path(resample_to)))
            grid = {"crs": ref.crs, "transform": ref.transform, "width": ref.width,
                    "height": ref.height}
            srcs = [stack.enter_context(WarpedVRT(ds, resampling=method, **grid))
                    if _grid_mismatch(ref, ds) else ds for ds in srcs]
            ref_ds = ref
        else:
            ref_ds = srcs[0]
            for path, ds in zip(bands[1:], srcs[1:]):
                problem = _grid_mismatch(ref_ds, ds)
                if problem:
                    raise SatsegError(f"{path}: {problem} ({bands[0]}); align the bands or "
                                      "pass --resample-to REFERENCE.tif")
        dtypes = {ds.dtypes[0] for ds in srcs}
        if len(dtypes) > 1:
            odd = next(p for p, ds in zip(bands, srcs) if ds.dtypes[0] != srcs[0].dtypes[0])
            raise SatsegError(f"{odd}: dtype differs from {bands[0]}'s {srcs[0].dtypes[0]} "
                              f"(found {sorted(dtypes)}); convert the bands to one dtype")
        nodatas = {ds.nodata for ds in srcs}
        nodata = srcs[0].nodata if len(nodatas) == 1 else None
        height, width = ref_ds.height, ref_ds.width
        profile = {"driver": "GTiff", "height": height, "width": width, "count": len(srcs),
                   "dtype": srcs[0].dtypes[0], "crs": ref_ds.crs,
                   "transform": ref_ds.transform, "nodata": nodata, "tiled": True,
                   "blockxsize": BLOCK, "blockysize": BLOCK, "compress": "deflate",
                   "predictor": 2 if np.issubdtype(np.dtype(srcs[0].dtypes[0]), np.integer)
                   else 3, "interleave": "pixel", "BIGTIFF": "IF_SAFER"}
        import rasterio

        windows = [Window(c, r, min(BLOCK, width - c), min(BLOCK, height - r))
                   for r in range(0, height, BLOCK) for c in range(0, width, BLOCK)]
        with atomic_path(Path(out)) as tmp:
            with rasterio.open(tmp, "w", **profile) as dst:
                for i, n in enumerate(names, start=1):
                    dst.set_band_description(i, n)
                for w in tqdm(windows, desc=f"compose {Path(out).name}", unit="block",
                              disable=not progress, leave=False):
                    for i, (path, ds) in enumerate(zip(bands, srcs), start=1):
                        dst.write(read_window(ds, w, path, 1), i, window=w)
    return Path(out)
