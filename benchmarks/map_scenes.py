"""``satseg map`` over many scenes: km² per second per core, overhead over the raw model,
and peak memory as the scene count grows; plus the peak memory of an area tally of a
16384² map.

Why: a monthly national map is hundreds of scenes through one command. Mapping must
cost little more than the model itself (restore and compile once per process, not per
scene) and its memory must not grow with the number of scenes.

In fresh processes, for each scene count (default 3 and 30 scenes of 1024² px from
``satseg sample --series``, the bands the quickstart run was trained on):

1. ``satseg map`` itself (the CLI, as a user runs it): wall time, peak RSS, km² mapped,
   and the seconds spent inside the per-scene predictor (sum of the done markers');
2. the raw model (``benchmarks/predict_scene.py``'s ``raw`` child: the same checkpoint,
   tile and batch on in-memory batches), scaled to the tiles the scenes need.

Overhead = per-scene predictor seconds / raw model seconds − 1 (goal ≤ 10 %), the
end-to-end figure (process start, restore, compile, mosaic) beside it.

    python benchmarks/map_scenes.py [--counts 3,30] [--workdir runs/quickstart/train]

Writes benchmarks/results/map_scenes_<machine>.json. Needs a trained run: ``bash
launch/quickstart.sh`` makes one.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
LIMIT_MIB = 2048


_WRAPPER = ("import resource, subprocess, sys; p = subprocess.run(sys.argv[1:]); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
            "sys.exit(p.returncode)")


def _timed(cmd: list[str]) -> tuple[float, float, str]:
    """(seconds, peak RSS MiB, stdout) of one command in a fresh process. A wrapper
    process runs it and reports its own children's peak, so each figure is this
    command's alone (this process's RUSAGE_CHILDREN is a maximum over all of them)."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _WRAPPER, *cmd], capture_output=True,
                          text=True, check=False,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    rss = int(proc.stderr.strip().splitlines()[-1]) / 1024
    return seconds, rss, proc.stdout


def _tiles(scenes: Path, tile: int, overlap: int) -> int:
    import rasterio

    from satseg_jax.raster.windows import covering_windows

    n = 0
    for p in sorted(scenes.glob("*.tif")):
        with rasterio.open(p) as src:
            n += len(covering_windows(src.height, src.width, tile, overlap))
    return n


def measure_map(args, count: int, scratch: Path) -> dict:
    from satseg_jax.raster.sample_series import write_scene_series

    series = write_scene_series(scratch / f"series_{count}", count=count, size=args.size)
    mapdir = scratch / f"maps_{count}"
    cmd = [sys.executable, "-m", "satseg_jax.cli", "map", "--workdir", str(args.workdir),
           "--scenes", str(series["scenes"]), "--out", str(mapdir), "--checkpoint", "latest",
           "--date-pattern", "S2_YYYYMMDD_*", "--tile", str(args.tile), "--overlap",
           str(args.overlap), "--batch", str(args.batch)]
    seconds, rss, _ = _timed(cmd)
    markers = [json.loads(p.read_text()) for p in (mapdir / "scenes").glob("*.json")]
    km2 = sum(m["km2_mapped"] for m in markers)
    return {"scenes": count, "scene_size": args.size, "seconds_end_to_end": round(seconds, 2),
            "seconds_in_predictor": round(sum(m["seconds"] for m in markers), 2),
            "km2_mapped": round(km2, 2), "peak_rss_mib": round(rss, 1),
            "tiles": _tiles(series["scenes"], args.tile, args.overlap),
            "km2_per_second_per_core": round(km2 / seconds / (os.cpu_count() or 1), 3)}


def measure_area(args, scratch: Path) -> dict:
    """Peak RSS of ``satseg area --map`` on a 16384² class map with two regions."""
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    from satseg_jax.raster.sample_series import write_scene_series

    size = args.area_size
    big = scratch / "mosaic_16384.tif"
    profile = {"driver": "GTiff", "width": size, "height": size, "count": 1, "dtype": "uint8",
               "crs": "EPSG:32722", "transform": from_origin(500000.0, 8250000.0, 8.0, 8.0),
               "nodata": 255, "tiled": True, "compress": "deflate", "BIGTIFF": "IF_SAFER"}
    rng = np.random.default_rng(0)
    with rasterio.open(big, "w", **profile) as dst:
        for r0 in range(0, size, 1024):
            block = rng.integers(0, 6, (1024, size), dtype=np.uint8)
            dst.write(block, 1, window=Window(0, r0, size, 1024))
    regions = write_scene_series(scratch / "regions_series", count=2, size=64,
                                 months=1)["regions"]
    seconds, rss, _ = _timed([sys.executable, "-m", "satseg_jax.cli", "area", "--map",
                              str(big), "--by", str(regions), "--region-field", "NAME"])
    return {"map_size": size, "seconds": round(seconds, 2), "peak_rss_mib": round(rss, 1),
            "within_limit": rss < LIMIT_MIB}


def measure_raw(args, scratch: Path) -> dict:
    cmd = [sys.executable, str(REPO / "benchmarks" / "predict_scene.py"), "--child", "raw",
           "--workdir", str(args.workdir), "--tile", str(args.tile), "--overlap",
           str(args.overlap), "--batch", str(args.batch), "--blend", "gaussian", "--reps",
           "5", "--batches", "10", "--scene", str(scratch / "none.tif"), "--out",
           str(scratch / "none_map.tif")]
    _, _, out = _timed(cmd)
    return json.loads(out.strip().splitlines()[-1])


def main() -> int:
    from satseg_jax import cpu

    cpu.setup()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", type=Path, default=REPO / "runs/quickstart/train")
    p.add_argument("--counts", default="3,30", help="scene counts to measure")
    p.add_argument("--size", type=int, default=1024, help="scene side in pixels")
    p.add_argument("--area-size", type=int, default=16384, help="side of the tallied map")
    p.add_argument("--tile", type=int, default=256)
    p.add_argument("--overlap", type=int, default=64)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--scratch", type=Path, default=Path("/tmp/satseg_bench_map"))
    p.add_argument("--result", type=Path, default=None)
    args = p.parse_args()
    if not (args.workdir / "checkpoints").exists():
        raise SystemExit(f"{args.workdir} has no checkpoints; make it with: bash "
                         "launch/quickstart.sh")
    shutil.rmtree(args.scratch, ignore_errors=True)
    args.scratch.mkdir(parents=True)
    try:
        raw_before = measure_raw(args, args.scratch)
        runs = [measure_map(args, int(c), args.scratch) for c in args.counts.split(",")]
        raw_after = measure_raw(args, args.scratch)
        area = measure_area(args, args.scratch)
    finally:
        shutil.rmtree(args.scratch, ignore_errors=True)
    per_batch = (raw_before["seconds_per_batch_median"]
                 + raw_after["seconds_per_batch_median"]) / 2
    for r in runs:
        raw_s = per_batch * -(-r["tiles"] // args.batch)
        r["raw_model_seconds"] = round(raw_s, 2)
        r["overhead_predictor_vs_raw"] = round(r["seconds_in_predictor"] / raw_s - 1, 4)
        r["overhead_end_to_end_vs_raw"] = round(r["seconds_end_to_end"] / raw_s - 1, 4)
    import predict_scene

    result = {"benchmark": "map_scenes", "run": str(args.workdir), "tile": args.tile,
              "overlap": args.overlap, "batch": args.batch, "cpus": os.cpu_count(),
              "raw_seconds_per_batch": {"before": raw_before["seconds_per_batch_median"],
                                        "after": raw_after["seconds_per_batch_median"]},
              "map": runs, "area_tally": area, "limit_peak_rss_mib": LIMIT_MIB}
    out = args.result or (REPO / "benchmarks" / "results"
                          / f"map_scenes_{predict_scene.machine()}.json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    for r in runs:
        print(f"{r['scenes']:>3} scenes of {r['scene_size']}²: {r['seconds_end_to_end']:.1f} s "
              f"end to end, {r['km2_mapped']:.0f} km², {r['km2_per_second_per_core']:.2f} "
              f"km²/s/core; predictor {r['overhead_predictor_vs_raw']:+.1%} over the raw "
              f"model, end to end {r['overhead_end_to_end_vs_raw']:+.1%}; peak RSS "
              f"{r['peak_rss_mib']:.0f} MiB")
    print(f"area tally of a {area['map_size']}² map: {area['seconds']:.1f} s, peak RSS "
          f"{area['peak_rss_mib']:.0f} MiB (limit {LIMIT_MIB})")
    print(f"wrote {out.relative_to(REPO)}")
    return 0 if area["within_limit"] else 1


if __name__ == "__main__":
    sys.exit(main())
