"""Finished class maps on disk: a tiled GeoTIFF rewritten as a Cloud-Optimised GeoTIFF
(georeferenced scenes) or as a palette PNG (plain images).

Why a rewrite: the map is written strip by strip into a tiled GeoTIFF (memory bounded by
a strip, whatever the scene size), and neither the COG nor the PNG driver can be written
by windows; both are made by one sequential copy at the end.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator
from pathlib import Path

import numpy as np


@contextlib.contextmanager
def _write_failed(path: Path) -> Iterator[None]:
    """A GDAL error while copying the map we just wrote means that writing it failed (a
    full disk truncated it: "Failed to read directory"): an OSError "write failed", which
    io_utils reports as a full disk when the disk is (nearly) full."""
    try:
        yield
    except Exception as e:
        # rasterio's own errors and GDAL's (CPLE_*, from a private rasterio module)
        if not type(e).__module__.startswith("rasterio"):
            raise
        raise OSError(errno.EIO, f"write failed: it cannot be read back ({e})",
                      str(path)) from e


def to_cog(path: Path) -> None:
    """Rewrite a tiled GeoTIFF in place as a Cloud-Optimised GeoTIFF (with overviews)."""
    from rasterio.shutil import copy as rio_copy

    cog = path.with_name(path.name + ".cog")
    try:
        with _write_failed(path):
            rio_copy(path, cog, driver="COG", compress="DEFLATE",
                     overview_resampling="nearest")
        cog.replace(path)
    finally:
        if cog.exists():
            cog.unlink()


def to_png(path: Path) -> None:
    """Rewrite the tiled GeoTIFF at ``path`` in place as a palette ('P' mode) PNG.

    GDAL's PNG driver cannot write by windows, so the map is written as a tiled GeoTIFF
    first (memory bounded by a strip, as for any scene) and then copied line by line;
    the colour table becomes the PNG palette and nodata 255 its transparent entry.
    GDAL_PAM_ENABLED=NO: no ``.aux.xml`` sidecar (band description) is left beside it.
    """
    import rasterio
    from rasterio.shutil import copy as rio_copy

    png = path.with_name(path.name + ".png")
    try:
        with rasterio.Env(GDAL_PAM_ENABLED="NO"), _write_failed(path):
            rio_copy(path, png, driver="PNG")
        png.replace(path)
    finally:
        if png.exists():
            png.unlink()


def verify_written(path: Path, sums: np.ndarray, strip: int = 512) -> None:
    """Read ``path`` back whole and compare each band's sum with ``sums`` (what was
    written); raise OSError "write failed" on a difference or a read error.

    Why: GDAL reports a write that failed at close or during the COG/PNG copy (a full
    disk: ``_tiffWriteProc: No space left on device``) only as a log line, and leaves a
    truncated file, or one whose missing tiles read as nodata; the command would say
    "wrote" over a broken map. Sums catch both, and a uint8 map reads back in a small
    fraction of the inference time.
    """
    import rasterio
    from rasterio.windows import Window

    with _write_failed(path), rasterio.open(path) as ds:
        got = np.zeros(ds.count, np.int64)
        for r0 in range(0, ds.height, strip):
            h = min(strip, ds.height - r0)
            got += ds.read(window=Window(0, r0, ds.width, h)).sum(axis=(1, 2),
                                                                  dtype=np.int64)
    if not np.array_equal(got, np.asarray(sums, np.int64)):
        raise OSError(errno.EIO, "write failed: it reads back different from what was "
                      "written (an incomplete file)", str(path))
