"""oneDNN convolutions for JAX on the CPU, as XLA FFI custom calls (optional).

Why this exists: the public jaxlib CPU wheel runs convolutions with Eigen or YNNPACK. On
the CPUs we measured, PyTorch's oneDNN convolutions are 1.1-1.8x faster forward and up
to 3.6x faster on the kernel gradient at full resolution, and that gap is most of why a
JAX U-Net trained slower than the same network in PyTorch (benchmarks/NOTES.md §11-12).
XLA has a oneDNN rewriter, but the wheel does not include it, and no XLA flag reaches
it. So this module compiles ``onednn_conv.cc`` (≈300 lines of glue, no kernels of our
own) with g++ against oneDNN — 3.x from the ``[onednn]`` extra (the
``onednn-devel-cpu-gomp`` wheel: headers and library under ``sys.prefix``, no root
needed), or 2.x from Debian/Ubuntu's ``libdnnl-dev`` — and registers FFI targets for a
convolution's forward, data gradient and kernel gradient, tied together by a
``jax.custom_vjp`` (:func:`conv_nhwc`; input-dilated convolutions, i.e. transposed ones,
run as the strided data gradient: :func:`conv_transpose_nhwc`), and for training-mode
batch normalisation fused with the ReLU after it (:func:`batch_norm_relu`, attached to
the conv function as ``conv_general_dilated.batch_norm_relu``: the models only know that
a conv_fn may carry such an attribute, see ``models/blocks.py``'s ``Norm``).
``config.train.cpu_conv = 'auto'`` (the default) uses it when it builds and says so once;
without oneDNN or g++ the models run XLA's own convolutions, with the same results.

:func:`conv_general_dilated` has ``lax.conv_general_dilated``'s signature, so it plugs
into ``flax.linen.Conv(conv_general_dilated=...)``: parameters, their names and
checkpoints are unchanged. It takes the oneDNN path only where that is exact and
supported — CPU backend, float32, NHWC/HWIO, no dilation, no feature groups — and falls
back to ``lax.conv_general_dilated`` everywhere else (GPU/TPU, bfloat16, 1-D/3-D, …).
On a multi-device mesh the custom call has no sharding rule, so callers only enable it
for single-device CPU runs (``convolution.conv_fn_for`` does).

The shared library is built once per (source, jaxlib, oneDNN header) and cached under
``$SATSEG_JAX_CACHE`` (default ``~/.cache/satseg_jax``); the build writes a temporary
file and renames it, so an interrupted or concurrent build never leaves a broken library.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

SOURCE = Path(__file__).with_suffix(".cc")
TARGETS = {"forward": "SatsegConvForward", "data_grad": "SatsegConvDataGrad",
           "kernel_grad": "SatsegConvKernelGrad",
           "bn_relu_forward": "SatsegBatchNormReluForward",
           "bn_relu_backward": "SatsegBatchNormReluBackward"}
FFI_PREFIX = "satseg_onednn_conv_"
# Where Debian/Ubuntu's libdnnl-dev puts the header; CPATH / CPLUS_INCLUDE_PATH also work.
HEADER = "oneapi/dnnl/dnnl.hpp"
INSTALL_HINT = ("install oneDNN and a C++ compiler (`pip install -e '.[onednn]'` plus g++, "
                "or Debian/Ubuntu `apt-get install libdnnl-dev g++`), or set "
                "config.train.cpu_conv = 'xla'")


_LIBRARY: list[ctypes.CDLL] = []  # the loaded library, once load() ran
SYSTEM_INCLUDE_DIRS = ("/usr/include", "/usr/local/include")


class OneDnnUnavailable(RuntimeError):
    """The oneDNN path cannot be built or loaded here (the message says why and how to fix)."""


def cache_dir() -> Path:
    return Path(os.environ.get("SATSEG_JAX_CACHE", Path.home() / ".cache" / "satseg_jax"))


def _compiler() -> str:
    cxx = os.environ.get("CXX", "g++")
    path = shutil.which(cxx)
    if path is None:
        raise OneDnnUnavailable(f"no C++ compiler `{cxx}` on PATH: {INSTALL_HINT}")
    return path


def _prefixes() -> list[Path]:
    """Install prefixes to look in, pip's first: ``pip install onednn-devel-cpu-gomp``
    (the ``[onednn]`` extra) puts oneDNN 3.x's headers and library under ``sys.prefix``;
    Debian/Ubuntu's ``libdnnl-dev`` (oneDNN 2.x) uses ``/usr``."""
    return [Path(sys.prefix), Path("/usr"), Path("/usr/local")]


def _find_header() -> Path:
    dirs = [Path(p) for var in ("CPLUS_INCLUDE_PATH", "CPATH")
            for p in os.environ.get(var, "").split(os.pathsep) if p]
    for d in [*dirs, *(prefix / "include" for prefix in _prefixes())]:
        if (d / HEADER).is_file():
            return d / HEADER
    raise OneDnnUnavailable(f"oneDNN header <{HEADER}> not found: {INSTALL_HINT}")


def _link_flags(header: Path) -> list[str]:
    """``-ldnnl`` from the prefix the header came from (with an rpath, so the library
    loads without ``LD_LIBRARY_PATH``); the system linker path otherwise."""
    prefix = header.parents[3]  # <prefix>/include/oneapi/dnnl/dnnl.hpp
    for libdir in (prefix / "lib", prefix / "lib64"):
        if any(libdir.glob("libdnnl.so*")):
            return [f"-L{libdir}", f"-Wl,-rpath,{libdir}", "-ldnnl"]
    return ["-ldnnl"]


def library_path() -> Path:
    """The cached library's path: named by a hash of everything the build depends on."""
    import jaxlib

    header = _find_header()
    version_h = header.parent / "dnnl_version.h"
    digest = hashlib.sha256()
    digest.update(SOURCE.read_bytes())
    digest.update(jaxlib.__version__.encode())
    digest.update(version_h.read_bytes() if version_h.is_file() else b"")
    digest.update(str(header).encode())
    return cache_dir() / f"onednn_conv-{digest.hexdigest()[:16]}.so"


def build(force: bool = False) -> Path:
    """Compile ``onednn_conv.cc`` into the cache (once) and return the library's path."""
    out = library_path()
    if out.is_file() and not force:
        return out
    cxx = _compiler()
    header = _find_header()
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent, prefix=".building-")
    os.close(fd)
    include = header.parents[2]  # <prefix>/include
    # The compiler's own include dirs must not be repeated with -isystem: that reorders
    # them and breaks libstdc++'s `#include_next <stdlib.h>`.
    extra = [] if str(include) in SYSTEM_INCLUDE_DIRS else ["-isystem", str(include)]
    cmd = [cxx, "-O2", "-std=c++17", "-shared", "-fPIC", "-w",
           "-isystem", jax.ffi.include_dir(), *extra,
           str(SOURCE), "-o", tmp, *_link_flags(header)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise OneDnnUnavailable(
                f"building {SOURCE.name} failed ({' '.join(cmd)}):\n{proc.stderr[-2000:]}\n"
                f"{INSTALL_HINT}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


_LOAD_LOCK = threading.Lock()


@functools.cache
def load() -> str:
    """Build (if needed), load and register the FFI targets; returns the library path.

    Cached: XLA's FFI registry is per process, so registering once is both necessary
    and enough. Raises :class:`OneDnnUnavailable` with the fix when it cannot.
    """
    with _LOAD_LOCK:
        path = build()
        try:
            lib = ctypes.CDLL(str(path))
        except OSError as e:
            raise OneDnnUnavailable(f"loading {path} failed ({e}): {INSTALL_HINT}") from e
        _LIBRARY.append(lib)
        for name, symbol in TARGETS.items():
            jax.ffi.register_ffi_target(FFI_PREFIX + name, jax.ffi.pycapsule(getattr(lib, symbol)),
                                        platform="cpu")
        return str(path)


def available() -> bool:
    """Whether the oneDNN path can be used in this process (builds it on first call)."""
    try:
        load()
    except OneDnnUnavailable:
        return False
    return True


# (stride_h, stride_w, pad_top, pad_bottom, pad_left, pad_right)
Geometry = tuple[int, int, int, int, int, int]


def _ffi(name: str, shape: Sequence[int], a: jax.Array, b: jax.Array, geom: Geometry):
    sh, sw, pt, pb, pl, pr = (np.int64(v) for v in geom)
    return jax.ffi.ffi_call(FFI_PREFIX + name, jax.ShapeDtypeStruct(tuple(shape), jnp.float32),
                            vmap_method="sequential")(a, b, sh=sh, sw=sw, pt=pt, pb=pb, pl=pl,
                                                      pr=pr)


def _out_shape(x_shape: Sequence[int], k_shape: Sequence[int], geom: Geometry) -> tuple:
    n, h, w, _ = x_shape
    kh, kw, _, o = k_shape
    sh, sw, pt, pb, pl, pr = geom
    return (n, (h + pt + pb - kh) // sh + 1, (w + pl + pr - kw) // sw + 1, o)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv_nhwc(x: jax.Array, kernel: jax.Array, geom: Geometry) -> jax.Array:
    """``y = conv(x, kernel)``, x NHWC f32, kernel HWIO f32, by oneDNN (see module doc)."""
    return _ffi("forward", _out_shape(x.shape, kernel.shape, geom), x, kernel, geom)


def _define_vjp(fn, data_grad: str, swap: bool) -> None:
    """Give ``fn(x, kernel, geom)`` its gradients from the other two primitives.

    A convolution's input gradient is its transpose (oneDNN's ``data_grad``) and a
    transposed convolution's is the convolution itself (``forward``); both kernel
    gradients are ``kernel_grad`` of (input, output gradient), with the roles of the
    two swapped for the transpose.
    """

    def fwd(x, kernel, geom):
        return fn(x, kernel, geom), (x, kernel)

    def bwd(geom, res, dy):
        x, kernel = res
        dx = _ffi(data_grad, x.shape, dy, kernel, geom)
        dk = _ffi("kernel_grad", kernel.shape, *((dy, x) if swap else (x, dy)), geom)
        return dx, dk

    fn.defvjp(fwd, bwd)


_define_vjp(conv_nhwc, "data_grad", swap=False)


def _geometry(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
              dimension_numbers, feature_group_count, batch_group_count,
              preferred_element_type) -> tuple[bool, Geometry] | None:
    """``(transposed, geometry)`` of this convolution for oneDNN, or None where we must
    not take it.

    ``transposed`` is an input-dilated (``lhs_dilation``) convolution, i.e. a transposed
    convolution as ``lax.conv_transpose`` writes it; ``geometry`` is then that of the
    strided convolution whose data gradient it is (see :func:`conv_transpose_nhwc`)."""
    if jax.default_backend() != "cpu" or lhs.ndim != 4 or rhs.ndim != 4:
        return None
    if lhs.dtype != jnp.float32 or rhs.dtype != jnp.float32:
        return None
    if preferred_element_type not in (None, jnp.float32):
        return None
    if feature_group_count != 1 or batch_group_count != 1:
        return None
    if any(d != 1 for d in (rhs_dilation or ())):
        return None
    nhwc = lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC"))
    if lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) != nhwc:
        return None
    strides = tuple(int(s) for s in window_strides)
    dilation = tuple(int(d) for d in (lhs_dilation or (1, 1)))
    transposed = dilation != (1, 1)
    if isinstance(padding, str):
        if transposed:  # lax itself refuses string padding here
            return None
        padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], strides, padding)
    (pt, pb), (pl, pr) = ((int(a), int(b)) for a, b in padding)
    if not transposed:
        if min(pt, pb, pl, pr) < 0:
            return None
        return False, (strides[0], strides[1], pt, pb, pl, pr)
    # Input dilation s with padding p (per side) and a k-tap kernel is the data gradient
    # of a stride-s convolution padded by k - 1 - p; that needs 0 <= p <= k - 1 and no
    # window stride of its own.
    kh, kw = rhs.shape[:2]
    pads = (kh - 1 - pt, kh - 1 - pb, kw - 1 - pl, kw - 1 - pr)
    if strides != (1, 1) or min(pads) < 0 or min(pt, pb, pl, pr) < 0:
        return None
    return True, (dilation[0], dilation[1], *pads)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv_transpose_nhwc(x: jax.Array, kernel: jax.Array, geom: Geometry) -> jax.Array:
    """Transposed convolution by oneDNN: ``y = F_k^T x`` for the strided convolution
    ``F_k`` of ``geom`` with HWIO kernel ``k`` (mapping y's shape to x's), i.e. its data
    gradient primitive run forward. Its gradients are the other two primitives:
    ``dx = F_k(dy)`` (the forward convolution) and ``dk`` = the kernel gradient of ``F``
    at input ``dy`` and output gradient ``x``. Why: XLA's CPU backend runs input-dilated
    convolutions with a naive loop, and the matmul + depth-to-space formulation
    (``blocks.ConvTranspose2x2``) spends most of its time in transposes."""
    n, h, w, _ = x.shape
    kh, kw, c, _ = kernel.shape
    sh, sw, pt, pb, pl, pr = geom
    shape = (n, (h - 1) * sh + kh - pt - pb, (w - 1) * sw + kw - pl - pr, c)
    return _ffi("data_grad", shape, x, kernel, geom)


_define_vjp(conv_transpose_nhwc, "forward", swap=True)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         batch_group_count=1, precision=None, preferred_element_type=None):
    """Drop-in for ``lax.conv_general_dilated``: oneDNN where supported, XLA elsewhere.

    Input-dilated convolutions (``lax.conv_transpose``, ``nn.ConvTranspose``) go to
    :func:`conv_transpose_nhwc` with the kernel flipped and its in/out axes swapped —
    the strided convolution they are the transpose of."""
    found = _geometry(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                      dimension_numbers, feature_group_count, batch_group_count,
                      preferred_element_type)
    if found is not None:
        load()
        transposed, geom = found
        if transposed:
            return conv_transpose_nhwc(lhs, jnp.swapaxes(rhs[::-1, ::-1], 2, 3), geom)
        return conv_nhwc(lhs, rhs, geom)
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                    rhs_dilation, dimension_numbers, feature_group_count,
                                    batch_group_count, precision, preferred_element_type)


# ------------------------------------------------------------------ batch norm + ReLU
# Flax's BatchNorm default; blocks.FusedBatchNormReLU passes its own.
BATCH_NORM_EPSILON = 1e-5


def _workspace_bytes(shape: Sequence[int], epsilon: float) -> int:
    """Size of oneDNN's ReLU mask for this shape (asked from the library at trace time:
    an FFI result's shape must be static, and the size is oneDNN's implementation's)."""
    load()
    fn = _LIBRARY[0].SatsegBatchNormWorkspaceBytes
    fn.restype = ctypes.c_int64
    fn.argtypes = [ctypes.c_int64] * 4 + [ctypes.c_float]
    size = int(fn(*(int(d) for d in shape), float(epsilon)))
    if size < 0:
        raise OneDnnUnavailable(f"oneDNN has no batch normalisation for shape {tuple(shape)}")
    return size


def _bn_forward(x, scale, shift, epsilon):
    c = x.shape[-1]
    f32 = functools.partial(jax.ShapeDtypeStruct, dtype=jnp.float32)
    out = (f32(x.shape), f32((c,)), f32((c,)),
           jax.ShapeDtypeStruct((_workspace_bytes(x.shape, epsilon),), jnp.uint8))
    return jax.ffi.ffi_call(FFI_PREFIX + "bn_relu_forward", out, vmap_method="sequential")(
        x, scale, shift, eps=np.float32(epsilon))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm_relu(x: jax.Array, scale: jax.Array, shift: jax.Array,
                    epsilon: float = BATCH_NORM_EPSILON):
    """Training-mode batch normalisation followed by ReLU, by oneDNN, for NHWC float32.

    Returns ``(y, mean, var)``: ``y = relu((x - mean) / sqrt(var + epsilon) * scale +
    shift)`` with ``mean``/``var`` this batch's per-channel statistics over N, H, W
    (``var`` biased, as ``flax.linen.BatchNorm`` uses for its running average). The
    gradient is that of ``y`` with respect to ``x``, ``scale`` and ``shift`` (through the
    batch statistics); ``mean`` and ``var`` are for the running averages and are not
    differentiated (their cotangents are ignored — callers stop gradients there).
    Why: the two passes and the 1-bit ReLU mask replace XLA's reductions and
    element-wise passes (and the centred copy of ``x`` it keeps for the backward pass).
    """
    y, mean, var, _ = _bn_forward(x, scale, shift, epsilon)
    return y, mean, var


def _bn_relu_fwd(x, scale, shift, epsilon):
    y, mean, var, ws = _bn_forward(x, scale, shift, epsilon)
    return (y, mean, var), (x, scale, mean, var, ws)


def _bn_relu_bwd(epsilon, res, cotangents):
    x, scale, mean, var, ws = res
    dy = cotangents[0]
    c = x.shape[-1]
    f32 = functools.partial(jax.ShapeDtypeStruct, dtype=jnp.float32)
    return jax.ffi.ffi_call(FFI_PREFIX + "bn_relu_backward",
                            (f32(x.shape), f32((c,)), f32((c,))),
                            vmap_method="sequential")(x, dy, scale, mean, var, ws,
                                                      eps=np.float32(epsilon))


batch_norm_relu.defvjp(_bn_relu_fwd, _bn_relu_bwd)


def batch_norm_relu_supported(x: jax.Array) -> bool:
    """Where :func:`batch_norm_relu` applies: CPU backend, NHWC (rank 4), float32."""
    return jax.default_backend() == "cpu" and x.ndim == 4 and x.dtype == jnp.float32


# blocks.Norm finds the fused kernel through the conv_fn it is given (the one object the
# models thread through for "use an accelerated kernel here"); its generic protocol is an
# optional ``batch_norm_relu(x, scale, shift, epsilon) -> (y, mean, var)`` attribute.
conv_general_dilated.batch_norm_relu = batch_norm_relu  # type: ignore[attr-defined]
