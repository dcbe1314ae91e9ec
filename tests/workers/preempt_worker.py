"""Train the tiny config in a subprocess, optionally SIGKILLing itself at a chosen point.

Usage: python -m tests.workers.preempt_worker WORKDIR DATA_DIR [--kill-at STEP:PHASE]
       [--config.KEY=VALUE ...]

The run is the normal ``train_and_evaluate`` (resuming WORKDIR/checkpoints when there is
one); a SIGTERM/SIGINT ends it with ``train.Preempted``'s status. ``--kill-at`` sends
SIGKILL to the process itself — no handler, no cleanup, as when a node disappears:

- ``STEP:step``: right after the train step of STEP has finished on the device, before
  that step's evaluation and checkpoint: the work since the last checkpoint is lost;
- ``STEP:save``: inside Orbax's finalisation of checkpoint STEP, when every file is
  written to ``STEP.orbax-checkpoint-tmp`` but the rename to ``STEP`` has not happened:
  the moment a half-written checkpoint is largest (STEP must be a checkpoint step).

``--term-at STEP`` instead sends SIGTERM to itself right after the train step of STEP:
with several processes, a preemption notice reaching one host only.

The signal is sent by the worker (not by the test from outside) so that it lands at the
same point on every run, whatever the machine's load. ``config.train.stop_check_every``
(not in the config files; ``train.STOP_CHECK_EVERY`` by default) can be overridden.
"""

from __future__ import annotations

import os
import signal
import sys


def _die(where: str) -> None:
    # sys.__stderr__: during a checkpoint save, sys.stderr is the run's train.log.
    print(f"preempt_worker: SIGKILL {where}", file=sys.__stderr__, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


def _kill_after_step(step: int, sig: int = signal.SIGKILL) -> None:
    import jax
    import numpy as np

    from satseg_jax import steps

    class KillingRunner(steps.Runner):
        """The normal Runner; its train step signals the process once ``step`` is done."""

        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            inner = getattr(self, "train_step", None)
            if inner is None:
                return

            def train_step(state, batch):
                state, m = inner(state, batch)
                done = int(np.ravel(jax.device_get(state.step))[0])  # waits for the step
                if done == step and sig == signal.SIGKILL:
                    _die(f"after train step {step}, before its checkpoint")
                elif done == step:
                    print(f"preempt_worker: {signal.Signals(sig).name} after train step "
                          f"{step}", file=sys.stderr, flush=True)
                    os.kill(os.getpid(), sig)
                return state, m

            self.train_step = train_step

    steps.Runner = KillingRunner


def _kill_during_save(step: int) -> None:
    from orbax.checkpoint._src.path import atomicity

    cls = atomicity.AtomicRenameTemporaryPath
    original = cls.finalize

    async def finalize(self) -> None:
        if self.get_final().name == str(step):
            _die(f"while saving checkpoint {step}: written to {self.get().name}, not renamed")
        await original(self)

    cls.finalize = finalize


def main(argv: list[str]) -> None:
    workdir, data_dir, *rest = argv
    if rest[:1] == ["--kill-at"]:
        step, phase = rest[1].split(":")
        {"step": _kill_after_step, "save": _kill_during_save}[phase](int(step))
        rest = rest[2:]
    elif rest[:1] == ["--term-at"]:
        _kill_after_step(int(rest[1]), signal.SIGTERM)
        rest = rest[2:]
    from satseg_jax.train import STOP_CHECK_EVERY, train_and_evaluate
    from tests.workers.tiny_config import apply_overrides, tiny_config

    config = tiny_config(data_dir)
    config.train.stop_check_every = STOP_CHECK_EVERY
    train_and_evaluate(apply_overrides(config, rest), workdir)


if __name__ == "__main__":
    from satseg_jax import cpu

    cpu.apply_xla_defaults()  # XLA_FLAGS defaults as `satseg train` has them, before JAX starts
    main(sys.argv[1:])
