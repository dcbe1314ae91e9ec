"""Run a few training steps in one parallel mode and print the losses as JSON.

Usage: XLA_FLAGS=--xla_force_host_platform_device_count=N \
       python -m tests.workers.parallel_worker DATA_DIR MODE[,MODE...] STEPS

Prints one ``RESULT {json}`` line per mode.
"""

from __future__ import annotations

import json
import sys


def main(data_dir: str, mode: str, steps: int) -> None:
    import jax
    import numpy as np

    from satseg_jax import input_pipeline
    from satseg_jax.train import Runner, build_model, create_optimizer, create_train_state
    from tests.workers.tiny_config import tiny_config

    config = tiny_config(data_dir, parallelism=mode, **{"train.batch_size": 8})
    meta = input_pipeline.load_meta(data_dir)
    tx, _ = create_optimizer(config)
    runner = Runner(config, lambda axis: build_model(config, meta.num_classes, axis),
                    meta.num_classes, tx=tx, loss_config=config.loss)
    state = create_train_state(0, build_model(config, meta.num_classes),
                               tx, (1, meta.patch_size, meta.patch_size, meta.num_bands))
    state = runner.place_state(state)
    data = input_pipeline.train_iterator(meta, config.data, global_batch=8, seed=0)
    losses = []
    for _ in range(steps):
        state, m = runner.train_step(state, runner.shard(next(data)))
        losses.append(float(runner.unreplicate_metric(m)["loss"]))
    host = jax.device_get(runner.host_state(state))
    bs = [float(np.sum(x)) for x in jax.tree.leaves(host.batch_stats)]
    params = [float(np.sum(np.abs(x))) for x in jax.tree.leaves(host.params)]
    cm = runner.unreplicate_metric(runner.eval_step(state, runner.shard(
        next(input_pipeline.eval_batches(meta, "train", global_batch=8)))))
    print("RESULT " + json.dumps({"devices": jax.device_count(), "losses": losses,
                                  "batch_stats": bs, "params": params,
                                  "confusion": np.asarray(cm).tolist()}))


if __name__ == "__main__":
    for mode in sys.argv[2].split(","):
        main(sys.argv[1], mode, int(sys.argv[3]))
