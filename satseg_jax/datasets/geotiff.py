"""Reading patch rasters with errors a user can act on (no dependency on ``raster/``).

Why here and not in ``raster/``: the datasets package reads finished patch files only
(one whole small raster at a time), and keeping its reads self-contained lets it be
built and tested independently of the scene-processing code.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from satseg_jax.errors import SatsegError


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split()) or type(e).__name__


@contextlib.contextmanager
def open_raster(path: str | Path, fix: str = "re-run satseg patches") -> Iterator:
    """``rasterio.open`` for reading; a missing, unreadable or corrupt file (also while
    reading pixels inside the block) becomes a SatsegError naming it and the ``fix``."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioError

    path = Path(path)
    if not path.is_file():
        raise SatsegError(f"{path}: file not found; {fix}")
    # GDAL lists a file's folder on open to look for sidecar files; in a folder of
    # thousands of patches that listing dominates the read, and patches have no sidecars.
    with warnings.catch_warnings(), rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"):
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        try:
            with rasterio.open(path) as ds:
                yield ds
        except RasterioError as e:
            raise SatsegError(f"{path}: cannot be read as a raster or its pixels are corrupt "
                              f"({_one_line(e)}); {fix}") from None


def same_grid(t1, t2) -> bool:
    """Two affine transforms describe the same pixel grid (to 1e-9 of a pixel)."""
    tol = 1e-9 * max(abs(t1.a), abs(t1.e), abs(t1.b), abs(t1.d), 1e-12)
    return t1.almost_equals(t2, precision=tol)


def read_channels_last(path: str | Path, fix: str = "re-run satseg patches") -> np.ndarray:
    """All bands of a raster as (H, W, C), exactly as stored."""
    with open_raster(path, fix) as ds:
        return np.ascontiguousarray(np.moveaxis(ds.read(), 0, -1))
