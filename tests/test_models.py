"""Model shapes, pinned parameter counts, gradients, dtypes, registry errors.

Parameter counts and big-input shapes use ``jax.eval_shape`` (nothing is allocated or
run). Real computations use tiny models and ``rbg`` PRNG keys: the default threefry
key makes XLA:CPU spend tens of seconds compiling each model's initialisers.
"""

from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from satseg_jax.errors import SatsegError
from satseg_jax.models import (
    get_model,
    largest_valid_input,
    model_knobs,
    registered_models,
    valid_input_size,
    valid_input_sizes,
    valid_output_size,
)


def _key(seed: int) -> jax.Array:
    return jax.random.key(seed, impl="rbg")


def _count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _abstract_init(model, shape):
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), x)
    out = jax.eval_shape(lambda v, x: model.apply(v, x), variables, x)
    return variables, out


def conv(c_in: int, c_out: int, k: int = 3, bias: bool = True) -> int:
    """Parameters of a k×k conv (kernel + optional bias)."""
    return k * k * c_in * c_out + (c_out if bias else 0)


def test_original_unet_matches_the_paper():
    model = get_model({"name": "unet_original", "depth": 4, "base_width": 64}, num_classes=2)
    variables, out = _abstract_init(model, (1, 572, 572, 1))
    # Every conv has a bias (no normalisation). Encoder 1->64->64, 64->128->128, ...,
    # bottleneck 512->1024->1024; decoder: 2x2 up-conv halving the channels, then two 3x3
    # convs on the concatenated (skip + up) channels; 1x1 head to 2 classes.
    widths = [64, 128, 256, 512, 1024]
    expected, c = 0, 1
    for w in widths:
        expected += conv(c, w) + conv(w, w)
        c = w
    for w in reversed(widths[:-1]):
        expected += conv(2 * w, w, k=2) + conv(2 * w, w) + conv(w, w)
    expected += conv(64, 2, k=1)
    # = 640+36,928 + 73,856+147,584 + 295,168+590,080 + 1,180,160+2,359,808
    #   + 4,719,616+9,438,208 (encoder + bottleneck: 18,842,048)
    #   + 2,097,664+4,719,104+2,359,808 + 524,544+1,179,904+590,080
    #   + 131,200+295,040+147,584 + 32,832+73,792+36,928 (decoder: 12,188,480) + 130
    assert expected == 18_842_048 + 12_188_480 + 130 == 31_030_658
    assert _count(variables["params"]) == 31_030_658
    assert "batch_stats" not in variables
    assert out.shape == (1, 388, 388, 2) and out.dtype == jnp.float32


def test_valid_size_helpers():
    assert valid_output_size(572, 4) == 388 and valid_input_size(388, 4) == 572
    assert valid_output_size(256, 4) is None  # 256-4=252, /2=126, -4=122, /2=61, -4=57: odd
    assert valid_output_size(252, 4) == 68 and largest_valid_input(256, 4) == 252
    assert valid_input_size(1, 4) == 188 and largest_valid_input(187, 4) is None
    # The closed forms agree with brute force over every size.
    for depth in (1, 2, 3):
        valid = [s for s in range(1, 400) if valid_output_size(s, depth) is not None]
        assert valid_input_sizes(depth, 399) == valid
        for out in range(1, 120):
            assert valid_input_size(out, depth) == min(
                s for s in valid if valid_output_size(s, depth) >= out)
        for top in range(1, 400):
            below = [s for s in valid if s <= top]
            assert largest_valid_input(top, depth) == (below[-1] if below else None)


def test_padded_unet_shape_and_parameter_count():
    model = get_model({"name": "unet", "depth": 2, "base_width": 4, "norm": "batch"}, 5)
    variables, out = _abstract_init(model, (2, 32, 32, 3))
    # Level widths 4, 8, bottleneck 16; each 3x3 conv has no bias (BatchNorm follows) and
    # each BatchNorm has scale + bias (2 * width). Decoder blocks see skip + up channels.
    # enc0: 3*3*3*4 + 2*4 + 3*3*4*4 + 2*4           = 108 + 8 + 144 + 8      =   268
    # enc1: 3*3*4*8 + 2*8 + 3*3*8*8 + 2*8           = 288 + 16 + 576 + 16    =   896
    # mid:  3*3*8*16 + 2*16 + 3*3*16*16 + 2*16      = 1152 + 32 + 2304 + 32  = 3,520
    # up1:  2*2*16*8 + 8 ; dec1: 3*3*16*8 + 16 + 3*3*8*8 + 16 = 520 + 1152+16+576+16 = 2,280
    # up0:  2*2*8*4 + 4  ; dec0: 3*3*8*4 + 8 + 3*3*4*4 + 8    = 132 + 288+8+144+8    =   580
    # head: 1*1*4*5 + 5                                                      =    25
    assert _count(variables["params"]) == 268 + 896 + 3520 + 2280 + 580 + 25 == 7569
    # Running mean + variance per BatchNorm: 2 * (4+4 + 8+8 + 16+16 + 8+8 + 4+4) = 160.
    assert _count(variables["batch_stats"]) == 160
    assert out.shape == (2, 32, 32, 5) and out.dtype == jnp.float32


# Every registered segmentation model with the shared knobs, plus the option paths.
# Depth 1 keeps the compilations short and still has every kind of layer (encoder,
# pool, bottleneck, dropout, up-sampling, skip, decoder, head).
VARIANTS = [
    {"name": "unet", "depth": 1, "base_width": 4, "norm": "batch", "dropout": 0.1},
    {"name": "unet", "depth": 1, "base_width": 4, "norm": "group", "upsample": "bilinear"},
    {"name": "unet_original", "depth": 1, "base_width": 4},
    {"name": "attention_unet", "depth": 1, "base_width": 4},
    {"name": "residual_unet", "depth": 1, "base_width": 4, "norm": "group"},
    {"name": "r2_unet", "depth": 1, "base_width": 4},
    {"name": "unet_plus_plus", "depth": 1, "base_width": 4},
    {"name": "unet_plus_plus", "depth": 1, "base_width": 4, "deep_supervision": True,
     "norm": "none"},
]


@pytest.mark.parametrize("cfg", VARIANTS, ids=lambda c: c["name"])
def test_gradient_reaches_every_parameter(cfg):
    model = get_model(cfg, 3)
    size = 8 if cfg["name"] != "unet_original" else valid_input_size(4, 1)
    x = jax.random.normal(_key(1), (2, size, size, 4))

    @jax.jit  # one compilation for init + forward + backward
    def run(x):
        v = model.init({"params": _key(0), "dropout": _key(2)}, x)

        def loss(params):
            out, new = model.apply({**v, "params": params}, x, train=True,
                                   rngs={"dropout": _key(3)}, mutable=["batch_stats"])
            return jnp.mean(out**2), (out, new)

        grads, (out, new) = jax.grad(loss, has_aux=True)(v["params"])
        return grads, out, new

    grads, out, new = run(x)
    want = size if cfg["name"] != "unet_original" else valid_output_size(size, 1)
    assert out.shape == (2, want, want, 3) and out.dtype == jnp.float32
    assert np.isfinite(np.asarray(out)).all()
    assert set(new) == ({"batch_stats"} if cfg.get("norm", "batch") == "batch"
                        and cfg["name"] != "unet_original" else set())
    # Checked in numpy: a jnp reduction per leaf would compile one kernel per leaf shape.
    for path, g in jax.tree_util.tree_leaves_with_path(jax.device_get(grads)):
        assert np.abs(g).sum() > 0, f"no gradient reaches {jax.tree_util.keystr(path)}"


def test_batchnorm_momentum_and_train_flag():
    """bn_momentum reaches BatchNorm (new = m * old + (1 - m) * batch) and train=False
    uses the running statistics, so eval output does not depend on the batch."""
    x = jax.random.normal(_key(1), (2, 8, 8, 1)) + 3.0

    @jax.jit
    def run(x):
        out = {}
        for m in (0.5, 0.9):
            model = get_model({"name": "unet", "depth": 1, "base_width": 2, "bn_momentum": m}, 2)
            v = model.init(_key(0), x)
            _, new = model.apply(v, x, train=True, mutable=["batch_stats"])
            out[str(m)] = new["batch_stats"]
            eval_one = model.apply(v, x[:1])
            eval_both = model.apply(v, x)[:1]
            out[f"eval{m}"] = (eval_one, eval_both)
        return out

    out = run(x)
    # Running means start at 0 and variances at 1, and new = m * old + (1 - m) * batch.
    bn = lambda bs: bs["ConvBlock_0"]["Norm_0"]["BatchNorm_0"]  # noqa: E731
    mean5, mean9 = bn(out["0.5"])["mean"], bn(out["0.9"])["mean"]
    np.testing.assert_allclose(mean5, 5 * mean9, rtol=1e-4)  # (1 - 0.5) / (1 - 0.9)
    var5, var9 = bn(out["0.5"])["var"], bn(out["0.9"])["var"]
    np.testing.assert_allclose((var5 - 0.5) / 0.5, (var9 - 0.9) / 0.1, rtol=1e-3)
    one, both = out["eval0.9"]
    np.testing.assert_allclose(one, both, rtol=1e-5, atol=1e-6)


def test_bfloat16_compute_returns_float32_logits():
    model = get_model({"name": "unet", "depth": 1, "base_width": 4}, 3, dtype=jnp.bfloat16)
    x = jnp.ones((1, 8, 8, 2))
    v, y = jax.jit(lambda x: (lambda v: (v, model.apply(v, x)))(model.init(_key(0), x)))(x)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(v["params"]))
    assert y.dtype == jnp.float32 and y.shape == (1, 8, 8, 3)
    assert np.isfinite(np.asarray(y)).all()
    # The convolutions really compute in bf16 (only the head's output is cast back).
    jaxpr = str(jax.make_jaxpr(lambda v, x: model.apply(v, x))(v, x))
    assert "bf16" in jaxpr


def test_registry_errors_name_the_options():
    assert {"unet", "unet_original"} <= set(registered_models())
    assert {"depth", "base_width", "norm", "dropout", "upsample", "bn_momentum"} <= set(
        model_knobs("unet"))
    with pytest.raises(SatsegError, match="registered.*'unet'"):
        get_model({"name": "unte"}, 2)
    with pytest.raises(SatsegError, match="base_width"):
        get_model({"name": "unet", "base_widht": 4}, 2)
    with pytest.raises(SatsegError, match="norm='bn'.*batch"):
        get_model({"name": "unet", "norm": "bn"}, 2)
    with pytest.raises(SatsegError, match="upsample"):
        get_model({"name": "unet_original", "upsample": "pixel_shuffle"}, 2)
    # Attribute-style configs work as well as mappings.
    ns = types.SimpleNamespace(name="unet", depth=3, base_width=4)
    model = get_model(ns, 2)
    with pytest.raises(SatsegError, match="divisible by 8"):
        _abstract_init(model, (1, 20, 20, 1))
    original = get_model({"name": "unet_original", "depth": 4, "base_width": 4}, 2)
    with pytest.raises(SatsegError, match="e.g. 252"):
        _abstract_init(original, (1, 256, 256, 1))


def test_configdict_knobs():
    ml_collections = pytest.importorskip("ml_collections")
    cfg = ml_collections.ConfigDict({"name": "unet", "depth": 2, "base_width": 4,
                                     "norm": "group", "upsample": "bilinear"})
    model = get_model(cfg, 4)
    assert (model.depth, model.norm, model.upsample, model.bn_momentum) == (
        2, "group", "bilinear", 0.9)
    variables, out = _abstract_init(model, (1, 16, 16, 3))
    assert "batch_stats" not in variables and out.shape == (1, 16, 16, 4)


# Regression pins for depth 2, base width 4, 4 bands -> 3 classes, batch norm. The plain
# U-Net's count follows the hand derivation above with 4 bands and 3 classes
# (7569 + 3*3*1*4 [one more band] - 2*(4+1) [two fewer head outputs] = 7595); each
# variant adds exactly its own parts: attention gates (1x1 convs Wx, Wg+b, psi+b per
# skip), residual shortcuts and pre-activation norms, R2's 1x1 input convs and per-step
# norms, UNet++'s nested nodes.
PINNED = {"unet": 7_595, "attention_unet": 7_689, "residual_unet": 8_031, "r2_unet": 9_091,
          "unet_plus_plus": 8_319}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_variant_shapes_and_parameter_counts(name):
    model = get_model({"name": name, "depth": 2, "base_width": 4}, 3)
    variables, out = _abstract_init(model, (2, 32, 32, 4))
    assert _count(variables["params"]) == PINNED[name]
    assert out.shape == (2, 32, 32, 3)


def test_plain_unet_pin_follows_the_hand_count():
    assert PINNED["unet"] == 7569 + 3 * 3 * 1 * 4 - 2 * (4 + 1)


def test_attention_gates_add_exactly_their_parameters():
    # depth 2, base 4: gates at widths 8 (inter 4) and 4 (inter 2):
    # gate(F, inter) = Wx F*inter + Wg (F*inter + inter) + psi (inter + 1)
    gate = lambda f, i: f * i + f * i + i + i + 1  # noqa: E731
    assert PINNED["attention_unet"] - PINNED["unet"] == gate(8, 4) + gate(4, 2) == 73 + 21


def test_cerranet_matches_the_published_architecture():
    model = get_model({"name": "cerranet"}, 4)
    variables, out = _abstract_init(model, (1, 256, 256, 3))
    convs = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256)]
    n = sum(9 * a * b + b for a, b in convs)  # 1,145,408
    n += (2 * 2 * 256) * 256 + 256 + 256 * 128 + 128 + 128 * 4 + 4  # dense 256, 128, 4
    assert _count(variables["params"]) == n == 1_441_220
    assert out.shape == (1, 4)


def test_matmul_transposed_conv_equals_flax_conv_transpose():
    """blocks.ConvTranspose2x2 (one matmul + reshape, fast on XLA's CPU backend) is
    nn.ConvTranspose(2x2, stride 2, VALID): same parameter tree from the same key, same
    output, same gradients with respect to input and parameters."""
    import flax.linen as nn

    from satseg_jax.models.blocks import ConvTranspose2x2

    ref = nn.ConvTranspose(5, (2, 2), strides=(2, 2), padding="VALID")
    fast = ConvTranspose2x2(5, (2, 2), strides=(2, 2), padding="VALID")
    x = jax.random.normal(jax.random.key(1), (2, 6, 7, 3))
    params = ref.init(jax.random.key(0), x)
    fast_params = fast.init(jax.random.key(0), x)
    assert jax.tree.map(lambda a: a.shape, params) == jax.tree.map(lambda a: a.shape, fast_params)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(fast_params)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(fast.apply(params, x), ref.apply(params, x), rtol=1e-5, atol=1e-6)

    def loss(module):
        return lambda p, x: (module.apply(p, x) ** 2).sum()

    g_ref = jax.jit(jax.grad(loss(ref), argnums=(0, 1)))(params, x)
    g_fast = jax.jit(jax.grad(loss(fast), argnums=(0, 1)))(params, x)
    for a, b in zip(jax.tree.leaves(g_fast), jax.tree.leaves(g_ref)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size", [(6, 8), (7, 5)], ids=["even", "odd"])
def test_reshape_max_pool_equals_flax_max_pool(size):
    """blocks.down (reshape + max, element-wise backward: fast on XLA's CPU backend) is
    nn.max_pool(2x2, stride 2, VALID): same output (an odd last row/column dropped) and
    the same input gradient, ties included (all to the first maximum of a window)."""
    import flax.linen as nn

    from satseg_jax.models.blocks import down

    ref = lambda v: nn.max_pool(v, (2, 2), strides=(2, 2))  # noqa: E731
    x = jax.random.normal(jax.random.key(4), (2, *size, 3))
    # Few distinct values: most windows hold tied maxima.
    tied = jnp.round(jax.random.uniform(jax.random.key(6), x.shape) * 2.0)
    w = jax.random.normal(jax.random.key(5), ref(x).shape)
    for v in (x, tied, jax.nn.relu(x)):
        np.testing.assert_array_equal(down(v), ref(v))
        g_fast = jax.grad(lambda v: (down(v) * w).sum())(v)
        g_ref = jax.grad(lambda v: (ref(v) * w).sum())(v)
        np.testing.assert_array_equal(g_fast, g_ref)
    n_tied = int((_count_ties(tied)).sum())
    assert n_tied > 5, n_tied  # the tie case was exercised


def _count_ties(v: jax.Array) -> jax.Array:
    n, h, w, c = v.shape
    win = v[:, : h - h % 2, : w - w % 2].reshape(n, h // 2, 2, w // 2, 2, c)
    return (win == win.max(axis=(2, 4), keepdims=True)).sum(axis=(2, 4)) > 1
