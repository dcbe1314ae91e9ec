"""Measure what combining the stop flags across processes costs (train.StopRequest).

Usage (one line per process; spawn.run_distributed does it):
    python -m tests.workers.stop_check_cost DATA_DIR STEPS

Prints ``RESULT {json}`` on process 0: the mean latency of one
``multihost_utils.process_allgather`` of a scalar, and the mean time of a train step of
the tiny config (jit) with the flags combined after every step and never. The numbers
chose ``train.STOP_CHECK_EVERY``; they are a CPU/gloo measurement, and the cost that
matters on an accelerator — the host waiting for the step in flight before it can
dispatch the next — is bounded by checking only every few steps.
"""

from __future__ import annotations

import json
import sys
import time


def main(data_dir: str, steps: int) -> None:
    import jax
    import numpy as np
    from jax.experimental import multihost_utils

    from satseg_jax import input_pipeline, parallel
    from satseg_jax.steps import Runner, build_model, create_optimizer, create_train_state
    from tests.workers.tiny_config import tiny_config

    config = tiny_config(data_dir)
    parallel.maybe_initialize_distributed(config)
    meta = input_pipeline.load_meta(data_dir)
    tx, _ = create_optimizer(config)
    runner = Runner(config, lambda axis: build_model(config, meta.num_classes, axis),
                    meta.num_classes, tx=tx, loss_config=config.loss)
    state = runner.place_state(create_train_state(
        0, build_model(config, meta.num_classes), tx,
        (1, meta.patch_size, meta.patch_size, meta.num_bands)))
    data = input_pipeline.train_iterator(
        meta, config.data, global_batch=int(config.train.batch_size), seed=0,
        process_index=jax.process_index(), process_count=jax.process_count())
    batches = [runner.shard(next(data)) for _ in range(steps)]

    def gather() -> int:
        return int(np.max(multihost_utils.process_allgather(np.int32(0))))

    gather()  # compile
    t0 = time.perf_counter()
    for _ in range(100):
        gather()
    gather_s = (time.perf_counter() - t0) / 100

    def run(check: bool) -> float:
        nonlocal state
        jax.block_until_ready(state)
        t0 = time.perf_counter()
        for b in batches:
            state, _ = runner.train_step(state, b)
            if check:
                gather()
        jax.block_until_ready(state)
        return (time.perf_counter() - t0) / len(batches)

    run(False)  # compile
    never, every = run(False), run(True)
    if jax.process_index() == 0:
        print("RESULT " + json.dumps({
            "processes": jax.process_count(), "devices": jax.device_count(),
            "allgather_ms": 1e3 * gather_s, "step_ms_no_check": 1e3 * never,
            "step_ms_check_every_step": 1e3 * every}), flush=True)


if __name__ == "__main__":
    from satseg_jax import cpu

    cpu.apply_xla_defaults()  # XLA_FLAGS defaults as `satseg train` has them, before JAX starts
    main(sys.argv[1], int(sys.argv[2]))
