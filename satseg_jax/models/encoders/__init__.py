"""Encoders by name (``config.model.encoder``), each returning a feature pyramid.

Why a table of names: configs, weight cards and ``satseg weights import --arch`` name an
encoder by string, as smp and timm do; one place maps the name to the Flax module and its
feature channels. ``"none"`` is the plain U-Net encoder of ``models/unet.py`` (no entry
here), so every existing config and checkpoint keeps working.
"""

from __future__ import annotations

from typing import Any

from satseg_jax.errors import SatsegError
from satseg_jax.models.encoders.resnet import RESNET_LAYOUTS, ResNetEncoder, feature_channels

ENCODERS = tuple(RESNET_LAYOUTS)
NO_ENCODER = "none"
# Output strides of the five feature maps every encoder returns.
FEATURE_STRIDES = (2, 4, 8, 16, 32)


def check_encoder(name: str) -> None:
    """Refuse an unknown encoder name, listing the known ones."""
    if name != NO_ENCODER and name not in ENCODERS:
        raise SatsegError(f"config.model.encoder={name!r}: unknown encoder; expected "
                          f"{NO_ENCODER!r} or one of {list(ENCODERS)}")


def make_encoder(encoder: str, **fields: Any) -> ResNetEncoder:
    """The Flax module of encoder ``encoder`` (``fields``: dtype, axis_name, bn_momentum,
    conv_fn, stages, name)."""
    check_encoder(encoder)
    if encoder == NO_ENCODER:
        raise SatsegError("encoder 'none' has no separate module (it is the plain U-Net's)")
    return ResNetEncoder(arch=encoder, **fields)


def encoder_channels(name: str) -> tuple[int, ...]:
    """Channels of each feature map of encoder ``name``, strides 2 to 32."""
    check_encoder(name)
    return feature_channels(name)


__all__ = ["ENCODERS", "FEATURE_STRIDES", "NO_ENCODER", "check_encoder", "encoder_channels",
           "make_encoder"]
