"""Train a few steps in one parallel mode on this process's devices; print what to compare.

Usage: XLA_FLAGS=--xla_force_host_platform_device_count=N \\
       python -m tests.workers.parallel_worker DATA_DIR MODE[,MODE...] STEPS BATCH

Prints one ``RESULT {json}`` line per mode: the loss of every step, the final
BatchNorm statistics and parameters (every value, flattened in tree order), and the
confusion matrix of the whole validation split (padded last batch included) evaluated
through ``evaluate.confusion_over_split``, the loop ``satseg evaluate`` uses; and how
many XLA compilations happened after the first step (a state placed with other
shardings than the step returns makes step 2 compile again).
"""

from __future__ import annotations

import json
import sys


def main(data_dir: str, mode: str, steps: int, batch: int) -> None:
    import jax
    import numpy as np

    from satseg_jax import evaluate, input_pipeline
    from satseg_jax.steps import Runner, build_model, create_optimizer, create_train_state
    from tests.workers.tiny_config import tiny_config

    # SGD (lr 0.01, momentum 0.9), not the config's AdamW at its learning rate: this
    # compares the data-parallel arithmetic (gradient all-reduce, synchronised
    # BatchNorm). 1 and 8 devices reduce in different orders, so they differ in the last
    # bits at every step, and training amplifies that: with AdamW (every update divided
    # by the root of the second moment, so weights with ~0 gradient move by ~a learning
    # rate in the direction of that noise) or a large SGD step the runs drift apart by
    # ~1e-4 within 10 steps without any bug (measured). A real bug — a missing all-reduce,
    # per-device BatchNorm statistics of 2 images instead of 16 — moves values by orders
    # of magnitude more than rtol 1e-4. The two-process runs keep the config's AdamW.
    # XLA's convolutions and BatchNorm in every run: a one-device CPU run would otherwise
    # take the oneDNN kernels (cpu_conv='auto'), whose different but equally valid
    # arithmetic (two-pass variance) adds its own last-bit drift; their equality with
    # XLA's is pinned in tests/test_cpu_onednn_conv.py.
    config = tiny_config(data_dir, parallelism=mode, **{
        "train.batch_size": batch, "optimizer.name": "sgd", "optimizer.momentum": 0.9,
        "optimizer.learning_rate": 0.01, "train.cpu_conv": "xla"})
    meta = input_pipeline.load_meta(data_dir)
    tx, _ = create_optimizer(config)
    runner = Runner(config, lambda axis: build_model(config, meta.num_classes, axis),
                    meta.num_classes, tx=tx, loss_config=config.loss)
    state = create_train_state(0, build_model(config, meta.num_classes),
                               tx, (1, meta.patch_size, meta.patch_size, meta.num_bands))
    state = runner.place_state(state)
    data = input_pipeline.train_iterator(meta, config.data, global_batch=batch, seed=0)
    losses = []
    compiles_after_first_step = 0

    def count(event: str, _secs: float, **_kw) -> None:
        nonlocal compiles_after_first_step
        if event == "/jax/core/compile/backend_compile_duration" and losses:
            compiles_after_first_step += 1

    jax.monitoring.register_event_duration_secs_listener(count)
    for _ in range(steps):
        state, m = runner.train_step(state, runner.shard(next(data)))
        losses.append(float(runner.unreplicate_metric(m)["loss"]))
    jax.monitoring.unregister_event_duration_listener(count)
    host = jax.device_get(runner.host_state(state))

    def flat(tree) -> list[float]:
        return np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)]).tolist()

    cm = evaluate.confusion_over_split(runner, state, meta, "validation",
                                       int(config.eval.batch_size), config.task)
    print("RESULT " + json.dumps({"mode": mode, "devices": jax.device_count(), "losses": losses,
                                  "batch_stats": flat(host.batch_stats),
                                  "params": flat(host.params),
                                  "compiles_after_first_step": compiles_after_first_step,
                                  "confusion": np.asarray(cm).tolist()}))


if __name__ == "__main__":
    from satseg_jax import cpu

    cpu.apply_xla_defaults()  # XLA_FLAGS defaults as `satseg train` has them, before JAX starts
    for mode in sys.argv[2].split(","):
        main(sys.argv[1], mode, int(sys.argv[3]), int(sys.argv[4]))
