"""Import TensorFlow / tensorflow-datasets (and the optional Apache Beam) the way the
datasets package needs them.

Why a helper: TensorFlow grabs every GPU it can see when first used, and JAX owns the
accelerators in this project; tfds is only a file format and reader here. So every
import of TensorFlow in ``satseg_jax.datasets`` goes through :func:`import_tfds`, which
hides the accelerators from TensorFlow before anything touches them.
"""

from __future__ import annotations

import importlib.util
import os
import sys


def import_tf():
    """TensorFlow with GPUs/TPUs hidden from it (JAX owns them).

    Why Keras is kept out of the import: TensorFlow's ``__init__`` eagerly imports
    ``keras.src.optimizers`` (Keras 3, ~4 s of every process that reads a dataset) only
    to register optimizers for SavedModel loading, which nothing here does. It skips that
    import when ``TF_USE_LEGACY_KERAS`` is set and ``tf_keras`` is absent, so the variable
    is set for the duration of the import only (when the user has not set it) and then
    restored: ``tf.keras`` still resolves to Keras 3 on first use, since TensorFlow's lazy
    loader reads the variable again then.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" in sys.modules:
        tf = sys.modules["tensorflow"]
    else:
        skip_keras = ("TF_USE_LEGACY_KERAS" not in os.environ
                      and importlib.util.find_spec("tf_keras") is None)
        if skip_keras:
            os.environ["TF_USE_LEGACY_KERAS"] = "1"
        try:
            import tensorflow as tf
        finally:
            if skip_keras:
                os.environ.pop("TF_USE_LEGACY_KERAS", None)

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


def import_beam():
    """apache_beam, or a one-line SatsegError saying how to install it.

    Why optional: Beam (and its pyarrow, protobuf pins) is only needed to prepare data on
    a cluster (``satseg build --beam-runner``); a plain build or training never loads it.
    Why the root logger is raised during the import: Beam's BigQuery module logs an
    "apitools not found" warning on the *root* logger at import time, which would look
    like a problem with the build although nothing here uses BigQuery.
    """
    import logging

    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        import apache_beam
    except ImportError as e:
        from satseg_jax.errors import SatsegError

        raise SatsegError(f"--beam-runner needs Apache Beam, which is not installed ({e}); "
                          'install it with: pip install "satseg-jax[beam]"') from None
    finally:
        root.setLevel(level)
    return apache_beam
