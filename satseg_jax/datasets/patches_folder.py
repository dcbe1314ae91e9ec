"""Read and check a patches folder written by ``satseg patches`` (no TensorFlow here).

The folder is a contract between ``satseg patches`` and ``satseg build``::

    PATCHES/images/<patch_id>.tif   C bands, source dtype, own transform/crs/nodata
    PATCHES/masks/<patch_id>.tif    1 band uint8 class ids, 255 = ignore, same grid
    PATCHES/index.csv               patch_id,row,col,height,width,left,bottom,right,top,
                                    valid_fraction,count_<class>...,count_ignore
                                    [,source,source_image: folder input, one key per
                                    source image; row/col are offsets inside it]
    PATCHES/classes.json            the classes (satseg_jax.classes format)
    PATCHES/patches.json            format_version, bands, dtype, nodata, crs (null when
                                    not georeferenced), size, stride... [, sources]

Everything is checked before a single TFRecord is written, so a broken or half-written
folder is reported with the file to look at and the command that fixes it, instead of
surfacing as a TensorFlow error halfway through a build.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from satseg_jax.classes import ClassSet, load_classes
from satseg_jax.errors import SatsegError
from satseg_jax.raster.io import PATCHES_FIX, open_raster, same_grid

FORMAT_VERSION = 1
REQUIRED_FILES = ("patches.json", "index.csv", "classes.json")
# dtypes a tfds Tensor feature stores bit for bit (GeoTIFF sample types numpy can hold).
SUPPORTED_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32",
                    "float64")
_RERUN = PATCHES_FIX


@dataclass(frozen=True)
class PatchRecord:
    """One row of index.csv: the patch id and its window's pixel offset in the scene.

    ``source``/``source_image``: the source image's key and path, for folders of several
    source images (``satseg patches --images/--masks``); None for patches of one scene.
    Kept because splits must not separate patches of one image (``--split-by source``,
    ``--split-file``) and offsets repeat across images.
    """

    patch_id: str
    row: int
    col: int
    source: str | None = None
    source_image: str | None = None


@dataclass(frozen=True)
class PatchesFolder:
    """A checked patches folder: its metadata, its patches (index order) and classes."""

    root: Path
    meta: dict
    patches: tuple[PatchRecord, ...]
    classes: ClassSet

    @property
    def size(self) -> int:
        return int(self.meta["size"])

    @property
    def stride(self) -> int:
        return int(self.meta.get("stride") or self.meta["size"])

    @property
    def bands(self) -> list[str]:
        return list(self.meta["bands"])

    @property
    def dtype(self) -> str:
        return str(self.meta["dtype"])

    @property
    def nodata(self) -> float | int | None:
        return self.meta.get("nodata")

    @property
    def crs(self) -> str | None:
        return self.meta.get("crs")

    def image_path(self, patch_id: str) -> Path:
        return self.root / "images" / f"{patch_id}.tif"

    def mask_path(self, patch_id: str) -> Path:
        return self.root / "masks" / f"{patch_id}.tif"

    @property
    def sources(self) -> list[dict]:
        """patches.json's ``sources`` (key, image, mask, width, height, crs); [] for a scene."""
        return list(self.meta.get("sources") or [])

    def index_rows(self) -> list[dict]:
        """The patches as plain dicts (``patch_id``, ``row``, ``col``, and ``source``,
        ``source_image`` when the folder has several source images) for assign_splits."""
        rows = []
        for p in self.patches:
            row = {"patch_id": p.patch_id, "row": p.row, "col": p.col}
            if p.source is not None:
                row.update(source=p.source, source_image=p.source_image)
            rows.append(row)
        return rows


def _no_patches(root: Path, detail: str) -> SatsegError:
    return SatsegError(f"{root}: contains no patches ({detail}); run satseg patches first, "
                       "e.g. satseg patches --image scene.tif --labels labels.tif "
                       f"--classes classes.json --out {root}")


def _read_meta(root: Path) -> dict:
    path = root / "patches.json"
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise SatsegError(f"{path}: not valid JSON ({e}); {_RERUN}") from None
    if not isinstance(meta, dict):
        raise SatsegError(f"{path}: expected a JSON object; {_RERUN}")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise SatsegError(f"{path}: format_version {version!r} is not supported (this satseg "
                          f"reads version {FORMAT_VERSION}); {_RERUN} with this version")
    if meta.get("task") == "classification":
        raise SatsegError(f"{path}: this folder holds scene-classification patches "
                          "(satseg patches --scene-label); build it with satseg build "
                          f"--classification --images {root}")
    size = meta.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise SatsegError(f"{path}: field 'size' must be a positive integer, got {size!r}; "
                          f"{_RERUN}")
    stride = meta.get("stride", size)
    if stride is not None and (not isinstance(stride, int) or stride <= 0):
        raise SatsegError(f"{path}: field 'stride' must be a positive integer, got "
                          f"{stride!r}; {_RERUN}")
    bands = meta.get("bands")
    if not isinstance(bands, list) or not bands or not all(isinstance(b, str) for b in bands):
        raise SatsegError(f"{path}: field 'bands' must be a non-empty list of band names, got "
                          f"{bands!r}; {_RERUN}")
    dtype = meta.get("dtype")
    if dtype not in SUPPORTED_DTYPES:
        raise SatsegError(f"{path}: field 'dtype' {dtype!r} is not one of "
                          f"{', '.join(SUPPORTED_DTYPES)}; re-run satseg compose/patches with "
                          "a supported band type")
    nodata = meta.get("nodata")
    if nodata is not None and not isinstance(nodata, (int, float)):
        raise SatsegError(f"{path}: field 'nodata' must be a number or null, got {nodata!r}")
    return meta


def _read_index(root: Path) -> tuple[PatchRecord, ...]:
    path = root / "index.csv"
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in ("patch_id", "row", "col") if c not in (reader.fieldnames or [])]
        if missing:
            raise SatsegError(f"{path}: missing column(s) {', '.join(missing)} (header: "
                              f"{','.join(reader.fieldnames or [])}); {_RERUN}")
        has_source = "source" in (reader.fieldnames or [])
        records: list[PatchRecord] = []
        seen: set[str] = set()
        for line, r in enumerate(reader, start=2):
            pid = (r.get("patch_id") or "").strip()
            try:
                row, col = int(r["row"]), int(r["col"])
            except (TypeError, ValueError):
                raise SatsegError(f"{path} line {line}: row/col {r.get('row')!r}/"
                                  f"{r.get('col')!r} are not integers; {_RERUN}") from None
            if not pid or pid in seen:
                what = "an empty patch_id" if not pid else f"patch_id {pid} twice"
                raise SatsegError(f"{path} line {line}: {what}; {_RERUN}")
            seen.add(pid)
            source = None
            if has_source:
                source = (r.get("source") or "").strip()
                if not source:
                    raise SatsegError(f"{path} line {line}: empty 'source' (the source image "
                                      f"of patch {pid}); {_RERUN}")
            records.append(PatchRecord(pid, row, col, source,
                                       (r.get("source_image") or "").strip() or None))
    return tuple(records)


def _check_files(root: Path, patches: tuple[PatchRecord, ...]) -> None:
    """Every index row needs its image and mask (one directory listing each, not N stats)."""
    listing = {}
    for sub in ("images", "masks"):
        d = root / sub
        listing[sub] = set(os.listdir(d)) if d.is_dir() else set()
    missing = [f"{sub}/{p.patch_id}.tif" for p in patches for sub in ("images", "masks")
               if f"{p.patch_id}.tif" not in listing[sub]]
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3
                                          else "")
        raise SatsegError(f"{root}: {len(missing)} file(s) listed in index.csv are missing "
                          f"({shown}); the folder is incomplete: {_RERUN}")


def read_patches_folder(root: str | Path) -> PatchesFolder:
    """Read ``patches.json``, ``index.csv`` and ``classes.json`` and check the folder.

    Raises SatsegError naming the file and the fix for: a missing or empty folder, a
    missing metadata file, an incompatible ``format_version``, a malformed index, an
    index listing no patches, and index rows whose image or mask file is missing.
    """
    root = Path(root)
    if not root.exists():
        raise SatsegError(f"{root}: patches folder not found; run satseg patches first "
                          f"(--out {root})")
    if not root.is_dir():
        raise SatsegError(f"{root}: is a file, not a patches folder; pass the folder written "
                          "by satseg patches")
    missing = [n for n in REQUIRED_FILES if not (root / n).is_file()]
    if missing:
        images = root / "images"
        if not any(root.iterdir()) or not (images.is_dir() and any(images.iterdir())):
            raise _no_patches(root, "no index.csv and no images/")
        raise SatsegError(f"{root}: {', '.join(missing)} not found; the folder is incomplete "
                          f"(satseg patches writes images/, masks/, {', '.join(REQUIRED_FILES)})"
                          f": {_RERUN}")
    meta = _read_meta(root)
    patches = _read_index(root)
    if not patches:
        raise _no_patches(root, "index.csv lists none")
    classes = load_classes(root / "classes.json")
    _check_files(root, patches)
    return PatchesFolder(root=root, meta=meta, patches=patches, classes=classes)


# ----------------------------------------------------------------------------- examples


@dataclass(frozen=True)
class PatchLayout:
    """What the features depend on: patch size S, band names (C of them) and the dtype."""

    size: int
    bands: tuple[str, ...]
    dtype: str
    nodata: float | int | None = None


def check_example(example: dict, layout: PatchLayout, root: Path) -> None:
    """The image must match patches.json (size, band count, dtype): name the file if not."""
    want = (layout.size, layout.size, len(layout.bands))
    image = example["image"]
    if image.shape != want or image.dtype != np.dtype(layout.dtype):
        raise SatsegError(
            f"{root / 'images' / (example['patch_id'] + '.tif')}: {image.shape[2]} band(s) of "
            f"{image.shape[0]}x{image.shape[1]} {image.dtype}, but patches.json says "
            f"{want[2]} band(s) of {want[0]}x{want[1]} {layout.dtype}; re-run satseg patches")


def read_patch(root: str | Path, patch_id: str, row: int, col: int) -> dict:
    """One example from ``images/<id>.tif`` and ``masks/<id>.tif`` (image channels-last).

    Both files must be on the same grid; the pixels are returned exactly as stored.
    """
    root = Path(root)
    ipath, mpath = root / "images" / f"{patch_id}.tif", root / "masks" / f"{patch_id}.tif"
    with open_raster(ipath, PATCHES_FIX) as src:
        image = src.read()
        crs = src.crs.to_wkt() if src.crs else ""
        transform = src.transform
    with open_raster(mpath, PATCHES_FIX) as src:
        if src.count != 1:
            raise SatsegError(f"{mpath}: has {src.count} bands, a mask has 1; re-run "
                              "satseg patches")
        mask = src.read(1)
        mask_transform = src.transform
    if mask.dtype != np.uint8:
        raise SatsegError(f"{mpath}: dtype {mask.dtype}, masks are uint8 (255 = ignore); "
                          "re-run satseg patches")
    if mask.shape != image.shape[1:] or not same_grid(mask_transform, transform):
        raise SatsegError(f"{mpath}: not on the grid of {ipath} ({mask.shape} vs "
                          f"{image.shape[1:]}, transform {tuple(mask_transform)[:6]} vs "
                          f"{tuple(transform)[:6]}); re-run satseg patches")
    return {
        "image": np.ascontiguousarray(np.moveaxis(image, 0, -1)),
        "mask": mask,
        "patch_id": patch_id,
        "crs": crs,
        "transform": np.array(tuple(transform)[:6], np.float64),
        "row": np.int32(row),
        "col": np.int32(col),
    }
