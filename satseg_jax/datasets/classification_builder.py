"""The tensorflow-datasets builder of scene classification datasets (``satseg_scenes``).

Importing this module registers the builder with tfds. What it reads (one sub-folder
per class of images) and how one image becomes an example live in
:mod:`satseg_jax.datasets.classification_folder`, which the Beam pipeline shares, so the
plain and the Beam build write the same examples.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from satseg_jax.datasets.classification_folder import example_for
from satseg_jax.datasets.tfenv import import_tfds
from satseg_jax.errors import SatsegError

tfds = import_tfds()

NAME = "satseg_scenes"


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
