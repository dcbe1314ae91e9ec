"""Model building, TrainState and the pure steps: what train, runs and evaluate share.

Shape (after the Flax imagenet example): everything is built from the config; the steps
are pure functions ``train_step(state, batch) -> (state, metrics)`` closed over the
model, optimizer and loss settings; RNG lives in the state and is folded with the step
(and device index under pmap), so a resumed run draws the same numbers as an
uninterrupted one. This module sits between the input pipeline and the run artefact
(``runs.py``): the training loop (``train.py``), a loaded run and evaluation all build
their model, state and compiled steps here, so none of them imports another.

Two parallel modes (``config.parallelism``):

- ``jit``: one program over a Mesh of all devices; the batch is sharded along ``data``
  and the state replicated; XLA inserts the gradient all-reduce.
- ``pmap``: one replica per local device; gradients are summed with ``lax.psum`` and
  BatchNorm statistics are computed over the whole global batch (``axis_name``).

EMA (``config.train.ema_decay`` > 0): the state also carries an exponential moving
average of the parameters and BatchNorm statistics, updated by the train step, saved and
restored with the rest of the state (so its digests cover it and a resume is exact), and
used instead of the raw weights wherever the model is scored (``eval_state``).

Both give the loss curve of one device. The loss is written as a function of
batch-level *sums* (see ``losses.loss_statistics``); each device differentiates the
linearisation of the global loss around the global sums, so per-device gradients add
up exactly to the single-device gradient even when devices hold different numbers of
valid (non-ignored) pixels.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax import lax

from satseg_jax import finetune, losses, metrics, parallel
from satseg_jax.classes import IGNORE_LABEL
from satseg_jax.cpu.convolution import conv_fn_for
from satseg_jax.errors import SatsegError
from satseg_jax.models import get_model
from satseg_jax.training_control import option


class TrainState(struct.PyTreeNode):
    """Everything that changes during training; a plain pytree (no functions inside)."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array
    nonfinite_run: jax.Array  # non-finite steps in a row, now
    nonfinite_max_run: jax.Array  # the longest such run so far
    nonfinite_total: jax.Array  # skipped updates in total
    # EMA of params / batch_stats; empty dicts when config.train.ema_decay is 0 (then
    # nothing is added to checkpoints: runs and checkpoints from before EMA still load).
    ema_params: Any = struct.field(default_factory=dict)
    ema_batch_stats: Any = struct.field(default_factory=dict)


# ----------------------------------------------------------------------------- EMA


def ema_settings(config) -> tuple[float, bool]:
    """(decay, warmup) of ``config.train``; decay 0 means no EMA."""
    decay = float(option(config.train, "ema_decay", 0.0))
    if not 0.0 <= decay < 1.0:
        raise SatsegError(f"config.train.ema_decay={decay!r}: must be in [0, 1) (0 = no EMA; "
                          "e.g. 0.999)")
    return decay, bool(option(config.train, "ema_warmup", True))


def ema_decay_at(step: jax.Array, decay: float, warmup: bool) -> jax.Array:
    """The decay of the update that follows ``step`` completed updates.

    With ``warmup`` it is ``min(decay, (1 + step) / (10 + step))`` (TensorFlow's
    ``ExponentialMovingAverage(num_updates=step)``): a short run, or one whose early
    weights are far from its final ones, would otherwise average in the random
    initialisation for ~1 / (1 - decay) steps.
    """
    d = jnp.asarray(decay, jnp.float32)
    if warmup:
        t = jnp.asarray(step, jnp.float32)
        d = jnp.minimum(d, (1.0 + t) / (10.0 + t))
    return d


def ema_update(ema: Any, new: Any, d: jax.Array) -> Any:
    """``d * ema + (1 - d) * new``, leaf by leaf (float32 like the parameters)."""
    return jax.tree.map(lambda e, x: (d * e + (1.0 - d) * x).astype(e.dtype), ema, new)


def has_ema(state: TrainState) -> bool:
    return bool(jax.tree.leaves(state.ema_params))


def eval_state(state: TrainState) -> TrainState:
    """The state to score the model with: its EMA weights when it has them."""
    if not has_ema(state):
        return state
    return state.replace(params=state.ema_params, batch_stats=state.ema_batch_stats)


# ----------------------------------------------------------------------------- optimizer


def create_schedule(config) -> optax.Schedule:
    """Learning-rate schedule from ``config.schedule`` (peak = optimizer.learning_rate)."""
    s, lr, n = config.schedule, float(config.optimizer.learning_rate), int(config.train.num_steps)
    name = s.name
    if name == "constant":
        return optax.constant_schedule(lr)
    if name == "warmup_cosine":
        warm = min(int(s.warmup_steps), max(0, n - 1))
        return optax.warmup_cosine_decay_schedule(
            0.0, lr, warmup_steps=warm, decay_steps=max(n, warm + 1), end_value=lr * s.end_factor
        )
    if name == "piecewise":
        bounds = {int(round(float(b) * n)): float(sc) for b, sc in zip(s.boundaries, s.scales)}
        return optax.piecewise_constant_schedule(lr, bounds)
    if name == "exponential":
        return optax.exponential_decay(lr, int(s.transition_steps), float(s.decay_rate),
                                       staircase=True)
    raise SatsegError(f"config.schedule.name={name!r}: expected constant, warmup_cosine, "
                      "piecewise or exponential")


def create_optimizer(config) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(optimizer, schedule) from ``config.optimizer`` and ``config.schedule``, with the
    fine-tuning controls of ``finetune`` (encoder groups, no decay on norms/biases)."""
    o = config.optimizer
    schedule = create_schedule(config)
    decay_all = bool(finetune.setting(config, "optimizer", "decay_norms_and_biases"))

    def make(lr: optax.Schedule) -> optax.GradientTransformation:
        if o.name == "adam":
            return optax.adam(lr, b1=o.b1, b2=o.b2)
        if o.name == "adamw":
            return optax.adamw(lr, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay,
                               mask=None if decay_all else finetune.decay_mask)
        if o.name == "sgd":
            return optax.sgd(lr, momentum=o.momentum, nesterov=False)
        raise SatsegError(f"config.optimizer.name={o.name!r}: expected adam, adamw or sgd")

    opt = finetune.grouped_optimizer(config, make, schedule)
    if o.grad_clip_norm and o.grad_clip_norm > 0:
        opt = optax.chain(optax.clip_by_global_norm(float(o.grad_clip_norm)), opt)
    return opt, schedule


# ----------------------------------------------------------------------------- model/state


def compute_dtype(config):
    """The dtype the model computes in (parameters stay float32)."""
    name = config.train.compute_dtype
    if name not in ("float32", "bfloat16"):
        raise SatsegError(f"config.train.compute_dtype={name!r}: expected float32 or bfloat16")
    return jnp.dtype(name)


def build_model(config, num_classes: int, axis_name: str | None = None):
    """The model of ``config.model`` with the convolution chosen for this backend."""
    return get_model(config.model, num_classes=num_classes, dtype=compute_dtype(config),
                     axis_name=axis_name, conv_fn=conv_fn_for(config))


def input_hw(config, patch_size: int) -> int:
    """Side of the training input: the crop when one is set, else the patch."""
    crop = int(config.data.crop_size or 0)
    return crop if crop else patch_size


def create_train_state(seed: int, model, tx, input_shape: tuple[int, ...],
                       ema: bool = False, encoder: dict | None = None) -> TrainState:
    """Initialise parameters (on the default device) and the optimizer state; with
    ``ema`` the moving averages start as copies of the initial weights. ``encoder``
    (``{'params': ..., 'batch_stats': ...}``, e.g. pretrained weights from
    ``weights.adapt``) replaces the initialised ``encoder`` submodule first.

    Parameters are drawn with an ``rbg`` key: XLA's CPU compile of threefry-based
    initialisers takes tens of seconds even for tiny U-Nets, rbg a few. The state's own
    key (dropout, folded with the step) stays the default threefry key.
    """
    init_key = jax.random.key(int(seed), impl="rbg")
    variables = jax.jit(functools.partial(model.init, train=False))(
        {"params": init_key, "dropout": init_key}, jnp.zeros(input_shape, jnp.float32)
    )
    params = variables["params"]
    batch_stats = variables.get("batch_stats", {})
    if encoder is not None:
        params = {**params, finetune.ENCODER: jax.tree.map(jnp.asarray, encoder["params"])}
        if encoder.get("batch_stats"):
            batch_stats = {**batch_stats,
                           finetune.ENCODER: jax.tree.map(jnp.asarray, encoder["batch_stats"])}

    def zero():  # distinct buffers: the train step donates the whole state
        return jnp.zeros((), jnp.int32)

    def copy(tree):
        return jax.tree.map(jnp.copy, tree) if ema else {}

    return TrainState(step=zero(), params=params, batch_stats=batch_stats,
                      opt_state=tx.init(params), rng=jax.random.PRNGKey(int(seed)),
                      nonfinite_run=zero(), nonfinite_max_run=zero(), nonfinite_total=zero(),
                      ema_params=copy(params), ema_batch_stats=copy(batch_stats))


# ----------------------------------------------------------------------------- steps


def _apply(model, state: TrainState, params, images, train: bool, rng=None):
    variables = {"params": params}
    if state.batch_stats:
        variables["batch_stats"] = state.batch_stats
    if train:
        mutable = ["batch_stats"] if state.batch_stats else []
        out, new_vars = model.apply(variables, images, train=True, rngs={"dropout": rng},
                                    mutable=mutable)
        return out, new_vars.get("batch_stats", state.batch_stats)
    return model.apply(variables, images, train=False), state.batch_stats


def _labels_for(logits: jax.Array, batch: dict, task: str) -> jax.Array:
    if task == "classification":
        return batch["label"]
    return losses.center_crop_labels(batch["mask"], logits.shape[1:3])


def make_train_step(model, tx, loss_config, num_classes: int, class_weights, task: str,
                    axis_name: str | None = None, ema: tuple[float, bool] = (0.0, True)):
    """Build ``train_step(state, batch) -> (state, metrics)`` for jit (axis_name None) or
    pmap; ``ema`` = (decay, warmup) updates the state's moving averages (decay 0: none)."""
    cw = None if class_weights is None else jnp.asarray(class_weights, jnp.float32)

    def combine(stats):
        return losses.loss_from_statistics(stats, loss_config, class_weights=cw)[0]

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        rng = jax.random.fold_in(state.rng, state.step)
        if axis_name is not None:
            rng = jax.random.fold_in(rng, lax.axis_index(axis_name))

        def surrogate(params):
            logits, new_bs = _apply(model, state, params, batch["image"], True, rng)
            labels = _labels_for(logits, batch, task)
            stats = losses.loss_statistics(logits, labels, loss_config, num_classes, cw)
            global_stats = jax.lax.stop_gradient(stats)
            if axis_name is not None:
                global_stats = lax.psum(global_stats, axis_name)
            loss, dstats = jax.value_and_grad(combine)(global_stats)
            lin = sum(jnp.vdot(d, s) for d, s in
                      zip(jax.tree.leaves(dstats), jax.tree.leaves(stats)))
            return lin, (loss, new_bs, logits, labels)

        grads, (loss, new_bs, logits, labels) = jax.grad(surrogate, has_aux=True)(state.params)
        if axis_name is not None:
            grads = lax.psum(grads, axis_name)
            new_bs = lax.pmean(new_bs, axis_name)
        updates, new_opt = tx.update(grads, state.opt_state, state.params)
        new_params = optax.apply_updates(state.params, updates)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

        def pick(new, old):
            return jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)

        run = jnp.where(finite, 0, state.nonfinite_run + 1)
        if ema[0] > 0:
            d = ema_decay_at(state.step, *ema)
            state = state.replace(
                ema_params=pick(ema_update(state.ema_params, new_params, d), state.ema_params),
                ema_batch_stats=pick(ema_update(state.ema_batch_stats, new_bs,
                                                d), state.ema_batch_stats))
        new_state = state.replace(
            step=state.step + 1,
            params=pick(new_params, state.params),
            opt_state=pick(new_opt, state.opt_state),
            batch_stats=pick(new_bs, state.batch_stats),
            nonfinite_run=run,
            nonfinite_max_run=jnp.maximum(state.nonfinite_max_run, run),
            nonfinite_total=state.nonfinite_total + (~finite).astype(jnp.int32),
        )
        preds = jnp.argmax(logits, axis=-1)
        valid = labels != IGNORE_LABEL
        correct = jnp.sum((preds == labels) & valid)
        count = jnp.sum(valid)
        if axis_name is not None:
            correct, count = lax.psum((correct, count), axis_name)
        out = {"loss": loss, "accuracy": correct / jnp.maximum(count, 1),
               "grad_norm": grad_norm, "skipped": (~finite).astype(jnp.float32),
               **finetune.group_update_norms(updates)}
        return new_state, out

    return train_step


def make_eval_step(model, num_classes: int, task: str, axis_name: str | None = None):
    """Build ``eval_step(state, batch) -> confusion matrix`` (summed over devices)."""

    def eval_step(state: TrainState, batch: dict) -> jax.Array:
        logits, _ = _apply(model, state, state.params, batch["image"], False)
        labels = _labels_for(logits, batch, task)
        cm = metrics.confusion_matrix(labels, jnp.argmax(logits, -1), num_classes)
        if axis_name is not None:
            cm = lax.psum(cm, axis_name)
        return cm

    return eval_step


def make_predict_fn(model):
    """``predict(state, images) -> logits`` (used by evaluate --save-predictions, predict)."""

    def predict(state: TrainState, images: jax.Array) -> jax.Array:
        return _apply(model, state, state.params, images, False)[0]

    return predict


# ----------------------------------------------------------------------------- runner


class Runner:
    """Compiled steps and device placement for one parallel mode.

    Keeps the mode's details (mesh, shardings, replication) in one place so the loops
    in ``train_and_evaluate`` and ``evaluate`` read the same for jit and pmap.
    """

    def __init__(self, config, model_fn, num_classes: int, tx=None, loss_config=None,
                 class_weights=None):
        self.mode = config.parallelism
        task = config.task
        if self.mode not in ("jit", "pmap"):
            raise SatsegError(f"config.parallelism={self.mode!r}: expected jit or pmap")
        axis = parallel.PMAP_AXIS if self.mode == "pmap" else None
        self.model = model_fn(axis)
        self.mesh = parallel.make_mesh()
        train_step = None
        if tx is not None:
            train_step = make_train_step(self.model, tx, loss_config, num_classes,
                                         class_weights, task, axis_name=axis,
                                         ema=ema_settings(config))
        eval_step = make_eval_step(self.model, num_classes, task, axis_name=axis)
        predict = make_predict_fn(self.model)
        if self.mode == "jit":
            rep, data = parallel.replicated(self.mesh), parallel.batch_sharded(self.mesh)
            if train_step is not None:
                self.train_step = jax.jit(train_step, out_shardings=(rep, rep),
                                          donate_argnums=(0,))
            self.eval_step = jax.jit(eval_step, out_shardings=rep)
            self.predict = jax.jit(predict, out_shardings=data)
        else:
            if train_step is not None:
                self.train_step = jax.pmap(train_step, axis_name=axis, donate_argnums=(0,))
            self.eval_step = jax.pmap(eval_step, axis_name=axis)
            self.predict = jax.pmap(predict, axis_name=axis)

    def place_state(self, state: TrainState) -> TrainState:
        if self.mode == "jit":
            return parallel.replicate_tree(state, self.mesh)
        return parallel.pmap_replicate(state)

    def host_state(self, state: TrainState) -> TrainState:
        """The state as one replicated copy (what checkpoints store).

        Under pmap with several processes the copy is made a global replicated array
        (``parallel.host_local_to_global``): Orbax cannot save host-local arrays there.
        """
        if self.mode == "jit":
            return state
        host = parallel.pmap_unreplicate(state)
        if jax.process_count() > 1:
            host = parallel.host_local_to_global(host, self.mesh)
        return host

    def shard(self, batch: dict[str, np.ndarray]) -> dict:
        if self.mode == "jit":
            return parallel.shard_batch_jit(batch, self.mesh)
        return parallel.shard_batch_pmap(batch)

    def unreplicate_metric(self, value):
        value = jax.device_get(value)
        return jax.tree.map(lambda x: x[0], value) if self.mode == "pmap" else value

    def abstract_state(self, state: TrainState) -> TrainState:
        """Restore target: shapes of ``state`` with the shardings of this mode."""
        if self.mode == "jit":
            rep = parallel.replicated(self.mesh)
            return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep),
                                state)
        return state  # pmap: restore on the default device, then replicate


# ----------------------------------------------------------------------------- split loop


def confusion_over_split(runner: Runner, state: TrainState, meta, split: str, batch_size: int,
                         task: str, on_batch=None, crop_size: int = 0,
                         resize_to: int = 0) -> np.ndarray:
    """Sum the eval step's confusion matrices over every batch of ``split``.

    The matrix is accumulated on the devices per batch (summed across devices and hosts
    by the eval step) and on the host in int64 over the split: every reported number is
    then derived from one matrix. ``on_batch(batch, state)`` is called with each host
    batch (used to save predictions).
    """
    from satseg_jax import input_pipeline

    parallel_batch = batch_size - batch_size % jax.device_count() or jax.device_count()
    total = None
    for batch in input_pipeline.eval_batches(
        meta, split, global_batch=parallel_batch, task=task,
        process_index=jax.process_index(), process_count=jax.process_count(),
        keep_metadata=on_batch is not None, crop_size=crop_size, resize_to=resize_to,
    ):
        # Accumulate on the host in int64: int32 overflows past ~2.1e9 pixels.
        cm = np.asarray(runner.unreplicate_metric(runner.eval_step(state, runner.shard(batch))),
                        dtype=np.int64)
        total = cm if total is None else total + cm
        if on_batch is not None:
            on_batch(batch, state)
    if total is None:
        raise SatsegError(f"{meta.data_dir}: split {split!r} has no examples")
    return total
