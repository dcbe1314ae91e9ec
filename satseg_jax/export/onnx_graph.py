"""The serving function as an ONNX graph, converted from its jaxpr (``--format onnx``).

Why a converter of our own: jax2tf now emits one ``XlaCallModule`` op that tf2onnx cannot
convert, and jax2onnx requires orbax-checkpoint < 0.11.37 (this project pins 0.12.8). The
serving function of a segmentation run is small in vocabulary: convolutions, matrix
products (transposed convolutions and resizes as einsums), elementwise arithmetic,
reductions, reshapes and transposes. This walks its jaxpr, traced with symbolic batch,
height and width, and writes each primitive as ONNX operators (opset 18):

- **Weights are folded**: every equation whose inputs are all constants (the variables
  and what is computed from them alone: kernel flips, batch-norm scales) is evaluated
  with JAX at export and stored as an initializer.
- **Shapes stay dynamic**: a reshape or broadcast to a shape holding the symbols ``b``,
  ``h``, ``w`` is written as a shape tensor computed from the input's ``Shape`` (``h`` =
  input height / the model's input multiple), so one model serves any batch and tile.
- **Layouts**: the jaxpr is channels-last; each convolution is written as ``Transpose``
  to channels-first, ``Conv``, ``Transpose`` back (onnxruntime's optimizer cancels the
  pairs between consecutive convolutions).

A primitive outside the vocabulary is refused by name, before anything is written, rather
than exported wrongly; the exported model is then checked against the Flax run
(:func:`satseg_jax.export.exporters._check`) like every export.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from satseg_jax.errors import SatsegError

OPSET = 18
ELEMENTWISE = {"add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div", "max": "Max",
               "min": "Min", "pow": "Pow", "eq": "Equal", "lt": "Less", "gt": "Greater",
               "le": "LessOrEqual", "ge": "GreaterOrEqual", "and": "And", "or": "Or"}
UNARY = {"exp": "Exp", "log": "Log", "sqrt": "Sqrt", "neg": "Neg", "abs": "Abs",
         "tanh": "Tanh", "logistic": "Sigmoid", "not": "Not", "erf": "Erf",
         "stop_gradient": "Identity", "copy": "Identity", "copy_p": "Identity",
         "floor": "Floor", "ceil": "Ceil", "sign": "Sign"}
REDUCE = {"reduce_max": "ReduceMax", "reduce_min": "ReduceMin", "reduce_sum": "ReduceSum"}
CALLS = ("jit", "pjit", "closed_call", "core_call", "custom_jvp_call", "custom_vjp_call",
         "custom_vjp_call_jaxpr", "remat", "checkpoint")


class _Graph:
    """Nodes and initializers under construction, with fresh names."""

    def __init__(self) -> None:
        from onnx import helper, numpy_helper

        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes: list = []
        self.initializers: list = []
        self._n = 0

    def name(self, hint: str) -> str:
        self._n += 1
        return f"{hint}_{self._n}"

    def const(self, value: np.ndarray, hint: str = "c") -> str:
        name = self.name(hint)
        self.initializers.append(self.numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type: str, inputs: list[str], **attrs) -> str:
        out = self.name(op_type.lower())
        self.nodes.append(self.helper.make_node(op_type, inputs, [out], **attrs))
        return out


class _Dim:
    """A dimension known only at run time: a 1-element int64 tensor of the graph, with the
    arithmetic a symbolic dimension's evaluation needs (``+``, ``*``, ``//``, ``%``)."""

    def __init__(self, graph: _Graph, name: str) -> None:
        self.g, self.name = graph, name

    def _other(self, other) -> str:
        if isinstance(other, _Dim):
            return other.name
        return self.g.const(np.asarray([int(other)], np.int64), "dim")

    def _bin(self, op: str, other, swap: bool = False) -> _Dim:
        a, b = self.name, self._other(other)
        return _Dim(self.g, self.g.op(op, [b, a] if swap else [a, b]))

    def __add__(self, o):
        return self._bin("Add", o)

    def __radd__(self, o):
        return self._bin("Add", o, swap=True)

    def __sub__(self, o):
        return self._bin("Sub", o)

    def __rsub__(self, o):
        return self._bin("Sub", o, swap=True)

    def __mul__(self, o):
        return self._bin("Mul", o)

    def __rmul__(self, o):
        return self._bin("Mul", o, swap=True)

    def __floordiv__(self, o):
        return self._bin("Div", o)  # int64 Div truncates; dimensions are never negative

    def __mod__(self, o):
        return self._bin("Mod", o)


def _broadcast_np(values, p):
    x, shape, dims = values[0], tuple(p["shape"]), tuple(p["broadcast_dimensions"])
    expanded = np.reshape(x, [x.shape[dims.index(i)] if i in dims else 1
                              for i in range(len(shape))])
    return np.broadcast_to(expanded, shape).copy()


_NUMPY_FOLD = {
    "add": lambda v, p: np.add(*v), "sub": lambda v, p: np.subtract(*v),
    "mul": lambda v, p: np.multiply(*v), "div": lambda v, p: np.divide(*v),
    "max": lambda v, p: np.maximum(*v), "min": lambda v, p: np.minimum(*v),
    "neg": lambda v, p: np.negative(v[0]), "sqrt": lambda v, p: np.sqrt(v[0]),
    "rsqrt": lambda v, p: 1 / np.sqrt(v[0]),
    "reshape": lambda v, p: np.reshape(v[0], tuple(p["new_sizes"])),
    "transpose": lambda v, p: np.transpose(v[0], tuple(p["permutation"])),
    "rev": lambda v, p: np.flip(v[0], tuple(p["dimensions"])),
    "squeeze": lambda v, p: np.squeeze(v[0], tuple(p["dimensions"])),
    "convert_element_type": lambda v, p: np.asarray(v[0]),
    "broadcast_in_dim": _broadcast_np,
    "concatenate": lambda v, p: np.concatenate(v, axis=int(p["dimension"])),
}


def _concrete(eqn) -> bool:
    """The equation's outputs have fixed shapes (none depends on b, h or w)."""
    return all(isinstance(d, (int, np.integer)) for v in eqn.outvars
               for d in getattr(v.aval, "shape", ()))


def _onnx_dtype(dtype) -> int:
    from onnx import helper

    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


class _Converter:
    def __init__(self, graph: _Graph, symbols: dict[str, _Dim]) -> None:
        self.g, self.symbols = graph, symbols
        self.env: dict = {}  # jaxpr var -> ("const", array) | ("tensor", name)

    # -- values -------------------------------------------------------------------------
    def read(self, v):
        if type(v).__name__ == "Literal":
            return ("const", np.asarray(v.val, dtype=v.aval.dtype))
        return self.env[v]

    def tensor(self, v) -> str:
        kind, val = self.read(v) if not isinstance(v, tuple) else v
        return self.g.const(val) if kind == "const" else val

    def shape_tensor(self, dims) -> str:
        """A 1-D int64 shape from a tuple of ints and symbolic dimensions."""
        if all(isinstance(d, (int, np.integer)) for d in dims):
            return self.g.const(np.asarray(dims, np.int64), "shape")
        parts = []
        for d in dims:
            if isinstance(d, (int, np.integer)):
                parts.append(self.g.const(np.asarray([int(d)], np.int64), "dim"))
            else:
                value = d._evaluate(self.symbols)
                parts.append(value.name if isinstance(value, _Dim)
                             else self.g.const(np.asarray([int(value)], np.int64), "dim"))
        return self.g.op("Concat", parts, axis=0)

    # -- the walk -----------------------------------------------------------------------
    def run(self, jaxpr, consts: list, args: list) -> list:
        for var, c in zip(jaxpr.constvars, consts):
            self.env[var] = ("const", np.asarray(c))
        for var, a in zip(jaxpr.invars, args):
            self.env[var] = a
        for eqn in jaxpr.eqns:
            ins = [self.read(v) for v in eqn.invars]
            name = eqn.primitive.name
            if name in CALLS:
                outs = self.call(eqn, ins)
            elif all(k == "const" for k, _ in ins) and _concrete(eqn) and \
                    name != "dim_as_value":
                outs = self.fold(eqn, [v for _, v in ins])
            else:
                outs = [("tensor", self.emit(eqn, ins))]
            for var, out in zip(eqn.outvars, outs):
                self.env[var] = out
        return [self.read(v) for v in jaxpr.outvars]

    def call(self, eqn, ins) -> list:
        p = eqn.params
        closed = p.get("jaxpr") or p.get("call_jaxpr") or p.get("fun_jaxpr")
        inner = getattr(closed, "jaxpr", closed)
        consts = list(getattr(closed, "consts", []))
        return self.run(inner, consts, ins)

    def fold(self, eqn, values: list) -> list:
        """Evaluate an all-constant equation: with numpy for the common ones (each eager
        JAX op would compile an XLA computation of its own), else with JAX as
        ``jax.core.eval_jaxpr`` does."""
        host = _NUMPY_FOLD.get(eqn.primitive.name)
        if host is not None:
            out = host(values, eqn.params).astype(eqn.outvars[0].aval.dtype, copy=False)
            return [("const", np.asarray(out))]
        out = eqn.primitive.bind(*values, **eqn.primitive.get_bind_params(eqn.params))
        outs = out if eqn.primitive.multiple_results else [out]
        return [("const", np.asarray(o)) for o in outs]

    def emit(self, eqn, ins) -> str:
        name, p, g = eqn.primitive.name, eqn.params, self.g
        if name == "iota":
            return self.iota(eqn)
        if name == "dim_as_value":  # a symbolic size used as a number (resize scales)
            value = self.shape_tensor((p["dim"],))
            return g.op("Cast", [g.op("Squeeze", [value])], to=_onnx_dtype(np.int64))
        if name == "conv_general_dilated":  # reads its kernel constant itself
            return self.conv(eqn, ins)
        t = [self.tensor(i) for i in ins]
        if name in ELEMENTWISE:
            return g.op(ELEMENTWISE[name], t)
        if name in UNARY:
            return g.op(UNARY[name], t)
        if name == "erfc":
            return g.op("Sub", [g.const(np.asarray(1, eqn.invars[0].aval.dtype)),
                                g.op("Erf", t)])
        if name == "square":
            return g.op("Mul", [t[0], t[0]])
        if name == "ne":
            return g.op("Not", [g.op("Equal", t)])
        if name == "rsqrt":
            return g.op("Reciprocal", [g.op("Sqrt", t)])
        if name == "integer_pow":
            return g.op("Pow", [t[0], g.const(np.asarray(p["y"], eqn.invars[0].aval.dtype))])
        if name == "is_finite":
            bad = g.op("Or", [g.op("IsNaN", t), g.op("IsInf", t)])
            return g.op("Not", [bad])
        if name == "select_n":
            if len(t) != 3:
                raise SatsegError("export --format onnx: select_n with more than two cases")
            cond = t[0]
            if eqn.invars[0].aval.dtype != jnp.bool_:
                cond = g.op("Cast", [cond], to=_onnx_dtype(np.bool_))
            return g.op("Where", [cond, t[2], t[1]])
        if name == "convert_element_type":
            return g.op("Cast", t, to=_onnx_dtype(p["new_dtype"]))
        if name in REDUCE:
            axes = g.const(np.asarray(p["axes"], np.int64), "axes")
            return g.op(REDUCE[name], [t[0], axes], keepdims=0)
        if name in ("reduce_and", "reduce_or"):
            as_int = g.op("Cast", t, to=_onnx_dtype(np.int32))
            axes = g.const(np.asarray(p["axes"], np.int64), "axes")
            red = g.op("ReduceMin" if name == "reduce_and" else "ReduceMax", [as_int, axes],
                       keepdims=0)
            return g.op("Cast", [red], to=_onnx_dtype(np.bool_))
        if name == "reshape":
            return g.op("Reshape", [t[0], self.shape_tensor(p["new_sizes"])])
        if name == "transpose":
            return g.op("Transpose", t, perm=list(p["permutation"]))
        if name == "squeeze":
            return g.op("Squeeze", [t[0], g.const(np.asarray(p["dimensions"], np.int64))])
        if name == "concatenate":
            return g.op("Concat", t, axis=int(p["dimension"]))
        if name == "broadcast_in_dim":
            return self.broadcast(eqn, t[0])
        if name == "dot_general":
            return self.dot_general(eqn, t)
        if name == "reduce_window_max" or name == "reduce_window_sum":
            return self.pool(eqn, t[0])
        raise SatsegError(f"export --format onnx: the model uses the JAX primitive {name!r}, "
                          "which the ONNX converter does not write; export as savedmodel "
                          "or stablehlo")

    def iota(self, eqn) -> str:
        """0, 1, ... along ``dimension`` of ``shape`` (a symbolic length included)."""
        p, g = eqn.params, self.g
        shape, axis = tuple(p["shape"]), int(p["dimension"])
        n = g.op("Squeeze", [self.shape_tensor((shape[axis],))])
        zero, one = (g.const(np.asarray(v, np.int64)) for v in (0, 1))
        line = g.op("Cast", [g.op("Range", [zero, n, one])], to=_onnx_dtype(p["dtype"]))
        axes = [i for i in range(len(shape)) if i != axis]
        if axes:
            line = g.op("Unsqueeze", [line, g.const(np.asarray(axes, np.int64), "axes")])
        return g.op("Expand", [line, self.shape_tensor(shape)])

    def broadcast(self, eqn, x: str) -> str:
        p, g = eqn.params, self.g
        shape, dims = p["shape"], p["broadcast_dimensions"]
        missing = [i for i in range(len(shape)) if i not in dims]
        if missing:
            x = g.op("Unsqueeze", [x, g.const(np.asarray(missing, np.int64), "axes")])
        return g.op("Expand", [x, self.shape_tensor(shape)])

    def dot_general(self, eqn, t: list[str]) -> str:
        (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
        la, ra = eqn.invars[0].aval.ndim, eqn.invars[1].aval.ndim
        letters = iter("abcdefghijklmnopqrstuvwxyz")
        lhs = [next(letters) for _ in range(la)]
        rhs = [None] * ra
        for i, j in zip(lb, rb):
            rhs[j] = lhs[i]
        for i, j in zip(lc, rc):
            rhs[j] = lhs[i]
        rhs = [c or next(letters) for c in rhs]
        out = ([lhs[i] for i in lb] + [c for i, c in enumerate(lhs) if i not in lb + lc]
               + [c for j, c in enumerate(rhs) if j not in tuple(rb) + tuple(rc)])
        eq = f"{''.join(lhs)},{''.join(rhs)}->{''.join(out)}"
        return self.g.op("Einsum", t, equation=eq)

    def conv(self, eqn, ins) -> str:
        p, g = eqn.params, self.g
        if any(d != 1 for d in p["lhs_dilation"]) or p["batch_group_count"] != 1:
            raise SatsegError("export --format onnx: an input-dilated (transposed) "
                              "convolution; export as savedmodel or stablehlo")
        dn = p["dimension_numbers"]
        lhs_spec, rhs_spec, out_spec = dn.lhs_spec, dn.rhs_spec, dn.out_spec
        x = g.op("Transpose", [self.tensor(ins[0])], perm=list(lhs_spec))
        kind, kernel = ins[1]
        if kind == "const":
            w = g.const(np.transpose(kernel, rhs_spec), "kernel")
        else:
            w = g.op("Transpose", [kernel], perm=list(rhs_spec))
        pads = [lo for lo, _ in p["padding"]] + [hi for _, hi in p["padding"]]
        y = g.op("Conv", [x, w], strides=list(p["window_strides"]), pads=pads,
                 dilations=list(p["rhs_dilation"]), group=int(p["feature_group_count"]))
        return g.op("Transpose", [y], perm=[int(i) for i in np.argsort(out_spec)])

    def pool(self, eqn, x: str) -> str:
        p, g = eqn.params, self.g
        dims, strides = p["window_dimensions"], p["window_strides"]
        if len(dims) != 4 or dims[0] != 1 or dims[3] != 1 or any(
                d != 1 for d in tuple(p["base_dilation"]) + tuple(p["window_dilation"])):
            raise SatsegError("export --format onnx: a pooling window other than NHWC "
                              "spatial; export as savedmodel or stablehlo")
        pads = [lo for lo, _ in p["padding"][1:3]] + [hi for _, hi in p["padding"][1:3]]
        nchw = g.op("Transpose", [x], perm=[0, 3, 1, 2])
        if eqn.primitive.name == "reduce_window_max":
            y = g.op("MaxPool", [nchw], kernel_shape=list(dims[1:3]),
                     strides=list(strides[1:3]), pads=pads)
        else:
            area = float(dims[1] * dims[2])
            y = g.op("Mul", [g.op("AveragePool", [nchw], kernel_shape=list(dims[1:3]),
                                  strides=list(strides[1:3]), pads=pads,
                                  count_include_pad=1),
                             g.const(np.asarray(area, np.float32))])
        return g.op("Transpose", [y], perm=[0, 2, 3, 1])


def import_onnx():
    """(onnx, onnxruntime), or a one-line SatsegError saying how to install them."""
    try:
        import onnx
        import onnxruntime
    except ImportError:
        raise SatsegError("--format onnx needs onnx and onnxruntime: pip install "
                          "'satseg-jax[export]'") from None
    return onnx, onnxruntime


def write_onnx(fn: Callable, variables, multiple: int, bands: int, out: Path,
               tile: int | None = None):
    """``out/model.onnx``: ``fn(variables, bands)`` as ONNX (height and width fixed to
    ``tile`` when given); returns a callable on numpy arrays (onnxruntime) for the export
    check."""
    from jax import export

    onnx, ort = import_onnx()
    from onnx import TensorProto, helper

    b, h, w = export.symbolic_shape("b, h, w")
    hw = (tile, tile) if tile else (multiple * h, multiple * w)
    closed = jax.make_jaxpr(fn)(variables, jax.ShapeDtypeStruct((b, *hw, bands),
                                                                jnp.float32))
    graph = _Graph()
    shape = graph.op("Shape", ["bands"])

    def dim(i: int) -> _Dim:
        return _Dim(graph, graph.op("Gather", [shape, graph.const(
            np.asarray([i], np.int64), "axis")], axis=0))

    symbols = {"b": dim(0), "h": dim(1) // multiple, "w": dim(2) // multiple}
    conv = _Converter(graph, symbols)
    leaves = jax.tree_util.tree_leaves(variables)
    args = [("const", np.asarray(v)) for v in leaves] + [("tensor", "bands")]
    (result,) = conv.run(closed.jaxpr, list(closed.consts), args)
    final = conv.tensor(result)
    graph.nodes.append(helper.make_node("Identity", [final], ["probabilities"]))
    k = closed.out_avals[0].shape[-1]
    hw_names = [tile, tile] if tile else ["height", "width"]
    model = helper.make_model(
        helper.make_graph(
            graph.nodes, "satseg_serving",
            [helper.make_tensor_value_info("bands", TensorProto.FLOAT,
                                           ["batch", *hw_names, bands])],
            [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT,
                                           ["batch", *hw_names, int(k)])],
            graph.initializers),
        opset_imports=[helper.make_opsetid("", OPSET)], producer_name="satseg-jax")
    onnx.checker.check_model(model)
    out.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out / "model.onnx"))
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: no optimizer notes in the output
    session = ort.InferenceSession(str(out / "model.onnx"), options,
                                   providers=["CPUExecutionProvider"])
    return lambda x: session.run(["probabilities"], {"bands": np.asarray(x, np.float32)})[0]
