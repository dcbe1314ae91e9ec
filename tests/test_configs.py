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
