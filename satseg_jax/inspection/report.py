"""``satseg inspect PATH``: decide what PATH is (scene, image/mask folders, patches
folder, dataset) and hand it to the inspector of that kind."""

from __future__ import annotations

from pathlib import Path

from satseg_jax.classes import load_classes
from satseg_jax.errors import SatsegError
from satseg_jax.inspection.common import (
    DEFAULT_MAX_FILES,
    MASK_FILES,
    MASK_SIDE,
    SCENE_SIDE,
    WILDCARD,
)
from satseg_jax.inspection.folders import inspect_folder
from satseg_jax.inspection.outputs import inspect_dataset, inspect_patches
from satseg_jax.inspection.rasters import inspect_raster


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
    if WILDCARD.search(spec) and not Path(spec).exists():
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
