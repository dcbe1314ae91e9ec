"""Scene classification datasets: one sub-folder per class of image patches -> tfds.

Layout read by ``satseg build --classification --images DIR``::

    DIR/<class name>/<any name>.(tif|tiff|png|jpg|jpeg)
    DIR/classes.json        optional: fixes class ids and order (else sorted folder names)

Every image must have the same size and band count (a CNN classifier takes fixed-size
inputs); a mismatch is an error naming the file. ``satseg patches --scene-label`` writes
this layout from a scene and a label raster.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from satseg_jax.datasets.tfenv import import_tfds
from satseg_jax.errors import SatsegError

tfds = import_tfds()

NAME = "satseg_scenes"
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
_RC = re.compile(r"r(\d+)_c(\d+)")


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
    from satseg_jax.classes import load_classes

    if (images_dir / "classes.json").exists():
        return load_classes(images_dir / "classes.json").names
    names = sorted(p.name for p in images_dir.iterdir() if p.is_dir() and not
                   p.name.startswith("."))
    if not names:
        raise SatsegError(f"{images_dir}: no class sub-folders; expected DIR/<class>/<image>")
    return names


def read_image(path: Path) -> np.ndarray:
    """(H, W, C) pixels of a GeoTIFF/PNG/JPEG, exactly as stored."""
    from satseg_jax.datasets.geotiff import read_channels_last

    return read_channels_last(path, fix="re-export the image or remove it")


def nodata_of(path: Path) -> float | int | None:
    """The file's nodata value (None for none or NaN: non-finite pixels are invalid anyway)."""
    from satseg_jax.datasets.geotiff import open_raster

    with open_raster(path, fix="re-export the image or remove it") as src:
        nd, dtype = src.nodata, np.dtype(src.dtypes[0])
    if nd is None or math.isnan(nd):
        return None
    return int(nd) if float(nd).is_integer() and dtype.kind in "iu" else float(nd)


def band_names(path: Path, count: int) -> list[str]:
    """Band descriptions of a GeoTIFF (as compose writes them), else band1..bandN."""
    from satseg_jax.datasets.geotiff import open_raster

    with open_raster(path, fix="re-export the image or remove it") as src:
        desc = list(src.descriptions)
    return [d or f"band{i + 1}" for i, d in enumerate((desc + [None] * count)[:count])]


def rowcol(example_id: str) -> tuple[int, int] | None:
    m = _RC.search(example_id)
    return (int(m.group(1)), int(m.group(2))) if m else None


class SatsegScenes(tfds.core.GeneratorBasedBuilder):
    """Fixed-size image patches with one class label each."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "image, label, example_id."}

    def __init__(self, *, layout: dict | None = None, examples: dict | None = None,
                 beam_work_dir: str | Path | None = None, **kwargs):
        """``layout`` and ``examples`` ({split: [(example id, class id, path)]}) build the
        dataset; ``beam_work_dir`` generates them with an Apache Beam pipeline (the runner
        comes from ``download_and_prepare``'s DownloadConfig, see ``beam_pipeline``), the
        folder (the workers must see it) receiving each split's index rows."""
        data_dir = kwargs.get("data_dir")
        if layout is None and data_dir is not None:
            import json

            info_path = Path(data_dir) / "satseg_dataset.json"
            if info_path.exists():
                info = json.loads(info_path.read_text())
                layout = {"size": info["patch_size"], "bands": info["bands"],
                          "dtype": info["image_dtype"], "classes": info["class_names"]}
        if layout is None:
            raise SatsegError("satseg_scenes: build it with `satseg build --classification`")
        self._layout = layout
        self._examples = examples or {}
        self._beam_work_dir = beam_work_dir
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        s, c = int(self._layout["size"]), len(self._layout["bands"])
        return self.dataset_info_from_configs(
            description="Image patches with one scene class each (satseg-jax).",
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=(s, s, c), dtype=np.dtype(
                    self._layout["dtype"]), encoding=tfds.features.Encoding.BYTES),
                "label": tfds.features.ClassLabel(names=list(self._layout["classes"])),
                "example_id": tfds.features.Text(),
            }),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        if self._beam_work_dir is not None:
            from satseg_jax.datasets.beam_pipeline import SceneExamples

            return {split: SceneExamples(((eid, cid, str(path)) for eid, cid, path in items),
                                         split, self._beam_work_dir)
                    for split, items in self._examples.items()}
        return {split: self._generate_examples(items)
                for split, items in self._examples.items()}

    def _generate_examples(self, items):
        for eid, cid, path in items:
            yield eid, example_for(eid, cid, Path(path))


def example_for(example_id: str, class_id: int, path: Path) -> dict:
    """One example as both the plain generator and the Beam pipeline write it."""
    return {"image": read_image(path), "label": class_id, "example_id": example_id}
