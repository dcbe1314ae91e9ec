"""satseg-jax: semantic segmentation and scene classification of satellite images in JAX/Flax.

The package is laid out along the pipeline: ``raster`` (compose, patches, masks) ->
``datasets`` (tfds builders) -> ``input_pipeline`` -> ``models`` -> ``train`` ->
``evaluate``/``metrics`` -> ``predict``/``area``. Heavy imports (TensorFlow, tfds,
rasterio) are kept out of this file so that models and steps import on machines that
only have JAX.
"""

__version__ = "0.1.0"

# XLA CPU defaults (convolutions on XLA's own Eigen kernels, not YNNPACK: 1.4x faster
# train steps on the CPU, benchmarks/NOTES.md). Applied on import of the package, so the
# CLI, library use and test workers all compile with the same flags; XLA reads its
# flags only when JAX creates its backends, which has not happened yet in any normal
# import order. SATSEG_XLA_DEFAULTS=0 turns it off; flags set in XLA_FLAGS are kept.
from satseg_jax import xla_flags as _xla_flags  # noqa: E402

_xla_flags.apply_defaults()
