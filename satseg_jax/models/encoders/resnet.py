"""ResNet-18/34/50 encoders (He et al. 2016), laid out exactly as torchvision's ``resnet*``
(and timm's, which share the layout): the same layers, strides, paddings and names, so a
torchvision / timm / torchgeo state dict converts key for key
(``satseg_jax.weights.convert``) and gives the same features.

Each returns the feature pyramid at strides 2, 4, 8, 16 and 32 (smp's encoder outputs
without the input itself): ``relu(bn1(conv1(x)))``, ``layer1`` (after the 3×3 max-pool),
``layer2``, ``layer3``, ``layer4``.

Why explicit paddings and not ``"SAME"``: XLA's SAME pads a stride-2 convolution of an
even input by (0, 1), torch by (1, 1); the features would be shifted by half a pixel
and pretrained weights would not give their published features. ResNet-50 is the "v1.5"
torchvision variant (stride in the 3×3 convolution of each bottleneck).

``output_stride`` 16 (or 8) dilates the deepest stage(s) as smp's ``make_dilated`` does
for DeepLab: every convolution of ``layer4`` (and ``layer3`` for 8) gets stride 1,
dilation ``stage stride // output_stride`` and padding ``(k // 2) * dilation``; the
parameters are the same, only the last feature maps stay at the output stride.

Names: torch ``layer2.0.conv1.weight`` is ``layer2_0/conv1/kernel`` here,
``layer2.0.downsample.0`` / ``.1`` are ``layer2_0/downsample_conv`` / ``downsample_bn``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from satseg_jax.errors import SatsegError

# arch -> (block kind, blocks per stage)
RESNET_LAYOUTS: dict[str, tuple[str, tuple[int, int, int, int]]] = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
}
STAGE_WIDTHS = (64, 128, 256, 512)
EXPANSION = {"basic": 1, "bottleneck": 4}
# torch BatchNorm2d's default epsilon; momentum 0.1 there is 0.9 in flax's convention.
BN_EPSILON = 1e-5
OUTPUT_STRIDES = (8, 16, 32)  # stride of the deepest feature map (smp: 8 and 16 dilate)


def feature_channels(arch: str) -> tuple[int, ...]:
    """Channels of the five feature maps (strides 2, 4, 8, 16, 32)."""
    kind, _ = RESNET_LAYOUTS[arch]
    return (64, *(w * EXPANSION[kind] for w in STAGE_WIDTHS))


def _pad(k: int, dilation: int = 1) -> tuple[tuple[int, int], tuple[int, int]]:
    """torch's symmetric padding ``k // 2`` for a k×k kernel (times the dilation, as
    smp's ``replace_strides_with_dilation`` sets it)."""
    p = (k // 2) * dilation
    return ((p, p), (p, p))


class _Unit(nn.Module):
    """Shared fields of a block: compute dtype, BatchNorm mode and the conv stand-in."""

    dtype: Any = jnp.float32
    axis_name: str | None = None
    bn_momentum: float = 0.9
    conv_fn: Any = None

    def conv(self, features: int, k: int, stride: int, name: str, dilation: int = 1
             ) -> nn.Conv:
        d = dilation
        return nn.Conv(features, (k, k), strides=(stride, stride), padding=_pad(k, d),
                       kernel_dilation=(d, d), use_bias=False, dtype=self.dtype,
                       conv_general_dilated=self.conv_fn, name=name)

    def bn(self, train: bool, name: str) -> nn.BatchNorm:
        return nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                            epsilon=BN_EPSILON, dtype=self.dtype, axis_name=self.axis_name,
                            name=name)


class _Block(_Unit):
    """A residual block: every convolution of it dilated by ``dilation`` (1, or the rate
    of a dilated stage)."""

    dilation: int = 1

    def conv(self, features: int, k: int, stride: int, name: str, dilation: int = 1
             ) -> nn.Conv:
        return super().conv(features, k, stride, name, dilation=self.dilation * dilation)


class BasicBlock(_Block):
    """Two 3×3 convolutions with a skip (ResNet-18/34)."""

    features: int = 64
    stride: int = 1
    downsample: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        y = nn.relu(self.bn(train, "bn1")(self.conv(self.features, 3, self.stride, "conv1")(x)))
        y = self.bn(train, "bn2")(self.conv(self.features, 3, 1, "conv2")(y))
        if self.downsample:
            x = self.bn(train, "downsample_bn")(
                self.conv(self.features, 1, self.stride, "downsample_conv")(x))
        return nn.relu(x + y)


class Bottleneck(_Block):
    """1×1 reduce, 3×3 (strided), 1×1 expand ×4, with a skip (ResNet-50, v1.5)."""

    features: int = 64
    stride: int = 1
    downsample: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        y = nn.relu(self.bn(train, "bn1")(self.conv(self.features, 1, 1, "conv1")(x)))
        y = nn.relu(self.bn(train, "bn2")(self.conv(self.features, 3, self.stride, "conv2")(y)))
        y = self.bn(train, "bn3")(self.conv(self.features * 4, 1, 1, "conv3")(y))
        if self.downsample:
            x = self.bn(train, "downsample_bn")(
                self.conv(self.features * 4, 1, self.stride, "downsample_conv")(x))
        return nn.relu(x + y)


class ResNetEncoder(_Unit):
    """A torchvision-layout ResNet without its classifier; returns the first ``stages``
    feature maps (all 5 by default; fewer skip the deeper stages' work and parameters)."""

    arch: str = "resnet34"
    stages: int = 5  # feature maps to compute (strides 2 .. 2**stages)
    output_stride: int = 32  # 16 / 8: the deepest stage(s) dilated instead of strided

    def __post_init__(self) -> None:
        if self.output_stride not in OUTPUT_STRIDES:
            raise SatsegError(f"encoder output_stride={self.output_stride!r}: expected one "
                              f"of {list(OUTPUT_STRIDES)}")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> list[jax.Array]:
        kind, blocks = RESNET_LAYOUTS[self.arch]
        block_cls = BasicBlock if kind == "basic" else Bottleneck
        x = x.astype(self.dtype)
        x = nn.relu(self.bn(train, "bn1")(self.conv(64, 7, 2, "conv1")(x)))
        features = [x]
        if self.stages == 1:
            return features
        # torch's MaxPool2d(3, 2, padding=1) pads with -inf, as flax's max_pool does.
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        in_channels = 64
        for stage, (width, count) in enumerate(zip(STAGE_WIDTHS[:self.stages - 1],
                                                    blocks)):
            # smp's make_dilated: a stage whose stride would pass the output stride
            # keeps the resolution, every conv of it dilated by the stride it skips.
            dilation = max(1, (4 << stage) // self.output_stride)
            for i in range(count):
                stride = 2 if stage > 0 and i == 0 else 1
                out_channels = width * EXPANSION[kind]
                x = block_cls(features=width, stride=1 if dilation > 1 else stride,
                              downsample=i == 0 and (stride != 1 or in_channels != out_channels),
                              dtype=self.dtype, axis_name=self.axis_name,
                              bn_momentum=self.bn_momentum, conv_fn=self.conv_fn,
                              dilation=dilation, name=f"layer{stage + 1}_{i}")(x, train)
                in_channels = out_channels
            features.append(x)
        return features
