"""What verified checkpoints cost: ``checkpoints.save`` timed with and without the
per-array CRC-32 digests, for the quickstart U-Net and the 31 M-parameter original U-Net.

    PYTHONPATH=. python benchmarks/checkpoint_digest.py [--reps 5]
        [--out benchmarks/results/checkpoint_digest_<machine>.json]

Why: ``save`` computes a digest of every array of the state (params, batch stats,
optimizer moments) on the host before Orbax writes it, and ``restore`` recomputes it.
The state is built without any data (the model's init and the optimizer's zeros, with the
params perturbed so the bytes are not all equal), saved ``--reps`` times each way into a
fresh checkpoint folder (alternating, so a busy neighbour hits both), and the median
save times, their ratio and the digest time alone are written as JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
MODELS = {  # name: (config file, bands, input side)
    "unet_sample (quickstart)": ("unet_sample.py", 4, 128),
    "unet_original (31 M)": ("unet_original.py", 4, 252),
}


def build_state(config_file: str, bands: int, side: int, num_classes: int = 6):
    """A TrainState of the config's model and optimizer, made without data."""
    import jax

    from satseg_jax import steps
    from satseg_jax.config_files import load_config_file

    config = load_config_file(BENCH.parent / "configs" / config_file)
    tx, _ = steps.create_optimizer(config)
    state = steps.create_train_state(0, steps.build_model(config, num_classes), tx,
                                     (1, side, side, bands))
    noisy = jax.tree.map(lambda x: x + 1e-3 * jax.random.normal(jax.random.key(1), x.shape,
                                                                x.dtype), state.params)
    return state.replace(params=noisy)


def time_saves(state, reps: int) -> dict:
    """Median seconds of ``checkpoints.save`` with and without digests."""
    import jax

    from satseg_jax import checkpoints

    times: dict[str, list[float]] = {"verified": [], "plain": []}
    with tempfile.TemporaryDirectory() as tmp:
        manager = checkpoints.make_manager(tmp, keep=2)
        step = 0
        for _ in range(reps + 1):  # the first of each is a warm-up
            for kind in ("plain", "verified"):
                step += 1
                s = state.replace(step=jax.numpy.asarray(step, state.step.dtype))
                t = time.perf_counter()
                checkpoints.save(manager, s, {"step": step}, verified=kind == "verified")
                times[kind].append(time.perf_counter() - t)
        manager.close()
    t = time.perf_counter()
    for _ in range(reps):
        checkpoints.digests(_state_dict(state))
    digest_s = (time.perf_counter() - t) / reps
    plain = statistics.median(times["plain"][1:])
    verified = statistics.median(times["verified"][1:])
    return {"save_plain_s": round(plain, 4), "save_verified_s": round(verified, 4),
            "ratio": round(verified / plain, 3), "digest_only_s": round(digest_s, 4),
            "all_plain_s": [round(x, 4) for x in times["plain"]],
            "all_verified_s": [round(x, 4) for x in times["verified"]]}


def _state_dict(state):
    from flax import serialization

    return serialization.to_state_dict(state)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    import jax
    import numpy as np

    results = {"machine": platform.processor() or platform.machine(),
               "devices": str(jax.devices()), "reps": args.reps, "models": {}}
    for name, (config_file, bands, side) in MODELS.items():
        state = build_state(config_file, bands, side)
        n_params = int(sum(np.size(x) for x in jax.tree.leaves(state.params)))
        n_bytes = int(sum(np.asarray(x).nbytes for x in jax.tree.leaves(_state_dict(state))))
        r = {"params": n_params, "state_bytes": n_bytes, **time_saves(state, args.reps)}
        results["models"][name] = r
        print(f"{name}: {n_params:,} params, {n_bytes / 1e6:.1f} MB state; save "
              f"{r['save_plain_s']:.3f} s plain, {r['save_verified_s']:.3f} s verified "
              f"(x{r['ratio']}); digests alone {r['digest_only_s']:.3f} s", flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
