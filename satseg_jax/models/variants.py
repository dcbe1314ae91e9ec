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

from satseg_jax.errors import SatsegError
from satseg_jax.models.blocks import (
    ConvBlock,
    ConvTranspose2x2,
    Head,
    Up,
    down,
    make_block,
    upsample2x,
)
from satseg_jax.models.encoders import NO_ENCODER, check_encoder, make_encoder
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
    are the mean of the 1×1 heads on X[0][1..depth] (the paper's averaging mode).

    With a named ``encoder`` (``models/encoders``) the decoder is smp's
    ``UnetPlusPlusDecoder`` over that encoder's first ``depth`` feature maps (see
    ``_encoder_forward``): depth 5, base width 16 and ``upsample='nearest'`` is smp's
    ``UnetPlusPlus`` (decoder channels 256, 128, 64, 32, 16; 26,078,754 parameters over
    resnet34 for 3 bands and 2 classes). ``encoder='none'`` is the model above, unchanged.
    """

    base_width: int = 32
    deep_supervision: bool = False

    def __post_init__(self) -> None:
        check_encoder(self.encoder)  # first: an unknown name is the error to report
        if self.encoder != NO_ENCODER and self.deep_supervision:
            raise SatsegError("config.model.deep_supervision=True: unet_plus_plus has it only "
                              "with encoder='none' (over a named encoder only the last node "
                              "is at full resolution, as in smp); set deep_supervision=False")
        if self.encoder != NO_ENCODER and isinstance(self.depth, int) and self.depth < 2:
            raise SatsegError(f"config.model.depth={self.depth} with encoder "
                              f"{self.encoder!r}: unet_plus_plus needs at least 2 encoder "
                              "stages (smp: 3 to 5)")
        super().__post_init__()

    def _up(self, x: jax.Array) -> jax.Array:
        """×2 up-sampling keeping the channels (smp's interpolation; 'transpose' is a
        learnt 2×2 up-conv, as in the U-Net's encoder path)."""
        if self.upsample == "transpose":
            return ConvTranspose2x2(x.shape[-1], (2, 2), strides=(2, 2), padding="VALID",
                                    dtype=self.dtype, conv_fn=self.conv_fn)(x)
        return upsample2x(x, self.upsample)

    def _encoder_forward(self, x: jax.Array, train: bool) -> jax.Array:
        """smp's UnetPlusPlusDecoder over a named encoder, node for node.

        ``f[0..n-1]`` are the encoder's feature maps deepest first (n = depth; the
        stride-2 map last, a 0-channel map where the encoder has none, as smp's timm
        encoders give). Node ``x_{d}_{l}`` (smp's name, kept as the submodule's) is at
        the resolution of ``f[l+1]``: it up-samples ``x_{d}_{l-1}`` (``f[d]`` when l = d),
        concatenates ``x_{d+1..l}_{l}`` and ``f[l+1]``, and applies two 3×3 conv → norm →
        ReLU. ``x_{0}_{l}`` have the decoder widths ``base_width * 2**(n-1-l)``, the
        nested ``x_{d>0}_{l}`` the width of ``f[l+1]`` (0: an empty node); the last node
        ``x_{0}_{n-1}`` up-samples to full resolution without a skip. A 3×3 head."""
        n = self.depth
        require_divisible(x, n, "unet_plus_plus")
        feats = make_encoder(self.encoder, dtype=self.dtype, axis_name=self.axis_name,
                             conv_fn=self.conv_fn, stages=n,
                             name="encoder")(x, train and self.encoder_bn == "train")
        feats = [jnp.zeros((x.shape[0], x.shape[1] >> (i + 1), x.shape[2] >> (i + 1), 0),
                           self.dtype) if a is None else a for i, a in enumerate(feats)]
        f = feats[::-1]
        if self.dropout:
            f[0] = nn.Dropout(self.dropout, deterministic=not train)(f[0])
        skip_ch = [a.shape[-1] for a in f[1:]]

        def node(d: int, at: int, h: jax.Array, skips: list[jax.Array]) -> jax.Array:
            width = self.base_width * 2**(n - 1 - at) if d == 0 else skip_ch[at]
            if width == 0:  # smp's empty block: no stride-2 map, nothing to convolve
                return jnp.zeros((h.shape[0], 2 * h.shape[1], 2 * h.shape[2], 0), h.dtype)
            h = self._up(h)
            if skips:
                h = jnp.concatenate([h, *skips], axis=-1)
            return ConvBlock(width, norm=self.norm, momentum=self.bn_momentum,
                             dtype=self.dtype, axis_name=self.axis_name,
                             conv_fn=self.conv_fn, name=f"x_{d}_{at}")(h, train)

        dense: dict[tuple[int, int], jax.Array] = {}
        for layer in range(n - 1):
            for d in range(n - 1 - layer):
                if layer == 0:
                    dense[d, d] = node(d, d, f[d], [f[d + 1]])
                else:
                    at = d + layer  # smp's dense_l_i
                    skips = [dense[i, at] for i in range(d + 1, at + 1)] + [f[at + 1]]
                    dense[d, at] = node(d, at, dense[d, at - 1], skips)
        h = node(0, n - 1, dense[0, n - 2], [])
        logits = nn.Conv(self.num_classes, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype,
                         conv_general_dilated=self.conv_fn, name="head")(h)
        return logits.astype(jnp.float32)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if self.encoder != NO_ENCODER:
            return self._encoder_forward(x, train)
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
