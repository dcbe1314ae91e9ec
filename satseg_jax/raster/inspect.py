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
:func:`format_inspection` turns it into the text the CLI prints by default.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from satseg_jax.classes import ClassSet, hex_colour, load_classes, pack_colours
from satseg_jax.datasets.pairing import (
    LOSSY_SUFFIXES,
    RASTER_SUFFIXES,
    expand_folders,
    find_pairs,
)
from satseg_jax.errors import SatsegError
from satseg_jax.raster.masks import palette_lut, quiet_georeference

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
_WILDCARD = re.compile(r"[*?\[]")


# ----------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _open(path: Path) -> Iterator:
    """Open a raster read-only without NotGeoreferencedWarning (plain PNG/JPEG tiles are
    expected here); a file GDAL cannot read is a SatsegError naming it."""
    from satseg_jax.raster.compose import open_raster

    with quiet_georeference(), open_raster(path) as ds:
        yield ds


def _hex(rgb) -> str:
    return hex_colour(tuple(int(x) for x in rgb[:3]))


def _unpack_hex(key: int) -> str:
    if key >= 1 << 24:  # an index the colour table does not define (masks.palette_lut)
        return "undefined"
    return _hex(((key >> 16) & 255, (key >> 8) & 255, key & 255))


def _num(x):
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


def _georeferenced(ds) -> bool:
    return ds.crs is not None or not ds.transform.is_identity


def _read_decimated(ds, max_side: int, indexes=None) -> tuple[np.ndarray, bool]:
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


def _evenly(items: list, n: int) -> list:
    """At most ``n`` items spread over the whole list (first and last included), so a
    capped sample still covers every region folder of a sorted listing."""
    if len(items) <= n:
        return list(items)
    idx = np.unique(np.linspace(0, len(items) - 1, n).round().astype(int))
    return [items[i] for i in idx]


def _is_int(dtype: str) -> bool:
    return np.issubdtype(np.dtype(dtype), np.integer)


# ----------------------------------------------------------------------------- masks


class _MaskTally:
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
        elif ds.count == 1 and _is_int(dtype):
            kind = "palette" if palette_lut(ds) is not None else "index"
        else:
            self.skipped.append({"path": str(path), "reason": f"{ds.count} band(s) of {dtype}; "
                                 "a mask has 1 integer band or 3-4 uint8 bands (RGB)"})
            return None
        if raw is None:
            raw, decimated = _read_decimated(ds, max_side, [1, 2, 3] if kind == "rgb" else [1])
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
            e = {"colour": _unpack_hex(k), "pixels": n, "share": round(n / max(total, 1), 6),
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
        out = [{"colour": _unpack_hex(k), "pixels": n} for k, n in bad_c.items()]
        out += [{"value": v, "pixels": n} for v, n in bad_v.items()]
        return sorted(out, key=lambda e: -e["pixels"])[:MAX_ENTRIES]


def _class_names(classes: ClassSet | None) -> tuple[dict, dict]:
    """colour hex -> class name and source value -> class name ('ignore' for ignores)."""
    if classes is None:
        return {}, {}
    by_colour = {_hex(c.colour): c.name for c in classes.classes if c.colour_declared}
    by_colour.update({_hex(c): "ignore" for c in classes.ignore_colours})
    by_value = {c.value: c.name for c in classes.classes}
    by_value.update({v: "ignore" for v in classes.ignore_values})
    return by_colour, by_value


# ----------------------------------------------------------------------------- one raster


def inspect_raster(path: str | Path, as_mask: bool = False, classes: ClassSet | None = None,
                   scene_side: int = SCENE_SIDE) -> dict:
    """One raster: header, layout, sampled band statistics and, when it looks like a mask
    (one integer band with a colour table or few values; RGB uint8 with ``as_mask``),
    its distinct values or colours with pixel counts."""
    path = Path(path)
    with _open(path) as ds:
        if ds.count == 0:
            raise SatsegError(f"{path}: the raster has no bands")
        geo = _georeferenced(ds)
        profile = ds.profile
        try:
            overviews = ds.overviews(1)
        except Exception:  # noqa: BLE001 - some drivers cannot say; not worth failing for
            overviews = []
        comp = ds.compression
        report = {
            "kind": "raster",
            "path": str(path),
            "driver": ds.driver,
            "width": ds.width,
            "height": ds.height,
            "count": ds.count,
            "dtypes": list(ds.dtypes),
            "band_names": list(ds.descriptions),
            "crs": crs_short(ds.crs),
            "georeferenced": geo,
            "transform": [float(x) for x in list(ds.transform)[:6]] if geo else None,
            "pixel_size": [float(ds.res[0]), float(ds.res[1])] if geo else None,
            "nodata": _num(ds.nodata),
            "layout": {
                "block": list(ds.block_shapes[0]) if ds.block_shapes else None,
                "tiled": bool(profile.get("tiled", False)),
                "compression": comp.value.lower() if comp is not None else None,
                "overviews": list(overviews),
                "interleave": ds.interleaving.value.lower() if ds.interleaving else None,
            },
            "colour_interpretation": [c.name for c in ds.colorinterp],
            "palette": palette_lut(ds) is not None,
        }
        data, decimated = _read_decimated(ds, scene_side)
        report["sample"] = {"width": int(data.shape[2]), "height": int(data.shape[1]),
                            "decimated": decimated}
        report["bands"] = _band_stats(ds, data)
        mask = None
        is_int = _is_int(ds.dtypes[0])
        if (ds.count == 1 and is_int) or (as_mask and ds.count in (3, 4)
                                         and ds.dtypes[0] == "uint8"):
            tally = _MaskTally(classes)
            raw = data[:3] if ds.count > 1 else data[:1]
            tally.add(ds, path, scene_side, raw=raw, decimated=decimated)
            if as_mask or report["palette"] or tally.distinct() <= MAX_MASK_VALUES:
                mask = tally.report(classes)
        report["mask"] = mask
    return report


def _band_stats(ds, data: np.ndarray) -> list[dict]:
    """Per band min/max/mean of the valid sampled pixels and the nodata fraction (pixels
    equal to the band's nodata, or NaN)."""
    out = []
    names = ds.descriptions
    for i in range(data.shape[0]):
        a = data[i]
        valid = np.ones(a.shape, bool)
        if a.dtype.kind == "f":
            valid &= np.isfinite(a)
        nd = ds.nodatavals[i] if i < len(ds.nodatavals) else None
        if nd is not None and not math.isnan(nd):
            valid &= a != np.asarray(nd).astype(a.dtype)
        n = int(valid.sum())
        vals = a[valid]
        out.append({
            "band": i + 1,
            "name": names[i] if i < len(names) else None,
            "dtype": ds.dtypes[i],
            "min": _num(vals.min()) if n else None,
            "max": _num(vals.max()) if n else None,
            "mean": round(float(vals.mean(dtype=np.float64)), 4) if n else None,
            "nodata_fraction": round(1.0 - n / max(a.size, 1), 6),
        })
    return out


# ----------------------------------------------------------------------------- folders


def _list_rasters(root: Path) -> tuple[list[Path], Counter]:
    """Raster files under ``root`` (recursive, hidden entries skipped, sorted) and the
    suffix counts of the other files, so a folder of .npy files says what it holds."""
    files: list[Path] = []
    others: Counter = Counter()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(n for n in dirnames if not n.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            if name.lower().endswith(RASTER_SUFFIXES):
                files.append(Path(dirpath) / name)
            else:
                others[Path(name).suffix.lower() or "(none)"] += 1
    return files, others


def _headers(files: list[Path], max_files: int) -> tuple[dict, dict[Path, dict]]:
    """Header summary of ``files`` (at most ``max_files`` opened, evenly spaced), and the
    headers read, by path."""
    opened = _evenly(files, max_files)
    heads: dict[Path, dict] = {}
    unreadable = []
    for f in opened:
        try:
            with _open(f) as ds:
                heads[f] = {"width": ds.width, "height": ds.height, "count": ds.count,
                            "dtype": ",".join(dict.fromkeys(ds.dtypes)),
                            "crs": crs_short(ds.crs), "nodata": _num(ds.nodata),
                            "palette": palette_lut(ds) is not None, "driver": ds.driver}
        except SatsegError as e:
            unreadable.append({"path": str(f), "error": str(e)})
    sizes = Counter((h["width"], h["height"]) for h in heads.values())
    bands = Counter((h["count"], h["dtype"]) for h in heads.values())
    crs = Counter(h["crs"] or "none" for h in heads.values())
    nodata = Counter(json.dumps(h["nodata"]) for h in heads.values())
    summary = {
        "files": len(files),
        "headers_read": len(opened),
        "stopped": len(opened) < len(files),
        "suffixes": dict(Counter(f.suffix.lower() for f in files).most_common()),
        "distinct_sizes": len(sizes),
        "sizes": [{"width": w, "height": h, "files": n}
                  for (w, h), n in sizes.most_common(MAX_LISTED)],
        "width_range": [min(w for w, _ in sizes), max(w for w, _ in sizes)] if sizes else None,
        "height_range": [min(h for _, h in sizes), max(h for _, h in sizes)] if sizes else None,
        "bands": [{"count": c, "dtype": d, "files": n} for (c, d), n in bands.most_common()],
        "crs": [{"crs": c, "files": n} for c, n in crs.most_common()],
        "nodata": [{"nodata": json.loads(v), "files": n} for v, n in nodata.most_common()],
        "palette_files": sum(h["palette"] for h in heads.values()),
        "unreadable": {"count": len(unreadable), "first": unreadable[:MAX_LISTED]},
    }
    return summary, heads


def _folders(spec: str, what: str) -> list[Path]:
    """The folder(s) ``spec`` names: one folder, or a glob of folders."""
    if _WILDCARD.search(spec):
        return list(expand_folders(spec, what).values())
    p = Path(spec)
    if not p.exists():
        raise SatsegError(f"{what} {spec}: not found")
    if not p.is_dir():
        raise SatsegError(f"{what} {spec}: not a folder (give a folder, a glob of folders in "
                          "quotes, or a single raster as PATH)")
    return [p]


def _side_files(spec: str, what: str) -> tuple[list[Path], Counter]:
    files: list[Path] = []
    others: Counter = Counter()
    for d in _folders(spec, what):
        f, o = _list_rasters(d)
        files += f
        others += o
    return files, others


def _sample_masks(files: list[Path], classes: ClassSet | None, mask_files: int,
                  mask_side: int) -> dict:
    tally = _MaskTally(classes)
    chosen = _evenly(files, mask_files)
    unreadable = 0
    for f in chosen:
        try:
            with _open(f) as ds:
                tally.add(ds, f, mask_side)
        except SatsegError:
            unreadable += 1  # a broken file must not hide the counts of the others
    out = tally.report(classes)
    out["unreadable"] = unreadable
    out["files_total"] = len(files)
    out["files_sampled"] = len(chosen)
    out["max_side"] = mask_side
    out["sampled"] = len(chosen) < len(files) or tally.decimated
    return out


def inspect_folder(path: str, masks: str | None = None, pair: str | None = None,
                   classes: ClassSet | None = None, max_files: int = DEFAULT_MAX_FILES,
                   mask_files: int = MASK_FILES, mask_side: int = MASK_SIDE) -> dict:
    """A folder (or glob of folders) of images, optionally with its masks.

    Headers only for the images; with ``masks`` the files are paired exactly as
    ``satseg patches --images --masks`` pairs them (datasets.pairing), pairs whose image
    and mask sizes differ are listed, and the mask values/colours are counted over a
    bounded sample. Without ``masks``, a folder whose files all look like masks (one
    integer band) gets its values counted too.
    """
    mask_label = f"--masks {masks}"
    if pair and masks is None:
        masks = path  # --pair alone: images and masks share one folder (DeepGlobe)
        mask_label = str(path)
    report: dict = {"kind": "folder", "path": str(path), "masks_path": masks, "pair": pair,
                    "max_files": max_files, "warnings": []}
    img_files, img_other = _side_files(str(path), "PATH")
    n_img = len(img_files)
    mask_list: list[Path] = []
    pairing = None
    if masks is not None:
        mask_all, mask_other = _side_files(str(masks), "--masks")
        try:
            pairing = find_pairs(path, masks, pair)
        except SatsegError as e:
            # Still worth a report: the error (an ambiguous stem...) plus both sides.
            report["pairing"] = {"error": str(e)}
            mask_list = mask_all
            in_masks = set(mask_all)
            img_files = [f for f in img_files if f not in in_masks] or img_files
        else:
            img_files = sorted([p.image for p in pairing.pairs] + list(pairing.unpaired_images))
            mask_list = sorted([p.mask for p in pairing.pairs] + list(pairing.unpaired_masks))
            report["pairing"] = {
                "pairs": len(pairing.pairs),
                "unpaired_images": len(pairing.unpaired_images),
                "unpaired_masks": len(pairing.unpaired_masks),
                "unpaired_images_first": [str(p) for p in pairing.unpaired_images[:MAX_LISTED]],
                "unpaired_masks_first": [str(p) for p in pairing.unpaired_masks[:MAX_LISTED]],
            }
        if not mask_list:
            why = (f"none of its {len(mask_all)} raster file(s) matches --pair {pair!r}"
                   if mask_all and pair else
                   f"no raster files found ({_other_text(mask_other)})")
            raise SatsegError(f"{mask_label}: {why}")
    if not img_files:
        why = (f"none of its {n_img} raster file(s) matches --pair {pair!r}" if n_img and pair
               else f"no raster files found ({_other_text(img_other)}); satseg reads "
               f"{', '.join(RASTER_SUFFIXES)}")
        raise SatsegError(f"{path}: {why}")
    report["images"], img_heads = _headers(img_files, max_files)
    if img_other:
        report["images"]["other_files"] = dict(img_other.most_common())
    if not img_heads:
        raise SatsegError(f"{path}: none of the {len(img_files)} raster file(s) opened is "
                          f"readable (e.g. {report['images']['unreadable']['first'][0]['error']})")
    if masks is not None:
        report["masks"], mask_heads = _headers(mask_list, max_files)
        report["size_mismatches"] = _size_mismatches(pairing, img_heads, mask_heads)
        lossy = [f for f in mask_list if f.suffix.lower() in LOSSY_SUFFIXES]
        if lossy:
            report["warnings"].append(
                f"{len(lossy)} mask file(s) are lossy ({lossy[0].suffix}, e.g. {lossy[0]}): "
                "satseg patches refuses them unless --colour-tolerance N is given")
        report["mask_values"] = _sample_masks(mask_list, classes, mask_files, mask_side)
    elif all(h["count"] == 1 and _is_int(h["dtype"]) for h in img_heads.values()):
        mv = _sample_masks(img_files, classes, mask_files, mask_side)
        if report["images"]["palette_files"] or mv["distinct_values"] <= MAX_MASK_VALUES:
            report["mask_values"] = mv
            report["warnings"].append("every file has one integer band: counted as masks")
    if report["images"]["stopped"]:
        report["warnings"].append(
            f"read the headers of {report['images']['headers_read']} of "
            f"{report['images']['files']} images (--max-files {max_files}, evenly spaced)")
    return report


def _size_mismatches(pairing, img_heads: dict, mask_heads: dict) -> dict:
    """Pairs (both headers read) whose image and mask differ in size: satseg patches
    refuses them."""
    bad = []
    if pairing is not None:
        for p in pairing.pairs:
            hi, hm = img_heads.get(p.image), mask_heads.get(p.mask)
            if hi and hm and (hi["width"], hi["height"]) != (hm["width"], hm["height"]):
                bad.append({"image": str(p.image), "mask": str(p.mask),
                            "image_size": [hi["width"], hi["height"]],
                            "mask_size": [hm["width"], hm["height"]]})
    return {"count": len(bad), "first": bad[:MAX_LISTED]}


def _other_text(others: Counter) -> str:
    if not others:
        return "the folder is empty"
    return "only " + ", ".join(f"{n} {s}" for s, n in others.most_common(5)) + " file(s)"


# ----------------------------------------------------------------------------- satseg outputs


def inspect_dataset(root: str | Path) -> dict:
    """A dataset written by ``satseg build``: everything comes from satseg_dataset.json
    (no TensorFlow import, no record read)."""
    from satseg_jax.datasets.build import format_summary, load_dataset_info

    root = Path(root)
    info = load_dataset_info(root)
    split = {k: v for k, v in (info.get("split") or {}).items()
             if not isinstance(v, (dict, list)) or k == "fractions"}
    report = {
        "kind": "dataset",
        "path": str(root),
        "task": info.get("task", "segmentation"),
        "tfds_name": info.get("tfds_name"),
        "tfds_version": info.get("tfds_version"),
        "bands": info.get("bands"),
        "image_dtype": info.get("image_dtype"),
        "patch_size": info.get("patch_size"),
        "nodata": info.get("nodata"),
        "crs": crs_short(info.get("crs")),
        "class_names": info.get("class_names"),
        "num_examples": info.get("num_examples"),
        "class_pixel_counts": info.get("class_pixel_counts"),
        "ignored_pixel_counts": info.get("ignored_pixel_counts"),
        "split": split,
    }
    if info.get("class_example_counts"):
        report["class_example_counts"] = info["class_example_counts"]
    try:
        report["summary"] = format_summary(info)
    except (KeyError, TypeError, ValueError):  # an older info file: the fields above suffice
        report["summary"] = None
    return report


def inspect_patches(root: str | Path) -> dict:
    """A folder written by ``satseg patches``: patches.json, classes.json and the
    per-class pixel counts of index.csv (no patch file is opened)."""
    from satseg_jax.datasets.folder import read_patches_folder

    root = Path(root)
    try:
        meta = json.loads((root / "patches.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SatsegError(f"{root / 'patches.json'}: cannot read ({e})") from None
    if isinstance(meta, dict) and meta.get("task") == "classification":
        per_class = {d.name: sum(1 for f in d.iterdir() if f.suffix.lower() in RASTER_SUFFIXES)
                     for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")}
        return {"kind": "classification_patches", "path": str(root),
                "patches": sum(per_class.values()), "size": meta.get("size"),
                "bands": meta.get("bands"), "dtype": meta.get("dtype"),
                "crs": crs_short(meta.get("crs")), "patches_per_class": per_class}
    folder = read_patches_folder(root)
    totals: Counter = Counter()
    sources: set[str] = set()
    with open(root / "index.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        cols = [c for c in (reader.fieldnames or []) if c.startswith("count_")]
        has_source = "source" in (reader.fieldnames or [])
        for r in reader:
            for c in cols:
                with contextlib.suppress(TypeError, ValueError):
                    totals[c] += int(float(r[c]))
            if has_source:
                sources.add((r.get("source") or "").strip())
    labelled = sum(totals.get(f"count_{c.name}", 0) for c in folder.classes.classes)
    classes = [{"id": c.id, "name": c.name, "colour": _hex(c.colour),
                "pixels": totals.get(f"count_{c.name}", 0),
                "share": round(totals.get(f"count_{c.name}", 0) / max(labelled, 1), 6)}
               for c in folder.classes.classes]
    return {
        "kind": "patches",
        "path": str(root),
        "patches": len(folder.patches),
        "size": folder.size,
        "stride": folder.stride,
        "bands": folder.bands,
        "dtype": folder.dtype,
        "nodata": _num(folder.nodata),
        "crs": crs_short(folder.crs),
        "classes": classes,
        "ignored_pixels": totals.get("count_ignore", 0),
        "sources": len(sources) if has_source else None,
    }


# ----------------------------------------------------------------------------- entry point


def inspect_path(path: str | Path, masks: str | None = None, pair: str | None = None,
                 classes: str | Path | None = None, max_files: int = DEFAULT_MAX_FILES,
                 scene_side: int = SCENE_SIDE, mask_files: int = MASK_FILES,
                 mask_side: int = MASK_SIDE) -> dict:
    """Inspect ``path`` (a raster, a folder or glob of folders of images, a patches folder
    or a built dataset) and return a JSON-able report; its ``kind`` says which."""
    if max_files < 1:
        raise SatsegError(f"--max-files {max_files}: must be at least 1")
    class_set = load_classes(classes) if classes else None
    spec = str(path)
    if _WILDCARD.search(spec) and not Path(spec).exists():
        return inspect_folder(spec, masks, pair, class_set, max_files, mask_files, mask_side)
    p = Path(spec)
    if not p.exists():
        raise SatsegError(f"{p}: not found (give a raster, a folder of images, a patches "
                          "folder or a dataset folder)")
    if p.is_file():
        if pair:
            raise SatsegError("--pair works on folders; PATH is a single file")
        report = inspect_raster(p, classes=class_set, scene_side=scene_side)
        if masks:
            if not Path(masks).is_file():
                raise SatsegError(f"--masks {masks}: with a single raster PATH, give its mask "
                                  "file")
            report["mask_file"] = inspect_raster(masks, as_mask=True, classes=class_set,
                                                 scene_side=scene_side)
            m = report["mask_file"]
            if (m["width"], m["height"]) != (report["width"], report["height"]):
                report.setdefault("warnings", []).append(
                    f"mask {masks} is {m['width']}x{m['height']} px, the image "
                    f"{report['width']}x{report['height']}: satseg patches refuses the pair")
        return report
    output = (p / "satseg_dataset.json").is_file() or (p / "patches.json").is_file()
    if output and (masks or pair):
        raise SatsegError(f"{p} was written by satseg (patches or build): --masks/--pair "
                          "apply to folders of source images and a single raster only")
    if (p / "satseg_dataset.json").is_file():
        return inspect_dataset(p)
    if (p / "patches.json").is_file():
        return inspect_patches(p)
    return inspect_folder(spec, masks, pair, class_set, max_files, mask_files, mask_side)


# ----------------------------------------------------------------------------- text


def format_inspection(report: dict) -> str:
    """The report as the text ``satseg inspect`` prints (``--json`` prints the dict)."""
    kind = report["kind"]
    if kind == "raster":
        lines = _fmt_raster(report)
    elif kind == "folder":
        lines = _fmt_folder(report)
    elif kind == "dataset":
        lines = _fmt_dataset(report)
    else:
        lines = _fmt_patches(report)
    for w in report.get("warnings") or []:
        lines.append(f"warning: {w}")
    return "\n".join(lines)


def _fmt_counts(entries: list[dict], key: str, fmt=str) -> str:
    return ", ".join(f"{fmt(e[key])} ({e['files']})" for e in entries)


def _fmt_raster(r: dict, title: str = "raster") -> list[str]:
    dtypes = ",".join(dict.fromkeys(r["dtypes"]))
    lines = [f"{title}: {r['path']} ({r['driver']})",
             f"size: {r['width']} x {r['height']} px, {r['count']} band(s) of {dtypes}"]
    if any(r["band_names"]):
        lines.append("band names: " + ", ".join(n or "-" for n in r["band_names"]))
    if r["georeferenced"]:
        t = r["transform"]
        lines.append(f"crs: {r['crs'] or 'none'}; pixel size {r['pixel_size'][0]:.10g} x "
                     f"{r['pixel_size'][1]:.10g}; origin ({t[2]:.12g}, {t[5]:.12g})")
    else:
        lines.append("crs: none (not georeferenced: a plain pixel grid)")
    lines.append(f"nodata: {'none' if r['nodata'] is None else r['nodata']}")
    lay = r["layout"]
    block = "x".join(str(x) for x in lay["block"]) if lay["block"] else "?"
    ov = ", ".join(str(o) for o in lay["overviews"]) or "none"
    lines.append(f"layout: {'tiled' if lay['tiled'] else 'blocks'} {block}, compression "
                 f"{lay['compression'] or 'none'}, overviews {ov}")
    s = r["sample"]
    how = "decimated" if s["decimated"] else "every pixel"
    lines.append(f"band statistics (sample {s['width']} x {s['height']} px, {how}):")
    nw = max(len(str(b["name"] or b["band"])) for b in r["bands"] + [{"name": "band"}])
    lines.append(f"  {'band':<{nw}}  {'dtype':<8} {'min':>12} {'max':>12} {'mean':>12} "
                 f"{'nodata':>7}")
    for b in r["bands"]:
        lines.append(f"  {str(b['name'] or b['band']):<{nw}}  {b['dtype']:<8} "
                     f"{_cell(b['min']):>12} {_cell(b['max']):>12} {_cell(b['mean']):>12} "
                     f"{100 * b['nodata_fraction']:6.1f}%")
    if r.get("mask"):
        lines += _fmt_mask(r["mask"], "every pixel" if not s["decimated"] else
                           f"sample of {s['width']} x {s['height']} px")
    if r.get("mask_file"):
        lines.append("")
        lines += _fmt_raster(r["mask_file"], title="mask")
    return lines


def _cell(x) -> str:
    if x is None:
        return "-"
    return f"{x:.6g}" if isinstance(x, float) else str(x)


def _fmt_mask(m: dict, how: str) -> list[str]:
    kinds = ", ".join(f"{k} {n}" for k, n in m["kinds"].items())
    lines = [f"mask values ({kinds} file(s); {how}; {m['pixels_counted']} px counted"
             + (f", {m['nodata_pixels']} nodata" if m["nodata_pixels"] else "") + "):"]
    shown = 30
    for e in m["colours"][:shown]:
        vals = e.get("palette_values")
        extra = f" index {','.join(str(v) for v in vals)}" if vals else ""
        lines.append(f"  {e['colour']}{extra:<10} {e.get('class', ''):<16} {e['pixels']:>12} px "
                     f"{100 * e['share']:6.2f}%  in {e['files']} file(s)")
    for e in m["values"][:shown]:
        lines.append(f"  value {e['value']:<6} {e.get('class', ''):<16} {e['pixels']:>12} px "
                     f"{100 * e['share']:6.2f}%  in {e['files']} file(s)")
    more = max(0, m["distinct_colours"] - shown) + max(0, m["distinct_values"] - shown)
    if more:
        lines.append(f"  ... and {more} more")
    if m.get("not_masks"):
        nm = m["not_masks"]
        lines.append(f"  not read as masks: {nm['count']} file(s), e.g. {nm['first'][0]['path']}"
                     f": {nm['first'][0]['reason']}")
    if "undeclared" in m:
        bad = m["undeclared"]
        if bad:
            what = [e["colour"] if "colour" in e else f"value {e['value']}" for e in bad]
            lines.append("NOT declared in classes.json (satseg patches would refuse them): "
                         + ", ".join(f"{w} ({e['pixels']} px)" for w, e in zip(what, bad[:20]))
                         + (f" and {len(bad) - 20} more" if len(bad) > 20 else ""))
        else:
            lines.append("every value/colour is declared in classes.json")
    return lines


def _fmt_side(name: str, s: dict) -> list[str]:
    suffixes = ", ".join(f"{k} {n}" for k, n in s["suffixes"].items())
    read = (f"headers read {s['headers_read']} of {s['files']} (stopped at --max-files)"
            if s["stopped"] else "all headers read")
    lines = [f"{name}: {s['files']} file(s) ({suffixes}); {read}"]
    if s["sizes"]:
        wr, hr = s["width_range"], s["height_range"]
        lines.append(f"  sizes: {s['distinct_sizes']} distinct, width {wr[0]}..{wr[1]}, height "
                     f"{hr[0]}..{hr[1]}; most common: "
                     + ", ".join(f"{e['width']}x{e['height']} ({e['files']})" for e in s["sizes"]))
    lines.append("  bands: " + ", ".join(f"{e['count']} x {e['dtype']} ({e['files']})"
                                         for e in s["bands"])
                 + (f"; {s['palette_files']} with a colour table" if s["palette_files"] else ""))
    lines.append("  crs: " + _fmt_counts(s["crs"], "crs"))
    lines.append("  nodata: " + _fmt_counts(s["nodata"], "nodata",
                                            lambda v: "none" if v is None else str(v)))
    if s.get("other_files"):
        lines.append("  other files (ignored): " + ", ".join(
            f"{k} {n}" for k, n in s["other_files"].items()))
    un = s["unreadable"]
    if un["count"]:
        lines.append(f"  unreadable: {un['count']} (e.g. {un['first'][0]['error']})")
    return lines


def _fmt_folder(r: dict) -> list[str]:
    lines = [f"folder: {r['path']}" + (f"  masks: {r['masks_path']}" if r["masks_path"] else "")
             + (f"  pair: {r['pair']}" if r["pair"] else "")]
    lines += _fmt_side("images", r["images"])
    if r.get("masks"):
        lines += _fmt_side("masks", r["masks"])
    pr = r.get("pairing")
    if pr is not None:
        if "error" in pr:
            lines.append(f"pairing: error: {pr['error']}")
        else:
            lines.append(f"pairs: {pr['pairs']}; images without mask: {pr['unpaired_images']}; "
                         f"masks without image: {pr['unpaired_masks']}")
            for key, what in (("unpaired_images_first", "image without mask"),
                              ("unpaired_masks_first", "mask without image")):
                for p in pr[key]:
                    lines.append(f"  {what}: {p}")
    sm = r.get("size_mismatches")
    if sm and sm["count"]:
        lines.append(f"image/mask size differs: {sm['count']} pair(s)")
        for e in sm["first"]:
            lines.append(f"  {e['image']} {e['image_size'][0]}x{e['image_size'][1]} vs "
                         f"{e['mask']} {e['mask_size'][0]}x{e['mask_size'][1]}")
    mv = r.get("mask_values")
    if mv:
        if mv["sampled"]:
            how = (f"sampled: {mv['files_sampled']} of {mv['files_total']} file(s), at most "
                   f"{mv['max_side']} px on the long side each")
        else:
            how = f"all {mv['files_total']} file(s), every pixel"
        lines += _fmt_mask(mv, how)
    return lines


def _fmt_dataset(r: dict) -> list[str]:
    if r.get("summary"):
        lines = [f"dataset folder: {r['path']}", r["summary"]]
    else:
        n = r.get("num_examples") or {}
        lines = [f"dataset folder: {r['path']} ({r['task']})",
                 f"bands: {', '.join(r.get('bands') or [])} ({r.get('image_dtype')}, "
                 f"{r.get('patch_size')} px, nodata {r.get('nodata')})",
                 "examples: " + ", ".join(f"{s} {k}" for s, k in n.items()),
                 "classes: " + ", ".join(r.get("class_names") or [])]
    lines.append(f"crs: {r['crs'] or 'none'}")
    return lines


def _fmt_patches(r: dict) -> list[str]:
    if r["kind"] == "classification_patches":
        return [f"classification patches: {r['path']}",
                f"patches: {r['patches']} of {r['size']} px; bands "
                f"{', '.join(r['bands'] or [])} ({r['dtype']}); crs {r['crs'] or 'none'}",
                "per class: " + ", ".join(f"{k} {n}" for k, n in
                                          r["patches_per_class"].items())]
    lines = [f"patches folder: {r['path']}",
             f"patches: {r['patches']} of {r['size']} x {r['size']} px (stride {r['stride']})"
             + (f" from {r['sources']} source image(s)" if r["sources"] else ""),
             f"bands: {', '.join(r['bands'])} ({r['dtype']}, nodata "
             f"{'none' if r['nodata'] is None else r['nodata']})",
             f"crs: {r['crs'] or 'none'}",
             "class pixels (from index.csv):"]
    nw = max(len(c["name"]) for c in r["classes"] + [{"name": "ignored"}])
    for c in r["classes"]:
        lines.append(f"  {c['id']:>3} {c['name']:<{nw}} {c['colour']} {c['pixels']:>12} px "
                     f"{100 * c['share']:6.2f}%")
    lines.append(f"      {'ignored':<{nw}} {'':7} {r['ignored_pixels']:>12} px")
    return lines
