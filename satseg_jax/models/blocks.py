"""Building blocks shared by every U-Net variant (one definition each, no copies).

Conventions: NHWC; ``dtype`` is the compute dtype (bf16 on accelerators), parameters
stay float32; normalisation is ``batch`` (BatchNorm, running statistics in the
``batch_stats`` collection, synchronised over ``axis_name`` under pmap), ``group``
(GroupNorm) or ``none``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from satseg_jax.errors import SatsegError

NORMS = ("batch", "group", "none")


UPSAMPLES = ("transpose", "bilinear", "nearest")
# A conv_fn: a ``lax.conv_general_dilated`` stand-in with its signature (an accelerated
# conv, e.g. one chosen by ``satseg_jax.cpu.conv_fn_for``); None = XLA's own. It may carry
# an optional ``batch_norm_relu`` attribute (see ``Norm``); the models use nothing else.
ConvFn = Callable[..., jax.Array]


def check_unet_knobs(depth: int, base_width: int, norm: str, upsample: str, dropout: float,
                     bn_momentum: float) -> None:
    """Validate the knobs every U-Net-like model shares, when the model is built.

    Why here and not at first call: a bad config should fail in ``get_model`` with the
    field's name, before a dataset is opened or a step is compiled.
    """
    if not isinstance(depth, int) or depth < 1:
        raise SatsegError(f"config.model.depth={depth!r}: expected an integer >= 1 "
                          "(the number of 2×2 down-samplings)")
    if not isinstance(base_width, int) or base_width < 1:
        raise SatsegError(f"config.model.base_width={base_width!r}: expected an integer >= 1")
    if norm not in NORMS:
        raise SatsegError(f"config.model.norm={norm!r}: expected one of {list(NORMS)}")
    if upsample not in UPSAMPLES:
        raise SatsegError(f"config.model.upsample={upsample!r}: expected one of "
                          f"{list(UPSAMPLES)}")
    if not 0.0 <= float(dropout) < 1.0:
        raise SatsegError(f"config.model.dropout={dropout!r}: expected a rate in [0, 1)")
    if not 0.0 <= float(bn_momentum) < 1.0:
        raise SatsegError(f"config.model.bn_momentum={bn_momentum!r}: expected [0, 1), "
                          "e.g. 0.9 (the weight of the old running statistics)")


class FusedBatchNormReLU(nn.Module):
    """``relu(nn.BatchNorm(use_running_average=False)(x))`` by a fused kernel (``fn``, the
    ``batch_norm_relu`` a conv_fn carries), with flax BatchNorm's variables, names, initial
    values and running-average rule — so parameters, ``batch_stats`` and checkpoints are
    the same as the unfused layer's, and evaluation (running averages) uses flax's.

    Why: on the CPU, XLA spent ~70 ms of a ~0.9 s U-Net train step on BatchNorm's
    reductions and element-wise passes and another ~40 ms on ReLU and its mask
    (benchmarks/NOTES.md §13); the fused kernel makes two passes and keeps a 1-bit mask.
    """

    momentum: float = 0.9
    epsilon: float = 1e-5
    fn: Callable[..., Any] | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = (x.shape[-1],)
        scale = self.param("scale", nn.initializers.ones, features, jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, features, jnp.float32)
        ra_mean = self.variable("batch_stats", "mean", lambda s: jnp.zeros(s, jnp.float32),
                                features)
        ra_var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, jnp.float32),
                               features)
        y, mean, var = self.fn(x, scale, bias, self.epsilon)
        if not self.is_initializing():  # as flax: init leaves the statistics at 0 / 1
            m = self.momentum
            ra_mean.value = m * ra_mean.value + (1 - m) * jax.lax.stop_gradient(mean)
            ra_var.value = m * ra_var.value + (1 - m) * jax.lax.stop_gradient(var)
        return y


class Norm(nn.Module):
    """Batch / group / no normalisation behind one call signature, and the ReLU after it
    when ``relu`` (so batch norm + ReLU can run as one fused kernel where one is given)."""

    kind: str = "batch"
    momentum: float = 0.9
    groups: int = 8
    dtype: Any = jnp.float32
    axis_name: str | None = None
    relu: bool = False
    # A conv_fn may carry ``batch_norm_relu(x, scale, shift, epsilon) -> (y, mean, var)``:
    # training-mode batch norm + ReLU as one fused kernel, ``mean``/``var`` the batch's
    # (biased) statistics for the running averages. Used in training for float32 batch
    # norm + ReLU on one CPU device (no axis_name: the kernel's statistics are local).
    # None / a conv_fn without it: flax's BatchNorm, then nn.relu.
    conv_fn: ConvFn | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        if self.kind not in NORMS:
            raise SatsegError(f"config.model.norm={self.kind!r}: expected one of {NORMS}")
        if self.kind == "batch":
            fused = getattr(self.conv_fn, "batch_norm_relu", None)
            if (fused is not None and self.relu and train and self.axis_name is None
                    and self.dtype == jnp.float32 and x.dtype == jnp.float32 and x.ndim == 4
                    and jax.default_backend() == "cpu"):
                return FusedBatchNormReLU(self.momentum, fn=fused, name="BatchNorm_0")(x)
            x = nn.BatchNorm(use_running_average=not train, momentum=self.momentum,
                             dtype=self.dtype, axis_name=self.axis_name)(x)
        elif self.kind == "group":
            groups = min(self.groups, x.shape[-1])
            while x.shape[-1] % groups:
                groups -= 1
            x = nn.GroupNorm(num_groups=groups, dtype=self.dtype)(x)
        return nn.relu(x) if self.relu else x


class LevelBlock(nn.Module):
    """Fields every U-Net level block takes (width, normalisation, compute dtype)."""

    features: int
    norm: str = "batch"
    momentum: float = 0.9
    dtype: Any = jnp.float32
    axis_name: str | None = None
    # lax.conv_general_dilated stand-in for every conv (None: XLA's); see ConvFn above.
    conv_fn: ConvFn | None = None


class ConvBlock(LevelBlock):
    """``n_convs`` × (3×3 conv → norm → ReLU): the unit every U-Net level is made of."""

    n_convs: int = 2
    padding: str = "SAME"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        for _ in range(self.n_convs):
            # No bias before a normalisation that has its own shift.
            x = nn.Conv(self.features, (3, 3), padding=self.padding,
                        use_bias=self.norm == "none", dtype=self.dtype,
                        conv_general_dilated=self.conv_fn)(x)
            x = Norm(self.norm, self.momentum, dtype=self.dtype, axis_name=self.axis_name,
                     relu=True, conv_fn=self.conv_fn)(x, train)
        return x


@jax.custom_vjp
def down(x: jax.Array) -> jax.Array:
    """2×2 max-pooling, stride 2: ``nn.max_pool(x, (2, 2), strides=(2, 2))`` (an odd
    last row/column is dropped, as VALID pooling does), with the same gradient (all of
    it to the first maximum of each window in row-major order), computed as a reshape +
    ``max`` forward and an element-wise backward.

    Why: ``nn.max_pool``'s gradient is a select-and-scatter, which XLA's CPU backend
    lowers to a variadic reduce-window carrying four int32 iota index tensors of the
    input's size, and the plain reshape + ``max`` gradient (ties shared) needs a strided
    count reduction; the selection below fuses into one element-wise loop. Measured
    in one process against ``nn.max_pool`` (``benchmarks/step_ab.py --patch flaxpool``):
    1.02x per train step on a 2-core CPU, within noise, with bit-identical losses
    (benchmarks/NOTES.md §9) — kept because it is exact and never slower.
    """
    return _down_fwd(x)[0]


def _windows(x: jax.Array) -> jax.Array:
    n, h, w, c = x.shape
    return x[:, : h - h % 2, : w - w % 2].reshape(n, h // 2, 2, w // 2, 2, c)


def _down_fwd(x: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    y = _windows(x).max(axis=(2, 4))
    return y, (x, y)


def _down_bwd(res: tuple[jax.Array, jax.Array], g: jax.Array) -> tuple[jax.Array]:
    x, y = res
    win = _windows(x)
    taken = jnp.zeros(y.shape, bool)
    rows = []
    for i in range(2):
        cols = []
        for j in range(2):
            pick = (win[:, :, i, :, j] == y) & ~taken
            taken = taken | pick
            cols.append(jnp.where(pick, g, jnp.zeros((), g.dtype)))
        rows.append(jnp.stack(cols, axis=3))  # n, h/2, w/2, 2(j), c
    dx = jnp.stack(rows, axis=2).reshape(win.shape[0], win.shape[1] * 2,
                                         win.shape[3] * 2, win.shape[5])
    n, h, w, c = x.shape
    return (jnp.pad(dx, ((0, 0), (0, h % 2), (0, w % 2), (0, 0))),)


down.defvjp(_down_fwd, _down_bwd)


class ConvTranspose2x2(nn.ConvTranspose):
    """``nn.ConvTranspose(features, (2, 2), strides=(2, 2), padding="VALID")`` computed
    as one matmul and a depth-to-space reshape.

    Why: a transposed convolution is a convolution with input (base) dilation, which
    XLA's CPU backend hands to neither Eigen nor YNNPACK; it runs a naive loop instead
    (``convolution-base-dilated`` took ~3 s of a ~4.3 s train step of the base-32 U-Net,
    benchmarks/NOTES.md). With kernel = stride every output pixel takes exactly one
    kernel tap, so the layer is ``(N·H·W, C) × (C, 2·2·O)``, and its gradients are
    matmuls too: the train step ran 1.7x faster on the CPU. Same parameters, shapes,
    initialisers and (auto) names as ``nn.ConvTranspose``, so checkpoints are
    interchangeable; the kernel is applied flipped, as ``lax.conv_transpose`` does
    (forward equal to it; tests/test_models.py pins that).

    ``conv_fn`` (an accelerated conv): the layer is handed to it as ``lax.conv_transpose``
    writes it, an input-dilated convolution, which the CPU path (``satseg_jax.cpu``) runs
    as one strided data-gradient primitive writing NHWC directly — no depth-to-space
    transposes, which were most of this layer's time in the CPU train step (NOTES §13).
    """

    conv_fn: ConvFn | None = None

    @nn.compact
    def __call__(self, inputs: jax.Array) -> jax.Array:  # type: ignore[override]
        kernel = self.param("kernel", self.kernel_init, (2, 2, inputs.shape[-1], self.features),
                            self.param_dtype)
        bias = (self.param("bias", self.bias_init, (self.features,), self.param_dtype)
                if self.use_bias else None)
        x, kernel, bias = nn.dtypes.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
        if self.conv_fn is not None and x.dtype == jnp.float32:
            y = self.conv_fn(x, kernel, (1, 1), ((1, 1), (1, 1)), lhs_dilation=(2, 2),
                             dimension_numbers=("NHWC", "HWIO", "NHWC"),
                             precision=self.precision)
        else:
            n, h, w, _ = x.shape
            y = jnp.einsum("nhwc,abco->nhawbo", x, kernel[::-1, ::-1],
                           precision=self.precision)
            y = y.reshape(n, 2 * h, 2 * w, self.features)
        return y + bias if bias is not None else y


class Up(nn.Module):
    """Double the resolution: 2×2 transposed conv, or bilinear / nearest resize + 3×3 conv.

    Both map to ``features`` channels (half of the coarser level in a U-Net).
    """

    features: int
    mode: str = "transpose"
    dtype: Any = jnp.float32
    conv_fn: ConvFn | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.mode == "transpose":
            return ConvTranspose2x2(self.features, (2, 2), strides=(2, 2), padding="VALID",
                                    dtype=self.dtype, conv_fn=self.conv_fn,
                                    name="ConvTranspose_0")(x)
        if self.mode in ("bilinear", "nearest"):
            x = upsample2x(x, self.mode)
            return nn.Conv(self.features, (3, 3), padding="SAME", dtype=self.dtype,
                           conv_general_dilated=self.conv_fn)(x)
        raise SatsegError(f"config.model.upsample={self.mode!r}: expected one of "
                          f"{list(UPSAMPLES)}")


def upsample2x(x: jax.Array, mode: str) -> jax.Array:
    """×2 resize of an NHWC array: 'nearest' repeats each pixel (torch's
    ``interpolate(scale_factor=2, mode='nearest')``), 'bilinear' uses half-pixel centres
    (torch's ``align_corners=False``)."""
    if mode == "nearest":
        return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    n, h, w, c = x.shape
    return jax.image.resize(x, (n, 2 * h, 2 * w, c), method="bilinear")


def center_crop(x: jax.Array, height: int, width: int) -> jax.Array:
    """The central ``height × width`` window of an NHWC array (copy-and-crop skips)."""
    dh, dw = (x.shape[1] - height) // 2, (x.shape[2] - width) // 2
    return x[:, dh:dh + height, dw:dw + width, :]


class Head(nn.Module):
    """1×1 conv to class logits, returned in float32 whatever the compute dtype."""

    num_classes: int
    dtype: Any = jnp.float32
    conv_fn: ConvFn | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.Conv(self.num_classes, (1, 1), dtype=self.dtype,
                       conv_general_dilated=self.conv_fn)(x).astype(jnp.float32)


class ResidualBlock(LevelBlock):
    """Pre-activation residual unit (He et al. 2016) as used by ResUNet (Zhang et al. 2018):
    (norm → ReLU → 3×3 conv) × 2 plus an identity (or 1×1 projection) shortcut."""

    padding: str = "SAME"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        shortcut = x
        if x.shape[-1] != self.features:
            shortcut = nn.Conv(self.features, (1, 1), dtype=self.dtype,
                               conv_general_dilated=self.conv_fn)(x)
        for _ in range(2):
            x = Norm(self.norm, self.momentum, dtype=self.dtype, axis_name=self.axis_name,
                     relu=True, conv_fn=self.conv_fn)(x, train)
            x = nn.Conv(self.features, (3, 3), padding=self.padding, dtype=self.dtype,
                        conv_general_dilated=self.conv_fn)(x)
        return x + shortcut


class RecurrentConv(LevelBlock):
    """Recurrent convolutional layer (Alom et al. 2018): one 3×3 conv applied ``steps``+1
    times with shared weights, x_{t+1} = f(x + x_t)."""

    steps: int = 2

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        conv = nn.Conv(self.features, (3, 3), padding="SAME", dtype=self.dtype,
                       conv_general_dilated=self.conv_fn)
        norms = [Norm(self.norm, self.momentum, dtype=self.dtype, axis_name=self.axis_name,
                      relu=True, conv_fn=self.conv_fn) for _ in range(self.steps + 1)]
        h = norms[0](conv(x), train)
        for t in range(1, self.steps + 1):
            h = norms[t](conv(x + h), train)
        return h


class RecurrentResidualBlock(LevelBlock):
    """R2 unit of R2U-Net (Alom et al. 2018): 1×1 conv to the width, two recurrent conv
    layers, and a residual connection around them."""

    steps: int = 2

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = nn.Conv(self.features, (1, 1), dtype=self.dtype,
                    conv_general_dilated=self.conv_fn)(x)
        h = x
        for _ in range(2):
            h = RecurrentConv(self.features, steps=self.steps, norm=self.norm,
                              momentum=self.momentum, dtype=self.dtype,
                              axis_name=self.axis_name, conv_fn=self.conv_fn)(h, train)
        return x + h


class AttentionGate(nn.Module):
    """Additive attention gate (Oktay et al. 2018): the decoder's gating signal ``g``
    weights the skip features ``x`` per pixel, alpha = sigmoid(psi(relu(Wx x + Wg g)))."""

    inter_features: int
    dtype: Any = jnp.float32
    conv_fn: ConvFn | None = None

    @nn.compact
    def __call__(self, x: jax.Array, g: jax.Array) -> jax.Array:
        theta = nn.Conv(self.inter_features, (1, 1), use_bias=False, dtype=self.dtype,
                        conv_general_dilated=self.conv_fn)(x)
        phi = nn.Conv(self.inter_features, (1, 1), dtype=self.dtype,
                      conv_general_dilated=self.conv_fn)(g)
        psi = nn.Conv(1, (1, 1), dtype=self.dtype,
                      conv_general_dilated=self.conv_fn)(nn.relu(theta + phi))
        return x * nn.sigmoid(psi)


BLOCKS = {"conv": ConvBlock, "residual": ResidualBlock, "recurrent": RecurrentResidualBlock}


def make_block(kind: str, features: int, *, padding: str, norm: str, momentum: float,
               dtype: Any, axis_name: str | None, recurrent_steps: int = 2,
               conv_fn: ConvFn | None = None) -> nn.Module:
    """The level block of a U-Net variant by name (one place to add a new kind)."""
    common = {"norm": norm, "momentum": momentum, "dtype": dtype, "axis_name": axis_name,
              "conv_fn": conv_fn}
    if kind == "conv":
        return ConvBlock(features, padding=padding, **common)
    if kind == "residual":
        return ResidualBlock(features, padding=padding, **common)
    if kind == "recurrent":
        return RecurrentResidualBlock(features, steps=recurrent_steps, **common)
    raise SatsegError(f"unknown block kind {kind!r}; expected one of {sorted(BLOCKS)}")
