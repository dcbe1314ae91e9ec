"""The raster I/O base every layer reads and writes through (rasterio, GDAL settings).

Why one module: opening, reading, grid comparison and the valid-pixel rule are shared by
compose, patches, folder patches, pan-sharpening, predict, area and the tfds builders.
Kept in one place they cannot drift apart (a patch builder and the patch cutter must
agree on which pixels are nodata, to the bit), and no module has to import a sibling
that imports it back.

``open_raster`` and ``read_window`` are the project's guarded rasterio entry points:
every other module opens and reads rasters through them so that a missing, truncated or
corrupt file is a one-line SatsegError naming the file, never a GDAL traceback.

Valid pixels (the rule ``satseg patches``, compose, build and predict share): a pixel is
invalid when *every* band equals the image's nodata value (a dark water pixel may be 0
in one band and still be data), or when any band is NaN/±inf (float images).
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from satseg_jax.errors import SatsegError

BLOCK = 256  # output tile size
CHUNK_COLS = 8 * BLOCK  # widest window read/written at once (memory bound per window)
# GDAL's block cache defaults to 5% of RAM and keeps written tiles until it is full, so
# peak memory would grow with the scene (up to gigabytes on a big machine). A fixed cache
# keeps it flat at no cost in speed; set GDAL_CACHEMAX in the environment to override.
CACHE_MB = 256
# Two grids are the same when their transforms differ by less than this, in pixels (see
# grid_mismatch): far above float64 round-off, far below any real misalignment.
GRID_TOL_PX = 1e-6
# What a reader of finished patch files tells the user to do about a broken one.
PATCHES_FIX = "re-run satseg patches"


def gdal_env():
    """``rasterio.Env`` with a bounded block cache (unless GDAL_CACHEMAX is set)."""
    import rasterio

    if os.environ.get("GDAL_CACHEMAX"):
        return rasterio.Env()
    return rasterio.Env(GDAL_CACHEMAX=CACHE_MB)


def one_line(e: BaseException | str) -> str:
    """An exception (or text) on one line, for a one-line SatsegError."""
    if isinstance(e, str):
        return " ".join(e.split())
    return " ".join(str(e).split()) or type(e).__name__


def open_raster(path: str | Path, fix: str | None = None):
    """``rasterio.open`` with a SatsegError naming the file when missing or unreadable.

    Two kinds of caller, one entry point:

    - scene processing (``fix`` None) gets the open dataset itself (usable with or
      without ``with``); its pixel reads go through :func:`read_window`, which names
      a corrupt file on its own;
    - readers of finished files (patches, classification images) pass ``fix``, the
      action the message names, and get a context manager that also turns a corrupt
      pixel read inside the block into a SatsegError (see :func:`_open_finished`).
    """
    if fix is not None:
        return _open_finished(Path(path), fix)
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
        raise SatsegError(f"{path}: cannot be read as a raster ({one_line(e)}); is it a "
                          "complete GeoTIFF? Re-download or re-export it") from None


@contextlib.contextmanager
def _open_finished(path: Path, fix: str) -> Iterator:
    """The ``fix`` form of :func:`open_raster`: whole small files read in one block.

    Why the folder listing is off: GDAL lists a file's folder on open to look for
    sidecar files; in a folder of thousands of patches that listing dominates the read,
    and patches have no sidecars.
    """
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioError

    if not path.is_file():
        raise SatsegError(f"{path}: file not found; {fix}")
    with warnings.catch_warnings(), rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"):
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        try:
            with rasterio.open(path) as ds:
                yield ds
        except RasterioError as e:
            raise SatsegError(f"{path}: cannot be read as a raster or its pixels are corrupt "
                              f"({one_line(e)}); {fix}") from None


def read_window(ds, window, path: str | Path, indexes=None, **kwargs) -> np.ndarray:
    """``ds.read`` that turns a corrupt/truncated file into a SatsegError naming it."""
    from rasterio.errors import RasterioError

    try:
        return ds.read(indexes, window=window, **kwargs)
    except RasterioError as e:
        raise SatsegError(f"{path}: pixel data is corrupt or truncated ({one_line(e)}); "
                          "re-download or re-export the file") from None


def read_channels_last(path: str | Path, fix: str = PATCHES_FIX) -> np.ndarray:
    """All bands of a whole (small) raster as (H, W, C), exactly as stored."""
    with open_raster(path, fix) as ds:
        return np.ascontiguousarray(np.moveaxis(ds.read(), 0, -1))


def block_windows(height: int, width: int, block: int = BLOCK, max_cols: int = CHUNK_COLS):
    """Row-major rasterio windows, ``block`` rows high, aligned to ``block``-px tiles."""
    from rasterio.windows import Window

    step = max(block, (max_cols // block) * block)
    return [Window(c, r, min(step, width - c), min(block, height - r))
            for r in range(0, height, block) for c in range(0, width, step)]


# ----------------------------------------------------------------------------- grids


def transform_offset(ref_t, ds_t, width: int, height: int) -> tuple[float, float]:
    """How far ``ds_t`` is from ``ref_t``, in pixels of ``ref_t``: ``(coef, worst)``.

    Both transforms are compared in ``ref_t``'s pixel frame: ``~ref_t * ds_t`` would be
    the identity for aligned grids; it is computed as ``inv(L_ref) @ (ds - ref)`` (the
    difference first, so large map coordinates cost no precision). ``coef`` is its
    largest coefficient away from the identity: the origin shift in pixels and the
    difference of the pixel size / rotation terms in pixels per pixel. ``worst`` is the
    largest displacement of any pixel of a ``width`` x ``height`` raster (the affine
    difference is linear, so it peaks at a corner), used to tell the user how far off a
    refused grid is. A singular ``ref_t`` has no pixel frame: exact equality only.
    """
    ref = np.array([[ref_t.a, ref_t.b, ref_t.c], [ref_t.d, ref_t.e, ref_t.f]], np.float64)
    oth = np.array([[ds_t.a, ds_t.b, ds_t.c], [ds_t.d, ds_t.e, ds_t.f]], np.float64)
    lin = ref[:, :2]
    if not np.isfinite(ref).all() or np.linalg.det(lin) == 0:
        same = bool(np.array_equal(ref, oth))
        return (0.0, 0.0) if same else (math.inf, math.inf)
    diff = np.linalg.inv(lin) @ (oth - ref)  # 2x3, in reference pixels
    coef = float(np.abs(diff).max())
    corners = np.array([[0, 0, 1], [width, 0, 1], [0, height, 1], [width, height, 1]],
                       np.float64)
    worst = float(np.hypot(*(diff @ corners.T)).max())
    return coef, worst


def grid_mismatch(ref, ds) -> str | None:
    """The first grid field of ``ds`` that differs from ``ref`` ("crs ...", "size ...",
    "transform ... differs from ... by up to N pixels"), or None when the two rasters
    are pixel-aligned.

    CRS and size must be equal. Transforms are equal up to ``GRID_TOL_PX``: every
    coefficient of ``~ref.transform * ds.transform`` is within 1e-6 of the identity,
    i.e. the origins differ by less than 1e-6 of a pixel and the pixel size / rotation
    terms by less than 1e-6 of a pixel per pixel (see ``transform_offset``). Why: real
    datasets (tiles exported by different tools, label rasters written from another
    library) carry transforms that differ in their last digits, which is no
    misalignment; a shift by a fraction of a pixel (half a pixel is a common
    pixel-is-area vs pixel-is-point confusion) is one, and must be refused.
    Takes any two open datasets (``.crs``, ``.width``, ``.height``, ``.transform``).
    """
    if ref.crs != ds.crs:
        return f"crs {ds.crs} differs from {ref.crs}"
    if (ref.width, ref.height) != (ds.width, ds.height):
        return f"size {ds.width}x{ds.height} differs from {ref.width}x{ref.height}"
    coef, worst = transform_offset(ref.transform, ds.transform, ref.width, ref.height)
    if not coef < GRID_TOL_PX:
        return (f"transform {tuple(ds.transform)[:6]} differs from "
                f"{tuple(ref.transform)[:6]} by up to {worst:.3g} pixels")
    return None


def same_grid(t1, t2) -> bool:
    """Two affine transforms describe the same pixel grid (to 1e-9 of a pixel)."""
    tol = 1e-9 * max(abs(t1.a), abs(t1.e), abs(t1.b), abs(t1.d), 1e-12)
    return t1.almost_equals(t2, precision=tol)


# ----------------------------------------------------------------------------- nodata


COLOUR_NAMES = frozenset({"red", "green", "blue", "alpha", "gray"})


def colour_band_names(ds) -> list[str] | None:
    """The bands' colour interpretations (red, green, blue...), None unless each band
    has a distinct one. Why it matters: a folder set is named by them when its per-tile
    descriptions disagree, so predict/evaluate must accept an image named that way."""
    names = [c.name for c in ds.colorinterp]
    ok = len(names) == ds.count and all(n in COLOUR_NAMES for n in names)
    return names if ok and len(set(names)) == len(names) else None


def is_nan(v) -> bool:
    """True for a float NaN (a nodata value that no pixel can equal)."""
    return isinstance(v, float) and math.isnan(v)


def nodata_value(nodata: float | int | None, dtype) -> float | int | None:
    """``nodata`` as a value ``dtype`` can hold, or None when no pixel can equal it.

    NaN maps to None (non-finite float pixels are invalid anyway), and an integer image
    cannot hold a fractional or out-of-range nodata, so then no pixel is nodata.
    """
    if nodata is None or (isinstance(nodata, float) and math.isnan(nodata)):
        return None
    dt = np.dtype(dtype)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        if not float(nodata).is_integer() or not info.min <= nodata <= info.max:
            return None
        return int(nodata)
    return float(nodata)


def valid_pixels(image: np.ndarray, nodata: float | int | None,
                 channels_last: bool = False) -> np.ndarray:
    """(H, W) True where the pixel has data (see module doc).

    ``image`` is (C, H, W) as rasterio reads it, or (H, W, C) with ``channels_last``
    (as the tfds examples hold it). Band by band (not ``.all(axis=...)``): a strided
    reduction over the last axis of a channels-last array is several times slower, and
    this runs once per patch.
    """
    count = image.shape[-1] if channels_last else image.shape[0]

    def band(c: int) -> np.ndarray:
        return image[..., c] if channels_last else image[c]

    valid = np.ones(band(0).shape, dtype=bool)
    if image.dtype.kind == "f":
        for c in range(count):
            valid &= np.isfinite(band(c))
    nd = nodata_value(nodata, image.dtype)
    if nd is not None:
        nodata_everywhere = band(0) == nd
        for c in range(1, count):
            nodata_everywhere &= band(c) == nd
        valid &= ~nodata_everywhere
    return valid
