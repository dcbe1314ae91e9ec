"""Pretrained encoder weights onto a dataset's bands: the start of a fine-tuning run.

``config.model.encoder_weights = ENC_DIR`` (from ``satseg weights import``) replaces the
randomly initialised encoder of a new run. The card says which bands, in which order,
the weights were trained on; the dataset (``satseg_dataset.json``) says which it has.

- Same band names in the same order (case-insensitive): the weights load as they are.
- Otherwise training is refused unless ``config.model.adapt_bands`` says how to build the
  first convolution (the only layer that sees bands):
  - ``names``: each dataset band the card names takes that band's pretrained kernel
    slice (in the dataset's order); bands the card does not name start at zero, so the
    pretrained response on the named bands is exact at step 0 and the others are learnt;
  - ``repeat``: smp's rule (``patch_first_conv``) for N bands: band i takes pretrained
    band ``i mod M``, all rescaled by M/N (one band: the sum over the M).
- Normalisation: bands the card names use the card's (``x / input_scale``, then
  ``(x - mean) / std``, i.e. mean·scale and std·scale in raw units), the rest the
  dataset's train-split statistics. The resulting per-band mean/std are what the run
  trains with and records in run.json, so evaluate and predict normalise the same way.

Why refuse by default: weights fed other bands or another band order still train and
score, just worse, and nothing would say so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from satseg_jax.errors import SatsegError
from satseg_jax.models.encoders import stem_kernel
from satseg_jax.models.registry import model_encoder
from satseg_jax.weights.store import read_encoder_dir

ADAPTATIONS = ("none", "names", "repeat")  # config.model.adapt_bands


@dataclass(frozen=True)
class EncoderStart:
    """The encoder variables to start from and the normalisation to train with."""

    variables: dict[str, Any]  # {'params': ..., 'batch_stats': ...} of the encoder
    mean: tuple[float, ...]
    std: tuple[float, ...]
    provenance: dict[str, Any]  # for the run card
    notes: tuple[str, ...]  # printed when training starts


def _key(band: str) -> str:
    return str(band).strip().lower()


def _get(tree: Mapping[str, Any], path: Sequence[str]) -> Any:
    for k in path:
        tree = tree[k]
    return tree


def _set(tree: dict[str, Any], path: Sequence[str], value: Any) -> None:
    for k in path[:-1]:
        tree = tree[k]
    tree[path[-1]] = value


def _stem(kernel: np.ndarray, card_bands: list[str], bands: list[str], how: str,
          ) -> tuple[np.ndarray, str]:
    """The first convolution's kernel for ``bands`` and a sentence saying how."""
    m, n = len(card_bands), len(bands)
    if how == "repeat":
        if n == 1:
            return kernel.sum(axis=2, keepdims=True), f"repeat (smp's rule): the sum of {m}"
        out = np.stack([kernel[:, :, i % m, :] for i in range(n)], axis=2) * (m / n)
        return out.astype(np.float32), (f"repeat (smp's rule): band i takes pretrained band "
                                        f"i mod {m}, rescaled by {m}/{n}")
    index = {b: i for i, b in enumerate(card_bands)}
    out = np.zeros(kernel.shape[:2] + (n,) + kernel.shape[3:], np.float32)
    for j, b in enumerate(bands):
        if b in index:
            out[:, :, j, :] = kernel[:, :, index[b], :]
    matched = [b for b in bands if b in index]
    new = [b for b in bands if b not in index]
    return out, (f"names: {', '.join(matched)} take their pretrained kernels"
                 + (f"; {', '.join(new)} start at 0" if new else ""))


def _subset(loaded: Mapping[str, Any], template: Mapping[str, Any], where: str,
            ) -> tuple[dict[str, Any], list[str]]:
    """The entries of ``loaded`` that ``template`` (the model's encoder) has, and the
    top-level modules left over (stages beyond the model's depth). A template entry the
    weights lack, or with another shape, is refused."""
    out: dict[str, Any] = {}
    unused: set[str] = set()
    for collection, tree in template.items():
        have = loaded.get(collection, {})
        out[collection] = {}
        unused |= set(have) - set(tree)
        for module, sub in tree.items():
            if module not in have:
                raise SatsegError(f"{where}: the weights have no {collection}/{module} for "
                                  "the model's encoder; import weights of the same --arch")
            out[collection][module] = _same_shapes(have[module], sub,
                                                   f"{where}: {collection}/{module}")
    return out, sorted(unused)


def _same_shapes(loaded: Any, template: Any, where: str) -> Any:
    if isinstance(template, Mapping):
        if not isinstance(loaded, Mapping) or set(loaded) != set(template):
            raise SatsegError(f"{where}: the weights' layout differs from the model's; "
                              "import them again with this satseg")
        return {k: _same_shapes(loaded[k], template[k], f"{where}/{k}") for k in template}
    if tuple(np.shape(loaded)) != tuple(template.shape):
        raise SatsegError(f"{where}: shape {tuple(np.shape(loaded))} in the weights, "
                          f"{tuple(template.shape)} in the model")
    return np.asarray(loaded, np.float32)


def _refusal(enc_dir: str, card_bands: list[str], bands: list[str], data_dir: str) -> str:
    return (f"{enc_dir}: the weights take {len(card_bands)} bands ({', '.join(card_bands)}) "
            f"but {data_dir} has {len(bands)} ({', '.join(bands)}); set "
            "--config.model.adapt_bands=names (bands matched by name, the others start at "
            "0) or =repeat (smp's rule: pretrained bands cycled and rescaled), or import "
            "weights made for these bands")


def encoder_start(model_config: Any, template: Mapping[str, Any], bands: Sequence[str],
                  mean: Sequence[float], std: Sequence[float], data_dir: str,
                  ) -> EncoderStart | None:
    """The start of a run whose ``config.model.encoder_weights`` is set (None when it is
    not). ``template``: the model's initialised encoder variables (``params``/
    ``batch_stats`` under ``encoder``); ``bands``/``mean``/``std``: the dataset's."""
    get = model_config.get if hasattr(model_config, "get") else model_config.__getitem__
    enc_dir = str(get("encoder_weights", "") or "")
    how = str(get("adapt_bands", "none") or "none")
    if how not in ADAPTATIONS:
        raise SatsegError(f"config.model.adapt_bands={how!r}: expected one of "
                          f"{list(ADAPTATIONS)}")
    if not enc_dir:
        return None
    arch = model_encoder(model_config)
    if not Path(enc_dir).is_dir():
        raise SatsegError(f"config.model.encoder_weights={enc_dir}: no such directory; make "
                          "one with 'satseg weights import'")
    loaded, card = read_encoder_dir(enc_dir)
    if card["arch"] != arch:
        raise SatsegError(f"{enc_dir}: weights of {card['arch']} but config.model.encoder="
                          f"{arch!r}; set --config.model.encoder={card['arch']}")
    card_bands = [_key(b) for b in card["bands"]]
    ds_bands = [_key(b) for b in bands]
    notes = []
    if ds_bands == card_bands:
        notes.append(f"bands match the weights' card ({', '.join(card['bands'])})")
    elif how == "none":
        raise SatsegError(_refusal(enc_dir, list(card["bands"]), list(bands), data_dir))
    else:
        if how == "names" and not set(ds_bands) & set(card_bands):
            raise SatsegError(f"{enc_dir}: adapt_bands=names but no band of {data_dir} "
                              f"({', '.join(bands)}) is one the weights name "
                              f"({', '.join(card['bands'])}); use adapt_bands=repeat")
        stem = stem_kernel(arch)  # the first convolution, the one that sees the bands
        kernel, how_said = _stem(np.asarray(_get(loaded, stem)), card_bands, ds_bands, how)
        _set(loaded, stem, kernel)
        notes.append(f"first convolution adapted from {len(card_bands)} to {len(ds_bands)} "
                     f"bands by {how_said}")
    variables, unused = _subset(loaded, template, enc_dir)
    if unused:
        notes.append(f"stages not used at this depth: {', '.join(unused)}")
    scale = float(card["input_scale"])
    index = {b: i for i, b in enumerate(card_bands)}
    new_mean = tuple(card["mean"][index[b]] * scale if b in index else float(m)
                     for b, m in zip(ds_bands, mean))
    new_std = tuple(card["std"][index[b]] * scale if b in index else float(s)
                    for b, s in zip(ds_bands, std))
    from_card = [b for b in bands if _key(b) in index]
    off = [f"{b} (dataset mean {m:.4g}, the weights expect about {n:.4g})"
           for b, m, n, k in zip(bands, mean, new_mean, ds_bands)
           if k in index and m > 0 and n > 0 and not 0.2 <= m / n <= 5]
    if off:
        notes.append("WARNING: the dataset's values are on another scale than the weights' "
                     f"card for {'; '.join(off)}: check the card's input_scale "
                     f"({scale:g}) against the dataset's units")
    notes.append("normalisation: " + (f"the card's for {', '.join(from_card)}" if from_card
                                      else "none from the card")
                 + (f"; the dataset's for the other {len(bands) - len(from_card)}"
                    if len(from_card) < len(bands) else ""))
    provenance = {"dir": str(Path(enc_dir).absolute()), "arch": card["arch"],
                  "source": card["source"], "file": card["file"],
                  "file_sha256": card["file_sha256"], "licence": card["licence"],
                  "adapt_bands": how if ds_bands != card_bands else "none"}
    return EncoderStart(variables=variables, mean=new_mean, std=new_std,
                        provenance=provenance, notes=tuple(notes))
