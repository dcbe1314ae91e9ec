"""FPN (Lin et al. 2017, "Feature Pyramid Networks for Object Detection") with the
semantic-segmentation head of Kirillov et al. 2019 ("Panoptic Feature Pyramid Networks"),
laid out exactly as segmentation_models_pytorch 0.6.0's ``FPN``, over a named encoder.

Top-down pathway: ``p5 = 1×1(c5)``; ``p_k = nearest×2(p_{k+1}) + 1×1(c_k)`` for strides
16, 8, 4. Each ``p_k`` goes through a segmentation block of ``max(1, n)`` × (3×3 conv →
GroupNorm(32) → ReLU → bilinear ×2 [align_corners]) with n = 3, 2, 1, 0 up-samplings,
so all four reach stride 4; they are summed (``merge='add'``) or concatenated
(``'cat'``), channel-dropped (Dropout2d), and a 1×1 head's logits are up-sampled ×4
(bilinear, align_corners) to the input's size. With ``encoder='resnet34'``, 3 bands and
2 classes it has smp's 23,155,522 parameters (tests/test_decoders.py).

Config knobs (``config.model``; defaults in brackets):

- ``encoder`` ['resnet34']: a name of ``models/encoders`` (required: the pyramid is an
  encoder's strides 4–32; ``'none'`` is refused). Its submodule is named ``encoder``,
  which ``config.model.encoder_weights`` replaces.
- ``encoder_bn`` ['train']: 'frozen' keeps the encoder's BatchNorm in inference mode.
- ``pyramid_channels`` [256], ``segmentation_channels`` [128] (a multiple of 32, for
  GroupNorm(32)), ``dropout`` [0.2] (channel dropout before the head, training only),
  ``merge`` ['add' | 'cat'].

Inputs must be divisible by 32. ``upsample_align_corners`` is torch's
``interpolate(mode='bilinear', align_corners=True)``, shared with ``deeplab.py``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from satseg_jax.errors import SatsegError
from satseg_jax.models.blocks import upsample2x
from satseg_jax.models.encoders import ENCODERS, NO_ENCODER, check_encoder, make_encoder
from satseg_jax.models.registry import register_model
from satseg_jax.models.unet import ENCODER_BN_MODES

MERGES = ("add", "cat")
GN_GROUPS = 32  # smp's GroupNorm(32, channels)
GN_EPSILON = 1e-5  # torch's GroupNorm default (flax's is 1e-6)


def check_named_encoder(model: str, encoder: str, encoder_bn: str, default: str) -> None:
    """Refuse ``encoder='none'`` (and unknown names) for a model built on an encoder's
    feature pyramid, and a bad ``encoder_bn``, naming the field and the fix."""
    check_encoder(encoder)
    if encoder == NO_ENCODER:
        raise SatsegError(f"config.model.encoder='none': {model} is a decoder over a named "
                          f"encoder's feature maps and has no plain encoder; set "
                          f"config.model.encoder to one of {list(ENCODERS)} (default "
                          f"{default!r})")
    if encoder_bn not in ENCODER_BN_MODES:
        raise SatsegError(f"config.model.encoder_bn={encoder_bn!r}: expected one of "
                          f"{list(ENCODER_BN_MODES)}")


def check_positive(field: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise SatsegError(f"config.model.{field}={value!r}: expected an integer >= 1")


def check_rate(field: str, value: Any) -> None:
    if not isinstance(value, (int, float)) or not 0.0 <= float(value) < 1.0:
        raise SatsegError(f"config.model.{field}={value!r}: expected a rate in [0, 1)")


def require_multiple(x: jax.Array, factor: int, model: str) -> None:
    """Refuse inputs whose sides are not multiples of ``factor`` (the skips would not
    line up), naming the fix."""
    if x.ndim != 4 or x.shape[1] % factor or x.shape[2] % factor:
        raise SatsegError(f"{model} needs NHWC inputs with sides divisible by {factor}, got "
                          f"shape {tuple(x.shape)}; change config.data.crop_size (and "
                          "config.eval.crop_size / the prediction tile)")


def _align_corners_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of 1-D linear interpolation with align_corners=True:
    output i samples input ``i * (n_in - 1) / (n_out - 1)`` (torch's rule)."""
    m = np.zeros((n_out, n_in), np.float64)
    scale = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
    src = np.arange(n_out) * scale
    lo = np.minimum(np.floor(src).astype(int), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = src - lo
    m[np.arange(n_out), lo] += 1.0 - frac
    m[np.arange(n_out), hi] += frac
    return m


def upsample_align_corners(x: jax.Array, factor: int) -> jax.Array:
    """×``factor`` bilinear resize of an NHWC array with torch's ``align_corners=True``
    (corner pixels stay on the corners), as two small interpolation matrices."""
    n, h, w, c = x.shape
    mh = jnp.asarray(_align_corners_matrix(h, h * factor), x.dtype)
    mw = jnp.asarray(_align_corners_matrix(w, w * factor), x.dtype)
    x = jnp.einsum("oh,nhwc->nowc", mh, x)
    return jnp.einsum("pw,nowc->nopc", mw, x)


class SegmentationBlock(nn.Module):
    """``max(1, n_upsamples)`` × (3×3 conv → GroupNorm(32) → ReLU [→ bilinear ×2])."""

    features: int
    n_upsamples: int = 0
    dtype: Any = jnp.float32
    conv_fn: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for j in range(max(1, self.n_upsamples)):
            x = nn.Conv(self.features, (3, 3), padding=((1, 1), (1, 1)), use_bias=False,
                        dtype=self.dtype, conv_general_dilated=self.conv_fn,
                        name=f"conv_{j}")(x)
            x = nn.GroupNorm(num_groups=GN_GROUPS, epsilon=GN_EPSILON, dtype=self.dtype,
                             name=f"norm_{j}")(x)
            x = nn.relu(x)
            if self.n_upsamples:
                x = upsample_align_corners(x, 2)
        return x


@register_model("fpn")
class FPN(nn.Module):
    """smp's FPN over a named encoder (see the module docstring)."""

    num_classes: int
    encoder: str = "resnet34"
    encoder_bn: str = "train"
    pyramid_channels: int = 256
    segmentation_channels: int = 128
    dropout: float = 0.2
    merge: str = "add"
    dtype: Any = jnp.float32
    axis_name: str | None = None
    conv_fn: Any = None  # set by the code (train.build_model), not by configs

    def __post_init__(self) -> None:
        check_named_encoder("fpn", self.encoder, self.encoder_bn, "resnet34")
        check_positive("pyramid_channels", self.pyramid_channels)
        check_positive("segmentation_channels", self.segmentation_channels)
        if self.segmentation_channels % GN_GROUPS:
            raise SatsegError(f"config.model.segmentation_channels="
                              f"{self.segmentation_channels}: must be a multiple of "
                              f"{GN_GROUPS} (GroupNorm({GN_GROUPS}) in the segmentation "
                              "blocks, as smp)")
        check_rate("dropout", self.dropout)
        if self.merge not in MERGES:
            raise SatsegError(f"config.model.merge={self.merge!r}: expected one of "
                              f"{list(MERGES)}")
        super().__post_init__()

    @property
    def input_multiple(self) -> int:
        """What an input side must be divisible by: the encoder's five stages."""
        return 32

    def conv1x1(self, features: int, name: str) -> nn.Conv:
        return nn.Conv(features, (1, 1), dtype=self.dtype, conv_general_dilated=self.conv_fn,
                       name=name)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        require_multiple(x, self.input_multiple, "fpn")
        features = make_encoder(self.encoder, dtype=self.dtype, axis_name=self.axis_name,
                                conv_fn=self.conv_fn, stages=5,
                                name="encoder")(x, train and self.encoder_bn == "train")
        c2, c3, c4, c5 = features[-4:]
        p = self.conv1x1(self.pyramid_channels, "p5")(c5)
        pyramid = [p]
        for name, skip in (("p4", c4), ("p3", c3), ("p2", c2)):
            p = upsample2x(p, "nearest") + self.conv1x1(self.pyramid_channels, name)(skip)
            pyramid.append(p)
        seg = [SegmentationBlock(self.segmentation_channels, n, dtype=self.dtype,
                                 conv_fn=self.conv_fn, name=f"seg_block_{i}")(q)
               for i, (n, q) in enumerate(zip((3, 2, 1, 0), pyramid))]
        h = sum(seg[1:], seg[0]) if self.merge == "add" else jnp.concatenate(seg, axis=-1)
        if self.dropout:  # torch's Dropout2d: whole channels of a sample
            h = nn.Dropout(self.dropout, broadcast_dims=(1, 2), deterministic=not train)(h)
        logits = self.conv1x1(self.num_classes, "head")(h).astype(jnp.float32)
        return upsample_align_corners(logits, 4)
