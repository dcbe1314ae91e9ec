"""Encoders by name (``config.model.encoder``), each returning a feature pyramid.

- ``resnet18`` / ``resnet34`` / ``resnet50``: torchvision-layout ResNets (``resnet.py``);
- ``convnext_tiny``: timm-layout ConvNeXt-Tiny (``convnext.py``); it has no stride-2
  map, so its pyramid has ``None`` (0 channels) there and the U-Net takes no skip at
  that level, as smp's ``tu-convnext_tiny`` does.

Why a table of names: configs, weight cards and ``satseg weights import --arch`` name an
encoder by string, as smp and timm do; one place maps the name to the Flax module and its
feature channels. ``"none"`` is the plain U-Net encoder of ``models/unet.py`` (no entry
here), so every existing config and checkpoint keeps working.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn

from satseg_jax.errors import SatsegError
from satseg_jax.models.encoders import convnext, resnet

ENCODERS = (*resnet.RESNET_LAYOUTS, *convnext.CONVNEXT_LAYOUTS)
NO_ENCODER = "none"
# Output strides of the five feature maps every encoder returns.
FEATURE_STRIDES = (2, 4, 8, 16, 32)


def check_encoder(name: str) -> None:
    """Refuse an unknown encoder name, listing the known ones."""
    if name != NO_ENCODER and name not in ENCODERS:
        raise SatsegError(f"config.model.encoder={name!r}: unknown encoder; expected "
                          f"{NO_ENCODER!r} or one of {list(ENCODERS)}")


def make_encoder(encoder: str, **fields: Any) -> nn.Module:
    """The Flax module of encoder ``encoder`` (``fields``: dtype, axis_name, bn_momentum,
    conv_fn, stages, name, and any field of that encoder's module, passed on as given)."""
    check_encoder(encoder)
    if encoder == NO_ENCODER:
        raise SatsegError("encoder 'none' has no separate module (it is the plain U-Net's)")
    if encoder in convnext.CONVNEXT_LAYOUTS:
        return convnext.ConvNeXtEncoder(arch=encoder, **fields)
    return resnet.ResNetEncoder(arch=encoder, **fields)


def encoder_channels(name: str) -> tuple[int, ...]:
    """Channels of each feature map of encoder ``name``, strides 2 to 32 (0 where the
    encoder has no map at that stride)."""
    check_encoder(name)
    if name in convnext.CONVNEXT_LAYOUTS:
        return convnext.feature_channels(name)
    return resnet.feature_channels(name)


def stem_kernel(name: str) -> tuple[str, ...]:
    """Path of the first convolution's kernel (the only one that sees the input bands) in
    the encoder's variables, e.g. ``('params', 'conv1', 'kernel')``."""
    check_encoder(name)
    return ("params", "stem_0" if name in convnext.CONVNEXT_LAYOUTS else "conv1", "kernel")


__all__ = ["ENCODERS", "FEATURE_STRIDES", "NO_ENCODER", "check_encoder", "encoder_channels",
           "make_encoder", "stem_kernel"]
