"""Finished class maps on disk: a tiled GeoTIFF rewritten as a Cloud-Optimised GeoTIFF
(georeferenced scenes) or as a palette PNG (plain images).

Why a rewrite: the map is written strip by strip into a tiled GeoTIFF (memory bounded by
a strip, whatever the scene size), and neither the COG nor the PNG driver can be written
by windows; both are made by one sequential copy at the end.
"""

from __future__ import annotations

from pathlib import Path


def to_cog(path: Path) -> None:
    """Rewrite a tiled GeoTIFF in place as a Cloud-Optimised GeoTIFF (with overviews)."""
    from rasterio.shutil import copy as rio_copy

    cog = path.with_name(path.name + ".cog")
    try:
        rio_copy(path, cog, driver="COG", compress="DEFLATE", overview_resampling="nearest")
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
        with rasterio.Env(GDAL_PAM_ENABLED="NO"):
            rio_copy(path, png, driver="PNG")
        png.replace(path)
    finally:
        if png.exists():
            png.unlink()
