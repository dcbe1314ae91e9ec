"""Building blocks shared by every U-Net variant (one definition each, no copies).

Conventions: NHWC; ``dtype`` is the compute dtype (bf16 on accelerators), parameters
stay float32; normalisation is ``batch`` (BatchNorm, running statistics in the
``batch_stats`` collection, synchronised over ``axis_name`` under pmap), ``group``
(GroupNorm) or ``none``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from satseg_jax.errors import SatsegError

NORMS = ("batch", "group", "none")


class Norm(nn.Module):
    """Batch / group / no normalisation behind one call signature."""

    kind: str = "batch"
    momentum: float = 0.9
    groups: int = 8
    dtype: Any = jnp.float32
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        if self.kind == "batch":
            return nn.BatchNorm(use_running_average=not train, momentum=self.momentum,
                                dtype=self.dtype, axis_name=self.axis_name)(x)
        if self.kind == "group":
            groups = min(self.groups, x.shape[-1])
            while x.shape[-1] % groups:
                groups -= 1
            return nn.GroupNorm(num_groups=groups, dtype=self.dtype)(x)
        if self.kind == "none":
            return x
        raise SatsegError(f"config.model.norm={self.kind!r}: expected one of {NORMS}")


class ConvBlock(nn.Module):
    """``n_convs`` × (3×3 conv → norm → ReLU): the unit every U-Net level is made of."""

    features: int
    n_convs: int = 2
    padding: str = "SAME"
    norm: str = "batch"
    momentum: float = 0.9
    dtype: Any = jnp.float32
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        for _ in range(self.n_convs):
            # No bias before a normalisation that has its own shift.
            x = nn.Conv(self.features, (3, 3), padding=self.padding,
                        use_bias=self.norm == "none", dtype=self.dtype)(x)
            x = Norm(self.norm, self.momentum, dtype=self.dtype, axis_name=self.axis_name)(
                x, train)
            x = nn.relu(x)
        return x


def down(x: jax.Array) -> jax.Array:
    """2×2 max-pooling, stride 2."""
    return nn.max_pool(x, (2, 2), strides=(2, 2))


class Up(nn.Module):
    """Double the resolution: 2×2 transposed conv, or bilinear resize + 3×3 conv.

    Both map to ``features`` channels (half of the coarser level in a U-Net).
    """

    features: int
    mode: str = "transpose"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.mode == "transpose":
            return nn.ConvTranspose(self.features, (2, 2), strides=(2, 2), padding="VALID",
                                    dtype=self.dtype)(x)
        if self.mode == "bilinear":
            n, h, w, c = x.shape
            x = jax.image.resize(x, (n, 2 * h, 2 * w, c), method="bilinear")
            return nn.Conv(self.features, (3, 3), padding="SAME", dtype=self.dtype)(x)
        raise SatsegError(f"config.model.upsample={self.mode!r}: expected transpose or bilinear")


def center_crop(x: jax.Array, height: int, width: int) -> jax.Array:
    """The central ``height × width`` window of an NHWC array (copy-and-crop skips)."""
    dh, dw = (x.shape[1] - height) // 2, (x.shape[2] - width) // 2
    return x[:, dh:dh + height, dw:dw + width, :]


class Head(nn.Module):
    """1×1 conv to class logits, returned in float32 whatever the compute dtype."""

    num_classes: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.Conv(self.num_classes, (1, 1), dtype=self.dtype)(x).astype(jnp.float32)
