"""Every config file loads, and its model/loss/optimizer settings are accepted."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from satseg_jax.config_files import load_config_file
from satseg_jax.models import get_model
from satseg_jax.steps import create_optimizer

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.py"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_builds_model_and_optimizer(path):
    c = load_config_file(path)
    model = get_model(c.model, num_classes=4)
    size = c.data.crop_size or 64
    x = jax.ShapeDtypeStruct((1, size, size, 4), jnp.float32)
    jax.eval_shape(lambda x: model.init(jax.random.key(0, impl="rbg"), x), x)
    create_optimizer(c)
    assert c.train.num_steps > 0 and c.parallelism in ("jit", "pmap")


def test_sweep_config_lists_every_unet_variant():
    sweep = load_config_file(Path(__file__).parents[1] / "configs" / "bench" /
                             "unet_variants.py")
    names = {v["name"] for v in sweep.variants.values()}
    assert {"unet", "attention_unet", "residual_unet", "unet_plus_plus", "r2_unet"} <= names
    assert len(sweep.seeds) >= 2


@pytest.mark.parametrize("recipe", ["rgb_vhr", "multispectral"])
def test_real_sweep_uses_the_recipe_and_the_same_variants(recipe):
    """The real-data sweep: the recipe's data handling and loss, shortened to fixed steps
    (no epochs, no early stop: every run trains alike), >= 3 seeds, the sample sweep's
    variants and baselines, the last checkpoint scored on test (no split is looked at
    while training)."""
    from satseg_jax.config_files import check_config_fields
    from satseg_jax.config_overrides import load_config

    bench = Path(__file__).parents[1] / "configs" / "bench"
    sweep = load_config(f"{bench / 'unet_variants_real.py'}:{recipe}")
    plain = load_config_file(bench / "unet_variants.py")
    recipe_config = load_config_file(bench.parent / "real" / f"{recipe}.py")
    check_config_fields(sweep.base, recipe)
    assert sweep.variants.to_dict() == plain.variants.to_dict()
    assert tuple(sweep.baselines) == ("majority", "rf", "rf-texture")
    assert len(sweep.seeds) >= 3 and sweep.split == "test"
    assert sweep.base.data.eval_split == ""
    b = sweep.base
    assert b.train.num_steps == 300 and b.train.num_epochs == 0
    assert b.train.early_stopping_patience == 0
    assert b.data.crop_size == recipe_config.data.crop_size
    assert b.loss.to_dict() == recipe_config.loss.to_dict()
    assert b.data.brightness == recipe_config.data.brightness
    assert b.data.scale_range == recipe_config.data.scale_range
    with pytest.raises(Exception, match="recipe 'nope'"):
        load_config(f"{bench / 'unet_variants_real.py'}:nope")


@pytest.mark.parametrize("recipe", ["rgb_vhr", "multispectral"])
def test_encoder_sweep_has_issue_31s_rows_on_the_real_schedule(recipe):
    """configs/bench/encoders_real.py: the real sweep's schedule, seeds, split and
    baselines; the plain recipe U-Net as the ``unet`` row every other row is paired
    against; unet x {resnet18, resnet34, resnet50, convnext_tiny}, unet_plus_plus x
    resnet34, deeplabv3plus x resnet50, fpn x resnet34; every row builds on the recipe's
    crop (divisible by 32 for the 5-stage encoders)."""
    from satseg_jax.config_overrides import load_config

    bench = Path(__file__).parents[1] / "configs" / "bench"
    sweep = load_config(f"{bench / 'encoders_real.py'}:{recipe}")
    real = load_config(f"{bench / 'unet_variants_real.py'}:{recipe}")
    assert sweep.base.to_dict() == real.base.to_dict()
    assert tuple(sweep.seeds) == tuple(real.seeds) and sweep.split == "test"
    assert tuple(sweep.baselines) == ("majority", "rf", "rf-texture")
    rows = sweep.variants.to_dict()
    assert rows["unet"] == real.base.model.to_dict()
    pairs = {(r["name"], r.get("encoder", "none")) for r in rows.values()}
    assert pairs == {("unet", "none"), ("unet", "resnet18"), ("unet", "resnet34"),
                     ("unet", "resnet50"), ("unet", "convnext_tiny"),
                     ("unet_plus_plus", "resnet34"), ("deeplabv3plus", "resnet50"),
                     ("fpn", "resnet34")}
    size = sweep.base.data.crop_size
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    for label, fields in rows.items():
        model = get_model(fields, num_classes=2)
        out = jax.eval_shape(lambda x, m=model: m.init_with_output(
            jax.random.key(0, impl="rbg"), x)[0], x)
        assert out.shape == (1, size, size, 2), label
