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

from satseg_jax.models import onednn_conv

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
