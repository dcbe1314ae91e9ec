"""``satseg inspect PATH``: what a scene, image/mask folder, patches folder or dataset holds.

Importing a labelled set goes wrong in ways that are cheap to see beforehand and
expensive to find afterwards: a mask colour nobody declared, one image without a mask, a
JPEG mask, a folder that mixes sizes or band counts, a CRS on half of the files. This
module answers those questions before ``satseg patches`` runs, and it must answer them
in seconds on a folder of thousands of tiles or a scene of many gigabytes, so:

- folders are read by **headers only** (size, bands, dtype, CRS, nodata), at most
  ``max_files`` files per side, evenly spaced over the sorted listing so every region
  folder is represented, and the report says when it stopped;
- pixels are read **decimated** (``ds.read(out_shape=...)``, nearest: GDAL uses the
  overviews when there are any and never holds the full raster), at most
  ``scene_side`` px on the long side of a scene and ``mask_side`` px per mask file, over
  at most ``mask_files`` mask files; counts taken that way are marked as sampled;
- one unreadable file in a folder is listed, not fatal: the user wants the whole
  picture. A PATH that does not exist or holds nothing readable is a SatsegError.

The library returns a plain JSON-able dict (``satseg inspect --json`` prints it as is);
:func:`satseg_jax.inspection.text.format_inspection` turns it into the text the CLI
prints by default. This module holds what every inspector shares: the limits above, a
quiet open, decimated reads, JSON numbers and short CRS names.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from satseg_jax.classes import hex_colour
from satseg_jax.errors import SatsegError
from satseg_jax.raster.io import open_raster
from satseg_jax.raster.masks import quiet_georeference

DEFAULT_MAX_FILES = 2000
SCENE_SIDE = 1024   # longest side of the decimated read of a single raster
MASK_FILES = 100    # mask files whose pixels are counted in a folder
MASK_SIDE = 512     # longest side of the decimated read of each of those mask files
MAX_LISTED = 10     # file names / sizes listed in a report
# A one-band integer raster with more distinct values than this is data (a DEM, a
# grey-scale image), not a label mask; its values are not listed.
MAX_MASK_VALUES = 64
# Distinct values/colours kept in the JSON report (a JPEG mask can hold thousands).
MAX_ENTRIES = 256
WILDCARD = re.compile(r"[*?\[]")




@contextlib.contextmanager
def open_quiet(path: Path) -> Iterator:
    """Open a raster read-only without NotGeoreferencedWarning (plain PNG/JPEG tiles are
    expected here); a file GDAL cannot read is a SatsegError naming it."""
    with quiet_georeference(), open_raster(path) as ds:
        yield ds


def hex_rgb(rgb) -> str:
    return hex_colour(tuple(int(x) for x in rgb[:3]))


def unpack_hex(key: int) -> str:
    if key >= 1 << 24:  # an index the colour table does not define (masks.palette_lut)
        return "undefined"
    return hex_rgb(((key >> 16) & 255, (key >> 8) & 255, key & 255))


def json_number(x):
    """A number for JSON: ints stay ints, integral floats become ints, NaN -> "nan"."""
    if x is None:
        return None
    if isinstance(x, (np.integer, int)) and not isinstance(x, bool):
        return int(x)
    x = float(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return int(x) if x.is_integer() and abs(x) < 2**53 else x


_CRS_CACHE: dict[str, str] = {}


def crs_short(crs) -> str | None:
    """'EPSG:32633' when the CRS has an authority code, else its WKT name; None without
    one. Accepts a rasterio CRS or a WKT/user string (patches.json, satseg_dataset.json).
    Cached by WKT: identifying a CRS is the slowest part of reading a GeoTIFF header."""
    if crs is None or not crs:  # an empty rasterio CRS is falsy
        return None
    from rasterio.crs import CRS

    key = crs.to_wkt() if hasattr(crs, "to_wkt") else str(crs)
    if key not in _CRS_CACHE:
        try:
            obj = crs if isinstance(crs, CRS) else CRS.from_user_input(str(crs))
            auth = obj.to_authority()
            if auth:
                short = f"{auth[0]}:{auth[1]}"
            else:
                m = re.match(r'\s*\w+\["([^"]*)"', obj.to_wkt())
                short = m.group(1) if m else obj.to_string()[:60]
        except Exception:  # noqa: BLE001 - an odd CRS string is reported as written
            short = str(crs)[:60]
        _CRS_CACHE[key] = short
    return _CRS_CACHE[key]


def is_georeferenced(ds) -> bool:
    return ds.crs is not None or not ds.transform.is_identity


def read_decimated(ds, max_side: int, indexes=None) -> tuple[np.ndarray, bool]:
    """(bands, h, w) pixels with the long side at most ``max_side``; True when decimated.
    Nearest resampling: a mask keeps only the values it really holds."""
    from rasterio.errors import RasterioError

    indexes = list(indexes or range(1, ds.count + 1))
    h, w = ds.height, ds.width
    try:
        if max(h, w) <= max_side:
            return ds.read(indexes), False
        f = max(h, w) / max_side
        shape = (len(indexes), max(1, round(h / f)), max(1, round(w / f)))
        return ds.read(indexes, out_shape=shape), True
    except RasterioError as e:  # a truncated or corrupt file: name it, keep one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SatsegError(f"{ds.name}: pixels cannot be read ({first})") from None


def evenly(items: list, n: int) -> list:
    """At most ``n`` items spread over the whole list (first and last included), so a
    capped sample still covers every region folder of a sorted listing."""
    if len(items) <= n:
        return list(items)
    idx = np.unique(np.linspace(0, len(items) - 1, n).round().astype(int))
    return [items[i] for i in idx]


def is_int_dtype(dtype: str) -> bool:
    return np.issubdtype(np.dtype(dtype), np.integer)
