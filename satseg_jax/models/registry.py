"""Model registry: ``config.model.name`` -> a flax.linen Module class, knobs validated.

Why a registry: configs, checkpoints (``config_model``) and the benchmark sweep name
models by string; one table maps those strings to classes, and the knobs a config may
set are exactly the dataclass fields of that class (minus the ones code sets), so a
misspelt knob fails loudly instead of silently falling back to a default.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from satseg_jax.errors import SatsegError

_REGISTRY: dict[str, type[nn.Module]] = {}
# Fields set by the code (or by flax), not by the config.
_INTERNAL = {"num_classes", "dtype", "axis_name", "parent", "name", "padding", "conv_fn"}
# config.model fields that choose the starting weights of a named encoder, not the module
# (read when training starts: satseg_jax/weights/adapt.py); every model with an
# ``encoder`` knob takes them.
START_FIELDS = ("encoder_weights", "adapt_bands")
# Their defaults: no imported weights, no band adaptation (declared once, here).
START_DEFAULTS = {"encoder_weights": "", "adapt_bands": "none"}


def register_model(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: make a flax Module available as ``config.model.name = name``.

    The module must take ``num_classes``, ``dtype`` and ``axis_name`` fields and be
    called as ``(x, train=bool)`` returning float32 logits.
    """

    def wrap(cls: type[nn.Module]) -> type[nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = cls
        return cls

    return wrap


def registered_models() -> list[str]:
    """Every registered model name, sorted."""
    return sorted(_REGISTRY)


def model_knobs(name: str) -> list[str]:
    """The config.model fields a model accepts (besides ``name``)."""
    if name not in _REGISTRY:
        raise SatsegError(f"config.model.name={name!r}: unknown model; registered: "
                          f"{registered_models()}")
    cls = _REGISTRY[name]
    return sorted(f.name for f in dataclasses.fields(cls) if f.name not in _INTERNAL)


def model_field_defaults(name: str) -> dict[str, Any]:
    """Every config.model field model ``name`` accepts (knobs, and the start fields for a
    model with an encoder), with its default: what ``--config.model.KNOB=V`` sets when
    the config file leaves KNOB out (so V is read with the knob's type)."""
    valid = set(model_knobs(name))
    out = {f.name: f.default for f in dataclasses.fields(_REGISTRY[name])
           if f.name in valid and f.default is not dataclasses.MISSING}
    if "encoder" in valid:
        out.update(START_DEFAULTS)
    return out


def model_encoder(model_config: Any) -> str:
    """The named encoder of ``model_config``: its ``encoder`` field, else the model's
    default (``fpn`` and ``deeplabv3plus`` have one without the field being set), else
    ``"none"`` (models without an encoder)."""
    cfg = _as_dict(model_config)
    if cfg.get("encoder"):
        return str(cfg["encoder"])
    name = cfg.get("name")
    defaults = model_field_defaults(name) if name in _REGISTRY else {}
    return str(defaults.get("encoder") or "none")


def input_multiple(model_config: Any) -> int:
    """What the input sides of ``model_config``'s model must be divisible by (1 when
    any size goes): used to round crops, resampled patches and prediction tiles."""
    model = get_model(model_config, num_classes=1)
    return int(getattr(model, "input_multiple", 1))


def _as_dict(model_config: Any) -> dict[str, Any]:
    """A ConfigDict, a plain mapping or an attribute object as a plain dict."""
    if hasattr(model_config, "to_dict"):
        return dict(model_config.to_dict())
    if isinstance(model_config, Mapping):
        return dict(model_config)
    if hasattr(model_config, "__dict__"):
        return dict(vars(model_config))
    raise SatsegError(f"config.model must be a ConfigDict or mapping, got {type(model_config)}")


def get_model(model_config: Any, num_classes: int, dtype: Any = jnp.float32,
              axis_name: str | None = None, conv_fn: Callable | None = None) -> nn.Module:
    """Instantiate ``model_config.name`` with the other fields of ``model_config`` as knobs.

    ``dtype`` is the compute dtype (e.g. ``jnp.bfloat16``); parameters stay float32 and
    logits are returned as float32. ``axis_name`` synchronises BatchNorm statistics
    across pmap replicas. ``conv_fn`` replaces ``lax.conv_general_dilated`` in every
    convolution (an accelerated conv, e.g. what ``satseg_jax.cpu.conv_fn_for`` picks);
    parameters do not depend on it. Unknown names and unknown knobs raise SatsegError
    listing the valid choices.
    """
    cfg = _as_dict(model_config)
    start = {f: cfg.pop(f) for f in START_FIELDS if f in cfg}
    name = cfg.pop("name", None)
    if name not in _REGISTRY:
        raise SatsegError(f"config.model.name={name!r}: unknown model; registered: "
                          f"{registered_models()}")
    valid = set(model_knobs(name))
    if start and "encoder" not in valid:
        raise SatsegError(f"config.model: {sorted(start)} need a model with an encoder "
                          f"option; {name!r} has none")
    unknown = sorted(set(cfg) - valid)
    if unknown:
        raise SatsegError(f"config.model: {unknown} are not options of {name!r}; valid: "
                          f"{sorted(valid)}")
    if not isinstance(num_classes, numbers.Integral) or num_classes < 1:
        raise SatsegError(f"num_classes must be a positive integer, got {num_classes!r}")
    num_classes = int(num_classes)
    # Lists (from JSON/CLI) become tuples: module attributes must be hashable.
    cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}
    return _REGISTRY[name](num_classes=num_classes, dtype=dtype, axis_name=axis_name,
                           conv_fn=conv_fn, **cfg)
