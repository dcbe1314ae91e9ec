"""Restore a workdir's latest checkpoint on this process's devices, the way ``satseg
evaluate`` does (``runs.load_run``), and report what was restored.

Usage: XLA_FLAGS=--xla_force_host_platform_device_count=N \\
       python -m tests.workers.restore_worker WORKDIR MODE[,MODE...] OUT_DIR

For each parallel mode: writes every restored value (the checkpointed state dict,
flattened by key path) to ``OUT_DIR/MODE_N.npz`` and prints one ``RESULT {json}`` line
with the step, how the state sits on the devices, and the confusion matrix of the
validation split computed with the restored state.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def flatten_state_dict(tree) -> dict:
    """``{key path: numpy array}`` of a (state-dict) pytree, for exact comparisons."""
    import jax
    import numpy as np

    return {jax.tree_util.keystr(path): np.asarray(x)
            for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def main(workdir: str, mode: str, out_dir: str) -> None:
    import jax
    import numpy as np
    from flax import serialization

    from satseg_jax import input_pipeline, runs, steps

    # Restore under another parallel mode than the run trained with.
    run = runs.load_run(workdir, "latest", parallelism=mode)
    config, runner, state, step = run.config, run.runner, run.state, run.step
    meta = input_pipeline.load_meta(run.card.provenance["data_dir"])
    leaves = jax.tree.leaves(state)
    n = jax.device_count()
    if mode == "jit":
        placement = {
            "all_fully_replicated": all(x.sharding.is_fully_replicated for x in leaves),
            "devices_per_leaf": sorted({len(x.sharding.device_set) for x in leaves}),
        }
    else:  # pmap: one stacked copy per local device, all equal
        placement = {
            "replicas": sorted({int(x.shape[0]) for x in leaves}),
            "replicas_identical": all(bool(np.all(np.asarray(x) == np.asarray(x)[:1]))
                                      for x in leaves),
        }
    host = jax.device_get(runner.host_state(state))
    np.savez(Path(out_dir) / f"{mode}_{n}.npz",
             **flatten_state_dict(serialization.to_state_dict(host)))
    cm = steps.confusion_over_split(runner, state, meta, "validation",
                                    int(config.eval.batch_size), config.task)
    print("RESULT " + json.dumps({"mode": mode, "devices": n, "step": int(step),
                                  "placement": placement, "confusion": cm.tolist()}))


if __name__ == "__main__":
    from satseg_jax import cpu

    cpu.apply_xla_defaults()  # XLA_FLAGS defaults as `satseg train` has them, before JAX starts
    for m in sys.argv[2].split(","):
        main(sys.argv[1], m, sys.argv[3])
