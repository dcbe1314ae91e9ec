"""U-Net (Ronneberger, Fischer & Brox 2015, "U-Net: Convolutional Networks for Biomedical
Image Segmentation", MICCAI) in its published valid-convolution form and the common
same-padded variant.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from satseg_jax.errors import SatsegError
from satseg_jax.models.blocks import ConvBlock, Head, Up, center_crop, down
from satseg_jax.models.registry import register_model


def valid_output_size(input_size: int, depth: int) -> int | None:
    """Output side of the valid-convolution U-Net for an input side, or None if invalid.

    Each level loses 4 pixels to two unpadded 3×3 convs; pooling needs an even size.
    """
    s = input_size
    for _ in range(depth):
        s -= 4
        if s <= 0 or s % 2:
            return None
        s //= 2
    s -= 4
    if s <= 0:
        return None
    for _ in range(depth):
        s = 2 * s - 4
    return s if s > 0 else None


def valid_input_size(min_output: int, depth: int) -> int:
    """The smallest valid input whose output side is at least ``min_output``."""
    s = 1
    while True:
        out = valid_output_size(s, depth)
        if out is not None and out >= min_output:
            return s
        s += 1


def largest_valid_input(max_input: int, depth: int) -> int | None:
    """The largest valid input side not above ``max_input`` (e.g. a patch size)."""
    for s in range(max_input, 0, -1):
        if valid_output_size(s, depth) is not None:
            return s
    return None


class _UNetBase(nn.Module):
    """Encoder–decoder with skips; subclasses fix padding and defaults."""

    num_classes: int
    depth: int = 4
    base_width: int = 64
    norm: str = "batch"
    dropout: float = 0.0
    upsample: str = "transpose"
    bn_momentum: float = 0.9
    dtype: Any = jnp.float32
    axis_name: str | None = None
    padding: str = "SAME"

    def _check_input(self, x: jax.Array) -> None:
        raise NotImplementedError

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        self._check_input(x)
        x = x.astype(self.dtype)
        block = lambda f: ConvBlock(f, padding=self.padding, norm=self.norm,  # noqa: E731
                                    momentum=self.bn_momentum, dtype=self.dtype,
                                    axis_name=self.axis_name)
        skips = []
        for level in range(self.depth):
            x = block(self.base_width * 2**level)(x, train)
            skips.append(x)
            x = down(x)
        x = block(self.base_width * 2**self.depth)(x, train)
        if self.dropout:
            x = nn.Dropout(self.dropout, deterministic=not train)(x)
        for level in reversed(range(self.depth)):
            width = self.base_width * 2**level
            x = Up(width, self.upsample, dtype=self.dtype)(x)
            skip = center_crop(skips[level], x.shape[1], x.shape[2])
            x = jnp.concatenate([skip, x], axis=-1)
            x = block(width)(x, train)
        return Head(self.num_classes, dtype=self.dtype)(x)


@register_model("unet")
class UNet(_UNetBase):
    """Same-padded U-Net: output = input size; optional BatchNorm/GroupNorm and dropout.

    Inputs must be divisible by ``2**depth``. Based on Ronneberger et al. 2015 with the
    padding, normalisation and bilinear up-sampling options used by most later work.
    """

    def _check_input(self, x: jax.Array) -> None:
        f = 2**self.depth
        if x.shape[1] % f or x.shape[2] % f:
            raise SatsegError(
                f"unet with depth {self.depth} needs inputs divisible by {f}, got "
                f"{x.shape[1]}×{x.shape[2]}; change config.data.crop_size or model.depth"
            )


@register_model("unet_original")
class UNetOriginal(_UNetBase):
    """The published U-Net: unpadded 3×3 convs + ReLU, 2×2 max-pool, 2×2 up-conv halving
    the channels, copy-and-crop skips, 1×1 head, no normalisation.

    With depth 4 and base width 64 it has 31,030,658 parameters for 1 band and 2 classes,
    and a 572×572 input gives a 388×388 output (the paper's Fig. 1).
    """

    norm: str = "none"
    padding: str = "VALID"

    def _check_input(self, x: jax.Array) -> None:
        if x.shape[1] != x.shape[2] or valid_output_size(x.shape[1], self.depth) is None:
            ok = largest_valid_input(x.shape[1], self.depth)
            raise SatsegError(
                f"unet_original with depth {self.depth} cannot take {x.shape[1]}×{x.shape[2]} "
                f"inputs (a pooled size would be odd); use a square crop such as {ok} "
                "(config.data.crop_size and config.eval.crop_size)"
            )
