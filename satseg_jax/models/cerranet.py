"""CerraNet: a compact CNN scene classifier for CBERS-4A WPM patches of the Cerrado.

Miranda et al., CerraNet-v2/v3 (land-use classification — Forest, Deforest, Fire,
Agriculture — and dam water-volume classes from CBERS-4A WPM patches). As published:
six 3×3 *valid* convolutions with 64-64-128-128-256-256 filters, each followed by ReLU,
2×2 average pooling and dropout 0.15; flatten (2×2×256 for a 256×256 input); dense 256
and dense 128, each with ReLU and dropout 0.15; a dense layer to the classes. The model
returns logits (softmax is the loss's job and inference's, never the model's).
With 3 bands and 4 classes it has 1,441,220 parameters.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from satseg_jax.errors import SatsegError
from satseg_jax.models.registry import register_model


@register_model("cerranet")
class CerraNet(nn.Module):
    num_classes: int
    filters: tuple[int, ...] = (64, 64, 128, 128, 256, 256)
    dense: tuple[int, ...] = (256, 128)
    dropout: float = 0.15
    dtype: Any = jnp.float32
    conv_fn: Any = None  # lax.conv_general_dilated stand-in (train.build_model sets it)
    axis_name: str | None = None  # no BatchNorm: nothing to synchronise

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        size = x.shape[1]
        for _ in self.filters:
            size = (size - 2) // 2
        if size < 1:
            raise SatsegError(f"cerranet needs larger inputs than {x.shape[1]}×{x.shape[2]} for "
                              f"{len(self.filters)} conv+pool stages (256 is the published size)")
        x = x.astype(self.dtype)
        for f in self.filters:
            x = nn.relu(nn.Conv(f, (3, 3), padding="VALID", dtype=self.dtype,
                                        conv_general_dilated=self.conv_fn)(x))
            x = nn.avg_pool(x, (2, 2), strides=(2, 2))
            x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = x.reshape(x.shape[0], -1)
        for units in self.dense:
            x = nn.relu(nn.Dense(units, dtype=self.dtype)(x))
            x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)
