"""smp's decoders over the named encoders: FPN, DeepLabV3+ and UNet++ (models/fpn.py,
models/deeplab.py, models/variants.py), against segmentation_models_pytorch 0.6.0.

The contract researchers compare against: the same parameter count as smp's model, and
(eval mode, non-trivial BatchNorm statistics) the same logits once smp's state dict is
converted — the encoder by ``satseg_jax.weights.convert`` (what pretrained weights use),
the decoder by the key maps below. Torch/smp tests skip without the weights extra;
the refusal and training-mode tests need only JAX.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from satseg_jax import finetune
from satseg_jax.errors import SatsegError
from satseg_jax.models.encoders import ENCODERS, make_encoder
from satseg_jax.models.encoders.resnet import RESNET_LAYOUTS
from satseg_jax.models.registry import get_model

TOL = 1e-4  # max abs difference relative to the output scale, float32
SIDE = 64
BANDS, CLASSES = 3, 2
# smp 0.6.0, 3 bands, 2 classes (also computed from smp in the tests when it is installed)
SMP_PARAMS = {"fpn": 23_155_522, "deeplabv3plus": 26_677_842, "unet_plus_plus": 26_078_754}
CONFIGS = {
    "fpn": {"name": "fpn", "encoder": "resnet34"},
    "deeplabv3plus": {"name": "deeplabv3plus", "encoder": "resnet50"},
    "unet_plus_plus": {"name": "unet_plus_plus", "encoder": "resnet34", "depth": 5,
                       "base_width": 16, "upsample": "nearest"},
}


def _smp_model(name: str, smp, encoder: str | None = None):
    """smp's twin of CONFIGS[name] (over ``encoder``; timm's models as smp's ``tu-``)."""
    cls = {"fpn": smp.FPN, "deeplabv3plus": smp.DeepLabV3Plus,
           "unet_plus_plus": smp.UnetPlusPlus}[name]
    encoder = encoder or CONFIGS[name]["encoder"]
    smp_name = encoder if encoder in RESNET_LAYOUTS else f"tu-{encoder}"
    return cls(smp_name, encoder_weights=None, in_channels=BANDS, classes=CLASSES).eval()


def _takes(name: str, encoder: str) -> bool:
    try:
        get_model({**CONFIGS[name], "encoder": encoder}, CLASSES)
    except SatsegError:  # deeplabv3plus over an encoder without output_stride
        return False
    return True


def _count(tree) -> int:
    return int(sum(np.prod(v.shape) for v in jax.tree_util.tree_leaves(tree)))


def _shapes(model, side: int = SIDE):
    return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                             jnp.zeros((1, side, side, BANDS))))


# ---- smp decoder keys: Flax module path -> torch module prefix ----------------------

_LEAF = {"kernel": "weight", "bias": "bias", "scale": "weight", "mean": "running_mean",
         "var": "running_var"}


def _fpn_prefix(modules: tuple[str, ...]) -> str:
    top = modules[0]
    if top == "head":
        return "segmentation_head.0"
    if top == "p5":
        return "decoder.p5"
    if top in ("p4", "p3", "p2"):
        return f"decoder.{top}.skip_conv"
    i, (kind, j) = top.rsplit("_", 1)[1], modules[1].split("_")
    return f"decoder.seg_blocks.{i}.block.{j}.block.{0 if kind == 'conv' else 1}"


def _deeplab_prefix(modules: tuple[str, ...]) -> str:
    if modules[-1] == "BatchNorm_0":
        modules = modules[:-1]
    if modules[0] == "aspp":
        name = modules[1]
        if name.startswith("project"):
            return f"decoder.aspp.0.project.{0 if name.endswith('conv') else 1}"
        if name.startswith("pool"):
            return f"decoder.aspp.0.convs.4.{1 if name.endswith('conv') else 2}"
        branch, part = name[1], name.split("_", 1)[1]
        return f"decoder.aspp.0.convs.{branch}." + {
            "conv": "0", "depthwise": "0.0", "pointwise": "0.1", "bn": "1"}[part]
    return {"aspp_sep_depthwise": "decoder.aspp.1.0", "aspp_sep_pointwise": "decoder.aspp.1.1",
            "aspp_bn": "decoder.aspp.2", "low_conv": "decoder.block1.0",
            "low_bn": "decoder.block1.1", "fuse_depthwise": "decoder.block2.0.0",
            "fuse_pointwise": "decoder.block2.0.1", "fuse_bn": "decoder.block2.1",
            "head": "segmentation_head.0"}[modules[0]]


def _unetpp_prefix(modules: tuple[str, ...]) -> str:
    if modules[0] == "head":
        return "segmentation_head.0"
    kind, j = modules[1].split("_")  # Conv_j / Norm_j (/BatchNorm_0)
    return f"decoder.blocks.{modules[0]}.conv{int(j) + 1}.{0 if kind == 'Conv' else 1}"


PREFIX = {"fpn": _fpn_prefix, "deeplabv3plus": _deeplab_prefix,
          "unet_plus_plus": _unetpp_prefix}


def _flat(tree, prefix=()):
    for k, v in tree.items():
        if isinstance(v, dict) or hasattr(v, "items"):
            yield from _flat(v, (*prefix, k))
        else:
            yield (*prefix, k), v


def smp_to_flax(name: str, state: dict[str, np.ndarray], template) -> dict:
    """smp state dict -> our variables, strictly: every template leaf is filled (shapes
    checked) and every smp tensor is used (BatchNorm step counters aside)."""
    from satseg_jax.weights.convert import convert_state_dict

    encoder = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    # smp's timm encoders (``tu-``) hold timm's features_only model as ``encoder.model``
    encoder = {k.removeprefix("model."): v for k, v in encoder.items()}
    enc = convert_state_dict(encoder, {c: template[c]["encoder"] for c in template
                                       if "encoder" in template[c]}, f"smp {name} encoder")
    out: dict = {c: {"encoder": enc.variables[c]} if c in enc.variables else {}
                 for c in template}
    used = set()
    for (collection, *modules, leaf), shape in _flat(dict(template)):
        if modules[0] == "encoder":
            continue
        key = f"{PREFIX[name](tuple(modules))}.{_LEAF[leaf]}"
        value = state[key]
        if value.ndim == 4:
            value = np.transpose(value, (2, 3, 1, 0))  # OIHW -> HWIO
        assert value.shape == tuple(shape.shape), (key, value.shape, shape.shape)
        node = out[collection]
        for m in modules:
            node = node.setdefault(m, {})
        node[leaf] = value
        used.add(key)
    unused = {k for k in state if not k.startswith("encoder.")
              and not k.endswith("num_batches_tracked")} - used
    assert not unused, sorted(unused)
    return out


# ---- smp parity (skipped without torch/smp) -----------------------------------------


@pytest.fixture(scope="module")
def smp():
    from tests.helpers import torch_twins as tt

    tt.torch.set_num_threads(2)
    return tt.library("segmentation_models_pytorch")


@pytest.mark.parametrize("name,encoder", [(n, e) for n in sorted(CONFIGS) for e in ENCODERS
                                          if _takes(n, e)])
def test_parameter_counts_match_smp(name, encoder, smp):
    twin = _smp_model(name, smp, encoder)
    theirs = sum(p.numel() for p in twin.parameters())
    if encoder == CONFIGS[name]["encoder"]:
        assert theirs == SMP_PARAMS[name]  # smp 0.6.0's, pinned
    shapes = _shapes(get_model({**CONFIGS[name], "encoder": encoder}, CLASSES))
    assert _count(shapes["params"]) == theirs
    assert "encoder" in shapes["params"]  # what encoder_weights / finetune groups use
    labels = jax.tree_util.tree_leaves(finetune.param_labels(shapes["params"]))
    assert {"encoder", "decoder"} == set(labels)


# The default encoders, and UNet++ over encoders without a stride-2 map (smp's empty
# nested nodes; ConvNeXt).
LOGIT_CASES = [*((n, CONFIGS[n]["encoder"]) for n in sorted(CONFIGS)),
               *(("unet_plus_plus", e) for e in ENCODERS if e not in RESNET_LAYOUTS)]


@pytest.mark.parametrize("name,encoder", LOGIT_CASES)
def test_logits_match_smp(name, encoder, smp):
    """Same logits as smp's model (eval mode, randomised BatchNorm statistics)."""
    from tests.helpers import torch_twins as tt

    twin = _smp_model(name, smp, encoder)
    tt.randomise_bn(twin)
    model = get_model({**CONFIGS[name], "encoder": encoder}, CLASSES)
    variables = smp_to_flax(name, tt.state_dict_numpy(twin), _shapes(model))
    x = np.random.default_rng(3).normal(size=(1, SIDE, SIDE, BANDS)).astype(np.float32)
    ours = np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x))
    with tt.torch.no_grad():
        theirs = twin(tt.torch.from_numpy(np.transpose(x, (0, 3, 1, 2)).copy())).numpy()
    theirs = np.transpose(theirs, (0, 2, 3, 1))
    assert ours.shape == theirs.shape == (1, SIDE, SIDE, CLASSES)
    err = tt.relative_error(ours, theirs)
    print(f"{name} over {encoder}: max |diff| / max |smp| = {err:.2e}")
    assert err <= TOL, (name, encoder, err)


@pytest.mark.parametrize("arch,stride", [("resnet18", 16), ("resnet18", 8)])
def test_dilated_resnet_features_match_smp(arch, stride, smp):
    """``output_stride`` 16/8 is smp's ``make_dilated`` encoder, feature for feature."""
    from satseg_jax.weights.convert import convert_state_dict
    from tests.helpers import torch_twins as tt

    twin = smp.encoders.get_encoder(arch, in_channels=BANDS, depth=5, weights=None,
                                    output_stride=stride).eval()
    tt.randomise_bn(twin)
    encoder = make_encoder(arch, output_stride=stride)
    x = np.random.default_rng(4).normal(size=(1, SIDE, SIDE, BANDS)).astype(np.float32)
    template = jax.eval_shape(lambda: encoder.init(jax.random.PRNGKey(0), x))
    conv = convert_state_dict(tt.state_dict_numpy(twin), template, f"smp {arch}")
    ours = jax.jit(lambda v, x: encoder.apply(v, x))(conv.variables, x)
    with tt.torch.no_grad():
        theirs = twin(tt.torch.from_numpy(np.transpose(x, (0, 3, 1, 2)).copy()))[1:]
    for i, (a, b) in enumerate(zip(ours, theirs)):
        b = np.transpose(b.numpy(), (0, 2, 3, 1))
        assert a.shape == b.shape, (i, a.shape, b.shape)
        assert tt.relative_error(np.asarray(a), b) <= TOL, (arch, stride, i)
    assert ours[-1].shape[1] == SIDE // stride


# ---- JAX only ----------------------------------------------------------------------


def test_output_stride_keeps_parameters_and_default():
    x = jnp.zeros((1, SIDE, SIDE, BANDS))
    shapes = {s: jax.eval_shape(lambda s=s: make_encoder("resnet50", output_stride=s).init(
        jax.random.PRNGKey(0), x)) for s in (32, 16)}
    assert (jax.tree_util.tree_structure(shapes[32]) ==
            jax.tree_util.tree_structure(shapes[16]))
    assert [v.shape for v in jax.tree_util.tree_leaves(shapes[32])] == [
        v.shape for v in jax.tree_util.tree_leaves(shapes[16])]
    with pytest.raises(SatsegError, match="output_stride=4"):
        make_encoder("resnet18", output_stride=4)


@pytest.mark.parametrize("cfg,match", [
    ({"name": "fpn", "encoder": "none"}, r"encoder='none'.*fpn.*resnet34"),
    ({"name": "deeplabv3plus", "encoder": "none"}, r"encoder='none'.*deeplabv3plus"),
    ({"name": "fpn", "encoder": "resnet101"}, r"config.model.encoder='resnet101'"),
    ({"name": "fpn", "merge": "mean"}, r"config.model.merge='mean'"),
    ({"name": "fpn", "segmentation_channels": 100}, r"segmentation_channels=100.*32"),
    ({"name": "fpn", "pyramid_channels": 0}, r"pyramid_channels=0"),
    ({"name": "fpn", "dropout": 1.5}, r"config.model.dropout=1.5"),
    ({"name": "fpn", "encoder_bn": "eval"}, r"config.model.encoder_bn='eval'"),
    ({"name": "fpn", "depth": 4}, r"\['depth'\] are not options of 'fpn'"),
    ({"name": "deeplabv3plus", "output_stride": 32}, r"config.model.output_stride=32"),
    ({"name": "deeplabv3plus", "atrous_rates": [6, 12]}, r"config.model.atrous_rates"),
    ({"name": "deeplabv3plus", "aspp_dropout": -0.1}, r"config.model.aspp_dropout"),
    ({"name": "deeplabv3plus", "decoder_channels": 0}, r"config.model.decoder_channels=0"),
    ({"name": "unet_plus_plus", "encoder": "resnet18", "deep_supervision": True},
     r"deep_supervision=True.*encoder='none'"),
    ({"name": "unet_plus_plus", "encoder": "resnet18", "depth": 6}, r"at most 5"),
    ({"name": "unet_plus_plus", "encoder": "resnet18", "depth": 1}, r"at least 2"),
])
def test_bad_knobs_are_refused(cfg, match):
    with pytest.raises(SatsegError, match=match):
        get_model(cfg, CLASSES)


def test_inputs_must_line_up():
    with pytest.raises(SatsegError, match="divisible by 32"):
        _shapes(get_model({"name": "fpn", "encoder": "resnet18"}, CLASSES), side=48)
    with pytest.raises(SatsegError, match="divisible by 16"):
        _shapes(get_model({"name": "deeplabv3plus", "encoder": "resnet18"}, CLASSES), side=40)


def test_unet_plus_plus_without_encoder_is_unchanged():
    """encoder 'none' is today's UNet++ (checkpoints depend on it): no encoder subtree,
    its own node names, the pinned count of tests/test_models.py."""
    shapes = jax.eval_shape(lambda: get_model(
        {"name": "unet_plus_plus", "depth": 2, "base_width": 4}, 3).init(
        jax.random.PRNGKey(0), jnp.zeros((2, 32, 32, 4))))
    assert _count(shapes["params"]) == 8_319
    assert "encoder" not in shapes["params"] and "ConvBlock_0" in shapes["params"]


def _he_variables(shapes) -> dict:
    """Variables of the template's shapes without flax's init: He-normal kernels, zero
    biases, unit scales, BatchNorm statistics 0 / 1."""
    rng = np.random.default_rng(5)

    def fill(path, s):
        leaf = path[-1].key
        if leaf == "kernel":
            return rng.normal(size=s.shape).astype(np.float32) * np.sqrt(
                2.0 / np.prod(s.shape[:-1]))
        return (np.ones if leaf in ("scale", "var") else np.zeros)(s.shape, np.float32)

    return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.mark.parametrize("cfg", [
    {"name": "fpn", "encoder": "resnet18", "merge": "cat", "pyramid_channels": 32,
     "segmentation_channels": 32},
    {"name": "deeplabv3plus", "encoder": "resnet18", "decoder_channels": 32,
     "encoder_bn": "frozen"},
    {"name": "unet_plus_plus", "encoder": "resnet18", "depth": 3, "base_width": 8,
     "upsample": "nearest", "dropout": 0.1},
], ids=lambda c: c["name"])
def test_training_forward(cfg):
    """train=True: logits at full resolution, finite; the decoder's BatchNorm statistics
    update (the encoder's too unless encoder_bn='frozen')."""
    model = get_model(cfg, CLASSES)
    x = jax.random.normal(jax.random.PRNGKey(1), (2, SIDE, SIDE, BANDS))
    variables = _he_variables(_shapes(model))  # flax's init compiles for ~10 s on 2 cores
    y, new = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"],
                                              rngs={"dropout": jax.random.PRNGKey(2)}))(
        variables, x)
    assert y.shape == (2, SIDE, SIDE, CLASSES) and y.dtype == jnp.float32
    assert np.isfinite(np.asarray(y)).all()
    if "batch_stats" in variables:
        old = variables["batch_stats"]
        changed = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))),
                               old, new["batch_stats"])
        enc = jax.tree_util.tree_leaves(changed["encoder"])
        assert (not any(enc)) if cfg.get("encoder_bn") == "frozen" else all(enc)
        dec = [v for k, sub in changed.items() if k != "encoder"
               for v in jax.tree_util.tree_leaves(sub)]
        assert not dec or all(dec)


def test_a_models_default_encoder_and_input_multiple_reach_training_and_prediction():
    """fpn / deeplabv3plus have an encoder without config.model.encoder being set: the
    fine-tuning groups and the weight start see it; crops, resampled patches and
    prediction tiles round to what each model needs (32, the output stride, 2**depth)."""
    from types import SimpleNamespace

    from satseg_jax.finetune import has_encoder
    from satseg_jax.models.registry import input_multiple, model_encoder
    from satseg_jax.predict import model_context

    assert model_encoder({"name": "fpn"}) == "resnet34"
    assert model_encoder({"name": "deeplabv3plus"}) == "resnet50"
    assert model_encoder({"name": "unet"}) == "none"
    assert model_encoder({"name": "cerranet"}) == "none"
    assert has_encoder(SimpleNamespace(model={"name": "fpn"}))
    assert not has_encoder(SimpleNamespace(model={"name": "unet", "depth": 3}))
    assert input_multiple({"name": "fpn"}) == 32
    assert input_multiple({"name": "deeplabv3plus", "output_stride": 8}) == 8
    assert input_multiple({"name": "unet", "depth": 3}) == 8
    import ml_collections

    config = ml_collections.ConfigDict({"model": {"name": "fpn"}})
    assert model_context(config, 256) == (256, 0)
    with pytest.raises(SatsegError, match="--tile 48 must be divisible by 32 for fpn"):
        model_context(config, 48)
