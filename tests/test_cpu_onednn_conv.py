"""The oneDNN convolution path against XLA's convolutions: values, gradients, fallbacks.

Skips (with the fix in the message) where oneDNN or a compiler is missing; `.ci/run`
installs both, so CI runs these.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from satseg_jax.cpu import onednn_conv

if not onednn_conv.available():
    try:
        onednn_conv.load()
    except onednn_conv.OneDnnUnavailable as e:
        reason = str(e)
    pytest.skip(f"oneDNN path unavailable: {reason}", allow_module_level=True)

NHWC = ("NHWC", "HWIO", "NHWC")


def _reference(x, k, strides, padding):
    dn = lax.conv_dimension_numbers(x.shape, k.shape, NHWC)
    return lax.conv_general_dilated(x, k, strides, padding, dimension_numbers=dn,
                                    precision=lax.Precision.HIGHEST)


def _ours(x, k, strides, padding):
    dn = lax.conv_dimension_numbers(x.shape, k.shape, NHWC)
    return onednn_conv.conv_general_dilated(x, k, strides, padding, dimension_numbers=dn)


@pytest.mark.parametrize("shape, kernel, strides, padding", [
    ((2, 16, 16, 4), (3, 3, 4, 8), (1, 1), "SAME"),        # first U-Net layer: 4 bands
    ((2, 12, 10, 8), (3, 3, 8, 16), (1, 1), "VALID"),      # original U-Net, non-square
    ((1, 9, 9, 16), (3, 3, 16, 8), (2, 2), ((1, 0), (0, 2))),  # strided, asymmetric pads
    ((3, 8, 8, 24), (1, 1, 24, 5), (1, 1), "SAME"),        # 1x1 head
])
def test_forward_and_gradients_match_xla(shape, kernel, strides, padding):
    kx, kk, kg = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, shape, jnp.float32)
    k = jax.random.normal(kk, kernel, jnp.float32) * 0.2
    y_ref = _reference(x, k, strides, padding)
    y = jax.jit(_ours, static_argnums=(2, 3))(x, k, strides, padding)
    assert y.shape == y_ref.shape
    np.testing.assert_allclose(y, y_ref, rtol=1e-4, atol=1e-4)

    g = jax.random.normal(kg, y_ref.shape, jnp.float32)

    def loss(fn):
        return lambda x, k: jnp.sum(fn(x, k, strides, padding) * g)

    dx_ref, dk_ref = jax.grad(loss(_reference), argnums=(0, 1))(x, k)
    dx, dk = jax.jit(jax.grad(loss(_ours), argnums=(0, 1)))(x, k)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dk, dk_ref, rtol=1e-4, atol=2e-4)


@pytest.mark.parametrize("shape, kernel, dilation, padding", [
    ((2, 8, 8, 16), (2, 2, 16, 8), (2, 2), ((1, 1), (1, 1))),  # U-Net up-sampling
    ((1, 5, 6, 3), (3, 3, 3, 4), (2, 2), ((1, 1), (2, 0))),    # odd sizes, uneven pads
    ((2, 4, 3, 2), (4, 4, 2, 2), (3, 3), ((0, 3), (3, 0))),    # pads at both limits
])
def test_input_dilated_conv_matches_xla(shape, kernel, dilation, padding):
    """lax.conv_transpose's form (lhs_dilation) runs as oneDNN's strided data gradient;
    values and both gradients must equal XLA's input-dilated convolution."""
    kx, kk, kg = jax.random.split(jax.random.key(1), 3)
    x = jax.random.normal(kx, shape, jnp.float32)
    k = jax.random.normal(kk, kernel, jnp.float32) * 0.2
    dn = lax.conv_dimension_numbers(x.shape, k.shape, NHWC)

    def ref(x, k):
        return lax.conv_general_dilated(x, k, (1, 1), padding, lhs_dilation=dilation,
                                        dimension_numbers=dn, precision=lax.Precision.HIGHEST)

    def ours(x, k):
        return onednn_conv.conv_general_dilated(x, k, (1, 1), padding, lhs_dilation=dilation,
                                                dimension_numbers=dn)

    assert onednn_conv.FFI_PREFIX + "data_grad" in jax.jit(ours).lower(x, k).as_text()
    y_ref, y = ref(x, k), jax.jit(ours)(x, k)
    assert y.shape == y_ref.shape
    np.testing.assert_allclose(y, y_ref, rtol=1e-4, atol=1e-4)
    g = jax.random.normal(kg, y_ref.shape, jnp.float32)
    dx_ref, dk_ref = jax.grad(lambda x, k: jnp.sum(ref(x, k) * g), argnums=(0, 1))(x, k)
    dx, dk = jax.jit(jax.grad(lambda x, k: jnp.sum(ours(x, k) * g), argnums=(0, 1)))(x, k)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dk, dk_ref, rtol=1e-4, atol=2e-4)


def test_input_dilated_conv_outside_oneDNN_falls_back():
    """Window strides on top of input dilation, or padding beyond kernel-1, are not a
    strided data gradient: XLA computes them, with the same result."""
    x = jnp.ones((1, 4, 4, 2), jnp.float32)
    k = jnp.ones((2, 2, 2, 3), jnp.float32)
    dn = lax.conv_dimension_numbers(x.shape, k.shape, NHWC)
    for strides, padding in (((2, 2), ((1, 1), (1, 1))), ((1, 1), ((2, 2), (0, 0)))):
        def fn(x, k, strides=strides, padding=padding):
            return onednn_conv.conv_general_dilated(x, k, strides, padding,
                                                    lhs_dilation=(2, 2), dimension_numbers=dn)
        assert onednn_conv.FFI_PREFIX not in jax.jit(fn).lower(x, k).as_text()
        ref = lax.conv_general_dilated(x, k, strides, padding, lhs_dilation=(2, 2),
                                       dimension_numbers=dn)
        np.testing.assert_allclose(jax.jit(fn)(x, k), ref)


def test_up_sampling_layer_with_onednn_equals_the_matmul_form():
    """blocks.ConvTranspose2x2 given the oneDNN conv: same parameters, same outputs and
    gradients as its XLA matmul + depth-to-space form (and so as nn.ConvTranspose)."""
    from satseg_jax.models.blocks import ConvTranspose2x2

    x = jax.random.normal(jax.random.key(2), (2, 6, 5, 8), jnp.float32)
    mm = ConvTranspose2x2(4, (2, 2), strides=(2, 2), padding="VALID")
    dnn = ConvTranspose2x2(4, (2, 2), strides=(2, 2), padding="VALID",
                           conv_fn=onednn_conv.conv_general_dilated)
    params = mm.init(jax.random.key(3), x)
    assert jax.tree.map(jnp.shape, dnn.init(jax.random.key(3), x)) == \
        jax.tree.map(jnp.shape, params)
    assert onednn_conv.FFI_PREFIX in jax.jit(dnn.apply).lower(params, x).as_text()
    np.testing.assert_allclose(jax.jit(dnn.apply)(params, x), mm.apply(params, x),
                               rtol=1e-5, atol=1e-5)

    def loss(model):
        return lambda p, x: jnp.sum(jnp.sin(model.apply(p, x)))

    g_mm = jax.grad(loss(mm), argnums=(0, 1))(params, x)
    g_dnn = jax.jit(jax.grad(loss(dnn), argnums=(0, 1)))(params, x)
    for a, b in zip(jax.tree.leaves(g_dnn), jax.tree.leaves(g_mm)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_custom_call_is_in_the_compiled_step():
    x = jnp.ones((1, 8, 8, 4), jnp.float32)
    k = jnp.ones((3, 3, 4, 4), jnp.float32)
    hlo = jax.jit(jax.grad(lambda k: jnp.sum(_ours(x, k, (1, 1), "SAME")))).lower(k).as_text()
    assert onednn_conv.FFI_PREFIX + "kernel_grad" in hlo
    assert "convolution" not in hlo.replace(onednn_conv.FFI_PREFIX, "")


@pytest.mark.parametrize("case", ["bf16", "dilated", "groups", "nchw"])
def test_unsupported_cases_fall_back_to_xla(case):
    x = jnp.ones((1, 8, 8, 4), jnp.float32)
    k = jnp.ones((3, 3, 4, 4), jnp.float32)
    kwargs = {"dimension_numbers": lax.conv_dimension_numbers(x.shape, k.shape, NHWC)}
    if case == "bf16":
        x, k = x.astype(jnp.bfloat16), k.astype(jnp.bfloat16)
    elif case == "dilated":
        kwargs["rhs_dilation"] = (2, 2)
    elif case == "groups":
        k = jnp.ones((3, 3, 2, 4), jnp.float32)
        kwargs["feature_group_count"] = 2
    else:
        x = jnp.ones((1, 4, 8, 8), jnp.float32)
        k = jnp.ones((4, 4, 3, 3), jnp.float32)
        kwargs = {}
    fn = jax.jit(lambda x, k: onednn_conv.conv_general_dilated(x, k, (1, 1), "SAME", **kwargs))
    hlo = fn.lower(x, k).as_text()
    assert onednn_conv.FFI_PREFIX not in hlo
    ref = lax.conv_general_dilated(x, k, (1, 1), "SAME", **kwargs)
    np.testing.assert_allclose(fn(x, k).astype(jnp.float32), ref.astype(jnp.float32))


def test_library_is_cached_and_named_by_its_inputs(tmp_path, monkeypatch):
    monkeypatch.setenv("SATSEG_JAX_CACHE", str(tmp_path))
    path = onednn_conv.build()
    assert path.parent == tmp_path and path.is_file()
    mtime = path.stat().st_mtime_ns
    assert onednn_conv.build() == path and path.stat().st_mtime_ns == mtime
    assert not list(tmp_path.glob(".building-*"))


def test_build_failure_names_the_fix_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("SATSEG_JAX_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", "false")  # a "compiler" that always fails
    with pytest.raises(onednn_conv.OneDnnUnavailable, match="libdnnl-dev"):
        onednn_conv.build()
    assert list(tmp_path.iterdir()) == []


def _bn_relu_reference(x, scale, shift, eps=1e-5):
    mean = x.mean((0, 1, 2))
    var = x.var((0, 1, 2))
    return jax.nn.relu((x - mean) * lax.rsqrt(var + eps) * scale + shift), mean, var


@pytest.mark.parametrize("shape", [(2, 6, 5, 8), (3, 4, 4, 3), (2, 16, 16, 32)])
def test_batch_norm_relu_matches_the_formula(shape):
    """oneDNN's fused training-mode batch norm + ReLU: output, batch mean and biased
    variance, and the gradients through the batch statistics, against plain jnp."""
    kx, ks, kb, kg = jax.random.split(jax.random.key(4), 4)
    x = jax.random.normal(kx, shape, jnp.float32) * 2 + 0.5
    scale = jax.random.normal(ks, shape[-1:], jnp.float32)
    shift = jax.random.normal(kb, shape[-1:], jnp.float32)
    ours = jax.jit(onednn_conv.batch_norm_relu)
    assert onednn_conv.FFI_PREFIX + "bn_relu_forward" in ours.lower(x, scale, shift).as_text()
    for got, want in zip(ours(x, scale, shift), _bn_relu_reference(x, scale, shift)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    g = jax.random.normal(kg, shape, jnp.float32)

    def loss(fn):
        return lambda x, s, b: jnp.sum(fn(x, s, b)[0] * g)

    want = jax.grad(loss(_bn_relu_reference), argnums=(0, 1, 2))(x, scale, shift)
    got = jax.jit(jax.grad(loss(onednn_conv.batch_norm_relu), argnums=(0, 1, 2)))(
        x, scale, shift)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_unet_with_fused_batch_norm_equals_flax_batch_norm():
    """The U-Net with the oneDNN conv_fn (convs, up-sampling and BatchNorm+ReLU fused):
    same variables as the XLA model, same loss, gradients and updated batch_stats in
    training, same output in evaluation."""
    from satseg_jax.models.unet import UNet

    x = jax.random.normal(jax.random.key(5), (2, 32, 32, 4), jnp.float32)
    xla = UNet(3, depth=2, base_width=8)
    dnn = UNet(3, depth=2, base_width=8, conv_fn=onednn_conv.conv_general_dilated)
    # Everything under jit: op by op, the hundreds of small compiles cost ~30 s.
    v = jax.jit(lambda k: xla.init(k, x, train=False))(jax.random.key(6))
    v_dnn = jax.jit(lambda k: dnn.init(k, x, train=False))(jax.random.key(6))
    assert jax.tree.structure(v_dnn) == jax.tree.structure(v)
    for a, b in zip(jax.tree.leaves(v_dnn), jax.tree.leaves(v)):
        np.testing.assert_array_equal(a, b)

    def loss(model):
        def f(params, stats):
            y, upd = model.apply({"params": params, "batch_stats": stats}, x, train=True,
                                 mutable=["batch_stats"])
            return jnp.sum(jnp.sin(y)), upd
        return jax.value_and_grad(f, has_aux=True)

    step = jax.jit(loss(dnn))
    assert onednn_conv.FFI_PREFIX + "bn_relu_backward" in step.lower(
        v["params"], v["batch_stats"]).as_text()
    (l_ref, upd_ref), g_ref = jax.jit(loss(xla))(v["params"], v["batch_stats"])
    (l_dnn, upd_dnn), g_dnn = step(v["params"], v["batch_stats"])
    np.testing.assert_allclose(l_dnn, l_ref, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g_dnn), jax.tree.leaves(g_ref)):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4 * float(jnp.abs(b).max()))
    for a, b in zip(jax.tree.leaves(upd_dnn), jax.tree.leaves(upd_ref)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    v2 = {"params": v["params"], **upd_ref}
    np.testing.assert_allclose(jax.jit(lambda v: dnn.apply(v, x, train=False))(v2),
                               jax.jit(lambda v: xla.apply(v, x, train=False))(v2),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", ["axis_name", "bf16", "no_relu"])
def test_norm_keeps_flax_batch_norm_where_the_fused_kernel_does_not_apply(case):
    """Cross-device statistics (axis_name), bfloat16 compute, or no ReLU after the norm:
    flax's BatchNorm in XLA, never the fused custom call."""
    from satseg_jax.models.blocks import Norm

    x = jnp.ones((2, 4, 4, 8), jnp.float32)
    kwargs = {"conv_fn": onednn_conv.conv_general_dilated, "relu": case != "no_relu"}
    if case == "bf16":
        kwargs["dtype"] = jnp.bfloat16
    norm = Norm("batch", **kwargs)
    if case == "axis_name":
        norm = Norm("batch", axis_name="batch", **kwargs)
        # vmap over a leading axis of 1: inside, x is the (2, 4, 4, 8) batch
        fn = jax.vmap(lambda x: norm.init_with_output(jax.random.key(0), x, True),
                      axis_name="batch")
        text = jax.jit(fn).lower(x[None]).as_text()
    else:
        text = jax.jit(lambda x: norm.init_with_output(jax.random.key(0), x, True)).lower(
            x).as_text()
    assert onednn_conv.FFI_PREFIX not in text
