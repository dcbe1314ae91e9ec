"""tfds datasets built from patch folders: splits, statistics, the builders, ``build_dataset``.

Importing this package does not import TensorFlow (``satseg --help`` and the JAX-only
modules stay light); the public functions are loaded on first use. The submodules that
need tfds import it themselves, with accelerators hidden from TensorFlow:
``segmentation_builder`` registers the ``satseg_patches`` builder,
``classification_builder`` ``satseg_scenes``.

    from satseg_jax.datasets import build_dataset, builder_for
    info = build_dataset("patches/", "data/", split=(0.7, 0.15, 0.15), split_by="block")
    train = builder_for("data/").as_dataset(split="train")   # a tf.data.Dataset
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "build_dataset": "build",
    "build_classification_dataset": "build",
    "builder_for": "build",
    "format_summary": "build",
    "load_dataset_info": "build",
    "assign_splits": "splits",
    "read_patches_folder": "patches_folder",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
