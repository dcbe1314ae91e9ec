"""Write small ``satseg patches``-style folders for tests, without ``satseg_jax.raster``.

The folder follows the patches contract read by ``satseg build``::

    ROOT/images/<patch_id>.tif   C bands, source dtype, own transform, crs, nodata, names
    ROOT/masks/<patch_id>.tif    1 band uint8, 255 = ignore, same grid
    ROOT/index.csv               patch_id,row,col,height,width,left,bottom,right,top,
                                 valid_fraction,count_<class>...,count_ignore
    ROOT/classes.json, ROOT/patches.json

Pixels come from a seeded generator (or the caller's ``image_fn``), so a test knows
exactly what every patch holds and can recompute statistics with numpy.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

DEFAULT_CLASSES = [
    {"id": 0, "name": "water", "colour": "#1f78b4"},
    {"id": 1, "name": "forest", "colour": "#33a02c"},
    {"id": 2, "name": "urban", "colour": "#e31a1c"},
]
CRS = "EPSG:32633"


def patch_id(row: int, col: int) -> str:
    return f"r{row:06d}_c{col:06d}"


def _default_image(rng: np.random.Generator, row: int, col: int, shape: tuple[int, int, int],
                   dtype: str, nodata) -> np.ndarray:
    """Noisy bands whose level depends on the position (so splits differ in statistics)."""
    c, h, w = shape
    level = 200.0 + row * 3.0 + col * 1.5
    x = rng.normal(level, 40.0, size=shape) + np.arange(c)[:, None, None] * 100.0
    if np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        x = np.clip(np.round(x), max(info.min, 1), info.max)  # 0 stays free for nodata
    img = x.astype(dtype)
    # A nodata corner in some patches: every band equal to nodata (or NaN for floats).
    if (row // max(h, 1) + col // max(w, 1)) % 3 == 0:
        fill = np.nan if nodata is None and np.dtype(dtype).kind == "f" else nodata
        if fill is not None:
            img[:, : h // 4, : w // 4] = fill
    return img


def write_patches_folder(
    root: str | Path,
    *,
    size: int = 16,
    grid: tuple[int, int] = (6, 6),
    stride: int | None = None,
    bands: Sequence[str] = ("blue", "green", "red", "nir"),
    dtype: str = "uint16",
    nodata: float | int | None = 0,
    classes: list[dict] | None = None,
    seed: int = 0,
    skip: Callable[[int, int], bool] | None = None,
    image_fn: Callable[[int, int], np.ndarray] | None = None,
    origin: tuple[float, float] = (500_000.0, 4_000_000.0),
    pixel_size: float = 10.0,
    compress: str | None = "deflate",
    mask_classes: int | None = None,
) -> Path:
    """Write a patches folder with ``grid`` rows × cols of ``size`` px patches.

    ``skip(row, col)`` drops a patch (as ``min_valid`` would); ``image_fn(row, col)``
    returns a (C, size, size) array to use instead of the generated pixels. Masks hold
    random class ids ``0..mask_classes-1`` (default: all classes) with 255 wherever the
    image is nodata.
    """
    root = Path(root)
    stride = stride or size
    classes = classes if classes is not None else DEFAULT_CLASSES
    k = sum(1 for c in classes if not c.get("ignore"))
    names = [c["name"] for c in sorted((c for c in classes if not c.get("ignore")),
                                       key=lambda c: c["id"])]
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    scene_t = from_origin(origin[0], origin[1], pixel_size, pixel_size)
    rows: list[dict] = []
    for gi in range(grid[0]):
        for gj in range(grid[1]):
            r, c = gi * stride, gj * stride
            if skip is not None and skip(r, c):
                continue
            pid = patch_id(r, c)
            shape = (len(bands), size, size)
            img = (image_fn(r, c) if image_fn is not None
                   else _default_image(rng, r, c, shape, dtype, nodata))
            img = np.asarray(img, dtype=dtype)
            assert img.shape == shape, (img.shape, shape)
            valid = np.isfinite(img).all(axis=0) if img.dtype.kind == "f" else \
                np.ones((size, size), bool)
            if nodata is not None and not (isinstance(nodata, float) and math.isnan(nodata)):
                valid &= ~(img == np.asarray(nodata, dtype=dtype)).all(axis=0)
            mask = rng.integers(0, mask_classes or k, size=(size, size)).astype(np.uint8)
            mask[~valid] = 255
            t = scene_t * rasterio.Affine.translation(c, r)
            profile = {"driver": "GTiff", "height": size, "width": size, "crs": CRS,
                       "transform": t}
            if compress:
                profile["compress"] = compress
            with rasterio.open(root / "images" / f"{pid}.tif", "w", count=len(bands),
                               dtype=dtype, nodata=nodata, **profile) as dst:
                dst.write(img)
                dst.descriptions = tuple(bands)
            with rasterio.open(root / "masks" / f"{pid}.tif", "w", count=1, dtype="uint8",
                               nodata=255, **profile) as dst:
                dst.write(mask, 1)
            left, top = t * (0, 0)
            right, bottom = t * (size, size)
            counts = np.bincount(mask.ravel(), minlength=256)
            row = {"patch_id": pid, "row": r, "col": c, "height": size, "width": size,
                   "left": left, "bottom": bottom, "right": right, "top": top,
                   "valid_fraction": round(float(valid.mean()), 6)}
            row.update({f"count_{n}": int(counts[i]) for i, n in enumerate(names)})
            row["count_ignore"] = int(counts[255])
            rows.append(row)
    fields = ["patch_id", "row", "col", "height", "width", "left", "bottom", "right", "top",
              "valid_fraction", *(f"count_{n}" for n in names), "count_ignore"]
    with open(root / "index.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    (root / "classes.json").write_text(json.dumps(classes, indent=2) + "\n")
    scene_h = (grid[0] - 1) * stride + size
    scene_w = (grid[1] - 1) * stride + size
    from rasterio.crs import CRS as RioCRS

    meta = {
        "format_version": 1, "image": str(root.parent / "scene.tif"), "bands": list(bands),
        "dtype": dtype,
        "nodata": None if nodata is None or (isinstance(nodata, float) and math.isnan(nodata))
        else nodata,
        "crs": RioCRS.from_user_input(CRS).to_wkt(), "scene_transform": list(scene_t)[:6],
        "scene_height": scene_h, "scene_width": scene_w, "size": size, "stride": stride,
        "edge": "drop", "min_valid": 0.5, "num_windows": grid[0] * grid[1],
        "num_patches": len(rows), "label_source": str(root.parent / "labels.tif"),
    }
    (root / "patches.json").write_text(json.dumps(meta, indent=2) + "\n")
    return root
