"""model_cost: GFLOPs see through the oneDNN convolutions (the XLA-convolution twin's
cost, cross-checked by an analytic count); speeds are measured for every model."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import pytest

from satseg_jax import model_cost
from satseg_jax.steps import build_model


def _config(cpu_conv: str):
    c = ml_collections.ConfigDict({
        "model": {"name": "unet", "depth": 2, "base_width": 8, "norm": "batch",
                  "dropout": 0.0, "upsample": "transpose"},
        "train": {"compute_dtype": "float32", "cpu_conv": cpu_conv},
        "parallelism": "jit"})
    return c


def _xla_cost(model, size=32, bands=4):
    x = jnp.zeros((1, size, size, bands))
    v = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False))
    cost = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(v, x).compile() \
        .cost_analysis()
    return (cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"] / 1e9


def test_gflops_equal_the_xla_convolution_cost_whatever_runs_the_convs():
    want = _xla_cost(build_model(_config("xla"), 3))
    for cpu_conv in ("xla", "auto"):  # auto: oneDNN convolutions when they build here
        got = model_cost.forward_gflops(_config(cpu_conv), 3, 4, 32)
        assert got == pytest.approx(want, rel=0.03)
    analytic = model_cost.analytic_gflops(_config("auto"), 3, 4, 32)
    # 2 x multiply-adds of 3x3 convs: depth-2 U-Net, width 8, 32 px ~ 0.03 GFLOPs
    assert 0.01 < analytic < 0.1 and analytic == pytest.approx(want, rel=0.1)
    blind = _xla_cost(build_model(_config("auto"), 3))
    if blind < 0.5 * want:  # oneDNN convolutions built here: what the column used to show
        assert model_cost.forward_gflops(_config("auto"), 3, 4, 32) > 4 * blind


def test_speeds_of_a_config_with_ema():
    """A recipe config (EMA of the weights on) is timed like any other: the timing state
    carries the average the train step updates (it had none: a pytree error ended the
    real-data sweep after all its training)."""
    from pathlib import Path

    from satseg_jax.config_files import load_config_file

    c = load_config_file(Path(__file__).parents[1] / "configs" / "unet_sample.py")
    c.model.depth, c.model.base_width = 2, 4
    c.train.ema_decay = 0.9
    out = model_cost.measure_speeds({"ema": (c, 3, 4, 32)}, batch=2, repeats=1, warmup=1)
    assert out["ema"]["train_img_s"] > 0 and out["ema"]["inference_img_s"] > 0
