"""satseg-jax: semantic segmentation and scene classification of satellite images in JAX/Flax.

The package is laid out along the pipeline: ``raster`` (compose, patches, masks) ->
``datasets`` (tfds builders) -> ``input_pipeline`` -> ``models`` -> ``train`` ->
``evaluate``/``metrics`` -> ``predict``/``area``. Heavy imports (TensorFlow, tfds,
rasterio) are kept out of this file so that models and steps import on machines that
only have JAX.

Importing the package changes nothing in the process: the CPU speed settings
(``XLA_FLAGS`` defaults, malloc) live in ``satseg_jax.cpu`` and are applied by the
``satseg`` CLI and the benchmarks (``satseg_jax.cpu.setup``), not on import, so a
library or notebook user keeps their own flags.
"""

__version__ = "0.1.0"
