"""Counting a mask's values or colours over a decimated read, against classes.json.

Why a tally object: a folder's masks are read one by one (at most ``mask_files`` of
them), and the report needs the totals over all of them: which values or colours occur,
which of them classes.json does not declare, and in which files.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from satseg_jax.classes import ClassSet, pack_colours
from satseg_jax.inspection.common import (
    MAX_ENTRIES,
    MAX_LISTED,
    hex_rgb,
    is_int_dtype,
    read_decimated,
    unpack_hex,
)
from satseg_jax.raster.masks import palette_lut


class MaskTally:
    """Distinct mask values / colours with pixel counts, summed over mask files.

    Three kinds of mask are told apart because classes.json declares them differently:
    RGB(A) uint8 files carry colours, palette files carry indices *and* colours (which of
    the two satseg patches maps depends on whether classes.json declares colours), and
    plain integer files carry values (their nodata value is counted apart).
    """

    def __init__(self, classes: ClassSet | None = None) -> None:
        # A file's nodata value is "no label", counted apart, unless classes.json declares
        # it as a class or ignore value (satseg patches' rule too).
        self.declared = (set() if classes is None else
                         {c.value for c in classes.classes} | set(classes.ignore_values))
        self.kinds: Counter = Counter()
        self.rgb: Counter = Counter()          # packed colour -> px
        self.pal_colours: Counter = Counter()  # packed colour -> px
        self.pal_values: Counter = Counter()   # palette index -> px
        self.values: Counter = Counter()       # index value -> px
        self.files: Counter = Counter()        # ("colour", key) / ("value", v) -> files
        self.colour_values: dict[int, set] = {}
        self.nodata_pixels = 0
        self.files_read = 0
        self.decimated = False
        self.skipped: list[dict] = []

    def add(self, ds, path: Path, max_side: int, raw: np.ndarray | None = None,
            decimated: bool = False) -> str | None:
        """Count one mask file; return its kind (rgb/palette/index) or None if it is not
        a mask (recorded in ``skipped`` with the reason)."""
        dtype = ds.dtypes[0]
        if ds.count in (3, 4) and dtype == "uint8":
            kind = "rgb"
        elif ds.count == 1 and is_int_dtype(dtype):
            kind = "palette" if palette_lut(ds) is not None else "index"
        else:
            self.skipped.append({"path": str(path), "reason": f"{ds.count} band(s) of {dtype}; "
                                 "a mask has 1 integer band or 3-4 uint8 bands (RGB)"})
            return None
        if raw is None:
            raw, decimated = read_decimated(ds, max_side, [1, 2, 3] if kind == "rgb" else [1])
        self.decimated |= decimated
        self.files_read += 1
        self.kinds[kind] += 1
        if kind == "rgb":
            u, c = np.unique(pack_colours(np.moveaxis(raw[:3], 0, -1)), return_counts=True)
            for k, n in zip(u.tolist(), c.tolist()):
                self.rgb[k] += n
                self.files["colour", k] += 1
        elif kind == "palette":
            lut = palette_lut(ds)
            u, c = np.unique(self._drop_nodata(ds, raw[0]), return_counts=True)
            for v, n in zip(u.tolist(), c.tolist()):
                k = int(lut[min(max(v, 0), len(lut) - 1)])
                self.pal_values[v] += n
                self.pal_colours[k] += n
                self.files["colour", k] += 1
                self.colour_values.setdefault(k, set()).add(v)
        else:
            u, c = np.unique(self._drop_nodata(ds, raw[0]), return_counts=True)
            for v, n in zip(u.tolist(), c.tolist()):
                self.values[v] += n
                self.files["value", v] += 1
        return kind

    def _drop_nodata(self, ds, band: np.ndarray) -> np.ndarray:
        nd = ds.nodata
        if nd is None or not np.isfinite(nd) or not float(nd).is_integer() \
                or int(nd) in self.declared:
            return band
        hit = band == nd
        self.nodata_pixels += int(hit.sum())
        return band[~hit]

    def distinct(self) -> int:
        return len(set(self.rgb) | set(self.pal_colours)) + len(self.values)

    def report(self, classes: ClassSet | None) -> dict:
        colours = self.rgb + self.pal_colours
        total = sum(colours.values()) + sum(self.values.values())
        names_c, names_v = _class_names(classes)
        col_entries = []
        for k, n in colours.most_common():
            e = {"colour": unpack_hex(k), "pixels": n, "share": round(n / max(total, 1), 6),
                 "files": self.files["colour", k]}
            vals = sorted(self.colour_values.get(k, ()))
            if vals:
                e["palette_values"] = vals
            name = names_c.get(e["colour"])
            if name is None and classes is not None and not classes.colours_declared \
                    and len(vals) == 1:
                name = names_v.get(vals[0])
            if name is not None:
                e["class"] = name
            col_entries.append(e)
        val_entries = []
        for v, n in self.values.most_common():
            e = {"value": v, "pixels": n, "share": round(n / max(total, 1), 6),
                 "files": self.files["value", v]}
            if v in names_v:
                e["class"] = names_v[v]
            val_entries.append(e)
        out = {
            "kinds": dict(self.kinds),
            "files_read": self.files_read,
            "decimated": self.decimated,
            "pixels_counted": total,
            "nodata_pixels": self.nodata_pixels,
            "distinct_colours": len(col_entries),
            "distinct_values": len(val_entries),
            "colours": col_entries[:MAX_ENTRIES],
            "values": val_entries[:MAX_ENTRIES],
        }
        if self.skipped:
            out["not_masks"] = {"count": len(self.skipped), "first": self.skipped[:MAX_LISTED]}
        if classes is not None:
            out["undeclared"] = self.undeclared(classes)
        return out

    def undeclared(self, classes: ClassSet) -> list[dict]:
        """Values/colours classes.json does not declare (satseg patches would refuse
        them), largest first. Palette masks are checked by colour when every class
        declares one (how satseg patches decodes them), else by index value."""
        ok_colours = {int(pack_colours(np.array(c.colour, np.uint8)))
                      for c in classes.classes if c.colour_declared}
        ok_colours |= {int(pack_colours(np.array(c, np.uint8))) for c in classes.ignore_colours}
        ok_values = {c.value for c in classes.classes} | set(classes.ignore_values)
        bad_c: Counter = Counter({k: n for k, n in self.rgb.items() if k not in ok_colours})
        bad_v: Counter = Counter({v: n for v, n in self.values.items() if v not in ok_values})
        if classes.colours_declared:
            bad_c.update({k: n for k, n in self.pal_colours.items() if k not in ok_colours})
        else:
            bad_v.update({v: n for v, n in self.pal_values.items() if v not in ok_values})
        out = [{"colour": unpack_hex(k), "pixels": n} for k, n in bad_c.items()]
        out += [{"value": v, "pixels": n} for v, n in bad_v.items()]
        return sorted(out, key=lambda e: -e["pixels"])[:MAX_ENTRIES]


def _class_names(classes: ClassSet | None) -> tuple[dict, dict]:
    """colour hex -> class name and source value -> class name ('ignore' for ignores)."""
    if classes is None:
        return {}, {}
    by_colour = {hex_rgb(c.colour): c.name for c in classes.classes if c.colour_declared}
    by_colour.update({hex_rgb(c): "ignore" for c in classes.ignore_colours})
    by_value = {c.value: c.name for c in classes.classes}
    by_value.update({v: "ignore" for v in classes.ignore_values})
    return by_colour, by_value
