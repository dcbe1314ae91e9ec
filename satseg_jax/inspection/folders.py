"""``satseg inspect`` of image (and mask) folders: headers, pairing, sampled masks.

Why headers only and a capped, evenly spaced sample: a folder of thousands of tiles must
be answered in seconds, and every region folder of a sorted listing must be represented.
One unreadable file is listed, not fatal: the user wants the whole picture.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

from satseg_jax.classes import ClassSet
from satseg_jax.errors import SatsegError
from satseg_jax.inspection.common import (
    DEFAULT_MAX_FILES,
    MASK_FILES,
    MASK_SIDE,
    MAX_LISTED,
    MAX_MASK_VALUES,
    WILDCARD,
    crs_short,
    evenly,
    is_int_dtype,
    json_number,
    open_quiet,
)
from satseg_jax.inspection.mask_tally import MaskTally
from satseg_jax.raster.masks import palette_lut
from satseg_jax.raster.pairing import (
    LOSSY_SUFFIXES,
    RASTER_SUFFIXES,
    expand_folders,
    find_pairs,
)


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
    opened = evenly(files, max_files)
    heads: dict[Path, dict] = {}
    unreadable = []
    for f in opened:
        try:
            with open_quiet(f) as ds:
                heads[f] = {"width": ds.width, "height": ds.height, "count": ds.count,
                            "dtype": ",".join(dict.fromkeys(ds.dtypes)),
                            "crs": crs_short(ds.crs), "nodata": json_number(ds.nodata),
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
    if WILDCARD.search(spec):
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
    tally = MaskTally(classes)
    chosen = evenly(files, mask_files)
    unreadable = 0
    for f in chosen:
        try:
            with open_quiet(f) as ds:
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
    ``satseg patches --images --masks`` pairs them (raster.pairing), pairs whose image
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
    elif all(h["count"] == 1 and is_int_dtype(h["dtype"]) for h in img_heads.values()):
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
