"""U-Net variants that reuse the U-Net forward pass with other blocks or gated skips,
and U-Net++ with nested dense skips. Every variant takes the shared knobs: depth,
base_width, norm (batch/group/none), dropout (bottleneck), upsample (transpose/bilinear).
"""

from __future__ import annotations

import functools
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from satseg_jax.models.blocks import Head, Up, down, make_block
from satseg_jax.models.registry import register_model
from satseg_jax.models.unet import UNet, UNetKnobs, require_divisible


@register_model("attention_unet")
class AttentionUNet(UNet):
    """Attention U-Net (Oktay et al. 2018, "Attention U-Net: Learning Where to Look for the
    Pancreas"): additive attention gates, driven by the up-sampled decoder features,
    weight each skip connection before concatenation."""

    attention: ClassVar[bool] = True


@register_model("residual_unet")
class ResidualUNet(UNet):
    """ResUNet (Zhang, Liu & Wang 2018, "Road Extraction by Deep Residual U-Net"):
    pre-activation residual units in place of the plain conv blocks (down-sampling by
    max-pooling here, shared with the other variants, instead of strided convs)."""

    block_kind: ClassVar[str] = "residual"


@register_model("r2_unet")
class R2UNet(UNet):
    """R2U-Net (Alom et al. 2018, "Recurrent Residual Convolutional Neural Network based
    on U-Net"): recurrent residual units (two recurrent conv layers, t=2) per level."""

    block_kind: ClassVar[str] = "recurrent"


@register_model("unet_plus_plus")
class UNetPlusPlus(UNetKnobs):
    """UNet++ (Zhou et al. 2018, "UNet++: A Nested U-Net Architecture for Medical Image
    Segmentation"): node X[i][j] = block(concat(X[i][0..j-1], up(X[i+1][j-1]))), so the
    decoder of every sub-depth shares the encoder. With ``deep_supervision`` the logits
    are the mean of the 1×1 heads on X[0][1..depth] (the paper's averaging mode)."""

    base_width: int = 32
    deep_supervision: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        require_divisible(x, self.depth, "unet_plus_plus")
        x = x.astype(self.dtype)

        def block(level: int) -> nn.Module:
            return make_block("conv", self.base_width * 2**level, padding="SAME",
                              norm=self.norm, momentum=self.bn_momentum, dtype=self.dtype,
                              conv_fn=self.conv_fn,
                              axis_name=self.axis_name)

        nodes: list[list[jax.Array]] = [[] for _ in range(self.depth + 1)]
        h = x
        for i in range(self.depth + 1):  # backbone column X[i][0]
            if i:
                h = down(h)
            h = block(i)(h, train)
            if i == self.depth and self.dropout:
                h = nn.Dropout(self.dropout, deterministic=not train)(h)
            nodes[i].append(h)
        for j in range(1, self.depth + 1):  # nested columns
            for i in range(self.depth + 1 - j):
                up = Up(self.base_width * 2**i, self.upsample, dtype=self.dtype,
                        conv_fn=self.conv_fn)(
                    nodes[i + 1][j - 1])
                nodes[i].append(block(i)(jnp.concatenate([*nodes[i][:j], up], axis=-1), train))
        head = functools.partial(Head, self.num_classes, dtype=self.dtype, conv_fn=self.conv_fn)
        if self.deep_supervision:
            heads = [head()(n) for n in nodes[0][1:]]
            return jnp.mean(jnp.stack(heads), axis=0)
        return head()(nodes[0][self.depth])
