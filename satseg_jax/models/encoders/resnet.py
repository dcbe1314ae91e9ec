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

Names: torch ``layer2.0.conv1.weight`` is ``layer2_0/conv1/kernel`` here,
``layer2.0.downsample.0`` / ``.1`` are ``layer2_0/downsample_conv`` / ``downsample_bn``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

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


def feature_channels(arch: str) -> tuple[int, ...]:
    """Channels of the five feature maps (strides 2, 4, 8, 16, 32)."""
    kind, _ = RESNET_LAYOUTS[arch]
    return (64, *(w * EXPANSION[kind] for w in STAGE_WIDTHS))


def _pad(k: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """torch's symmetric padding ``k // 2`` for a k×k kernel."""
    return ((k // 2, k // 2), (k // 2, k // 2))


class _Unit(nn.Module):
    """Shared fields of a block: compute dtype, BatchNorm mode and the conv stand-in."""

    dtype: Any = jnp.float32
    axis_name: str | None = None
    bn_momentum: float = 0.9
    conv_fn: Any = None

    def conv(self, features: int, k: int, stride: int, name: str) -> nn.Conv:
        return nn.Conv(features, (k, k), strides=(stride, stride), padding=_pad(k),
                       use_bias=False, dtype=self.dtype, conv_general_dilated=self.conv_fn,
                       name=name)

    def bn(self, train: bool, name: str) -> nn.BatchNorm:
        return nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                            epsilon=BN_EPSILON, dtype=self.dtype, axis_name=self.axis_name,
                            name=name)


class BasicBlock(_Unit):
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


class Bottleneck(_Unit):
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
            for i in range(count):
                stride = 2 if stage > 0 and i == 0 else 1
                out_channels = width * EXPANSION[kind]
                x = block_cls(features=width, stride=stride,
                              downsample=i == 0 and (stride != 1 or in_channels != out_channels),
                              dtype=self.dtype, axis_name=self.axis_name,
                              bn_momentum=self.bn_momentum, conv_fn=self.conv_fn,
                              name=f"layer{stage + 1}_{i}")(x, train)
                in_channels = out_channels
            features.append(x)
        return features
