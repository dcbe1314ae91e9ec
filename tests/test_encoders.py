"""Encoders by name under the U-Nets: torchvision/timm/smp parity and parameter counts.

Parity is the contract pretrained weights rely on: a randomly initialised torch model,
converted key for key, must give the same feature pyramid (and the same U-Net logits as
smp's Unet) in eval mode.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from satseg_jax.errors import SatsegError
from satseg_jax.models.encoders import ENCODERS, encoder_channels, make_encoder
from satseg_jax.models.registry import get_model
from satseg_jax.weights.convert import convert_state_dict
from satseg_jax.weights.importer import encoder_template
from tests.helpers import torch_twins as tt

TOL = 1e-4  # max abs difference relative to the feature scale, float32


def _param_count(tree) -> int:
    return int(sum(np.prod(v.shape) for v in jax.tree_util.tree_leaves(tree)))


@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50"])
def test_resnet_features_match_torchvision(arch):
    tv = tt.library("torchvision")
    torch_model = getattr(tv.models, arch)().eval()
    tt.randomise_bn(torch_model)
    state = tt.state_dict_numpy(torch_model)
    conv = convert_state_dict(state, encoder_template(arch, 3), arch)
    assert set(conv.dropped) == {k for k in state if k.startswith("fc.")
                                 or k.endswith("num_batches_tracked")}
    # the encoder holds every torchvision parameter except the classifier
    fc = sum(v.size for k, v in state.items() if k.startswith("fc."))
    assert _param_count(conv.variables["params"]) == sum(
        p.numel() for p in torch_model.parameters()) - fc
    x = np.random.default_rng(0).normal(size=(2, 64, 96, 3)).astype(np.float32)
    ours = make_encoder(arch).apply(conv.variables, jnp.asarray(x), train=False)
    theirs = tt.torch_features(torch_model, x)
    assert [f.shape[-1] for f in ours] == list(encoder_channels(arch))
    for stride, a, b in zip((2, 4, 8, 16, 32), ours, theirs):
        assert a.shape == b.shape, (stride, a.shape, b.shape)
        assert tt.relative_error(np.asarray(a), b) <= TOL, (arch, stride)


def test_timm_resnet_state_dict_has_the_same_layout():
    timm = tt.library("timm")
    model = timm.create_model("resnet18", pretrained=False).eval()
    tt.randomise_bn(model)
    conv = convert_state_dict(tt.state_dict_numpy(model), encoder_template("resnet18", 3),
                              "timm resnet18")
    x = np.random.default_rng(1).normal(size=(1, 64, 64, 3)).astype(np.float32)
    ours = make_encoder("resnet18").apply(conv.variables, jnp.asarray(x), train=False)
    model.relu = model.act1  # timm names the stem activation act1
    for a, b in zip(ours, tt.torch_features(model, x)):
        assert tt.relative_error(np.asarray(a), b) <= TOL


def _smp_to_flax(smp_state: dict, template: dict) -> dict:
    """smp Unet state dict -> our U-Net variables: 'encoder.*' is a torchvision ResNet,
    decoder block i is our level 4-i (two ConvBlock convs/BNs), segmentation_head.0 the
    head."""
    encoder = {k[len("encoder."):]: v for k, v in smp_state.items() if k.startswith("encoder.")}
    enc = convert_state_dict(encoder, {c: template[c]["encoder"] for c in template}, "smp")
    out = {c: {"encoder": enc.variables[c]} for c in template}
    return tt.smp_unet_decoder(smp_state, template, out)


def test_unet_resnet34_is_smps_unet():
    """Same parameter count and the same logits as smp.Unet('resnet34') in eval mode."""
    smp = tt.library("segmentation_models_pytorch")
    twin = smp.Unet("resnet34", encoder_weights=None, classes=2).eval()
    tt.randomise_bn(twin)
    model = get_model({"name": "unet", "encoder": "resnet34", "depth": 5, "base_width": 16,
                       "upsample": "nearest"}, num_classes=2)
    x = np.random.default_rng(2).normal(size=(1, 64, 64, 3)).astype(np.float32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.asarray(x)))
    assert _param_count(shapes["params"]) == sum(p.numel() for p in twin.parameters())
    variables = _smp_to_flax(tt.state_dict_numpy(twin), shapes)
    assert jax.tree_util.tree_structure(variables) == jax.tree_util.tree_structure(shapes)
    ours = np.asarray(model.apply(variables, jnp.asarray(x), train=False))
    with tt.torch.no_grad():
        theirs = twin(tt.torch.from_numpy(np.transpose(x, (0, 3, 1, 2)).copy())).numpy()
    assert tt.relative_error(ours, np.transpose(theirs, (0, 2, 3, 1))) <= TOL


# Parameter counts of smp.Unet(encoder, classes=2) in smp 0.6.0, pinned so the decoder
# layout cannot drift without a test noticing (computed by test_unet_resnet34_is_smps_unet
# for resnet34 with smp installed; the others with the same smp release).
SMP_UNET_PARAMS = {"resnet18": 14_328_354, "resnet34": 24_436_514, "resnet50": 32_521_250,
                   "convnext_tiny": 31_928_898}  # tu-convnext_tiny (tests/test_convnext.py)


@pytest.mark.parametrize("encoder", ENCODERS)
def test_unet_parameter_counts_match_smp(encoder):
    model = get_model({"name": "unet", "encoder": encoder, "depth": 5, "base_width": 16,
                       "upsample": "nearest"}, num_classes=2)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                               jnp.zeros((1, 64, 64, 3))))
    assert _param_count(shapes["params"]) == SMP_UNET_PARAMS[encoder]


@pytest.mark.parametrize("name", ["unet", "attention_unet", "residual_unet"])
def test_variants_take_an_encoder_and_give_full_resolution_logits(name):
    model = get_model({"name": name, "encoder": "resnet18", "depth": 4, "base_width": 8},
                      num_classes=3)
    x = jnp.zeros((2, 48, 64, 4))
    # Shapes only: run op by op, init + apply of a ResNet-18 U-Net costs ~20 s of compiles.
    variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x))
    assert jax.eval_shape(model.apply, variables, x).shape == (2, 48, 64, 3)
    assert "encoder" in variables["params"]


def test_bad_encoder_settings_are_refused():
    with pytest.raises(SatsegError, match="unknown encoder"):
        get_model({"name": "unet", "encoder": "resnet101"}, num_classes=2)
    with pytest.raises(SatsegError, match="at most 5"):
        get_model({"name": "unet", "encoder": "resnet18", "depth": 6}, num_classes=2)
    with pytest.raises(SatsegError, match="unet_original has no encoder"):
        get_model({"name": "unet_original", "encoder": "resnet18"}, num_classes=2)
