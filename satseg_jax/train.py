"""Training: TrainState, pure train/eval steps, and the ``train_and_evaluate`` loop.

Shape (after the Flax imagenet example): everything the loop needs is built from the
config; the steps are pure functions ``train_step(state, batch) -> (state, metrics)``
closed over the model, optimizer and loss settings; RNG lives in the state and is
folded with the step (and device index under pmap), so a resumed run draws the same
numbers as an uninterrupted one.

Two parallel modes (``config.parallelism``):

- ``jit``: one program over a Mesh of all devices; the batch is sharded along ``data``
  and the state replicated; XLA inserts the gradient all-reduce.
- ``pmap``: one replica per local device; gradients are summed with ``lax.psum`` and
  BatchNorm statistics are computed over the whole global batch (``axis_name``).

Both give the loss curve of one device. The loss is written as a function of
batch-level *sums* (see ``losses.loss_statistics``); each device differentiates the
linearisation of the global loss around the global sums, so per-device gradients add
up exactly to the single-device gradient even when devices hold different numbers of
valid (non-ignored) pixels.

Preemption (SIGTERM from a scheduler, Ctrl-C): see ``StopRequest`` and ``Preempted``.
The loop finishes the step it is in, saves it, and exits with 128 + the signal number;
running the same command again resumes from that step and ends bit for bit where an
uninterrupted run ends (on CPU; see README "Determinism and preemption").
"""

from __future__ import annotations

import functools
import json
import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax import lax

from satseg_jax import checkpoints, losses, metrics, parallel
from satseg_jax.classes import IGNORE_LABEL
from satseg_jax.errors import SatsegError
from satseg_jax.models import get_model


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
    o = config.optimizer
    schedule = create_schedule(config)
    if o.name == "adam":
        opt = optax.adam(schedule, b1=o.b1, b2=o.b2)
    elif o.name == "adamw":
        opt = optax.adamw(schedule, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay)
    elif o.name == "sgd":
        opt = optax.sgd(schedule, momentum=o.momentum, nesterov=False)
    else:
        raise SatsegError(f"config.optimizer.name={o.name!r}: expected adam, adamw or sgd")
    if o.grad_clip_norm and o.grad_clip_norm > 0:
        opt = optax.chain(optax.clip_by_global_norm(float(o.grad_clip_norm)), opt)
    return opt, schedule


# ----------------------------------------------------------------------------- model/state


def compute_dtype(config):
    name = config.train.compute_dtype
    if name not in ("float32", "bfloat16"):
        raise SatsegError(f"config.train.compute_dtype={name!r}: expected float32 or bfloat16")
    return jnp.dtype(name)


CPU_CONVS = ("auto", "onednn", "xla")


@functools.cache
def _say_once(message: str) -> None:
    print(message, flush=True)


def conv_fn_for(config):
    """The convolution the model should use: oneDNN's on a single CPU device, else XLA's.

    ``config.train.cpu_conv``: ``'xla'`` always uses ``lax.conv_general_dilated``;
    ``'onednn'`` requires the oneDNN path (``models/onednn_conv.py``) on the CPU and fails
    with the fix when it cannot be built; ``'auto'`` (the default) takes it on a
    one-device CPU run when it builds, and says so either way. Why single device for
    ``auto``: the custom call has no sharding rule (under ``jit`` over a mesh XLA would
    gather its operands), and several CPU "devices" share the same cores anyway.
    GPUs/TPUs never see it: the choice is made here, per backend.
    """
    choice = getattr(config.train, "cpu_conv", "xla")
    if choice not in CPU_CONVS:
        raise SatsegError(f"config.train.cpu_conv={choice!r}: expected one of {CPU_CONVS}")
    if choice == "xla" or jax.default_backend() != "cpu":
        return None
    from satseg_jax.models import onednn_conv

    if jax.device_count() > 1:
        if choice == "onednn" and config.parallelism == "jit":
            raise SatsegError(
                f"config.train.cpu_conv='onednn' with {jax.device_count()} devices under "
                "parallelism='jit': the oneDNN custom call has no sharding rule; use "
                "parallelism='pmap', one device, or cpu_conv='auto'")
        if choice == "auto":
            return None
    try:
        onednn_conv.load()
    except onednn_conv.OneDnnUnavailable as e:
        if choice == "onednn":
            raise SatsegError(f"config.train.cpu_conv='onednn': {e}") from None
        _say_once(f"cpu_conv=auto: XLA's convolutions (oneDNN path unavailable: "
                  f"{str(e).splitlines()[0]})")
        return None
    _say_once("cpu_conv: oneDNN convolutions (models/onednn_conv.py)")
    return onednn_conv.conv_general_dilated


def build_model(config, num_classes: int, axis_name: str | None = None):
    return get_model(config.model, num_classes=num_classes, dtype=compute_dtype(config),
                     axis_name=axis_name, conv_fn=conv_fn_for(config))


def input_hw(config, patch_size: int) -> int:
    crop = int(config.data.crop_size or 0)
    return crop if crop else patch_size


def create_train_state(seed: int, model, tx, input_shape: tuple[int, ...]) -> TrainState:
    """Initialise parameters (on the default device) and the optimizer state.

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

    def zero():  # distinct buffers: the train step donates the whole state
        return jnp.zeros((), jnp.int32)

    return TrainState(step=zero(), params=params, batch_stats=batch_stats,
                      opt_state=tx.init(params), rng=jax.random.PRNGKey(int(seed)),
                      nonfinite_run=zero(), nonfinite_max_run=zero(), nonfinite_total=zero())


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
                    axis_name: str | None = None):
    """Build ``train_step(state, batch) -> (state, metrics)`` for jit (axis_name None) or pmap."""
    cw = None if class_weights is None else jnp.asarray(class_weights, jnp.float32)

    def combine(stats):
        return losses.loss_from_statistics(stats, loss_config)[0]

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
               "grad_norm": grad_norm, "skipped": (~finite).astype(jnp.float32)}
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
                                         class_weights, task, axis_name=axis)
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


# ----------------------------------------------------------------------------- config check

# Config fields that must be equal between a workdir's first run and a resume: changing
# them would make the restored state meaningless or the data stream different.
RESUME_KEYS = ("task", "seed", "model", "optimizer.name", "train.batch_size",
               "data.crop_size", "data.train_split", "loss.class_weights")


def _get(d: dict, dotted: str):
    for part in dotted.split("."):
        d = d.get(part) if isinstance(d, dict) else None
    return d


def check_resume_config(workdir: Path, config, write: bool = True) -> None:
    """Refuse a workdir written by an incompatible config; with ``write``, (re)write
    WORKDIR/config.json (atomically, from process 0).

    Training calls it twice: first without writing, before anything is built, so a
    refused run fails fast; then with ``write`` once everything else has been checked,
    so a run refused for another reason leaves no workdir behind.
    """
    path = workdir / "config.json"
    current = json.loads(config.to_json_best_effort())
    if path.exists():
        saved = json.loads(path.read_text())
        diffs = [k for k in RESUME_KEYS if _get(saved, k) != _get(current, k)]
        if diffs:
            detail = "; ".join(f"{k}: {_get(saved, k)!r} -> {_get(current, k)!r}" for k in diffs)
            raise SatsegError(
                f"{workdir}: written by an incompatible config ({detail}). Use a new --workdir, "
                f"or the original settings to resume"
            )
    if write and jax.process_index() == 0:
        from satseg_jax.io_utils import atomic_path

        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")


def load_workdir_config(workdir: str | Path):
    """The ConfigDict a workdir was trained with (from WORKDIR/config.json)."""
    import ml_collections

    path = Path(workdir) / "config.json"
    if not path.exists():
        raise SatsegError(f"{path}: not found; is {workdir} a training workdir?")
    return ml_collections.ConfigDict(json.loads(path.read_text()))


# ----------------------------------------------------------------------------- preemption

# With several processes the stop flags are combined by a collective every this many
# steps (config.train.stop_check_every overrides it). The collective itself is cheap
# (tests/workers/stop_check_cost.py measures it), but reading its result makes the host
# wait for the step in flight, which on an accelerator costs the overlap of host work
# with device work; every 10 steps bounds that and still stops within seconds.
STOP_CHECK_EVERY = 10


class Preempted(SystemExit):
    """Training stopped on a signal after saving a checkpoint of the step it reached.

    A ``SystemExit`` so that, uncaught, the process ends quietly with the shell's
    "killed by signal N" status ``128 + N`` (143 for SIGTERM, 130 for SIGINT): a scheduler
    or script sees an interrupted run, not a finished one, and no traceback is printed.
    Callers that want to go on (a sweep, a test) catch it.
    """

    def __init__(self, signum: int, step: int, checkpoint: Path) -> None:
        super().__init__(128 + int(signum))
        self.signum = int(signum)
        self.step = step
        self.checkpoint = checkpoint


class StopRequest:
    """SIGTERM / SIGINT -> a flag that the training loop polls once per step.

    Why only a flag: a Python signal handler runs between two bytecodes of whatever the
    main thread is doing — inside an Orbax write, a tf.data call, an XLA dispatch — so
    saving or raising there could leave half-done work behind. The loop checks the flag
    after a step is complete (``agreed``), where the state is consistent, and saves there.
    A second signal changes nothing; SIGKILL ends at once and loses only the steps since
    the last completed checkpoint (Orbax writes to a temporary directory and renames it).

    A context manager: the previous handlers are put back on exit, so a caller's own
    handling of Ctrl-C (pytest's, a notebook's) is untouched after training. Handlers can
    only be set from the main thread; elsewhere nothing is installed and the flag stays
    clear.
    """

    def __init__(self, signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT),
                 check_every: int = 1, process_count: int = 1) -> None:
        self.signals = tuple(signals)
        self.check_every = max(1, int(check_every))
        self.process_count = int(process_count)
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is None:
            self.signum = signum

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            # None: the previous handler was not set from Python; the default is closest.
            signal.signal(sig, signal.SIG_DFL if previous is None else previous)
        self._previous.clear()

    def agreed(self, step: int) -> int | None:
        """The signal to stop on after ``step``, the same on every process, or None.

        One process: the local flag, every step. Several: each process must save its part
        of the *same* step, and none may be left waiting in a collective for one that
        left, so the flags are combined (any process's signal stops all) every
        ``check_every`` steps — at the same steps on every process, since all run the same
        loop.
        """
        if self.process_count == 1:
            return self.signum
        if step % self.check_every:
            return None
        from jax.experimental import multihost_utils

        flags = np.ravel(multihost_utils.process_allgather(np.int32(self.signum or 0)))
        return next((int(f) for f in flags if f), None)


# ----------------------------------------------------------------------------- main loop


def _class_weights(config, meta) -> np.ndarray | None:
    mode = config.loss.class_weights
    if mode == "none":
        return None
    if mode == "inverse_frequency":
        w = np.asarray(meta.class_weights, np.float32)
        if w.shape != (meta.num_classes,):
            raise SatsegError(f"{meta.data_dir}/satseg_dataset.json has no class_weights for "
                              f"{meta.num_classes} classes; rebuild the dataset")
        return w
    raise SatsegError(f"config.loss.class_weights={mode!r}: expected none or inverse_frequency")


def train_and_evaluate(config, workdir: str | Path) -> dict:
    """Train from ``config`` in ``workdir`` (resuming the latest checkpoint) and evaluate.

    Returns the final validation metrics (``metrics.metrics_from_confusion``).

    On SIGTERM or SIGINT during the loop it finishes the current step, saves it, and
    raises ``Preempted`` (a ``SystemExit`` with status 143 / 130) after printing what it
    saved; calling it again resumes from that step (``StopRequest`` says why it is done
    this way). The previous signal handlers are restored either way.

    Starts ``jax.distributed`` first when this is one of several processes
    (``parallel.maybe_initialize_distributed``). Every process then runs this same
    loop; only process 0 prints progress and writes summaries, but each process raises
    its own errors, and with several processes their messages name the process, so a
    failure on one host is not mistaken for (or hidden behind) another's.
    """
    parallel.maybe_initialize_distributed(config)
    try:
        return _train_and_evaluate(config, workdir)
    except SatsegError as e:
        if jax.process_count() > 1:
            raise SatsegError(f"process {jax.process_index()} of {jax.process_count()}: {e}") \
                from e
        raise


def _train_and_evaluate(config, workdir: str | Path) -> dict:
    from clu import metric_writers, periodic_actions

    from satseg_jax import evaluate, input_pipeline

    workdir = Path(workdir)
    meta = input_pipeline.load_meta(config.data.data_dir)
    if meta.task != config.task:
        raise SatsegError(f"{config.data.data_dir} is a {meta.task} dataset but config.task="
                          f"{config.task!r}")
    check_resume_config(workdir, config, write=False)
    eval_split = str(config.data.eval_split)
    if not meta.num_examples.get(eval_split, 0):
        # Published sets often come with train/test lists only (satseg build
        # --split-file): say so now, not after the first eval_every steps of training.
        have = ", ".join(f"{k} {v}" for k, v in meta.num_examples.items() if v)
        raise SatsegError(
            f"{config.data.data_dir}: config.data.eval_split={eval_split!r} has no examples "
            f"(the dataset has {have}); evaluate on another split with "
            "--config.data.eval_split=test (checkpoints are then chosen on it), or rebuild "
            "with a validation split (a 'validation' list in --split-file, or --split)")
    global_batch = int(config.train.batch_size)
    parallel.check_batch(global_batch)
    num_steps = int(config.train.num_steps)

    tx, schedule = create_optimizer(config)
    runner = Runner(config, lambda axis: build_model(config, meta.num_classes, axis),
                    meta.num_classes, tx=tx, loss_config=config.loss,
                    class_weights=_class_weights(config, meta))
    hw = input_hw(config, meta.patch_size)
    state = create_train_state(int(config.seed),
                               build_model(config, meta.num_classes),
                               tx, (1, hw, hw, meta.num_bands))
    n_params = sum(x.size for x in jax.tree.leaves(state.params))

    # Everything checkable is checked: only now does the workdir come into being.
    workdir.mkdir(parents=True, exist_ok=True)
    check_resume_config(workdir, config)
    manager = checkpoints.make_manager(workdir, keep=int(config.train.keep_checkpoints))
    latest = manager.latest_step()
    is_main = jax.process_index() == 0
    if latest is not None:
        state, ck_meta = checkpoints.restore(manager, latest, runner.abstract_state(state))
        expected = latest * (global_batch // jax.process_count())
        if ck_meta.get("data_position") != expected:
            raise SatsegError(f"{workdir}: checkpoint {latest} has data position "
                              f"{ck_meta.get('data_position')}, expected {expected}")
        if is_main:
            print(f"Resumed from {manager.directory}/{latest} (step {latest}, data position "
                  f"{expected} examples per host)", flush=True)
    start = int(jax.device_get(state.step))
    state = runner.place_state(state)

    writer = metric_writers.create_default_writer(workdir, just_logging=not is_main)
    if start == 0:
        writer.write_hparams({k: v for k, v in _flat(json.loads(config.to_json_best_effort()))})
    if is_main:
        print(f"Model {config.model.name}: {n_params:,} parameters; {meta.num_examples} "
              f"examples; {jax.device_count()} device(s), parallelism={runner.mode}", flush=True)
    report = periodic_actions.ReportProgress(num_train_steps=num_steps, writer=writer,
                                             every_steps=int(config.train.log_every))
    hooks = [report]

    def save(step_metrics=None) -> int:
        host = runner.host_state(state)
        step = int(jax.device_get(host.step))
        ck = {"step": step, "data_position": step * (global_batch // jax.process_count()),
              "config_model": config.model.to_dict(), "metrics": step_metrics or {}}
        checkpoints.save(manager, host, ck,
                         metrics={checkpoints.BEST_METRIC: step_metrics["mean_iou"]}
                         if step_metrics else None)
        return step

    def run_eval() -> dict:
        cm = evaluate.confusion_over_split(runner, state, meta, config.data.eval_split,
                                           int(config.eval.batch_size), config.task,
                                           crop_size=int(config.eval.crop_size))
        return metrics.metrics_from_confusion(cm, list(meta.class_names))

    data = input_pipeline.train_iterator(
        meta, config.data, global_batch=global_batch, seed=int(config.seed), start_step=start,
        task=config.task, process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    last_eval: dict | None = None
    train_metrics: list[dict] = []
    t0 = time.time()
    log_step, log_time = start, t0
    stop = StopRequest(check_every=int(config.train.get("stop_check_every", STOP_CHECK_EVERY)),
                       process_count=jax.process_count())
    with metric_writers.ensure_flushes(writer), stop:
        for step in range(start + 1, num_steps + 1):
            with jax.profiler.StepTraceAnnotation("train", step_num=step):
                batch = runner.shard(next(data))
                state, m = runner.train_step(state, batch)
            train_metrics.append(m)
            for h in hooks:
                h(step)
            if step % int(config.train.log_every) == 0 or step == num_steps:
                host_m = [runner.unreplicate_metric(x) for x in train_metrics]
                summary = {k: float(np.mean([x[k] for x in host_m])) for k in host_m[0]}
                summary["learning_rate"] = float(schedule(step - 1))
                writer.write_scalars(step, {f"train/{k}": v for k, v in summary.items()})
                train_metrics = []
                if is_main:
                    now = time.time()
                    rate = (step - log_step) / max(now - log_time, 1e-9)
                    log_step, log_time = step, now
                    eta = (num_steps - step) / max(rate, 1e-9)
                    print(f"step {step}/{num_steps}  loss {summary['loss']:.4f}  "
                          f"acc {summary['accuracy']:.4f}  lr {summary['learning_rate']:.2e}  "
                          f"{rate:.2f} steps/s ({rate * global_batch:.1f} img/s)  "
                          f"ETA {eta / 60:.1f} min", flush=True)
                host = runner.unreplicate_metric(state.nonfinite_max_run) \
                    if runner.mode == "pmap" else jax.device_get(state.nonfinite_max_run)
                if int(host) >= int(config.train.max_nonfinite_steps):
                    raise SatsegError(
                        f"the loss was non-finite for {int(host)} steps in a row (by step "
                        f"{step}); lower config.optimizer.learning_rate, enable "
                        "config.optimizer.grad_clip_norm or check the data for NaN/inf"
                    )
            do_eval = step % int(config.train.eval_every) == 0 or step == num_steps
            if do_eval:
                last_eval = run_eval()
                writer.write_scalars(step, {
                    "eval/mean_iou": last_eval["mean_iou"],
                    "eval/macro_f1": last_eval["macro_f1"],
                    "eval/pixel_accuracy": last_eval["pixel_accuracy"],
                })
                if is_main:
                    print(f"step {step}: {eval_split} mIoU {last_eval['mean_iou']:.4f}, macro F1 "
                          f"{last_eval['macro_f1']:.4f}, accuracy "
                          f"{last_eval['pixel_accuracy']:.4f}", flush=True)
            if step % int(config.train.checkpoint_every) == 0 or step == num_steps:
                save(last_eval if do_eval else None)
            # The safe point: this step is complete (and saved if it was due).
            signum = stop.agreed(step) if step < num_steps else None
            if signum is not None:
                saved = save(last_eval if do_eval else None)  # no-op when saved above
                manager.wait_until_finished()
                manager.close()
                path = Path(manager.directory) / str(saved)
                if is_main:
                    print(f"Stopped by {signal.Signals(signum).name} after step {saved}/"
                          f"{num_steps}: saved checkpoint {path} (data position "
                          f"{saved * (global_batch // jax.process_count())} examples per "
                          f"host); run the same command again to resume. Exit status "
                          f"{128 + signum}.", flush=True)
                raise Preempted(signum, saved, path)
    manager.wait_until_finished()
    manager.close()
    if is_main and num_steps > start:
        dt = time.time() - t0
        print(f"Trained steps {start + 1}..{num_steps} in {dt:.1f} s "
              f"({(num_steps - start) * global_batch / dt:.1f} img/s incl. eval and "
              "checkpoints)", flush=True)
    return last_eval or {}


def _flat(d: dict, prefix: str = ""):
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            yield from _flat(v, key + ".")
        elif isinstance(v, (int, float, str, bool)):
            yield key, v
        else:
            yield key, str(v)
