"""ConvNeXt-Tiny encoder: timm/smp parity, strict conversion, ``satseg weights import``.

Parity is the contract pretrained weights rely on: a randomly initialised timm
``convnext_tiny``, converted key for key, must give the same four feature maps, and our
U-Net over it the same logits as smp's ``Unet('tu-convnext_tiny')``, in eval mode.

Why the weights are re-randomised: timm initialises the layer scale ``gamma`` to 1e-6 and
the Linear layers with std 0.02, so fresh blocks barely change their input and a wrong
GELU, LayerNorm epsilon or layer order would go unseen. With fan-in-scaled weights,
``gamma`` ≈ 0.5 and non-trivial LayerNorm affines (below), the converted model is within
~2e-6 of timm (relative to the feature scale), while flax's default tanh GELU is off by
2-4e-4 at strides 8-32 and torch's default LayerNorm epsilon (1e-5) by 1-3e-4 (measured
when this test was written), so ``TOL`` separates them.
"""

from __future__ import annotations

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from satseg_jax.cli import main
from satseg_jax.errors import SatsegError
from satseg_jax.models.encoders import encoder_channels, make_encoder
from satseg_jax.models.registry import get_model
from satseg_jax.weights.convert import convert_state_dict
from satseg_jax.weights.importer import encoder_template
from satseg_jax.weights.store import read_encoder_dir
from tests.helpers import torch_twins as tt

torch = tt.torch
TOL = 1e-4  # max abs difference relative to the feature scale, float32
ARCH = "convnext_tiny"
SMP_UNET_PARAMS = 31_928_898  # smp 0.6.0 Unet('tu-convnext_tiny', classes=2)
_LINEAR_OR_CONV = re.compile(r"(fc1|fc2|conv_dw)\.weight$")
_AFFINE = re.compile(r"(\.norm|stem[._]1|downsample\.0)\.(weight|bias)$")


def _param_count(tree) -> int:
    return int(sum(np.prod(v.shape) for v in jax.tree_util.tree_leaves(tree)))


def _randomise(model) -> None:
    """gamma ≈ 0.5 ± 0.1, LayerNorm affines ≈ (1 ± 0.1, ±0.1), the blocks' depthwise and
    Linear weights N(0, 1/fan_in): every block really contributes (see the docstring)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if name.endswith("gamma"):
                p.copy_(0.5 + 0.1 * noise)
            elif _LINEAR_OR_CONV.search(name):
                p.copy_(noise / np.sqrt(np.prod(p.shape[1:])))
            elif _AFFINE.search(name):
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * noise)


def _nchw(x: np.ndarray):
    return torch.from_numpy(np.transpose(x, (0, 3, 1, 2)).copy())


@pytest.fixture(scope="module")
def timm_model():
    """timm's convnext_tiny as smp uses it (features_only), randomised, eval mode."""
    timm = tt.library("timm")
    model = timm.create_model(ARCH, pretrained=False, features_only=True).eval()
    _randomise(model)
    return model


@pytest.fixture(scope="module")
def template():
    return encoder_template(ARCH, 3)


def test_features_match_timm(timm_model, template):
    state = tt.state_dict_numpy(timm_model)
    conv = convert_state_dict(state, template, ARCH)
    assert conv.converted == len(state) and not conv.dropped
    assert _param_count(conv.variables["params"]) == sum(
        p.numel() for p in timm_model.parameters())
    x = np.random.default_rng(0).normal(size=(1, 64, 64, 3)).astype(np.float32)
    ours = make_encoder(ARCH).apply(conv.variables, jnp.asarray(x), train=False)
    with torch.no_grad():
        theirs = [np.transpose(f.numpy(), (0, 2, 3, 1)) for f in timm_model(_nchw(x))]
    assert ours[0] is None  # no stride-2 map, as smp's 0-channel placeholder
    assert [f.shape[-1] for f in ours[1:]] == list(encoder_channels(ARCH)[1:])
    for stride, a, b in zip((4, 8, 16, 32), ours[1:], theirs):
        assert a.shape == b.shape == (1, 64 // stride, 64 // stride, a.shape[-1]), stride
        assert tt.relative_error(np.asarray(a), b) <= TOL, stride


def test_stages_limit_the_pyramid():
    x = jnp.zeros((1, 64, 64, 3))
    model = make_encoder(ARCH, stages=3)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x))
    assert set(shapes["params"]) == {"stem_0", "stem_1", "stages_0", "stages_1"}
    out = jax.eval_shape(lambda v: model.apply(v, x), shapes)
    assert out[0] is None and [f.shape for f in out[1:]] == [(1, 16, 16, 96), (1, 8, 8, 192)]
    with pytest.raises(SatsegError, match="no stride-2 feature map"):
        make_encoder(ARCH, stages=1).init(jax.random.PRNGKey(0), x)


@pytest.mark.parametrize("kind", ["missing", "extra", "dw_shape", "linear_shape"])
def test_bad_state_dicts_are_refused_naming_the_key(kind, timm_model, template):
    state = tt.state_dict_numpy(timm_model)  # features_only spelling: stages_2.blocks…
    if kind == "missing":
        del state["stages_2.blocks.4.gamma"]
        message = "1 missing: stages.2.blocks.4.gamma"
    elif kind == "extra":
        state["stages.4.blocks.0.gamma"] = np.zeros(768, np.float32)
        message = "1 unexpected: stages.4.blocks.0.gamma"
    elif kind == "dw_shape":
        state["stages_1.blocks.0.conv_dw.weight"] = np.zeros((192, 1, 5, 5), np.float32)
        message = ("1 wrongly shaped: stages.1.blocks.0.conv_dw.weight (192, 1, 5, 5) "
                   "(expected (192, 1, 7, 7))")
    else:
        state["stages_0.blocks.1.mlp.fc1.weight"] = np.zeros((96, 384), np.float32)
        message = ("1 wrongly shaped: stages.0.blocks.1.mlp.fc1.weight (96, 384) "
                   "(expected (384, 96))")
    with pytest.raises(SatsegError) as err:
        convert_state_dict(state, template, "bad.pth")
    assert message in str(err.value) and "bad.pth" in str(err.value)


def test_import_of_a_timm_checkpoint_drops_only_the_head(tmp_path, capsys):
    """A full timm convnext_tiny (the published checkpoints' layout: ``stem.0``,
    ``stages.0``, ``head.*``) through ``satseg weights import --from timm``."""
    from safetensors.torch import save_file

    timm = tt.library("timm")
    model = timm.create_model(ARCH, pretrained=False)
    _randomise(model)
    state = tt.state_dict_numpy(model)
    path = tmp_path / "convnext_tiny.safetensors"
    save_file({k: torch.from_numpy(v.copy()) for k, v in state.items()}, str(path))
    out = tmp_path / "enc"
    rc = main(["weights", "import", "--from", "timm", "--arch", ARCH, "--file", str(path),
               "--out", str(out)])
    text, err = capsys.readouterr()
    assert rc == 0, err
    head = {"head.norm.weight", "head.norm.bias", "head.fc.weight", "head.fc.bias"}
    assert f"converted {len(state) - len(head)} tensors; left out {len(head)}" in text
    card = json.loads((out / "card.json").read_text())
    assert set(card["dropped"]) == head and all("head" in why
                                                for why in card["dropped"].values())
    assert card["bands"] == ["red", "green", "blue"] and card["mean"] == [0.485, 0.456, 0.406]
    variables, _ = read_encoder_dir(out)
    block = variables["params"]["stages_1"]["blocks_0"]
    np.testing.assert_array_equal(block["conv_dw"]["kernel"], np.transpose(
        state["stages.1.blocks.0.conv_dw.weight"], (2, 3, 1, 0)))  # (7, 7, 1, 192)
    np.testing.assert_array_equal(block["mlp"]["fc1"]["kernel"],
                                  state["stages.1.blocks.0.mlp.fc1.weight"].T)
    np.testing.assert_array_equal(block["gamma"], state["stages.1.blocks.0.gamma"])
    np.testing.assert_array_equal(variables["params"]["stages_1"]["downsample_0"]["scale"],
                                  state["stages.1.downsample.0.weight"])
    stem = np.transpose(state["stem.0.weight"], (2, 3, 1, 0))  # (4, 4, 3, 96)
    np.testing.assert_array_equal(variables["params"]["stem_0"]["kernel"], stem)
    # Onto red, green, blue, nir by name: the stem (not ResNet's conv1) is adapted.
    from satseg_jax.models.registry import get_model
    from satseg_jax.weights.adapt import encoder_start

    model = get_model({"name": "unet", "encoder": ARCH, "depth": 5}, num_classes=2)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                               jnp.zeros((1, 64, 64, 4))))
    tmpl = {c: shapes[c]["encoder"] for c in ("params",)}
    start = encoder_start({"encoder": ARCH, "encoder_weights": str(out), "adapt_bands": "names"},
                          tmpl, ["red", "green", "blue", "nir"], [0.0] * 4, [1.0] * 4, "DATA")
    kernel = start.variables["params"]["stem_0"]["kernel"]
    np.testing.assert_array_equal(kernel[:, :, :3], stem)
    assert not kernel[:, :, 3].any() and "nir start at 0" in " ".join(start.notes)


def _smp_to_flax(smp_state: dict, template: dict) -> dict:
    """smp Unet('tu-convnext_tiny') state dict -> our U-Net variables: 'encoder.model.*'
    is timm's features_only convnext_tiny, decoder block i is our level 4-i (two convs /
    BNs; block 3, at stride 2, has no skip in either), segmentation_head.0 the head."""
    prefix = "encoder.model."
    encoder = {k[len(prefix):]: v for k, v in smp_state.items() if k.startswith(prefix)}
    enc = convert_state_dict(encoder, {"params": template["params"]["encoder"]}, "smp")
    out = {"params": {"encoder": enc.variables["params"]}, "batch_stats": {}}
    return tt.smp_unet_decoder(smp_state, template, out)


def test_unet_convnext_tiny_is_smps_unet():
    """Same parameter count and the same logits as smp.Unet('tu-convnext_tiny')."""
    smp = tt.library("segmentation_models_pytorch")
    twin = smp.Unet(f"tu-{ARCH}", encoder_weights=None, classes=2).eval()
    _randomise(twin.encoder.model)
    tt.randomise_bn(twin)
    assert list(twin.encoder.out_channels) == [3, *encoder_channels(ARCH)]
    model = get_model({"name": "unet", "encoder": ARCH, "depth": 5, "base_width": 16,
                       "upsample": "nearest"}, num_classes=2)
    x = np.random.default_rng(2).normal(size=(1, 64, 64, 3)).astype(np.float32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.asarray(x)))
    n_smp = sum(p.numel() for p in twin.parameters())
    assert _param_count(shapes["params"]) == n_smp == SMP_UNET_PARAMS
    variables = _smp_to_flax(tt.state_dict_numpy(twin), shapes)
    assert jax.tree_util.tree_structure(variables) == jax.tree_util.tree_structure(shapes)
    ours = np.asarray(model.apply(variables, jnp.asarray(x), train=False))
    with torch.no_grad():
        theirs = twin(_nchw(x)).numpy()
    assert tt.relative_error(ours, np.transpose(theirs, (0, 2, 3, 1))) <= TOL
