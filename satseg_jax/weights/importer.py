"""``satseg weights import``: a PyTorch encoder checkpoint -> an encoder directory.

Sources (``--from``) differ only in what the card gets by default and which library
downloads them:

- ``torchvision`` / ``timm``: ImageNet RGB weights; bands red, green, blue, inputs
  scaled by 1/255 then ImageNet's mean/std (what both libraries' transforms do);
- ``torchgeo``: remote-sensing weights (e.g. SSL4EO-S12, 13 Sentinel-2 bands). Their
  bands, order and normalisation differ per weight, so ``--bands``, ``--mean``, ``--std``
  and ``--input-scale`` must be given as the weight's documentation states them;
- ``state-dict``: any other torchvision-layout checkpoint, with the same four options.

The layout is the same for all (torchvision's ResNet; timm's and torchgeo's ResNets
share it; ``convnext_tiny`` is timm's ConvNeXt layout, whose default normalisation is
ImageNet's too), so one strict converter serves them (``weights.convert``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from satseg_jax.errors import SatsegError
from satseg_jax.weights.convert import canonical_key, convert_state_dict, torch_key
from satseg_jax.weights.files import read_state_dict
from satseg_jax.weights.store import write_encoder_dir

SOURCES = ("torchvision", "timm", "torchgeo", "state-dict")
IMAGENET = {"bands": ("red", "green", "blue"), "mean": (0.485, 0.456, 0.406),
            "std": (0.229, 0.224, 0.225), "input_scale": 255.0}
SAMPLE_SIDE = 64  # the template is built by shape only; any side divisible by 32 works


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def encoder_template(arch: str, bands: int) -> dict[str, Any]:
    """Shapes of the variables of encoder ``arch`` taking ``bands`` input bands."""
    import jax
    import jax.numpy as jnp

    from satseg_jax.models.encoders import make_encoder

    model = make_encoder(arch)
    x = jnp.zeros((1, SAMPLE_SIDE, SAMPLE_SIDE, bands), jnp.float32)
    return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False))


def _normalisation(source: str, bands: Sequence[str] | None, mean: Sequence[float] | None,
                   std: Sequence[float] | None, input_scale: float | None,
                   n_in: int, what: str) -> dict[str, Any]:
    """The card's band names, mean, std and input scale: given, or ImageNet's for
    torchvision/timm; checked against the first convolution's input channels."""
    given = {"bands": bands, "mean": mean, "std": std, "input_scale": input_scale}
    if source in ("torchvision", "timm"):
        norm = {k: v if v is not None else IMAGENET[k] for k, v in given.items()}
    else:
        absent = [f"--{k.replace('_', '-')}" for k, v in given.items() if v is None]
        if absent:
            raise SatsegError(f"{what}: --from {source} needs {' '.join(absent)}: the bands "
                              "(in the weights' order) and normalisation the weights were "
                              "trained with, as their documentation states them")
        norm = dict(given)
    norm = {"bands": [str(b) for b in norm["bands"]], "mean": [float(m) for m in norm["mean"]],
            "std": [float(s) for s in norm["std"]], "input_scale": float(norm["input_scale"])}
    for key in ("bands", "mean", "std"):
        if len(norm[key]) != n_in:
            raise SatsegError(f"{what}: the first convolution takes {n_in} bands but --{key} "
                              f"gives {len(norm[key])}; give one value per input band")
    if any(s <= 0 for s in norm["std"]) or norm["input_scale"] <= 0:
        raise SatsegError(f"{what}: --std and --input-scale must be positive")
    return norm


def import_weights(source: str, arch: str, file: str | Path, out: str | Path, *,
                   prefix: str = "", bands: Sequence[str] | None = None,
                   mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                   input_scale: float | None = None, licence: str = "",
                   overwrite: bool = False) -> dict[str, Any]:
    """Convert ``file`` into the encoder directory ``out``; returns its card."""
    from satseg_jax.models.encoders import check_encoder, stem_kernel

    if source not in SOURCES:
        raise SatsegError(f"--from {source!r}: expected one of {list(SOURCES)}")
    check_encoder(arch)
    file = Path(file)
    state, wrapper = read_state_dict(file)
    dropped: dict[str, str] = {}
    if prefix:
        outside = sorted(k for k in state if not k.startswith(prefix))
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if not state:
            raise SatsegError(f"{file}: no key starts with --prefix {prefix!r} (keys look "
                              f"like: {', '.join(outside[:5])})")
        dropped.update({k: f"outside --prefix {prefix}" for k in outside})
    stem = torch_key(stem_kernel(arch))  # conv1.weight (ResNet), stem.0.weight (ConvNeXt)
    first = next((v for k, v in state.items() if canonical_key(k) == stem), None)
    if first is None or first.ndim != 4:
        raise SatsegError(f"{file}: no 4-D {stem!r} (the stem of a {arch} in torchvision/timm "
                          f"layout); keys look like: {', '.join(sorted(state)[:5])}; check "
                          "--arch, or strip a prefix with --prefix")
    norm = _normalisation(source, bands, mean, std, input_scale, int(first.shape[1]), str(file))
    conversion = convert_state_dict(state, encoder_template(arch, int(first.shape[1])),
                                    str(file))
    dropped.update(conversion.dropped)
    card = {"arch": arch, "source": source, **norm, "licence": licence or "not stated",
            "file": file.name, "file_sha256": _sha256(file), "wrapper": wrapper,
            "prefix": prefix, "dropped": dict(sorted(dropped.items()))}
    write_encoder_dir(out, conversion.variables, card, overwrite=overwrite)
    return {**card, "converted": conversion.converted}
