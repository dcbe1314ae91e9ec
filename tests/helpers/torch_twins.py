"""PyTorch twins of the Flax encoders and U-Nets, and their state dicts as Flax variables.

The tests compare a randomly initialised torch model (torchvision, timm, smp) with the
Flax model built from its converted state dict: that pins the layout (names, strides,
paddings, BatchNorm epsilon) the pretrained checkpoints rely on.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs the weights extra: pip install -e '.[weights]'")


def library(name: str):
    from satseg_jax.weights.torch_libs import import_torch_library

    try:
        return import_torch_library(name)
    except ImportError:
        pytest.skip(f"needs {name}: pip install -e '.[weights]'")


def randomise_bn(model) -> None:
    """Non-trivial running statistics and affine parameters, so eval-mode BatchNorm is
    really compared (a fresh BN is the identity in eval mode)."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)


def state_dict_numpy(model) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def torch_features(model, x_nhwc: np.ndarray) -> list[np.ndarray]:
    """torchvision-layout ResNet features at strides 2..32, as NHWC numpy arrays."""
    x = torch.from_numpy(np.transpose(x_nhwc, (0, 3, 1, 2)).copy())
    with torch.no_grad():
        x = model.relu(model.bn1(model.conv1(x)))
        out = [x]
        x = model.maxpool(x)
        for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
            x = layer(x)
            out.append(x)
    return [np.transpose(f.numpy(), (0, 2, 3, 1)) for f in out]


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| relative to the feature scale (max |b|)."""
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-12))


def smp_unet_decoder(smp_state: dict, template: dict, out: dict) -> dict:
    """Add smp ``Unet``'s decoder to ``out`` (our U-Net variables, the encoder already
    converted): decoder block i is our level 4-i (``ConvBlock_0`` is the deepest level,
    built first; two convs and BNs each), ``segmentation_head.0`` the head."""
    level_names = sorted((n for n in template["params"] if n not in ("encoder", "head")),
                         key=lambda n: int(n.rsplit("_", 1)[1]))
    assert len(level_names) == 5, level_names
    out.setdefault("batch_stats", {})
    for i, name in enumerate(level_names):
        p = f"decoder.blocks.{i}"
        out["params"][name] = {}
        out["batch_stats"][name] = {}
        for j in range(2):
            bn = f"{p}.conv{j + 1}.1"
            out["params"][name][f"Conv_{j}"] = {
                "kernel": np.transpose(smp_state[f"{p}.conv{j + 1}.0.weight"], (2, 3, 1, 0))}
            out["params"][name][f"Norm_{j}"] = {"BatchNorm_0": {
                "scale": smp_state[f"{bn}.weight"], "bias": smp_state[f"{bn}.bias"]}}
            out["batch_stats"][name][f"Norm_{j}"] = {"BatchNorm_0": {
                "mean": smp_state[f"{bn}.running_mean"], "var": smp_state[f"{bn}.running_var"]}}
    out["params"]["head"] = {
        "kernel": np.transpose(smp_state["segmentation_head.0.weight"], (2, 3, 1, 0)),
        "bias": smp_state["segmentation_head.0.bias"]}
    return out
