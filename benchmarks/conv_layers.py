"""GFLOP/s of the U-Net's 3×3 convolutions, per layer shape, under several XLA CPU flag
settings, next to PyTorch (channels_last) timed in the same process.

    python benchmarks/conv_layers.py [--batch 8] [--reps 7] [--quick]
        [--variant NAME=XLA_FLAGS ...] [--no-torch] [--out results/conv_layers_<machine>.json]

Why: which library runs a convolution on XLA's CPU backend (YNNPACK or Eigen) is decided
by ``XLA_FLAGS`` once per process, and which one is faster depends on the CPU (AVX2 vs
AVX-512/AMX). :mod:`satseg_jax.cpu.xla_flags` picks a default per CPU; this script is the
evidence for that choice. Each flag setting runs in its own worker process (XLA reads
its flags once); inside a worker, JAX and PyTorch alternate rep after rep, so the
JAX/PyTorch ratio of one worker is robust to a noisy neighbour. "grad" is d/dx and d/dw
together (counted as 2x the forward FLOPs); "fwd" the forward alone.

Variants: ``ynn`` = jaxlib's defaults (YNNPACK convolutions), ``eigen`` =
``--xla_cpu_experimental_ynn_fusion_type=-individual_convolution``; ``--variant`` adds
more. ``SATSEG_XLA_DEFAULTS=0`` is set in every worker so the project's own defaults do
not mix in.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))
import speed  # noqa: E402  (stdlib-only at import: timing helpers, machine id)

TAG = "CONV_RESULT "
# (spatial side, input channels, output channels): the padded U-Net base 32, depth 4, 128 px.
SHAPES = [(128, 32, 32), (64, 64, 64), (32, 128, 128), (16, 256, 256), (8, 512, 512)]
QUICK_SHAPES = [(16, 8, 8), (8, 16, 16)]  # --quick: a smoke run (tests), not a measurement
VARIANTS = {"ynn": "", "eigen": "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"}


def time_shape(batch: int, side: int, cin: int, cout: int, reps: int, use_torch: bool
               ) -> dict:
    """Median GFLOP/s of one conv shape: JAX (under this process's XLA_FLAGS) and torch,
    alternated rep after rep (ABBA, ``speed.interleaved``) after two warm-up rounds."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, side, side, cin), dtype=np.float32)
    w = rng.standard_normal((3, 3, cin, cout), dtype=np.float32) * 0.05
    flops = 2.0 * batch * side * side * 9 * cin * cout

    def conv(x, w):
        return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))

    fwd = jax.jit(conv)
    grad = jax.jit(jax.grad(lambda x, w: jnp.sum(conv(x, w) ** 2) * 0.5, argnums=(0, 1)))
    jx, jw = jnp.asarray(x), jnp.asarray(w)
    fns = {"jax_fwd": lambda: fwd(jx, jw).block_until_ready(),
           "jax_grad": lambda: jax.block_until_ready(grad(jx, jw))}
    if use_torch:
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
        tx = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(
            memory_format=torch.channels_last).requires_grad_(True)
        tw = torch.from_numpy(w).permute(3, 2, 0, 1).contiguous(
            memory_format=torch.channels_last).requires_grad_(True)

        def t_fwd() -> None:
            with torch.no_grad():
                torch.nn.functional.conv2d(tx, tw, padding=1)

        def t_grad() -> None:
            y = torch.nn.functional.conv2d(tx, tw, padding=1)
            gx, gw = torch.autograd.grad(y, (tx, tw), grad_outputs=y.detach())
            del gx, gw

        fns.update(torch_fwd=t_fwd, torch_grad=t_grad)
    times = speed.interleaved(fns, reps, warmup=2)  # warm-up rounds compile
    row: dict = {"shape": [batch, side, side, cin, cout]}
    for k, ts in times.items():
        row[k] = speed.stats(ts, flops * (2.0 if k.endswith("grad") else 1.0))["median"] / 1e9
    return row


def worker(batch: int, reps: int, use_torch: bool, shapes: list[tuple[int, int, int]]
           ) -> dict:
    """Time every shape in this process: JAX under the inherited XLA_FLAGS, and torch."""
    rows = [time_shape(batch, side, cin, cout, reps, use_torch) for side, cin, cout in shapes]
    return {"xla_flags": os.environ.get("XLA_FLAGS", ""), "rows": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--variant", action="append", default=[], metavar="NAME=XLA_FLAGS")
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--quick", action="store_true", help="tiny shapes, a smoke run")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    shapes = QUICK_SHAPES if a.quick else SHAPES
    use_torch = not a.no_torch
    if use_torch:
        import importlib.util

        use_torch = importlib.util.find_spec("torch") is not None
    if a.worker:
        print(TAG + json.dumps(worker(a.batch, a.reps, use_torch, shapes)), flush=True)
        return 0
    variants = dict(VARIANTS)
    for v in a.variant:
        name, _, flags = v.partition("=")
        variants[name] = flags
    base_flags = os.environ.get("XLA_FLAGS", "")
    results = {}
    for name, flags in variants.items():
        env = dict(os.environ, SATSEG_XLA_DEFAULTS="0", JAX_PLATFORMS="cpu",
                   XLA_FLAGS=f"{base_flags} {flags}".strip())  # CPU flags: a CPU benchmark
        cmd = [sys.executable, __file__, "--worker", "--batch", str(a.batch),
               "--reps", str(a.reps)] + ([] if use_torch else ["--no-torch"]) + (
                   ["--quick"] if a.quick else [])
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith(TAG)]
        if proc.returncode != 0 or not line:
            print(f"[{name}] failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
            return 1
        results[name] = json.loads(line[0][len(TAG):])
    cpu = speed.cpu_model()
    machine = speed.machine_slug("cpu", "cpu", cpu, os.cpu_count() or 1, speed.cpu_isa())
    print(f"{cpu}, {os.cpu_count()} cores; 3x3 SAME conv, batch {a.batch}, f32, GFLOP/s "
          "(fwd / fwd-grad d/dx+d/dw)")
    head = f"{'shape HxW Cin>Cout':<22}" + "".join(f"{n:>16}" for n in results)
    if use_torch:
        head += f"{'torch':>16}"
    print(head)
    for i, (side, cin, cout) in enumerate(shapes):
        line = f"{side}x{side} {cin}>{cout}".ljust(22)
        for res in results.values():
            r = res["rows"][i]
            line += f"{r['jax_fwd']:>8.0f}/{r['jax_grad']:<7.0f}"
        if use_torch:
            r = next(iter(results.values()))["rows"][i]
            line += f"{r['torch_fwd']:>8.0f}/{r['torch_grad']:<7.0f}"
        print(line)
    if a.quick and a.out is None:  # a smoke run never replaces a measurement
        return 0
    out = a.out or BENCH / "results" / f"conv_layers_{machine}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "conv_layers", "cpu": cpu,
                               "cpu_isa": speed.cpu_isa(),
                               "cores": os.cpu_count(), "batch": a.batch, "reps": a.reps,
                               "shapes": [list(sh) for sh in shapes],
                               "variants": results}, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
