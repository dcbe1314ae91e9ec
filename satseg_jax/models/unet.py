"""U-Net (Ronneberger, Fischer & Brox 2015, "U-Net: Convolutional Networks for Biomedical
Image Segmentation", MICCAI) in its published valid-convolution form and the common
same-padded variant.

Config knobs (``config.model``; defaults in brackets), shared by both and by the
variants in ``variants.py``:

- ``depth`` [4]: number of 2×2 down-samplings (levels = depth + 1).
- ``base_width`` [64]: channels of the first level; doubled per level.
- ``norm`` ['batch' for unet, 'none' for unet_original]: 'batch' | 'group' | 'none'.
- ``dropout`` [0.0]: dropout rate at the bottleneck (the paper's "drop-out layers at the
  end of the contracting path"); active only with ``train=True``.
- ``upsample`` ['transpose']: 'transpose' (2×2 up-conv) | 'bilinear' (resize + 3×3 conv).
- ``bn_momentum`` [0.9]: BatchNorm running-statistics momentum.
- ``encoder`` ['none']: 'none' is the plain encoder above; a name of
  ``models/encoders`` (``resnet18``/``34``/``50``) puts that encoder under the decoder,
  smp-style (see ``_UNetBase._encoder_forward``): ``depth`` (1-5) is then the number of
  encoder stages used, and decoder level ``l`` has ``base_width * 2**l`` channels, so
  depth 5, base width 16 and ``upsample='nearest'`` is smp's ``Unet`` decoder
  (256, 128, 64, 32, 16) with its 3×3 head.
- ``encoder_bn`` ['train']: 'frozen' keeps a named encoder's BatchNorm in inference mode
  while training (its running statistics, e.g. pretrained ones, stay as they are; the
  usual choice for small batches). The decoder's BatchNorm trains either way.

Models are called ``model.apply(variables, x, train=bool, rngs={'dropout': key})`` on
NHWC float input and return float32 LOGITS (never probabilities).
"""

from __future__ import annotations

from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from satseg_jax.errors import SatsegError
from satseg_jax.models.blocks import (
    AttentionGate,
    ConvTranspose2x2,
    Head,
    Up,
    center_crop,
    check_unet_knobs,
    down,
    make_block,
    upsample2x,
)
from satseg_jax.models.encoders import NO_ENCODER, check_encoder, make_encoder
from satseg_jax.models.registry import register_model

MAX_ENCODER_DEPTH = 5  # encoders give feature maps at strides 2 to 32
ENCODER_BN_MODES = ("train", "frozen")


def valid_output_size(input_size: int, depth: int) -> int | None:
    """Output side of ``unet_original`` for an input side, or None if that input is invalid.

    Each level loses 4 pixels to two unpadded 3×3 convs, and every size reaching a 2×2
    max-pool must be even (an odd size would drop a row, and the copy-and-crop skips
    would no longer be centred). Example: depth 4, 572 -> 388 (the paper's Fig. 1).
    """
    s = int(input_size)
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


def valid_input_size(output_size: int, depth: int) -> int:
    """The smallest valid ``unet_original`` input whose output side is >= ``output_size``.

    With f = 2**depth, valid inputs are exactly ``f * b + 4 * (f - 1)`` (``b`` the
    bottleneck's input side) whose output, ``input - border`` with the constant
    ``border = 8 * (f - 1) + 4 * f`` (184 px for depth 4), is at least 1 px; so the
    answer is closed-form. Training uses it to size crops, prediction to pick each
    tile's context.
    """
    f = 2**depth
    border = 8 * (f - 1) + 4 * f
    target = max(int(output_size), 1)
    b = -(-(target + border - 4 * (f - 1)) // f)  # ceil
    return f * b + 4 * (f - 1)


def largest_valid_input(max_input: int, depth: int) -> int | None:
    """The largest valid ``unet_original`` input side not above ``max_input`` (e.g. a
    patch size), or None if even the smallest valid input is larger."""
    f = 2**depth
    size = f * ((int(max_input) - 4 * (f - 1)) // f) + 4 * (f - 1)
    return size if size >= valid_input_size(1, depth) else None


def valid_input_sizes(depth: int, max_input: int) -> list[int]:
    """Every valid ``unet_original`` input side up to ``max_input`` (for error messages
    and for choosing crop sizes)."""
    f = 2**depth
    return list(range(valid_input_size(1, depth), int(max_input) + 1, f))


def require_divisible(x: jax.Array, depth: int, model: str) -> None:
    """Same-padded U-Nets pool ``depth`` times: the input must be divisible by 2**depth."""
    f = 2**depth
    if x.shape[1] % f or x.shape[2] % f:
        raise SatsegError(
            f"{model} with depth {depth} needs inputs divisible by {f}, got "
            f"{x.shape[1]}×{x.shape[2]}; change config.data.crop_size or model.depth"
        )


class UNetKnobs(nn.Module):
    """The knobs every U-Net variant shares (validated once, here)."""

    num_classes: int
    depth: int = 4
    base_width: int = 64
    norm: str = "batch"
    dropout: float = 0.0
    upsample: str = "transpose"
    bn_momentum: float = 0.9
    encoder: str = NO_ENCODER
    encoder_bn: str = "train"
    dtype: Any = jnp.float32
    axis_name: str | None = None
    conv_fn: Any = None  # set by the code (train.build_model), not by configs

    def __post_init__(self) -> None:
        check_unet_knobs(self.depth, self.base_width, self.norm, self.upsample, self.dropout,
                         self.bn_momentum)
        check_encoder(self.encoder)
        if self.encoder_bn not in ENCODER_BN_MODES:
            raise SatsegError(f"config.model.encoder_bn={self.encoder_bn!r}: expected one of "
                              f"{list(ENCODER_BN_MODES)}")
        if self.encoder != NO_ENCODER and self.depth > MAX_ENCODER_DEPTH:
            raise SatsegError(f"config.model.depth={self.depth} with encoder "
                              f"{self.encoder!r}: at most {MAX_ENCODER_DEPTH} (its stages)")
        super().__post_init__()

    @property
    def input_multiple(self) -> int:
        """What an input side must be divisible by: one 2×2 down-sampling per level."""
        return 2**self.depth


class _UNetBase(UNetKnobs):
    """Encoder–decoder with skips; subclasses fix padding, block kind and attention.

    Variants differ only in ``block_kind`` (conv / residual / recurrent) and whether
    attention gates weight the skips, so they share this one forward pass.
    """

    block_kind: ClassVar[str] = "conv"
    attention: ClassVar[bool] = False

    padding: str = "SAME"

    def _check_input(self, x: jax.Array) -> None:
        raise NotImplementedError

    def block(self, features: int) -> nn.Module:
        return make_block(self.block_kind, features, padding=self.padding, norm=self.norm,
                          momentum=self.bn_momentum, dtype=self.dtype, axis_name=self.axis_name,
                          conv_fn=self.conv_fn)

    def _upsample(self, x: jax.Array) -> jax.Array:
        """×2 up-sampling in the encoder path, keeping the channels (nearest is smp's; the
        level block after it does the convolving)."""
        if self.upsample == "transpose":
            return ConvTranspose2x2(x.shape[-1], (2, 2), strides=(2, 2), padding="VALID",
                                    dtype=self.dtype, conv_fn=self.conv_fn)(x)
        return upsample2x(x, self.upsample)

    def _encoder_forward(self, x: jax.Array, train: bool) -> jax.Array:
        """A named encoder (``models/encoders``) under a U-Net decoder, as smp builds it:
        from the deepest feature map up, ×2 up-sampling, concatenation with the encoder
        feature of that stride (decoder features first), one level block; the last level
        (stride 1) has no skip, nor has a level whose encoder feature is ``None`` (ConvNeXt
        at stride 2, where smp has a 0-channel placeholder); a 3×3 head. The encoder's
        submodule is named ``encoder``, which is what pretrained weights
        (``config.model.encoder_weights``) replace."""
        require_divisible(x, self.depth, self.__class__.__name__)
        features = make_encoder(self.encoder, dtype=self.dtype, axis_name=self.axis_name,
                                conv_fn=self.conv_fn, stages=self.depth,
                                name="encoder")(x, train and self.encoder_bn == "train")
        h = features[-1]
        if self.dropout:
            h = nn.Dropout(self.dropout, deterministic=not train)(h)
        for level in reversed(range(self.depth)):
            width = self.base_width * 2**level
            h = self._upsample(h)
            skip = features[level - 1] if level else None
            if skip is not None:  # None: the encoder has no map at this stride (ConvNeXt)
                if self.attention:
                    skip = AttentionGate(max(1, width // 2), dtype=self.dtype,
                                         conv_fn=self.conv_fn)(skip, h)
                h = jnp.concatenate([h, skip], axis=-1)
            h = self.block(width)(h, train)
        logits = nn.Conv(self.num_classes, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype,
                         conv_general_dilated=self.conv_fn, name="head")(h)
        return logits.astype(jnp.float32)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if self.encoder != NO_ENCODER:
            return self._encoder_forward(x, train)
        self._check_input(x)
        x = x.astype(self.dtype)
        block = self.block
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
            x = Up(width, self.upsample, dtype=self.dtype, conv_fn=self.conv_fn)(x)
            skip = center_crop(skips[level], x.shape[1], x.shape[2])
            if self.attention:
                skip = AttentionGate(max(1, width // 2), dtype=self.dtype,
                                     conv_fn=self.conv_fn)(skip, x)
            x = jnp.concatenate([skip, x], axis=-1)
            x = block(width)(x, train)
        return Head(self.num_classes, dtype=self.dtype, conv_fn=self.conv_fn)(x)


@register_model("unet")
class UNet(_UNetBase):
    """Same-padded U-Net (after Ronneberger et al. 2015): output size = input size.

    Inputs must be divisible by ``2**depth``. Adds what most later work uses: 'SAME'
    padding (no cropping, so any patch tiles a scene without lost borders), BatchNorm
    (default) or GroupNorm, bottleneck dropout and optional bilinear up-sampling.
    """

    def _check_input(self, x: jax.Array) -> None:
        require_divisible(x, self.depth, "unet")


@register_model("unet_original")
class UNetOriginal(_UNetBase):
    """The published U-Net: unpadded 3×3 convs + ReLU, 2×2 max-pool, 2×2 up-conv halving
    the channels, copy-and-crop skips, 1×1 head, no normalisation.

    With depth 4 and base width 64 it has 31,030,658 parameters for 1 band and 2 classes,
    and a 572×572 input gives a 388×388 output (the paper's Fig. 1). Only inputs whose
    every pooled size is even are valid (``valid_input_size``, ``largest_valid_input``);
    the output is the input's centre (``valid_output_size``), which training scores
    against centre-cropped labels (``losses.center_crop_labels``).
    """

    norm: str = "none"
    padding: str = "VALID"

    def __post_init__(self) -> None:
        if self.encoder != NO_ENCODER:
            raise SatsegError("config.model.encoder: unet_original has no encoder option (its "
                              "valid convolutions are the paper's); use unet")
        super().__post_init__()

    def _check_input(self, x: jax.Array) -> None:
        for side in (x.shape[1], x.shape[2]):
            if valid_output_size(side, self.depth) is None:
                ok = largest_valid_input(side, self.depth) or valid_input_size(1, self.depth)
                raise SatsegError(
                    f"unet_original with depth {self.depth} cannot take {x.shape[1]}×"
                    f"{x.shape[2]} inputs (a size reaching a 2×2 max-pool would be odd, or "
                    f"the output empty); valid sides are {valid_input_size(1, self.depth)} + "
                    f"k*{2**self.depth}, e.g. {ok} (set config.data.crop_size and "
                    "config.eval.crop_size)"
                )
