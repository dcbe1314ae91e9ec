"""Whole-scene ``satseg predict``: peak memory, time, and overhead over the raw model.

Why: predict promises memory bounded by one strip of tiles (not the scene) and that the
sliding-window machinery (windowed reads, normalisation, blending, writing, COG) costs
little next to the model itself. This makes a large synthetic scene on the fly by tiling
a real scene (default: the quickstart's ``runs/quickstart/scene.tif``, so band names,
nodata borders and radiometry match the trained run), then in fresh processes:

1. ``predict``: runs :func:`satseg_jax.predict.predict_scene` on it and reports wall time,
   the tile loop's time, the COG rewrite's time and the process's peak RSS;
2. ``raw``: the same model (same checkpoint, batch and tile size) on random batches
   already in memory: median seconds per batch over ``--reps`` repetitions after
   warm-up, scaled to the number of tiles predict ran; timed before and after (1) and
   averaged, so a load change on a shared machine does not land on one side only.

Overhead = tile-loop seconds / raw model seconds − 1 (the goal is ≤ 10 %); the end-to-end
figure (imports, restore, compile, COG) is reported beside it.

    python benchmarks/predict_scene.py [--size 16384] [--workdir runs/quickstart/train]

Writes benchmarks/results/predict_scene_<size>_<machine>.json (``--result`` to change).
Fails (exit 1) when peak RSS reaches 2 GiB. Needs a trained run: ``bash
launch/quickstart.sh`` makes one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from a checkout, installed or not
LIMIT_MIB = 2048


def machine() -> str:
    """The machine id speed.py names its results by (``cpu-2core-amd-epyc-avx2``, ``gpu-h100``):
    JAX's first device, as the children predict on it. Call it after the measured
    children have run (it starts JAX in this process)."""
    bench = str(Path(__file__).resolve().parent)
    if bench not in sys.path:
        sys.path.insert(0, bench)
    import jax
    import speed

    dev = jax.devices()[0]
    return speed.machine_slug(dev.platform, dev.device_kind, speed.cpu_model(),
                              os.cpu_count() or 1, speed.cpu_isa())


def _peak_rss_mib() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def make_scene(source: Path, out: Path, size: int) -> None:
    """Tile ``source`` (read once; it is small) into a ``size``² tiled, compressed GeoTIFF
    with the same CRS, pixel size, bands and nodata, written one block-row at a time."""
    import numpy as np
    import rasterio
    from rasterio.windows import Window

    with rasterio.open(source) as src:
        data = src.read()
        profile = src.profile
        desc = src.descriptions
    c, h, w = data.shape
    profile.update(height=size, width=size, tiled=True, blockxsize=256, blockysize=256,
                   compress="deflate", BIGTIFF="IF_SAFER")
    tmp = out.with_name(out.name + ".tmp")
    with rasterio.open(tmp, "w", **profile) as dst:
        for i, d in enumerate(desc, 1):
            if d:
                dst.set_band_description(i, d)
        reps = -(-size // w)
        for r0 in range(0, size, h):
            rows = min(h, size - r0)
            strip = np.tile(data[:, :rows], (1, 1, reps))[:, :, :size]
            dst.write(strip, window=Window(0, r0, size, rows))
    tmp.replace(out)


def child_predict(args) -> dict:
    from satseg_jax.predict import predict_scene

    t0 = time.perf_counter()
    summary = predict_scene(args.workdir, args.scene, args.out, checkpoint="latest",
                            tile=args.tile, overlap=args.overlap, blend=args.blend,
                            batch=args.batch, progress=False)
    return {"seconds_total": round(time.perf_counter() - t0, 2),
            "seconds_loop": round(summary["seconds_loop"], 2),
            "seconds_cog": round(summary["seconds_cog"], 2),
            "tiles": summary["tiles"], "batch": summary["batch"],
            "peak_rss_mib": round(_peak_rss_mib(), 1)}


def child_raw(args) -> dict:
    """Seconds per batch of the bare model on in-memory batches (no I/O, no blending)."""
    import jax
    import numpy as np

    from satseg_jax.predict import batch_probabilities, model_context
    from satseg_jax.runs import load_run

    run = load_run(args.workdir, "latest")
    runner, state = run.runner, run.state
    in_tile, _ = model_context(run.config, args.tile)
    n_dev = jax.device_count()
    batch = max(n_dev, args.batch - args.batch % n_dev)
    x = np.random.default_rng(0).normal(size=(batch, in_tile, in_tile, run.card.num_bands))
    x = x.astype(np.float32)
    probs = batch_probabilities(runner, args.tile)
    for _ in range(2):  # compile + warm-up
        np.asarray(probs(state, x))
    per_batch = []
    for _ in range(args.reps):
        t0 = time.perf_counter()
        for _ in range(args.batches):
            np.asarray(probs(state, x))
        per_batch.append((time.perf_counter() - t0) / args.batches)
    per_batch.sort()
    return {"seconds_per_batch_median": per_batch[len(per_batch) // 2],
            "seconds_per_batch_min": per_batch[0], "seconds_per_batch_max": per_batch[-1],
            "batch": batch, "reps": args.reps, "batches_per_rep": args.batches}


def _child(mode: str, args, work: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TF_CPP_MIN_LOG_LEVEL="2")
    cmd = [sys.executable, __file__, "--child", mode, "--workdir", str(args.workdir),
           "--tile", str(args.tile), "--overlap", str(args.overlap), "--batch", str(args.batch),
           "--blend", args.blend, "--reps", str(args.reps), "--batches", str(args.batches),
           "--scene", str(work / "scene.tif"), "--out", str(work / "map.tif")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    from satseg_jax import cpu

    cpu.setup()  # XLA defaults and malloc as `satseg predict` has them, before JAX starts
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=16384, help="scene side in pixels")
    p.add_argument("--source", type=Path, default=REPO / "runs/quickstart/scene.tif",
                   help="scene to tile into the large one (bands must match the run)")
    p.add_argument("--workdir", type=Path, default=REPO / "runs/quickstart/train",
                   help="trained run (satseg train WORKDIR)")
    p.add_argument("--tile", type=int, default=256)
    p.add_argument("--overlap", type=int, default=64)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--blend", default="gaussian")
    p.add_argument("--reps", type=int, default=5, help="timed repetitions of the raw model")
    p.add_argument("--batches", type=int, default=10, help="batches per raw repetition")
    p.add_argument("--scratch", type=Path, default=Path("/tmp/satseg_bench_predict"),
                   help="scratch folder for the scene and map (removed at the end)")
    p.add_argument("--keep", action="store_true", help="keep the scratch folder")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--scene", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, default=None,
                   help="JSON to write (default: results/predict_scene_<size>_<machine>.json)")
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        fn = {"predict": child_predict, "raw": child_raw}[args.child]
        print(json.dumps(fn(args)))
        return 0
    for need, fix in ((args.source, "bash launch/quickstart.sh"),
                      (args.workdir / "checkpoints", "bash launch/quickstart.sh")):
        if not need.exists():
            raise SystemExit(f"{need} not found; make it first with: {fix}")

    args.scratch.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        make_scene(args.source, args.scratch / "scene.tif", args.size)
        made = time.perf_counter() - t0
        # The raw model is timed before and after predict, and the two averaged: on a
        # shared machine the load drifts, and one side measured alone would absorb it.
        raw_before = _child("raw", args, args.scratch)
        pred = _child("predict", args, args.scratch)
        raw_after = _child("raw", args, args.scratch)
    finally:
        if not args.keep:
            shutil.rmtree(args.scratch, ignore_errors=True)

    raw = {**raw_before, "seconds_per_batch_median": (
        raw_before["seconds_per_batch_median"] + raw_after["seconds_per_batch_median"]) / 2,
        "seconds_per_batch_min": min(raw_before["seconds_per_batch_min"],
                                     raw_after["seconds_per_batch_min"]),
        "seconds_per_batch_max": max(raw_before["seconds_per_batch_max"],
                                     raw_after["seconds_per_batch_max"]),
        "median_before_predict": raw_before["seconds_per_batch_median"],
        "median_after_predict": raw_after["seconds_per_batch_median"]}
    batches = -(-pred["tiles"] // pred["batch"])
    raw_s = raw["seconds_per_batch_median"] * batches
    overhead = pred["seconds_loop"] / raw_s - 1
    ok = pred["peak_rss_mib"] < LIMIT_MIB
    result = {
        "benchmark": "predict_scene",
        "scene": {"size": args.size, "bands": 4, "dtype": "uint16", "source": str(args.source),
                  "seconds_to_make": round(made, 1)},
        "run": str(args.workdir), "tile": args.tile, "overlap": args.overlap,
        "blend": args.blend, "batch": pred["batch"],
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpus": os.cpu_count()},
        "predict": pred, "raw_model": raw,
        "raw_model_seconds_for_same_tiles": round(raw_s, 2),
        "overhead_loop_vs_raw": round(overhead, 4),
        "overhead_end_to_end_vs_raw": round(pred["seconds_total"] / raw_s - 1, 4),
        "limit_peak_rss_mib": LIMIT_MIB, "within_limit": ok,
    }
    out = args.result or (REPO / "benchmarks" / "results"
                          / f"predict_scene_{args.size}_{machine()}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"scene {args.size}²×4 uint16, tile {args.tile}, overlap {args.overlap}, "
          f"batch {pred['batch']}, {pred['tiles']} tiles, {os.cpu_count()} CPUs")
    print(f"predict: {pred['seconds_total']:.1f} s end to end (tile loop "
          f"{pred['seconds_loop']:.1f} s, COG {pred['seconds_cog']:.1f} s), peak RSS "
          f"{pred['peak_rss_mib']:.0f} MiB")
    print(f"raw model on the same tiles: {raw_s:.1f} s "
          f"({raw['seconds_per_batch_median'] * 1e3:.1f} ms/batch, mean of the medians before "
          f"and after predict: {raw['median_before_predict'] * 1e3:.1f} / "
          f"{raw['median_after_predict'] * 1e3:.1f}; "
          f"{raw['seconds_per_batch_min'] * 1e3:.1f}–{raw['seconds_per_batch_max'] * 1e3:.1f})")
    print(f"overhead: tile loop {overhead:+.1%}, end to end "
          f"{result['overhead_end_to_end_vs_raw']:+.1%} (goal ≤ +10 % for the loop)")
    print(f"{'OK' if ok else 'FAIL'}: peak RSS {pred['peak_rss_mib']:.0f} MiB "
          f"{'<' if ok else '>='} {LIMIT_MIB} MiB; wrote {out.relative_to(REPO)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
