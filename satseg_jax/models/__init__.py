"""Models: pure flax.linen modules behind a registry (``get_model(config.model, ...)``).

Importing this package registers every model. No TensorFlow/tfds/rasterio here: models
must import where only JAX is installed.
"""

from satseg_jax.models import (  # noqa: F401  (registers the models)
    cerranet,
    deeplab,
    fpn,
    unet,
    variants,
)
from satseg_jax.models.registry import get_model, model_knobs, register_model, registered_models
from satseg_jax.models.unet import (
    largest_valid_input,
    valid_input_size,
    valid_input_sizes,
    valid_output_size,
)

__all__ = ["get_model", "model_knobs", "register_model", "registered_models",
           "valid_input_size", "valid_output_size", "largest_valid_input", "valid_input_sizes"]
