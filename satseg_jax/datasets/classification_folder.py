"""Scene classification folders: one sub-folder per class of image patches (no TF here).

Layout read by ``satseg build --classification --images DIR``::

    DIR/<class name>/<any name>.(tif|tiff|png|jpg|jpeg)
    DIR/classes.json        optional: fixes class ids and order (else sorted folder names)

Every image must have the same size and band count (a CNN classifier takes fixed-size
inputs); a mismatch is an error naming the file. ``satseg patches --scene-label`` writes
this layout from a scene and a label raster. Why apart from the tfds builder: the Beam
pipeline turns images into examples too (:func:`example_for`), and it must not import
the builder, which imports the pipeline.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from satseg_jax.classes import load_classes
from satseg_jax.errors import SatsegError
from satseg_jax.raster.io import open_raster, read_channels_last

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
_RC = re.compile(r"r(\d+)_c(\d+)")
# What a message about a broken classification image tells the user to do.
IMAGE_FIX = "re-export the image or remove it"


def list_images(images_dir: Path, class_names: list[str]) -> list[tuple[str, int, Path]]:
    """(example id, class id, path) for every image, in a deterministic order."""
    out = []
    for cid, name in enumerate(class_names):
        folder = images_dir / name
        if not folder.is_dir():
            continue
        for p in sorted(folder.iterdir()):
            if p.suffix.lower() in IMAGE_SUFFIXES:
                out.append((f"{name}/{p.name}", cid, p))
    return out


def class_names_for(images_dir: Path) -> list[str]:
    if (images_dir / "classes.json").exists():
        return load_classes(images_dir / "classes.json").names
    names = sorted(p.name for p in images_dir.iterdir() if p.is_dir() and not
                   p.name.startswith("."))
    if not names:
        raise SatsegError(f"{images_dir}: no class sub-folders; expected DIR/<class>/<image>")
    return names


def read_image(path: Path) -> np.ndarray:
    """(H, W, C) pixels of a GeoTIFF/PNG/JPEG, exactly as stored."""
    return read_channels_last(path, fix=IMAGE_FIX)


def nodata_of(path: Path) -> float | int | None:
    """The file's nodata value (None for none or NaN: non-finite pixels are invalid anyway)."""
    with open_raster(path, fix=IMAGE_FIX) as src:
        nd, dtype = src.nodata, np.dtype(src.dtypes[0])
    if nd is None or math.isnan(nd):
        return None
    return int(nd) if float(nd).is_integer() and dtype.kind in "iu" else float(nd)


def band_names(path: Path, count: int) -> list[str]:
    """Band descriptions of a GeoTIFF (as compose writes them), else band1..bandN."""
    with open_raster(path, fix=IMAGE_FIX) as src:
        desc = list(src.descriptions)
    return [d or f"band{i + 1}" for i, d in enumerate((desc + [None] * count)[:count])]


def rowcol(example_id: str) -> tuple[int, int] | None:
    m = _RC.search(example_id)
    return (int(m.group(1)), int(m.group(2))) if m else None


def example_for(example_id: str, class_id: int, path: Path) -> dict:
    """One example as both the plain generator and the Beam pipeline write it."""
    return {"image": read_image(path), "label": class_id, "example_id": example_id}
