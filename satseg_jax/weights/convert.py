"""PyTorch state dict -> Flax variables of an encoder, strictly.

Why strict: a pretrained checkpoint that loads "mostly" is the classic silent failure of
fine-tuning code (a renamed layer left at its random initialisation trains and scores,
just worse). Here every Flax variable must come from exactly one torch tensor of the
right shape, and every torch tensor must be used; the only tensors left out are those
the source is known to carry beside the encoder (its classifier, BatchNorm's
``num_batches_tracked`` counters), and they are listed in the weight card. Anything
else — a missing, an unexpected or a wrongly shaped key — is refused, naming each key.

The conversion is numpy only (no torch needed): the caller reads the file
(``satseg_jax.weights.files``). Layouts: torch convolution kernels are OIHW, Flax's
HWIO (a depthwise ``(C, 1, 7, 7)`` becomes ``(7, 7, 1, C)``, Flax's kernel with
``feature_group_count=C``); ``Linear`` weights are ``(out, in)``, a Flax ``Dense``
kernel ``(in, out)``; BatchNorm ``weight``/``bias``/``running_mean``/``running_var`` are
Flax's ``scale``/``bias`` (params) and ``mean``/``var`` (``batch_stats``), LayerNorm's
``weight``/``bias`` Flax's ``scale``/``bias``; ConvNeXt's layer scale ``gamma`` is kept
as it is.

timm's ``features_only`` models (and smp's ``tu-`` encoders built on them) flatten the
top-level sequences, ``stem.0`` -> ``stem_0``, ``stages.1`` -> ``stages_1``; those keys
are read as the checkpoint's spelling (``canonical_key``), the one errors then name.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from satseg_jax.errors import SatsegError

# Flax leaf name -> torch tensor name, per collection.
_LEAF_NAMES = {("params", "kernel"): "weight", ("params", "scale"): "weight",
               ("params", "bias"): "bias", ("params", "gamma"): "gamma",
               ("batch_stats", "mean"): "running_mean", ("batch_stats", "var"): "running_var"}
# Flax module names that are not "torch name with '.' -> '_'".
_MODULE_NAMES = {"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}
# torch tensors a source carries beside the encoder: (pattern, why it is left out).
DROPPED = ((re.compile(r"(.+\.)?num_batches_tracked"), "BatchNorm step counter"),
           (re.compile(r"fc\.(weight|bias)"), "ImageNet classifier (not part of the encoder)"),
           (re.compile(r"head\.(norm|fc)\.(weight|bias)"),
            "timm classifier head: final LayerNorm and classifier (not part of the encoder)"))
# timm features_only's flattened top-level names (``stem_0.``, ``stages_1.``).
_FLATTENED = re.compile(r"^(stem|stages)_(\d+)\.")
LISTED_LIMIT = 12  # keys named per kind in an error; the count says how many more


def torch_key(path: tuple[str, ...]) -> str:
    """The torch state-dict key of a Flax variable path ``(collection, *modules, leaf)``,
    e.g. ``('params', 'layer2_0', 'downsample_conv', 'kernel')`` ->
    ``layer2.0.downsample.0.weight``."""
    collection, *modules, leaf = path
    if (collection, leaf) not in _LEAF_NAMES:
        raise ValueError(f"no torch name for {'/'.join(path)}")
    parts = [_MODULE_NAMES.get(m) or re.sub(r"_(\d+)$", r".\1", m) for m in modules]
    return ".".join([*parts, _LEAF_NAMES[(collection, leaf)]])


def canonical_key(key: str) -> str:
    """A state-dict key in the checkpoint's spelling: timm ``features_only``'s
    ``stages_1.blocks.0.gamma`` is ``stages.1.blocks.0.gamma``; other keys are unchanged."""
    return _FLATTENED.sub(r"\1.\2.", key)


def _canonical(state_dict: Mapping[str, Any], what: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in state_dict.items():
        name = canonical_key(key)
        if name in out:
            raise SatsegError(f"{what}: the state dict has {name} twice (also spelt "
                              f"{key}); keep one")
        out[name] = value
    return out


def _flatten(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple, Any]:
    out: dict[tuple, Any] = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, (*prefix, k)))
        else:
            out[(*prefix, k)] = v
    return out


def _unflatten(flat: Mapping[tuple, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path, value in flat.items():
        node = out
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = value
    return out


def _to_flax(value: np.ndarray, leaf: str) -> np.ndarray:
    """A torch tensor in Flax's layout (conv kernels OIHW -> HWIO)."""
    if leaf == "kernel" and value.ndim == 4:
        return np.transpose(value, (2, 3, 1, 0))
    if leaf == "kernel" and value.ndim == 2:  # Linear: (out, in) -> (in, out)
        return value.T
    return value


@dataclass
class Conversion:
    """The converted variables and what was left out (for the weight card)."""

    variables: dict[str, Any]
    dropped: dict[str, str] = field(default_factory=dict)  # torch key -> why
    converted: int = 0


def _listed(keys: list[str]) -> str:
    shown = ", ".join(keys[:LISTED_LIMIT])
    more = len(keys) - LISTED_LIMIT
    return shown + (f" and {more} more" if more > 0 else "")


def convert_state_dict(state_dict: Mapping[str, np.ndarray], template: Mapping[str, Any],
                       what: str) -> Conversion:
    """Map ``state_dict`` onto the variables ``template`` (an initialised encoder's
    ``{'params': ..., 'batch_stats': ...}``, arrays or shape-dtype structs) and return them
    as float32 numpy arrays. ``what`` names the file in errors.

    Raises SatsegError listing, by name, every expected key the state dict lacks, every
    key it has that the encoder does not take, and every shape that differs.
    """
    state_dict = _canonical(state_dict, what)
    expected = {torch_key(path): path for path in _flatten(template)}
    dropped = {k: why for k in state_dict for pattern, why in DROPPED
               if k not in expected and pattern.fullmatch(k)}
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected) - set(dropped))
    flat_template = _flatten(template)
    wrong = []
    out: dict[tuple, np.ndarray] = {}
    for key, path in expected.items():
        if key not in state_dict:
            continue
        value = _to_flax(np.asarray(state_dict[key], dtype=np.float32), path[-1])
        want = tuple(flat_template[path].shape)
        if value.shape != want:
            wrong.append(f"{key} {tuple(np.shape(state_dict[key]))} (expected "
                         f"{_torch_shape(want, path[-1])})")
        out[path] = value
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing: {_listed(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected: {_listed(unexpected)}")
    if wrong:
        problems.append(f"{len(wrong)} wrongly shaped: {_listed(wrong)}")
    if problems:
        raise SatsegError(f"{what}: the state dict does not match the encoder ("
                          + "; ".join(problems) + "); check --arch and --from, or strip a "
                          "prefix with --prefix")
    return Conversion(variables=_unflatten(out), dropped=dropped, converted=len(out))


def _torch_shape(flax_shape: tuple[int, ...], leaf: str) -> tuple[int, ...]:
    """A Flax shape as torch would write it (for error messages)."""
    if leaf == "kernel" and len(flax_shape) == 4:
        h, w, i, o = flax_shape
        return (o, i, h, w)
    if leaf == "kernel" and len(flax_shape) == 2:
        return flax_shape[::-1]
    return flax_shape

