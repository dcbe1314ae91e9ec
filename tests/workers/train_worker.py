"""Run training in a subprocess for tests: optional SIGKILL right after a checkpoint.

Usage: python -m tests.workers.train_worker WORKDIR DATA_DIR [--kill-after-save STEP]
       [--config.KEY=VALUE ...]

The kill is delivered by the process to itself right after Orbax finished writing the
checkpoint of STEP, which is the moment a real preemption is most likely to hurt.
"""

from __future__ import annotations

import os
import signal
import sys


def main(argv: list[str]) -> None:
    workdir, data_dir, *rest = argv
    kill_after = None
    if rest and rest[0] == "--kill-after-save":
        kill_after = int(rest[1])
        rest = rest[2:]
    from satseg_jax import checkpoints
    from tests.workers.tiny_config import apply_overrides, tiny_config

    if kill_after is not None:
        original = checkpoints.save

        def save_then_die(manager, state, meta, **kwargs):
            out = original(manager, state, meta, **kwargs)
            if meta["step"] >= kill_after:
                os.kill(os.getpid(), signal.SIGKILL)
            return out

        checkpoints.save = save_then_die
    config = apply_overrides(tiny_config(data_dir), rest)
    from satseg_jax.train import train_and_evaluate

    train_and_evaluate(config, workdir)


if __name__ == "__main__":
    from satseg_jax import cpu

    cpu.apply_xla_defaults()  # XLA_FLAGS defaults as `satseg train` has them, before JAX starts
    main(sys.argv[1:])
