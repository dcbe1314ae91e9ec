"""Model shapes, pinned parameter counts, gradients, registry errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from satseg_jax.errors import SatsegError
from satseg_jax.models import get_model, valid_input_size, valid_output_size


def _count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def test_original_unet_matches_the_paper():
    model = get_model({"name": "unet_original", "depth": 4, "base_width": 64}, num_classes=2)
    x = jax.ShapeDtypeStruct((1, 572, 572, 1), jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), x)
    assert _count(variables["params"]) == 31_030_658
    out = jax.eval_shape(lambda v, x: model.apply(v, x), variables, x)
    assert out.shape == (1, 388, 388, 2)
    assert valid_output_size(572, 4) == 388 and valid_input_size(388, 4) == 572
    assert valid_output_size(256, 4) is None and valid_output_size(252, 4) == 68


def test_padded_unet_shape_and_parameter_count():
    model = get_model({"name": "unet", "depth": 2, "base_width": 4, "norm": "batch"}, 5)
    x = jnp.zeros((2, 32, 32, 3))
    v = model.init(jax.random.PRNGKey(0), x)
    # Level widths 4, 8, bottleneck 16; each conv has no bias (BatchNorm follows) and each
    # BatchNorm has scale + bias:
    # enc0: 3*3*3*4 + 2*4 + 3*3*4*4 + 2*4           = 108 + 8 + 144 + 8      =   268
    # enc1: 3*3*4*8 + 2*8 + 3*3*8*8 + 2*8           = 288 + 16 + 576 + 16    =   896
    # mid:  3*3*8*16 + 2*16 + 3*3*16*16 + 2*16      = 1152 + 32 + 2304 + 32  = 3,520
    # up1:  2*2*16*8 + 8 ; dec1: 3*3*16*8 + 16 + 3*3*8*8 + 16 = 520 + 1152+16+576+16 = 2,280
    # up0:  2*2*8*4 + 4  ; dec0: 3*3*8*4 + 8 + 3*3*4*4 + 8    = 132 + 288+8+144+8    =   580
    # head: 4*5 + 5                                                          =    25
    assert _count(v["params"]) == 268 + 896 + 3520 + 2280 + 580 + 25 == 7569
    y = model.apply(v, x)
    assert y.shape == (2, 32, 32, 5) and y.dtype == jnp.float32


@pytest.mark.parametrize("cfg", [
    {"name": "unet", "depth": 2, "base_width": 4, "norm": "batch", "dropout": 0.1},
    {"name": "unet", "depth": 2, "base_width": 4, "norm": "group", "upsample": "bilinear"},
    {"name": "unet_original", "depth": 1, "base_width": 4},
])
def test_gradient_reaches_every_parameter(cfg):
    model = get_model(cfg, 3)
    size = 32 if cfg["name"] == "unet" else valid_input_size(16, 1)
    x = jax.random.normal(jax.random.PRNGKey(1), (2, size, size, 4))
    v = model.init({"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(2)}, x)

    def loss(params):
        out, _ = model.apply({**v, "params": params}, x, train=True,
                             rngs={"dropout": jax.random.PRNGKey(3)}, mutable=["batch_stats"])
        return jnp.mean(out**2)

    grads = jax.grad(loss)(v["params"])
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        assert float(jnp.abs(g).sum()) > 0, f"no gradient reaches {jax.tree_util.keystr(path)}"


def test_bfloat16_compute_returns_float32_logits():
    model = get_model({"name": "unet", "depth": 2, "base_width": 4}, 3, dtype=jnp.bfloat16)
    x = jnp.ones((1, 16, 16, 2))
    v = model.init(jax.random.PRNGKey(0), x)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(v["params"]))
    assert model.apply(v, x).dtype == jnp.float32


def test_registry_errors_name_the_options():
    with pytest.raises(SatsegError, match="registered"):
        get_model({"name": "unte"}, 2)
    with pytest.raises(SatsegError, match="base_width"):
        get_model({"name": "unet", "base_widht": 4}, 2)
    model = get_model({"name": "unet", "depth": 3, "base_width": 4}, 2)
    with pytest.raises(SatsegError, match="divisible by 8"):
        model.init(jax.random.PRNGKey(0), jnp.zeros((1, 20, 20, 1)))
