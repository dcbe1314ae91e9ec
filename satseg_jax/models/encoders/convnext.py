"""ConvNeXt-Tiny encoder (Liu et al. 2022, "A ConvNet for the 2020s", CVPR), laid out
exactly as timm's ``convnext_tiny`` (timm 1.0): the same layers, strides, paddings,
epsilons and names, so a timm state dict converts key for key
(``satseg_jax.weights.convert``) and gives the same features.

Layout (depths 3, 3, 9, 3; widths 96, 192, 384, 768):

- stem: 4×4 convolution, stride 4 (no padding), then LayerNorm over channels;
- stages 1-3 start with LayerNorm + 2×2 convolution, stride 2 (no padding);
- every block: 7×7 depthwise convolution (padding 3, bias) -> LayerNorm -> Linear 4C ->
  GELU -> Linear C -> × layer scale ``gamma`` (per channel, initialised to 1e-6) -> + the
  block's input. Drop path is the identity at inference (and its rate is 0 here).

Why these details matter: pretrained weights only give their published features with the
same arithmetic. timm's GELU is the exact (erf) one, flax's ``nn.gelu`` defaults to the
tanh approximation, so ``approximate=False`` is spelt out; timm's LayerNorm epsilon is
1e-6 (torch's default is 1e-5), and its variance is the two-pass one
(``use_fast_variance=False``, which keeps precision when the residual stream has a
large mean).

Features: ConvNeXt has no stride-2 map (its stem is a stride-4 patchify), so the pyramid
at strides 2, 4, 8, 16, 32 has ``None`` at stride 2, as smp's ``tu-convnext_tiny``
encoder has a 0-channel placeholder there: the U-Net decoder then takes no skip at that
level (``models/unet.py``). Stage outputs are taken after their last block, without a
final norm (timm's ``features_only`` outputs).

Names: timm ``stem.0.weight`` is ``stem_0/kernel`` here, ``stages.1.downsample.1.weight``
``stages_1/downsample_1/kernel``, ``stages.0.blocks.2.mlp.fc1.weight``
``stages_0/blocks_2/mlp/fc1/kernel`` and ``stages.0.blocks.2.gamma``
``stages_0/blocks_2/gamma``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from satseg_jax.errors import SatsegError

# arch -> (blocks per stage, channels per stage)
CONVNEXT_LAYOUTS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "convnext_tiny": ((3, 3, 9, 3), (96, 192, 384, 768)),
}
LN_EPSILON = 1e-6  # timm's LayerNorm / LayerNorm2d default
LAYER_SCALE_INIT = 1e-6  # timm's ls_init_value
MLP_RATIO = 4
KERNEL = 7  # depthwise kernel
PATCH = 4  # stem stride


def feature_channels(arch: str) -> tuple[int, ...]:
    """Channels of the five feature maps (strides 2, 4, 8, 16, 32); 0 at stride 2."""
    return (0, *CONVNEXT_LAYOUTS[arch][1])


class _Unit(nn.Module):
    """Shared fields: compute dtype and the conv stand-in."""

    dtype: Any = jnp.float32
    conv_fn: Any = None

    def conv(self, features: int, k: int, stride: int, pad: int, name: str,
             groups: int = 1) -> nn.Conv:
        return nn.Conv(features, (k, k), strides=(stride, stride),
                       padding=((pad, pad), (pad, pad)), feature_group_count=groups,
                       use_bias=True, dtype=self.dtype, conv_general_dilated=self.conv_fn,
                       name=name)

    def norm(self, name: str) -> nn.LayerNorm:
        return nn.LayerNorm(epsilon=LN_EPSILON, use_fast_variance=False, dtype=self.dtype,
                            name=name)


class _Mlp(nn.Module):
    """timm's ``Mlp``: fc1 -> exact GELU -> fc2."""

    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.Dense(self.features * MLP_RATIO, dtype=self.dtype, name="fc1")(x)
        x = nn.gelu(x, approximate=False)
        return nn.Dense(self.features, dtype=self.dtype, name="fc2")(x)


class ConvNeXtBlock(_Unit):
    """Depthwise 7×7 -> LayerNorm -> MLP ×4 -> layer scale, with a skip."""

    features: int = 96

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.features
        y = self.conv(c, KERNEL, 1, KERNEL // 2, "conv_dw", groups=c)(x)
        y = _Mlp(c, dtype=self.dtype, name="mlp")(self.norm("norm")(y))
        gamma = self.param("gamma", nn.initializers.constant(LAYER_SCALE_INIT), (c,))
        return x + y * gamma.astype(y.dtype)


class ConvNeXtStage(_Unit):
    """Optional LayerNorm + 2×2 stride-2 convolution, then ``depth`` blocks."""

    features: int = 96
    depth: int = 3
    downsample: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.downsample:
            x = self.norm("downsample_0")(x)
            x = self.conv(self.features, 2, 2, 0, "downsample_1")(x)
        for i in range(self.depth):
            x = ConvNeXtBlock(features=self.features, dtype=self.dtype, conv_fn=self.conv_fn,
                              name=f"blocks_{i}")(x)
        return x


class ConvNeXtEncoder(_Unit):
    """A timm-layout ConvNeXt without its classifier head; returns the first ``stages``
    entries of the pyramid ``[None, stage0, stage1, stage2, stage3]`` (strides 2 to 32;
    fewer skip the deeper stages' work and parameters).

    ``axis_name`` and ``bn_momentum`` are accepted for the same call as the ResNet
    encoders and unused (LayerNorm has no batch statistics); ``train`` changes nothing
    (no dropout, no drop path)."""

    axis_name: str | None = None
    bn_momentum: float = 0.9
    arch: str = "convnext_tiny"
    stages: int = 5  # feature maps to return (strides 2 .. 2**stages)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> list[jax.Array | None]:
        del train
        if self.stages < 2:
            raise SatsegError(f"encoder {self.arch!r} has no stride-2 feature map: use 2 to 5 "
                              f"stages (config.model.depth), got {self.stages}")
        depths, dims = CONVNEXT_LAYOUTS[self.arch]
        x = x.astype(self.dtype)
        x = self.conv(dims[0], PATCH, PATCH, 0, "stem_0")(x)
        x = self.norm("stem_1")(x)
        features: list[jax.Array | None] = [None]
        for i, (depth, width) in enumerate(zip(depths[:self.stages - 1], dims)):
            x = ConvNeXtStage(features=width, depth=depth, downsample=i > 0,
                              dtype=self.dtype, conv_fn=self.conv_fn, name=f"stages_{i}")(x)
            features.append(x)
        return features
