"""Training: the loop, resume and preemption (``train_and_evaluate``).

Everything the loop runs is built in ``steps.py`` (model, TrainState, the pure
``train_step(state, batch) -> (state, metrics)`` and eval step, the jit/pmap Runner);
the run it writes — config, card, checkpoints — is defined in ``runs.py``. This module
only drives them: restore the latest checkpoint, feed batches from the input pipeline,
log, evaluate, save, and stop cleanly on a signal.

Preemption (SIGTERM from a scheduler, Ctrl-C): see ``StopRequest`` and ``Preempted``.
The loop finishes the step it is in, saves it, and exits with 128 + the signal number;
running the same command again resumes from that step and ends bit for bit where an
uninterrupted run ends (on CPU; see README "Determinism and preemption").
"""

from __future__ import annotations

import dataclasses
import json
import signal
import time
from pathlib import Path

import jax
import numpy as np

from satseg_jax import (
    checkpoints,
    io_utils,
    losses,
    metrics,
    parallel,
    runs,
    steps,
    summaries,
    training_control,
)
from satseg_jax.errors import SatsegError
from satseg_jax.preemption import STOP_CHECK_EVERY, Preempted, StopRequest  # noqa: F401

# ----------------------------------------------------------------------------- main loop

FIX_DIVERGENCE = ("lower config.optimizer.learning_rate, enable config.optimizer."
                  "grad_clip_norm or check the data for NaN/inf, then run again to resume "
                  "from it")


def _class_weights(config, meta) -> np.ndarray | None:
    return losses.resolve_class_weights(config.loss.class_weights, meta.class_weights,
                                        meta.num_classes,
                                        f"{meta.data_dir}/satseg_dataset.json")


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
        training = _Training(config, Path(workdir))
        try:
            return training.run()
        finally:
            training.lock.release()
    except SatsegError as e:
        if jax.process_count() > 1:
            raise SatsegError(f"process {jax.process_index()} of {jax.process_count()}: {e}") \
                from e
        raise


def _encoder_start(config, meta, model, input_shape: tuple[int, ...]):
    """``weights.adapt.encoder_start`` for this run (None without encoder_weights),
    checked against the shapes of the model's own encoder."""
    from satseg_jax.weights.adapt import encoder_start

    if not str(config.model.get("encoder_weights", "") or ""):
        encoder_start(config.model, {}, meta.bands, meta.mean, meta.std, meta.data_dir)
        return None
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                               jax.numpy.zeros(input_shape), train=False))
    template = {c: shapes[c]["encoder"] for c in ("params", "batch_stats")
                if "encoder" in shapes.get(c, {})}
    if "params" not in template:
        raise SatsegError("config.model.encoder_weights needs a named encoder: set "
                          "config.model.encoder (e.g. resnet34)")
    return encoder_start(config.model, template, meta.bands, meta.mean, meta.std,
                         meta.data_dir)


def _finite(tree) -> bool:
    """Whether every float array of ``tree`` is finite (checked on the host)."""
    for leaf in jax.tree.leaves(tree):
        x = np.asarray(jax.device_get(leaf)) if not isinstance(leaf, jax.Array) \
            or leaf.is_fully_addressable else None
        if x is not None and np.issubdtype(x.dtype, np.inexact) and not np.isfinite(x).all():
            return False
    return True


class _Training:
    """One call of ``train_and_evaluate``: what the loop shares, built and checked
    before the workdir comes into being (a refused run leaves nothing behind)."""

    def __init__(self, config, workdir: Path) -> None:
        from satseg_jax import input_pipeline

        runs.check_train_config(config)
        config = config.copy_and_resolve_references()  # epochs become steps in the copy
        self.config, self.workdir = config, workdir
        self.meta = meta = input_pipeline.load_meta(config.data.data_dir)
        runs.check_dataset(config, meta)
        input_pipeline.augment_settings(config.data)  # refuse bad ranges before any work
        self.schedule_notes = training_control.resolve_epochs(
            config, meta.num_examples.get(str(config.data.train_split), 0), jax.process_count())
        self.early = training_control.EarlyStopping.from_config(config.train)
        runs.check_resume_config(workdir, config, write=False)
        self.global_batch = int(config.train.batch_size)
        parallel.check_batch(self.global_batch)
        self.num_steps = int(config.train.num_steps)
        self.is_main = jax.process_index() == 0
        tx, self.schedule = steps.create_optimizer(config)
        k = meta.num_classes
        self.runner = steps.Runner(config, lambda axis: steps.build_model(config, k, axis), k,
                                   tx=tx, loss_config=config.loss,
                                   class_weights=_class_weights(config, meta))
        hw = steps.input_hw(config, meta.patch_size)
        model = steps.build_model(config, k)
        start = _encoder_start(config, meta, model, (1, hw, hw, meta.num_bands))
        if start is not None:  # pretrained bands normalise as the weights expect
            self.meta = meta = dataclasses.replace(meta, mean=start.mean, std=start.std)
        self.start_notes = () if start is None else start.notes
        self.state = steps.create_train_state(int(config.seed), model, tx,
                                              (1, hw, hw, meta.num_bands),
                                              ema=steps.ema_settings(config)[0] > 0,
                                              encoder=None if start is None
                                              else start.variables)
        self.n_params = sum(x.size for x in jax.tree.leaves(self.state.params))
        self.card = runs.card_from_dataset(meta, config)
        if start is not None:
            self.card = dataclasses.replace(self.card, provenance={
                **self.card.provenance, "encoder_weights": start.provenance})
        self.last_eval: dict | None = None
        self.lock = runs.WorkdirLock(workdir)
        # Orbax's messages about a failed checkpoint save go here, not to the terminal.
        self.log_path = workdir / ("train.log" if self.is_main
                                   else f"train.process{jax.process_index()}.log")
        self.postponed: int | None = None  # a checkpoint step not saved yet (diverging)

    def per_host(self, step: int) -> int:
        """Examples consumed per host after ``step`` (the input pipeline's position)."""
        return step * (self.global_batch // jax.process_count())

    def open_workdir(self) -> int:
        """Create the workdir and its checkpoint manager; restore the newest good
        checkpoint; only then write config and card; return the step to start from.

        Why this order: a resume refused on restore (a checkpoint of another model, a
        dataset with other bands) must leave the run it was pointed at as it was.
        """
        with io_utils.workdir_writes(self.workdir):
            self.workdir.mkdir(parents=True, exist_ok=True)
            if self.is_main:  # before the manager, which removes unfinished checkpoints
                self.lock.acquire()
        # Steps whose Orbax metadata is damaged: the manager must not open them.
        corrupt = checkpoints.metadata_problems(self.workdir.absolute() / "checkpoints")
        self.manager = checkpoints.make_manager(self.workdir,
                                                keep=int(self.config.train.keep_checkpoints),
                                                skip=corrupt)
        try:
            latest = self.restore_newest_good(list(corrupt.values()))
        except BaseException:
            self.manager.close()
            raise
        runs.check_resume_config(self.workdir, self.config)
        runs.write_card(self.workdir, self.card)
        if latest is not None:
            expected = self.per_host(latest)
            if self.is_main:
                print(f"Resumed from {self.manager.directory}/{latest} (step {latest}, data "
                      f"position {expected} examples per host)", flush=True)
        return int(jax.device_get(self.state.step))

    def skip(self, e: checkpoints.CorruptCheckpoint) -> int:
        """Say that a corrupt checkpoint is skipped and where it goes; return its step."""
        if self.is_main:
            print(f"skipped checkpoint {e.step}: {e.reason} ({e.path}); moved to "
                  f"{self.workdir / 'checkpoints_corrupt' / str(e.step)}", flush=True)
        return e.step

    def restore_newest_good(self, corrupt: list[checkpoints.CorruptCheckpoint]) -> int | None:
        """Restore the newest checkpoint that verifies; return its step (None: none saved).

        A corrupt checkpoint (``checkpoints.CorruptCheckpoint``: ``corrupt``, found by its
        Orbax metadata before the manager opened, or found on restore) is skipped with
        one line and moved to ``WORKDIR/checkpoints_corrupt/STEP``: left in place, it
        would keep its step number, and training would never write a good checkpoint
        there.
        """
        skipped = [self.skip(e) for e in sorted(corrupt, key=lambda e: -e.step)]
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                self.state, ck_meta = checkpoints.restore(
                    self.manager, step, self.runner.abstract_state(self.state))
            except checkpoints.CorruptCheckpoint as e:
                skipped.append(self.skip(e))
                continue
            expected = self.per_host(step)
            if ck_meta.get("data_position") != expected:
                raise SatsegError(f"{self.workdir}: checkpoint {step} has data position "
                                  f"{ck_meta.get('data_position')}, expected {expected}")
            self.last_eval = ck_meta.get("metrics") or None
            self.early = training_control.EarlyStopping.from_config(
                self.config.train, ck_meta.get("early_stopping"))
            break
        else:
            step = None
        if skipped:
            self.set_aside(skipped)
            if step is None:
                raise SatsegError(
                    f"{self.manager.directory}: no checkpoint verifies (skipped "
                    f"{sorted(skipped)}, moved to {self.workdir / 'checkpoints_corrupt'}); "
                    "run the same command again to start from step 0, or use a new --workdir")
        return step

    def set_aside(self, steps_: list[int]) -> None:
        """Move corrupt checkpoints out of the manager's folder (process 0) and reopen it."""
        if self.is_main:
            aside = self.workdir / "checkpoints_corrupt"
            aside.mkdir(exist_ok=True)
            for step in steps_:
                target = aside / str(step)
                if target.exists():
                    target = aside / f"{step}.{int(time.time())}"
                Path(self.manager.directory, str(step)).rename(target)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("satseg: corrupt checkpoints set aside")
        self.manager.close()
        self.manager = checkpoints.make_manager(self.workdir,
                                                keep=int(self.config.train.keep_checkpoints))

    def save(self, step_metrics: dict | None = None, last: bool = True) -> int | None:
        """Checkpoint the current state (a no-op when its step is saved already); return
        its step, or None when the save is postponed (see ``diverging``).

        ``last``: no later step will try again (the final step, a stop on a signal), so
        a state that cannot be saved is an error instead of a postponement.
        """
        host = self.runner.host_state(self.state)
        step = int(jax.device_get(host.step))
        good = self.manager.latest_step()
        if not _finite((host.params, host.opt_state, host.batch_stats, host.ema_params,
                        host.ema_batch_stats)):
            # A non-finite checkpoint would become the "latest" and poison every resume.
            raise SatsegError(
                f"the parameters or optimizer state are non-finite at step {step}: not "
                f"saved (last good checkpoint: {good}); {FIX_DIVERGENCE}")
        if self.diverging(step, good, last):
            return None
        ck = {"step": step, "data_position": self.per_host(step),
              "config_model": self.config.model.to_dict(), "metrics": step_metrics or {},
              "early_stopping": self.early.record(),
              "evaluated_weights": "ema" if steps.has_ema(host) else "raw"}
        checkpoints.save(self.manager, host, ck,
                         metrics={checkpoints.BEST_METRIC: step_metrics["mean_iou"]}
                         if step_metrics else None, log=self.log_path)
        self.postponed = None
        return step

    def diverging(self, step: int, good: int | None, last: bool) -> bool:
        """Whether the state must not be saved now: the loss of the latest step(s) was
        non-finite (the train step skipped their updates).

        Why: a learning rate far too large blows the parameters up to huge but finite
        values; every later loss is NaN, the updates are skipped, the parameters stay
        finite, and a checkpoint of them would pass the finiteness check, rotate out the
        good ones, and make every resume diverge again. Such a save is postponed to the
        next step with a finite loss (one bad batch costs a step); with no later step
        (``last``) it is an error naming the last good checkpoint.
        """
        run = int(self.runner.unreplicate_metric(self.state.nonfinite_run))
        if not run:
            return False
        if last:
            raise SatsegError(
                f"the loss was non-finite in the last {run} step(s) to step {step}: the "
                f"state is not saved (last good checkpoint: {good}); {FIX_DIVERGENCE}")
        if self.is_main and self.postponed is None:
            print(f"note: step {step}: the loss was non-finite in the last {run} step(s); "
                  "the checkpoint is postponed to the next step with a finite loss (last "
                  f"good checkpoint: {good})", flush=True)
        self.postponed = step
        return True

    def evaluate(self, step: int, writer) -> dict:
        """Metrics of the evaluation split from one confusion matrix; logged."""
        config = self.config
        cm = steps.confusion_over_split(self.runner, steps.eval_state(self.state), self.meta,
                                        config.data.eval_split, int(config.eval.batch_size),
                                        config.task, crop_size=int(config.eval.crop_size))
        result = metrics.metrics_from_confusion(cm, list(self.meta.class_names))
        writer.write_scalars(step, {f"eval/{k}": result[k]
                                    for k in ("mean_iou", "macro_f1", "pixel_accuracy")})
        if self.is_main:
            print(f"step {step}: {config.data.eval_split} mIoU {result['mean_iou']:.4f}, macro "
                  f"F1 {result['macro_f1']:.4f}, accuracy {result['pixel_accuracy']:.4f}",
                  flush=True)
        return result

    def log(self, step: int, train_metrics: list, writer, clock: list[float]) -> None:
        """Mean train metrics since the last log: summaries, one progress line with
        step/s, img/s and ETA; stop a run whose loss stayed non-finite too long."""
        host_m = [self.runner.unreplicate_metric(x) for x in train_metrics]
        summary = {k: float(np.mean([x[k] for x in host_m])) for k in host_m[0]}
        summary["learning_rate"] = float(self.schedule(step - 1))
        now = time.time()
        rate = (step - clock[0]) / max(now - clock[1], 1e-9)
        clock[:] = [step, now]
        writer.write_scalars(step, {**{f"train/{k}": v for k, v in summary.items()},
                                    "train/steps_per_sec": rate})
        if self.is_main:
            eta = (self.num_steps - step) / max(rate, 1e-9)
            print(f"step {step}/{self.num_steps}  loss {summary['loss']:.4f}  "
                  f"acc {summary['accuracy']:.4f}  lr {summary['learning_rate']:.2e}  "
                  f"{rate:.2f} steps/s ({rate * self.global_batch:.1f} img/s)  "
                  f"ETA {eta / 60:.1f} min", flush=True)
        run = self.runner.unreplicate_metric(self.state.nonfinite_max_run)
        if int(run) >= int(self.config.train.max_nonfinite_steps):
            raise SatsegError(
                f"the loss was non-finite for {int(run)} steps in a row (by step "
                f"{step}; last good checkpoint: {self.manager.latest_step()}); "
                f"{FIX_DIVERGENCE}")

    def preempted(self, signum: int, saved_eval: dict | None) -> Preempted:
        """Save the step reached, close the manager, say so; the exception to raise."""
        saved = self.save(saved_eval)  # no-op when saved already; never None (last)
        self.close()
        path = Path(self.manager.directory) / str(saved)
        if self.is_main:
            print(f"Stopped by {signal.Signals(signum).name} after step {saved}/"
                  f"{self.num_steps}: saved checkpoint {path} (data position "
                  f"{self.per_host(saved)} examples per host); run the same command again "
                  f"to resume. Exit status {128 + signum}.", flush=True)
        return Preempted(signum, saved, path)

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

    def run(self) -> dict:
        """Open the workdir, then train from the step restored to ``num_steps``."""
        start = self.open_workdir()
        if start >= self.num_steps or self.early.stopped_at is not None:
            self.close()
            if self.is_main and self.early.stopped_at is not None:
                print(f"{self.workdir}: stopped early at step {self.early.stopped_at} "
                      f"({self.early.reason(self.config.data.eval_split)}); nothing to train "
                      "(use a new --workdir to train again)", flush=True)
            elif self.is_main:
                print(f"{self.workdir}: already at step {start} of {self.num_steps}; nothing "
                      "to train (raise config.train.num_steps to train longer)", flush=True)
            return self.last_eval or {}
        self.state = self.runner.place_state(self.state)
        writer = summaries.Summaries(self.workdir, enabled=self.is_main)
        if start == 0:
            writer.write_hparams(dict(_flat(json.loads(self.config.to_json_best_effort()))))
        if self.is_main:
            for note in self.schedule_notes:
                print(note, flush=True)
            for note in self.start_notes:
                print(f"Encoder weights {self.config.model.encoder_weights}: {note}",
                      flush=True)
            print(f"Model {self.config.model.name}: {self.n_params:,} parameters; "
                  f"{self.meta.num_examples} examples; {jax.device_count()} device(s), "
                  f"parallelism={self.runner.mode}", flush=True)
        t0 = time.time()
        with writer:
            last = self.loop(start, writer)
        self.close()
        if self.is_main:
            dt = time.time() - t0
            print(f"Trained steps {start + 1}..{last} in {dt:.1f} s "
                  f"({(last - start) * self.global_batch / dt:.1f} img/s incl. eval "
                  "and checkpoints)", flush=True)
        return self.last_eval or {}

    def loop(self, start: int, writer) -> int:
        """Steps ``start + 1 .. num_steps``: train, log, evaluate, save, stop on a signal or
        early; return the last step trained."""
        from satseg_jax import input_pipeline

        config, num_steps = self.config, self.num_steps
        data = input_pipeline.train_iterator(
            self.meta, config.data, global_batch=self.global_batch, seed=int(config.seed),
            start_step=start, task=config.task, process_index=jax.process_index(),
            process_count=jax.process_count())
        train_metrics: list[dict] = []
        clock = [start, time.time()]
        stop = StopRequest(check_every=int(config.train.get("stop_check_every",
                                                            STOP_CHECK_EVERY)),
                           process_count=jax.process_count())
        with stop:
            for step in range(start + 1, num_steps + 1):
                with jax.profiler.StepTraceAnnotation("train", step_num=step):
                    batch = self.runner.shard(next(data))
                    self.state, m = self.runner.train_step(self.state, batch)
                train_metrics.append(m)
                if step % int(config.train.log_every) == 0 or step == num_steps:
                    self.log(step, train_metrics, writer, clock)
                    train_metrics = []
                do_eval = bool(str(config.data.eval_split)) and (
                    step % int(config.train.eval_every) == 0 or step == num_steps)
                early = False
                improved = False
                if do_eval:
                    self.last_eval = self.evaluate(step, writer)
                    early = self.early.update(step, self.last_eval["mean_iou"])
                    # With early stopping, every new best is saved: it is the checkpoint
                    # the run will be judged by, whatever checkpoint_every says.
                    improved = self.early.patience > 0 and self.early.best_step == step
                due = step % int(config.train.checkpoint_every) == 0 or step == num_steps
                if due or early or improved or self.postponed is not None:
                    self.save(self.last_eval if do_eval else None,
                              last=step == num_steps or early)
                if early:
                    self.report_early_stop(step)
                    return step
                # The safe point: this step is complete (and saved if it was due).
                signum = stop.agreed(step) if step < num_steps else None
                if signum is not None:
                    raise self.preempted(signum, self.last_eval if do_eval else None)
        return num_steps

    def report_early_stop(self, step: int) -> None:
        """One line: where and why training stopped, and the checkpoint kept as best."""
        if self.is_main:
            best = Path(self.manager.directory) / str(
                checkpoints.resolve_step(self.manager, "best"))
            print(f"Early stop after step {step}/{self.num_steps}: "
                  f"{self.early.reason(self.config.data.eval_split)}; best checkpoint "
                  f"{best}", flush=True)


def _flat(d: dict, prefix: str = ""):
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            yield from _flat(v, key + ".")
        elif isinstance(v, (int, float, str, bool)):
            yield key, v
        else:
            yield key, str(v)
