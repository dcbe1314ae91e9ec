"""Decode label mask files of labelled datasets into class ids, window by window.

Published sets store labels three ways, and all three are read here:

- **index masks**: one integer band of class values (any integer dtype), mapped through
  ``classes.json`` (``value`` → ``id``, ``ignore`` values → 255);
- **RGB masks**: three (or four, RGBA) uint8 bands, one colour per class;
- **palette masks**: one band of palette indices with a colour table (``P``-mode PNG,
  paletted TIFF), decoded through the palette to colours, then to classes.

A value or colour ``classes.json`` does not declare is an error listing every such
value/colour with its pixel count over the whole file; labels are never mapped by
guesswork. JPEG (lossy) masks are refused: compression smears class colours at every
border, so a mask read back from JPEG holds colours nobody drew. With a
``colour_tolerance`` the user accepts the nearest declared colour (or value) within that
distance instead, knowingly.
"""

from __future__ import annotations

import functools
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from satseg_jax.classes import IGNORE_LABEL, ClassSet, pack_colours
from satseg_jax.errors import SatsegError
from satseg_jax.raster.io import block_windows, read_window
from satseg_jax.raster.windows import Win, to_rasterio

MASK_MODES = ("auto", "index", "colour")
UNDEFINED = np.uint32(1 << 24)  # palette keys above every 0xRRGGBB colour
LOSSY_DRIVERS = ("JPEG", "WEBP")


@contextmanager
def quiet_georeference() -> Iterator[None]:
    """Silence rasterio's NotGeoreferencedWarning: plain PNG/JPEG tiles are expected."""
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        yield


def palette_lut(ds) -> np.ndarray | None:
    """Band 1's colour table of a one-band raster as an (N >= 256, 3) uint32 lookup of
    packed colours; None without one (rasterio raises ValueError then). Indices the
    table does not define map to ``UNDEFINED + index``, a key no colour can have, so
    they surface as undeclared instead of being read as black."""
    if ds.count != 1:
        return None
    try:
        cmap = ds.colormap(1)
    except ValueError:
        return None
    size = max(256, max(cmap) + 1, 1 << (8 * np.dtype(ds.dtypes[0]).itemsize)
               if np.dtype(ds.dtypes[0]).itemsize <= 2 else 0)
    lut = UNDEFINED + np.arange(size, dtype=np.uint32)
    for k, v in cmap.items():
        lut[k] = pack_colours(np.array(v[:3], np.uint8))
    return lut


@functools.lru_cache(maxsize=4)
def colour_tables(classes: ClassSet) -> tuple[np.ndarray, np.ndarray] | None:
    """(class id, declared?) indexed by a packed colour key (``0xRRGGBB``, or
    ``UNDEFINED + index`` for a palette index without colour, never declared); None when
    two entries share a colour (the per-value lookup reports that).

    Why: one table gather per pixel decodes a colour mask at memory speed, where sorting
    each window's colours (``np.unique``) cost more than decoding the JPEG it came from.
    32 MiB, built once per class set.
    """
    entries = [(c.colour, c.id) for c in classes.classes]
    entries += [(c, IGNORE_LABEL) for c in classes.ignore_colours]
    if len({c for c, _ in entries}) != len(entries):
        return None
    ids = np.full(int(UNDEFINED) + (1 << 16), IGNORE_LABEL, np.uint8)
    known = np.zeros(ids.shape, bool)
    for colour, cid in entries:
        k = int(pack_colours(np.array(colour, np.uint8)))
        ids[k], known[k] = cid, True
    return ids, known


class MaskReader:
    """Reads one mask file as class ids (uint8, 255 = ignore) for tiling windows.

    ``mode``: ``auto`` (RGB → colours; a palette band → colours when every class in
    classes.json declares a colour, else its indices are values; a plain band → values),
    ``index`` or ``colour`` to force one reading.
    """

    def __init__(self, ds, path: Path, classes: ClassSet, mode: str = "auto",
                 colour_tolerance: int | None = None) -> None:
        if mode not in MASK_MODES:
            raise SatsegError(f"--mask-mode {mode!r}: expected one of {', '.join(MASK_MODES)}")
        self.ds, self.path, self.classes = ds, Path(path), classes
        # the tolerance is for lossy masks only: a lossless mask's colours are exact, and
        # an off colour there is a labelling error to report, not noise to snap away
        self.tolerance = colour_tolerance if ds.driver in LOSSY_DRIVERS else None
        if ds.driver in LOSSY_DRIVERS and colour_tolerance is None:
            raise SatsegError(
                f"{path}: mask is {ds.driver}, a lossy format: compression changes pixel "
                "values along every class border, so labels would be wrong. Export the masks "
                "as PNG or GeoTIFF, or pass --colour-tolerance N to map each pixel to the "
                "nearest declared colour (or value) within N")
        dtype = np.dtype(ds.dtypes[0])
        self.palette = palette_lut(ds)
        if ds.count in (3, 4):
            if mode == "index":
                raise SatsegError(f"{path}: {ds.count} bands; an index mask has one band of "
                                  "class values (drop --mask-mode index for colour masks)")
            if dtype != np.uint8:
                raise SatsegError(f"{path}: {ds.count}-band mask of {dtype}; colour-coded "
                                  "masks are 8-bit RGB(A)")
            self.kind = "colours"
        elif ds.count == 1:
            if not np.issubdtype(dtype, np.integer):
                raise SatsegError(f"{path}: mask dtype {dtype}; masks hold integer class "
                                  "values or colours")
            if mode == "colour" and self.palette is None:
                raise SatsegError(f"{path}: --mask-mode colour, but this one-band mask has no "
                                  "colour table; give RGB or palette masks, or use index mode")
            use_palette = self.palette is not None and (
                mode == "colour" or (mode == "auto" and classes.colours_declared))
            self.kind = "colours" if use_palette else "values"
        else:
            raise SatsegError(f"{path}: {ds.count} bands; a mask has 1 band (class values or "
                              "palette indices) or 3-4 bands (RGB colours)")
        if self.kind == "colours" and not classes.colours_declared:
            missing = [c.name for c in classes.classes if not c.colour_declared]
            raise SatsegError(f"{path}: colour-coded mask, but {classes.source} gives no "
                              f"\"colour\" for {', '.join(missing)}; add each class's colour")
        self.nodata = None
        if self.kind == "values" and ds.nodata is not None and np.isfinite(ds.nodata):
            declared = {c.value for c in classes.classes} | set(classes.ignore_values)
            if ds.nodata not in declared:  # a declared class wins over the file's tag
                self.nodata = ds.nodata

    def _keys(self, raw: np.ndarray) -> np.ndarray:
        """Raw window (bands, h, w) -> per-pixel keys (values or packed colours)."""
        if self.kind == "values":
            return raw[0]
        if self.palette is not None and raw.shape[0] == 1:
            return self.palette[raw[0]]
        return pack_colours(np.moveaxis(raw[:3], 0, -1))

    def _decode(self, keys: np.ndarray, what: str) -> np.ndarray:
        """Class ids of ``keys``: a table gather for exact masks (undeclared keys fall
        through to the lookup, which reports them); per distinct key with a tolerance."""
        if self.tolerance is None and self.kind == "values":
            return self.classes.value_to_id(keys, what)
        tables = colour_tables(self.classes) if self.tolerance is None else None
        if tables is not None and keys.dtype == np.uint32 and (
                self.palette is None or len(self.palette) <= 1 << 16):
            ids, known = tables
            if known[keys].all():
                return ids[keys]
        uniq, inv = np.unique(keys, return_inverse=True)
        return self.classes.lookup(self.kind, uniq, inv.reshape(keys.shape), what,
                                    self.tolerance)

    def read(self, win: Win, size: int, valid: np.ndarray) -> np.ndarray:
        """Class ids of ``win`` padded to size×size; 255 where ``valid`` is False."""
        raw = read_window(self.ds, to_rasterio(win), self.path)
        keys = self._keys(raw)
        out = np.full((size, size), IGNORE_LABEL, np.uint8)
        sub = valid[:win.height, :win.width].copy()
        if self.nodata is not None:
            sub &= keys != self.nodata
        if self.kind == "colours" and raw.shape[0] == 4:
            sub &= raw[3] != 0  # fully transparent RGBA pixels are unlabelled
        try:
            if sub.all():  # the usual case: no boolean gather and scatter
                out[:win.height, :win.width] = self._decode(keys, str(self.path))
            else:
                out[:win.height, :win.width][sub] = self._decode(keys[sub], str(self.path))
        except SatsegError:
            self._raise_for_whole_file()
            raise
        return out

    def _raise_for_whole_file(self) -> None:
        """Count every undeclared value/colour over the whole file (strip by strip, so
        memory stays bounded) and raise one error with the totals."""
        totals: Counter = Counter()
        for w in block_windows(self.ds.height, self.ds.width):
            raw = read_window(self.ds, w, self.path)
            keys = self._keys(raw)
            keep = np.ones(keys.shape, bool)
            if self.nodata is not None:
                keep &= keys != self.nodata
            if self.kind == "colours" and raw.shape[0] == 4:
                keep &= raw[3] != 0
            keys = keys[keep]
            u, c = np.unique(keys, return_counts=True)
            totals.update(dict(zip(u.tolist(), c.tolist())))
        uniq = np.array(sorted(totals))
        self.classes.check_declared(self.kind, uniq, np.array([totals[k] for k in uniq]),
                                    str(self.path), self.tolerance)
