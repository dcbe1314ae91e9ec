"""Pretrained encoders in training: the band contract of the weight card, band
adaptation, fine-tuning controls (freeze, encoder learning rate, BN, weight decay), and
exact resume with frozen parts. The weights are real torch models' state dicts (random
init: nothing can be downloaded in CI), imported with ``satseg weights import``."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from satseg_jax.cli import main
from satseg_jax.errors import SatsegError
from satseg_jax.weights.store import read_encoder_dir
from tests.helpers import torch_twins as tt
from tests.workers.spawn import run_worker
from tests.workers.tiny_config import tiny_config

torch = tt.torch
S2 = ["B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12"]


@pytest.fixture(scope="module")
def rgb_weights(tmp_path_factory):
    """An ImageNet-style card (red, green, blue) over a torchvision ResNet-18."""
    tv = tt.library("torchvision")
    model = tv.models.resnet18()
    tt.randomise_bn(model)
    root = tmp_path_factory.mktemp("rgb_weights")
    torch.save(model.state_dict(), root / "resnet18.pth")
    assert main(["weights", "import", "--from", "torchvision", "--arch", "resnet18",
                 "--file", str(root / "resnet18.pth"), "--out", str(root / "enc")]) == 0
    return root / "enc"


@pytest.fixture(scope="module")
def s2_weights(tmp_path_factory):
    """SSL4EO-S12 layout: timm's ResNet-50 on the 13 Sentinel-2 bands."""
    timm = tt.library("timm")
    model = timm.create_model("resnet50", in_chans=13, pretrained=False)
    root = tmp_path_factory.mktemp("s2_weights")
    torch.save(model.state_dict(), root / "ssl4eo.pth")
    assert main(["weights", "import", "--from", "torchgeo", "--arch", "resnet50", "--file",
                 str(root / "ssl4eo.pth"), "--out", str(root / "enc"), "--bands", ",".join(S2),
                 "--mean", ",".join(["0.1"] * 13), "--std", ",".join(["0.05"] * 13),
                 "--input-scale", "10000"]) == 0
    return root / "enc"


def _final(workdir, step):
    from satseg_jax import checkpoints

    manager = checkpoints.make_manager(workdir, read_only=True)
    state, _ = checkpoints.restore_raw(manager, step)
    manager.close()
    return state


def _enc_config(data, enc=None, **kw):
    fields = {"model.encoder": "resnet18", "model.base_width": 4, "train.num_steps": 4}
    if enc is not None:
        fields["model.encoder_weights"] = str(enc)
    return tiny_config(data, **{**fields, **kw})


def test_card_bands_refused_then_adapted_frozen_and_used_end_to_end(
        rgb_weights, tiny_dataset, tmp_path, capsys):
    """RGB weights onto the 4-band (blue, green, red, nir) set: refused with the fix;
    with adapt_bands=names and a frozen encoder the run trains, checkpoints, evaluates
    and predicts, the encoder is bit-identical to the weights (nir's slice at 0), the
    decoder moved, and run.json carries the card's normalisation for the RGB bands."""
    from satseg_jax.evaluate import evaluate_workdir
    from satseg_jax.train import train_and_evaluate

    with pytest.raises(SatsegError, match="adapt_bands=names") as e:
        train_and_evaluate(_enc_config(tiny_dataset, rgb_weights), tmp_path / "refused")
    assert "take 3 bands (red, green, blue)" in str(e.value)
    assert "4 (blue, green, red, nir)" in str(e.value)
    assert not (tmp_path / "refused").exists()
    run = tmp_path / "run"
    train_and_evaluate(_enc_config(tiny_dataset, rgb_weights, **{
        "model.adapt_bands": "names", "train.freeze_encoder_steps": -1}), run)
    assert "by names: blue, green, red take their pretrained kernels; nir start at 0" in \
        capsys.readouterr().out
    pretrained, card = read_encoder_dir(rgb_weights)
    state = _final(run, 4)
    stem = np.asarray(state["params"]["encoder"]["conv1"]["kernel"])
    rgb = pretrained["params"]["conv1"]["kernel"]
    np.testing.assert_array_equal(stem[:, :, :3], rgb[:, :, ::-1])  # dataset order b, g, r
    assert not stem[:, :, 3].any()
    np.testing.assert_array_equal(np.asarray(state["params"]["encoder"]["layer1_0"]["conv1"]
                                             ["kernel"]),
                                  pretrained["params"]["layer1_0"]["conv1"]["kernel"])
    from satseg_jax import steps

    config = _enc_config(tiny_dataset)
    k = json.loads((tiny_dataset / "satseg_dataset.json").read_text())["num_classes"]
    init = steps.create_train_state(int(config.seed), steps.build_model(config, k),
                                    steps.create_optimizer(config)[0], (1, 32, 32, 4))
    assert init.params["head"]["kernel"].shape == state["params"]["head"]["kernel"].shape
    assert not np.array_equal(np.asarray(state["params"]["head"]["kernel"]),
                              np.asarray(init.params["head"]["kernel"]))  # decoder trained
    normal = json.loads((run / "run.json").read_text())
    assert np.allclose(normal["normalisation"]["mean"][:3],
                       [255 * m for m in card["mean"][::-1]])
    assert normal["provenance"]["encoder_weights"]["adapt_bands"] == "names"
    assert evaluate_workdir(run, split="test")["mean_iou"] >= 0
    assert main(["predict", "--workdir", str(run), "--image",
                 str(tiny_dataset.parent / "scene.tif"), "--out", str(tmp_path / "m.tif")]) == 0
    assert (tmp_path / "m.tif").stat().st_size > 0


def test_multispectral_weights_keep_their_bands_or_adapt(s2_weights):
    """13-band SSL4EO-layout weights: as they are on 13 bands; refused on 4 with the fix;
    names picks the named bands' kernels; repeat is exactly smp's patch_first_conv."""
    from satseg_jax.models.registry import get_model
    from satseg_jax.weights.adapt import encoder_start

    pretrained, _ = read_encoder_dir(s2_weights)
    kernel = pretrained["params"]["conv1"]["kernel"]

    def start(bands, adapt="none"):
        model = get_model({"name": "unet", "encoder": "resnet50", "depth": 5},
                          num_classes=2)
        shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                                   jnp.zeros((1, 64, 64, len(bands)))))
        template = {c: shapes[c]["encoder"] for c in ("params", "batch_stats")}
        cfg = {"encoder": "resnet50", "encoder_weights": str(s2_weights),
               "adapt_bands": adapt}
        return encoder_start(cfg, template, bands, [1000.0] * len(bands),
                             [500.0] * len(bands), "DATA")

    same = start(S2)
    np.testing.assert_array_equal(same.variables["params"]["conv1"]["kernel"], kernel)
    assert same.mean == (1000.0,) * 13 and same.std == (500.0,) * 13  # 0.1 × 10000
    four = ["B2", "B3", "B4", "B8"]
    with pytest.raises(SatsegError, match=r"13 bands .* DATA has 4 .*adapt_bands=names"):
        start(four)
    named = start(four, "names").variables["params"]["conv1"]["kernel"]
    np.testing.assert_array_equal(named, kernel[:, :, [1, 2, 3, 7]])
    smp = tt.library("segmentation_models_pytorch")
    from segmentation_models_pytorch.encoders._utils import patch_first_conv

    assert smp is not None
    conv = torch.nn.Sequential(torch.nn.Conv2d(13, 64, 7, 2, 3, bias=False))
    with torch.no_grad():
        conv[0].weight.copy_(torch.from_numpy(np.transpose(kernel, (3, 2, 0, 1)).copy()))
    patch_first_conv(conv, 4, default_in_channels=13)
    repeat = start(four, "repeat").variables["params"]["conv1"]["kernel"]
    np.testing.assert_allclose(repeat, np.transpose(conv[0].weight.detach().numpy(),
                                                    (2, 3, 1, 0)), rtol=1e-6)
    with pytest.raises(SatsegError, match="use adapt_bands=repeat"):
        start(["red", "green", "blue"], "names")


def _one_step(data, **fields):
    from satseg_jax import steps

    config = _enc_config(data, **{"schedule.name": "constant", **fields})
    tx, _ = steps.create_optimizer(config)
    model = steps.build_model(config, 2)
    state = steps.create_train_state(0, model, tx, (1, 32, 32, 4))
    step = steps.make_train_step(model, tx, config.loss, 2, None, "segmentation")
    rng = np.random.default_rng(0)
    batch = {"image": jnp.asarray(rng.normal(size=(4, 32, 32, 4)), jnp.float32),
             "mask": jnp.asarray(rng.integers(0, 2, size=(4, 32, 32)), jnp.int32)}
    new, metrics = jax.jit(step)(state, batch)
    return state, new, {k: float(v) for k, v in metrics.items()}


def test_encoder_learning_rate_multiplier_shows_in_group_update_norms(tiny_dataset):
    _, _, full = _one_step(tiny_dataset)
    _, _, tenth = _one_step(tiny_dataset, **{"optimizer.encoder_lr_multiplier": 0.1})
    assert full["update_norm_encoder"] > 0
    assert tenth["update_norm_encoder"] == pytest.approx(0.1 * full["update_norm_encoder"],
                                                         rel=1e-4)
    assert tenth["update_norm_decoder"] == pytest.approx(full["update_norm_decoder"],
                                                         rel=1e-6)
    before, after, frozen = _one_step(tiny_dataset, **{"train.freeze_encoder_steps": 3})
    assert frozen["update_norm_encoder"] == 0 and frozen["update_norm_decoder"] > 0
    for a, b in zip(jax.tree.leaves(before.params["encoder"]),
                    jax.tree.leaves(after.params["encoder"])):
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_no_weight_decay_on_norms_and_biases(tiny_dataset):
    """AdamW with decay_norms_and_biases=False: biases and norm scales take exactly the
    update of a run without weight decay, kernels the decayed one."""
    adamw = {"optimizer.name": "adamw", "optimizer.learning_rate": 0.1}
    _, masked, _ = _one_step(tiny_dataset, **adamw, **{
        "optimizer.weight_decay": 0.5, "optimizer.decay_norms_and_biases": False})
    _, plain, _ = _one_step(tiny_dataset, **adamw, **{"optimizer.weight_decay": 0.0})
    kinds = set()
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(masked.params),
                            jax.tree_util.tree_leaves(plain.params), strict=True):
        kind = path[-1].key
        kinds.add(kind)
        same = np.array_equal(np.asarray(a), np.asarray(b))
        assert same == (kind in ("bias", "scale")), jax.tree_util.keystr(path)
    assert {"bias", "scale", "kernel"} <= kinds


def test_encoder_bn_frozen_keeps_running_statistics(tiny_dataset):
    before, after, _ = _one_step(tiny_dataset, **{"model.encoder_bn": "frozen"})
    for a, b in zip(jax.tree.leaves(before.batch_stats["encoder"]),
                    jax.tree.leaves(after.batch_stats["encoder"])):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    moved = [not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(
        jax.tree.leaves(before.batch_stats), jax.tree.leaves(after.batch_stats))]
    assert any(moved)  # the decoder's BatchNorm still trains


def test_resume_with_a_thawing_encoder_is_bit_identical(tiny_dataset, tmp_path):
    """SIGKILL after the step-4 checkpoint of a run whose encoder is frozen until step 6
    (and trains at half the learning rate, BN frozen): the resumed run ends bit-identical
    to an uninterrupted one."""
    extra = ["--config.model.encoder=resnet18", "--config.train.freeze_encoder_steps=6",
             "--config.optimizer.encoder_lr_multiplier=0.5", "--config.model.encoder_bn=frozen"]
    full, killed = tmp_path / "full", tmp_path / "killed"
    run_worker("tests.workers.train_worker", str(full), str(tiny_dataset), *extra)
    proc = run_worker("tests.workers.train_worker", str(killed), str(tiny_dataset),
                      "--kill-after-save", "4", *extra, check=False)
    assert proc.returncode == -9, proc.stderr[-2000:]
    at4 = _final(killed, 4)["params"]["encoder"]  # still frozen: the initial encoder
    run_worker("tests.workers.train_worker", str(killed), str(tiny_dataset), *extra)
    a, b = _final(full, 12), _final(killed, 12)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert np.array_equal(np.asarray(x), np.asarray(y))
    moved = [not np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(
        jax.tree.leaves(at4), jax.tree.leaves(a["params"]["encoder"]))]
    assert all(moved)  # thawed after step 6
