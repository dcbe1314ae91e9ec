"""``satseg inspect`` of what satseg itself wrote: a patches folder or a built dataset.

Both are read through the readers ``satseg build`` and training use
(:mod:`satseg_jax.datasets.patches_folder`, :func:`satseg_jax.datasets.build.load_dataset_info`),
so inspect reports what those will see.
"""

from __future__ import annotations

import contextlib
import csv
import json
from collections import Counter
from pathlib import Path

from satseg_jax.errors import SatsegError
from satseg_jax.inspection.common import (
    crs_short,
    hex_rgb,
    json_number,
)
from satseg_jax.raster.pairing import (
    RASTER_SUFFIXES,
)


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
    from satseg_jax.datasets.patches_folder import read_patches_folder

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
    classes = [{"id": c.id, "name": c.name, "colour": hex_rgb(c.colour),
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
        "nodata": json_number(folder.nodata),
        "crs": crs_short(folder.crs),
        "classes": classes,
        "ignored_pixels": totals.get("count_ignore", 0),
        "sources": len(sources) if has_source else None,
    }
