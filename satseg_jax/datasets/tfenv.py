"""Import TensorFlow / tensorflow-datasets the way the datasets package needs them.

Why a helper: TensorFlow grabs every GPU it can see when first used, and JAX owns the
accelerators in this project; tfds is only a file format and reader here. So every
import of TensorFlow in ``satseg_jax.datasets`` goes through :func:`import_tfds`, which
hides the accelerators from TensorFlow before anything touches them.
"""

from __future__ import annotations

import os


def import_tf():
    """TensorFlow with GPUs/TPUs hidden from it (JAX owns them)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    for kind in ("GPU", "TPU"):
        try:
            tf.config.set_visible_devices([], kind)
        except (RuntimeError, ValueError):
            pass  # TensorFlow already initialised its devices, or has no such device type
    return tf


def import_tfds():
    """tensorflow_datasets, imported after :func:`import_tf` hid the accelerators."""
    import_tf()
    import tensorflow_datasets as tfds

    return tfds
