"""DeepLabV3+ (Chen et al. 2018, "Encoder-Decoder with Atrous Separable Convolution for
Semantic Image Segmentation"), laid out exactly as segmentation_models_pytorch 0.6.0's
``DeepLabV3Plus``, over a named encoder run at output stride 16 (or 8).

- The encoder's deepest stage(s) are dilated instead of strided (smp's
  ``make_dilated``; ``ResNetEncoder.output_stride``).
- ASPP on the deepest feature map: a 1×1 branch, three 3×3 atrous branches (depthwise-
  separable by default) at ``atrous_rates``, and an image-pooling branch (global mean →
  1×1, broadcast back), each conv → BatchNorm → ReLU; concatenated, projected by
  1×1 → BN → ReLU → dropout; then a separable 3×3 → BN → ReLU.
- Bilinear ×4 (×2 at output stride 8; align_corners) to stride 4, concatenated with a
  48-channel 1×1 → BN → ReLU of the stride-4 feature map, a separable 3×3 → BN → ReLU,
  a 1×1 head, and bilinear ×4 (align_corners) to the input's size.

With ``encoder='resnet50'``, 3 bands and 2 classes it has smp's 26,677,842 parameters
(tests/test_decoders.py).

Config knobs (``config.model``; defaults in brackets): ``encoder`` ['resnet50'; a
named encoder with an ``output_stride`` option, 'none' refused], ``encoder_bn``
['train' | 'frozen'], ``output_stride`` [16 | 8], ``decoder_channels`` [256],
``atrous_rates`` [(12, 24, 36)], ``aspp_separable`` [True], ``aspp_dropout`` [0.5],
``bn_momentum`` [0.9, the decoder's BatchNorm]. Inputs must be divisible by
``output_stride``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from satseg_jax.errors import SatsegError
from satseg_jax.models.blocks import Norm
from satseg_jax.models.encoders import make_encoder
from satseg_jax.models.fpn import (
    check_named_encoder,
    check_positive,
    check_rate,
    require_multiple,
    upsample_align_corners,
)
from satseg_jax.models.registry import register_model

DEEPLAB_OUTPUT_STRIDES = (8, 16)  # as smp's DeepLabV3Plus
LOW_LEVEL_CHANNELS = 48  # the paper's reduction of the stride-4 features


# Layers built inside the calling module's compact method (``m``: the model or ASPP, for
# its dtype, conv stand-in, BatchNorm momentum and axis).
def _conv(m: nn.Module, x: jax.Array, features: int, k: int, name: str, dilation: int = 1,
          groups: int = 1) -> jax.Array:
    """A bias-free k×k conv with torch's padding ``(k // 2) * dilation``."""
    p = (k // 2) * dilation
    return nn.Conv(features, (k, k), padding=((p, p), (p, p)),
                   kernel_dilation=(dilation, dilation), feature_group_count=groups,
                   use_bias=False, dtype=m.dtype, conv_general_dilated=m.conv_fn,
                   name=name)(x)


def _separable(m: nn.Module, x: jax.Array, features: int, name: str, dilation: int = 1
               ) -> jax.Array:
    """smp's SeparableConv2d (bias-free): depthwise 3×3, then pointwise 1×1."""
    x = _conv(m, x, x.shape[-1], 3, f"{name}_depthwise", dilation, groups=x.shape[-1])
    return _conv(m, x, features, 1, f"{name}_pointwise")


def _bn_relu(m: nn.Module, x: jax.Array, train: bool, name: str) -> jax.Array:
    return Norm("batch", m.bn_momentum, dtype=m.dtype, axis_name=m.axis_name, relu=True,
                conv_fn=m.conv_fn, name=name)(x, train)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling as smp's ``ASPP`` (see the module docstring)."""

    features: int = 256
    bn_momentum: float = 0.9
    dtype: Any = jnp.float32
    axis_name: str | None = None
    conv_fn: Any = None
    atrous_rates: tuple[int, ...] = (12, 24, 36)
    separable_convs: bool = True
    dropout: float = 0.5

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        f = self.features
        branches = [_bn_relu(self, _conv(self, x, f, 1, "b0_conv"), train, "b0_bn")]
        for i, rate in enumerate(self.atrous_rates, start=1):
            if self.separable_convs:
                y = _separable(self, x, f, f"b{i}", dilation=rate)
            else:
                y = _conv(self, x, f, 3, f"b{i}_conv", dilation=rate)
            branches.append(_bn_relu(self, y, train, f"b{i}_bn"))
        # image pooling: global mean -> 1×1 -> BN -> ReLU, broadcast back (torch's
        # bilinear resize of a 1×1 map is a constant)
        pooled = jnp.mean(x, axis=(1, 2), keepdims=True)
        pooled = _bn_relu(self, _conv(self, pooled, f, 1, "pool_conv"), train, "pool_bn")
        branches.append(jnp.broadcast_to(pooled, (*x.shape[:3], f)))
        y = _conv(self, jnp.concatenate(branches, axis=-1), f, 1, "project_conv")
        y = _bn_relu(self, y, train, "project_bn")
        if self.dropout:
            y = nn.Dropout(self.dropout, deterministic=not train)(y)
        return y


@register_model("deeplabv3plus")
class DeepLabV3Plus(nn.Module):
    """smp's DeepLabV3Plus over a named encoder (see the module docstring)."""

    num_classes: int
    encoder: str = "resnet50"
    encoder_bn: str = "train"
    output_stride: int = 16
    decoder_channels: int = 256
    atrous_rates: tuple[int, ...] = (12, 24, 36)
    aspp_separable: bool = True
    aspp_dropout: float = 0.5
    bn_momentum: float = 0.9
    dtype: Any = jnp.float32
    axis_name: str | None = None
    conv_fn: Any = None  # set by the code (train.build_model), not by configs

    def __post_init__(self) -> None:
        check_named_encoder("deeplabv3plus", self.encoder, self.encoder_bn, "resnet50")
        if self.output_stride not in DEEPLAB_OUTPUT_STRIDES:
            raise SatsegError(f"config.model.output_stride={self.output_stride!r}: expected "
                              f"one of {list(DEEPLAB_OUTPUT_STRIDES)} (as smp's "
                              "DeepLabV3Plus)")
        try:  # a probe, unbound (parent=None): an encoder without the option refuses it
            make_encoder(self.encoder, output_stride=self.output_stride, parent=None)
        except TypeError:
            raise SatsegError(f"config.model.encoder={self.encoder!r}: that encoder has no "
                              "output_stride option (dilated deepest stages), which "
                              "deeplabv3plus needs; use a resnet encoder") from None
        check_positive("decoder_channels", self.decoder_channels)
        rates = self.atrous_rates
        if (not isinstance(rates, (tuple, list)) or len(rates) != 3
                or not all(isinstance(r, int) and not isinstance(r, bool) and r >= 1
                           for r in rates)):
            raise SatsegError(f"config.model.atrous_rates={rates!r}: expected three "
                              "integers >= 1, e.g. (12, 24, 36)")
        if not isinstance(self.aspp_separable, bool):
            raise SatsegError(f"config.model.aspp_separable={self.aspp_separable!r}: "
                              "expected True or False")
        check_rate("aspp_dropout", self.aspp_dropout)
        if not 0.0 <= float(self.bn_momentum) < 1.0:
            raise SatsegError(f"config.model.bn_momentum={self.bn_momentum!r}: expected "
                              "[0, 1), e.g. 0.9")
        super().__post_init__()

    @property
    def input_multiple(self) -> int:
        """What an input side must be divisible by: the (dilated) encoder's output stride."""
        return self.output_stride

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        require_multiple(x, self.input_multiple, "deeplabv3plus")
        features = make_encoder(self.encoder, dtype=self.dtype, axis_name=self.axis_name,
                                conv_fn=self.conv_fn, stages=5,
                                output_stride=self.output_stride,
                                name="encoder")(x, train and self.encoder_bn == "train")
        common = {"features": self.decoder_channels, "bn_momentum": self.bn_momentum,
                  "dtype": self.dtype, "axis_name": self.axis_name, "conv_fn": self.conv_fn}
        f = self.decoder_channels
        h = ASPP(**common, atrous_rates=tuple(self.atrous_rates),
                 separable_convs=self.aspp_separable, dropout=self.aspp_dropout,
                 name="aspp")(features[-1], train)
        h = _bn_relu(self, _separable(self, h, f, "aspp_sep"), train, "aspp_bn")
        h = upsample_align_corners(h, 4 if self.output_stride == 16 else 2)
        low = _bn_relu(self, _conv(self, features[1], LOW_LEVEL_CHANNELS, 1, "low_conv"),
                       train, "low_bn")
        h = jnp.concatenate([h, low], axis=-1)
        h = _bn_relu(self, _separable(self, h, f, "fuse"), train, "fuse_bn")
        logits = nn.Conv(self.num_classes, (1, 1), dtype=self.dtype,
                         conv_general_dilated=self.conv_fn, name="head")(h)
        return upsample_align_corners(logits.astype(jnp.float32), 4)
