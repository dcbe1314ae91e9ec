"""A/B of the production JAX train step against one earlier layer formulation, both
built in one process and timed alternately (ABBA order), so machine drift cancels.

    python benchmarks/step_ab.py --patch flaxpool [--rounds 12] [speed.py model options]

Why: on a shared VM, sequential runs drift by ±20 % within minutes; two separate
``speed.py`` workers cannot resolve a change of a few per cent. Prints the median
s/step of each, the paired speed-up (min–max) and whether the first losses agree.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import speed  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    from satseg_jax import cpu

    # The XLA_FLAGS defaults the production step compiles with (`satseg train` applies
    # them; importing satseg_jax does not), before this process starts JAX.
    cpu.apply_xla_defaults()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--patch", required=True, choices=sorted(speed.MODEL_PATCHES),
                   help="earlier formulation to compare the current model against")
    p.add_argument("--rounds", type=int, default=12)
    ours, rest = p.parse_known_args(argv)
    args = speed.parse_args(["--no-torch", *rest])
    args.worker = "tuned"
    new = speed.jax_side(args)
    args.worker = "tuned+" + ours.patch
    old = speed.jax_side(args)  # traced (and compiled) with the patch in place
    for side in (new, old):
        for _ in range(args.warmup):
            side["train"]()
    times: dict[str, list[float]] = {"new": [], "old": []}
    for r in range(ours.rounds):
        order = (("new", new), ("old", old)) if r % 2 == 0 else (("old", old), ("new", new))
        for name, side in order:
            t0 = time.perf_counter()
            for _ in range(args.steps_per_rep):
                side["train"]()
            times[name].append((time.perf_counter() - t0) / args.steps_per_rep)
    t_new, t_old = np.array(times["new"]), np.array(times["old"])
    ratio = t_old / t_new
    print(f"current model   : {np.median(t_new):.3f} s/step ({t_new.min():.3f}-{t_new.max():.3f})")
    print(f"+{ours.patch:<14}: {np.median(t_old):.3f} s/step ({t_old.min():.3f}-{t_old.max():.3f})")
    print(f"speed-up of the current model, paired: {np.median(ratio):.3f}x "
          f"({ratio.min():.3f}-{ratio.max():.3f}), {ours.rounds} rounds")
    n = min(len(new["losses"]), len(old["losses"]), 4)
    same = np.allclose(new["losses"][:n], old["losses"][:n], rtol=1e-5)
    print(f"first {n} losses agree (rtol 1e-5): {same}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
