"""Model registry: ``config.model.name`` -> a flax.linen Module class, knobs validated."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from satseg_jax.errors import SatsegError

_REGISTRY: dict[str, type[nn.Module]] = {}
# Fields set by the code, not by the config.
_INTERNAL = {"num_classes", "dtype", "axis_name", "parent", "name", "padding"}


def register_model(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    def wrap(cls: type[nn.Module]) -> type[nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = cls
        return cls

    return wrap


def registered_models() -> list[str]:
    return sorted(_REGISTRY)


def model_knobs(name: str) -> list[str]:
    """The config.model fields a model accepts (besides ``name``)."""
    cls = _REGISTRY[name]
    return sorted(f.name for f in dataclasses.fields(cls) if f.name not in _INTERNAL)


def get_model(model_config: Any, num_classes: int, dtype: Any = jnp.float32,
              axis_name: str | None = None) -> nn.Module:
    """Instantiate ``model_config.name`` with the other fields of ``model_config`` as knobs.

    ``axis_name`` synchronises BatchNorm statistics across pmap replicas.
    """
    cfg = dict(model_config.to_dict() if hasattr(model_config, "to_dict") else model_config)
    name = cfg.pop("name", None)
    if name not in _REGISTRY:
        raise SatsegError(f"config.model.name={name!r}: unknown model; registered: "
                          f"{registered_models()}")
    valid = set(model_knobs(name))
    unknown = sorted(set(cfg) - valid)
    if unknown:
        raise SatsegError(f"config.model: {unknown} are not options of {name!r}; valid: "
                          f"{sorted(valid)}")
    return _REGISTRY[name](num_classes=num_classes, dtype=dtype, axis_name=axis_name, **cfg)
