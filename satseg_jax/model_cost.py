"""What a model costs: parameters, forward GFLOPs per image, and img/s measured so that
rows of one table can be compared (``satseg benchmark``).

Why it is done this way:

- **GFLOPs from the XLA-convolution twin.** On a CPU the models may run their
  convolutions as oneDNN FFI calls (``satseg_jax.cpu``); XLA's cost analysis cannot see
  inside a custom call, so costing the compiled oneDNN model reports ~1 % of the real
  work. The same model built with XLA's own convolutions (``conv_fn=None``) computes the
  same function, so its cost analysis is the model's FLOP count whatever runs it.
  :func:`analytic_gflops` counts the convolutions and matrix products of the traced
  forward pass independently (2 x multiply-adds), as a cross-check.
- **Speeds measured together, round-robin.** Timing each model right after its training
  run (as the sweep once did) put every row under a different machine state (other
  processes, tf.data threads winding down, allocator warm-up): 19.6 vs 51.9 img/s for
  two near-identical U-Nets in one table. :func:`measure_speeds` compiles every model
  first, warms each up, then times one call of each model per round for several rounds
  (same synthetic batch for all, ``block_until_ready`` on every result) and reports the
  median per model, so slow spells of the machine hit every row alike.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np


def _xla_twin(config, num_classes: int):
    """``config``'s model with XLA's own convolutions (what cost analysis can see)."""
    from satseg_jax.models import get_model
    from satseg_jax.steps import compute_dtype

    return get_model(config.model, num_classes=num_classes, dtype=compute_dtype(config),
                     conv_fn=None)


def _variables(model, num_bands: int, size: int):
    import jax
    import jax.numpy as jnp

    x = jnp.zeros((1, size, size, num_bands), jnp.float32)
    return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False)), x


def forward_gflops(config, num_classes: int, num_bands: int, size: int) -> float:
    """GFLOPs of one image's forward pass (inference mode): XLA's cost analysis of the
    model built with XLA's convolutions (see the module docstring for why)."""
    import jax

    model = _xla_twin(config, num_classes)
    variables, x = _variables(model, num_bands, size)
    compiled = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(variables, x).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", math.nan)) / 1e9 if cost else math.nan


def analytic_gflops(config, num_classes: int, num_bands: int, size: int) -> float:
    """GFLOPs of one image's forward pass counted from the traced program: 2 x the
    multiply-adds of every convolution (transposed ones included) and matrix product;
    element-wise work (norms, activations, pooling) is left out, so this is a lower
    bound a little under :func:`forward_gflops`."""
    import jax

    model = _xla_twin(config, num_classes)
    variables, x = _variables(model, num_bands, size)
    jaxpr = jax.make_jaxpr(lambda v, x: model.apply(v, x, train=False))(variables, x)
    return _count_jaxpr(jaxpr.jaxpr) / 1e9


def _count_jaxpr(jaxpr) -> float:
    flops = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "conv_general_dilated":
            out = eqn.outvars[0].aval.shape
            rhs = eqn.invars[1].aval.shape
            dn = eqn.params["dimension_numbers"]
            kernel = rhs[dn.rhs_spec[1]] * math.prod(rhs[d] for d in dn.rhs_spec[2:])
            # out elements x (input channels per group x kernel window) multiply-adds
            flops += 2.0 * math.prod(out) * kernel / eqn.params["batch_group_count"]
        elif name == "dot_general":
            (lc, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            flops += 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(
                lhs[d] for d in lc)
        for sub in _sub_jaxprs(eqn):
            flops += _count_jaxpr(sub)
    return flops


def _sub_jaxprs(eqn):
    """The jaxprs nested in ``eqn`` (pjit, custom_jvp/vjp calls, remat...)."""
    for v in eqn.params.values():
        for item in v if isinstance(v, (list, tuple)) else (v,):
            inner = getattr(item, "jaxpr", None)
            if inner is not None and hasattr(inner, "eqns"):
                yield inner
            elif hasattr(item, "eqns"):
                yield item


def _speed_fns(config, num_classes: int, num_bands: int, size: int, batch: int
               ) -> tuple[int, Callable, Callable]:
    """(parameter count, infer(), train_step()) for one model on a synthetic batch, both
    compiled; the train step keeps its (donated) state between calls."""
    import jax
    import jax.numpy as jnp

    from satseg_jax.steps import (
        Runner,
        build_model,
        create_optimizer,
        create_train_state,
        ema_settings,
    )

    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.parallelism = "jit"
    tx, _ = create_optimizer(config)
    runner = Runner(config, lambda axis: build_model(config, num_classes, axis), num_classes,
                    tx=tx, loss_config=config.loss)
    model = runner.model
    state = create_train_state(0, model, tx, (1, size, size, num_bands))
    n_params = int(sum(x.size for x in jax.tree.leaves(state.params)))
    rng = np.random.default_rng(0)
    images = rng.standard_normal((batch, size, size, num_bands)).astype(np.float32)
    key = "mask" if config.task == "segmentation" else "label"
    labels = rng.integers(0, num_classes, (batch, size, size) if key == "mask" else (batch,))
    variables = {"params": state.params, **({"batch_stats": state.batch_stats}
                                           if state.batch_stats else {})}
    x = jnp.asarray(images)
    fwd = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(variables, x).compile()
    # With EMA on (the real-data recipes) the train step updates an average of the
    # parameters, which the state must hold, as in training.
    ema = ema_settings(config)[0] > 0
    holder = {"state": runner.place_state(create_train_state(
        0, model, tx, (1, size, size, num_bands), ema=ema))}
    data = runner.shard({"image": images, key: labels.astype(np.int32)})

    def train_once():
        holder["state"], m = runner.train_step(holder["state"], data)
        return m["loss"]

    return n_params, lambda: fwd(variables, x), train_once


def measure_speeds(models: dict[str, tuple], batch: int = 8, repeats: int = 7,
                   warmup: int = 2) -> dict[str, dict]:
    """``{label: (config, num_classes, num_bands, size)}`` -> ``{label: {"params",
    "train_img_s", "inference_img_s"}}``: medians of ``repeats`` rounds, each round one
    call of every model in turn, after ``warmup`` untimed calls (compilation included)."""
    import jax

    fns = {label: _speed_fns(cfg, k, c, s, batch) for label, (cfg, k, c, s) in models.items()}
    out: dict[str, dict] = {label: {"params": f[0]} for label, f in fns.items()}
    for kind, idx in (("inference_img_s", 1), ("train_img_s", 2)):
        for f in fns.values():
            for _ in range(warmup):
                jax.block_until_ready(f[idx]())
        times: dict[str, list[float]] = {label: [] for label in fns}
        for _ in range(repeats):
            for label, f in fns.items():
                t = time.perf_counter()
                jax.block_until_ready(f[idx]())
                times[label].append(time.perf_counter() - t)
        for label, ts in times.items():
            out[label][kind] = batch / float(np.median(ts))
    return out
