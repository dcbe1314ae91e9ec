"""The tensorflow-datasets builder over a ``satseg patches`` folder (sharded TFRecords).

Features: ``image`` (S, S, C) in the source dtype (bit-exact), ``mask`` (S, S) uint8
(255 = ignore), ``patch_id``, ``crs`` (WKT or ""), ``transform`` (6 affine
coefficients), ``row``/``col`` (pixel offsets in the scene). The shapes and dtype come
from the patches folder, so the builder takes them at construction; when reopened with
``tfds.load(..., data_dir=DATA)`` it reads them from ``DATA/satseg_dataset.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from satseg_jax.errors import SatsegError

NAME = "satseg_patches"


class SatsegPatches(tfds.core.GeneratorBasedBuilder):
    """Image/mask patches of one or more scenes, with their georeference."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "image, mask, patch_id, crs, transform, row, col."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = "Pass the folder written by `satseg patches` as manual_dir."

    def __init__(self, *, layout: dict | None = None, assignment: dict[str, str] | None = None,
                 **kwargs):
        data_dir = kwargs.get("data_dir")
        if layout is None and data_dir is not None:
            info_path = Path(data_dir) / "satseg_dataset.json"
            if info_path.exists():
                info = json.loads(info_path.read_text())
                layout = {"size": info["patch_size"], "bands": info["bands"],
                          "dtype": info["image_dtype"]}
        if layout is None:
            raise SatsegError("satseg_patches: build it with `satseg build`, or load it with "
                              "tfds.builder_from_directory(DATA/satseg_patches/1.0.0)")
        self._layout = layout
        self._assignment = assignment or {}
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        s, c = int(self._layout["size"]), len(self._layout["bands"])
        return self.dataset_info_from_configs(
            description="Satellite image patches with per-pixel class masks (satseg-jax).",
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=(s, s, c), dtype=np.dtype(
                    self._layout["dtype"]), encoding=tfds.features.Encoding.ZLIB),
                "mask": tfds.features.Tensor(shape=(s, s), dtype=np.uint8,
                                             encoding=tfds.features.Encoding.ZLIB),
                "patch_id": tfds.features.Text(),
                "crs": tfds.features.Text(),
                "transform": tfds.features.Tensor(shape=(6,), dtype=np.float64),
                "row": np.int32,
                "col": np.int32,
            }),
            supervised_keys=("image", "mask"),
            homepage="https://github.com/satseg-jax",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        root = Path(dl_manager.manual_dir)
        by_split: dict[str, list[str]] = {}
        for pid, split in sorted(self._assignment.items()):
            by_split.setdefault(split, []).append(pid)
        return {split: self._generate_examples(root, ids) for split, ids in by_split.items()}

    def _generate_examples(self, root: Path, ids: list[str]):
        for pid in ids:
            yield pid, read_patch(root, pid)


def read_patch(root: Path, pid: str) -> dict:
    """One example from the patch GeoTIFFs (image moved to channels-last)."""
    import rasterio

    from satseg_jax.raster.compose import read_window

    ipath, mpath = root / "images" / f"{pid}.tif", root / "masks" / f"{pid}.tif"
    for p in (ipath, mpath):
        if not p.exists():
            raise SatsegError(f"{p}: listed in {root / 'index.csv'} but missing; re-run "
                              "satseg patches")
    with rasterio.open(ipath) as src:
        image = read_window(src, None, ipath)
        crs = src.crs.to_wkt() if src.crs else ""
        transform = np.array(list(src.transform)[:6], np.float64)
    with rasterio.open(mpath) as src:
        mask = read_window(src, None, mpath, 1)
    row, col = (int(x[1:]) for x in pid.split("_"))
    return {"image": np.moveaxis(image, 0, -1), "mask": mask.astype(np.uint8),
            "patch_id": pid, "crs": crs, "transform": transform, "row": row, "col": col}
