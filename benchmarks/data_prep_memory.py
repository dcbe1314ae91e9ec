"""Peak memory and throughput of data prep (compose + patches) on a large scene.

Why: compose and patches promise windowed I/O — memory must not grow with the scene —
and patch cutting should keep up with gdal_retile. This generates a 4096×4096×4 uint16
sample scene (outside the repository), then runs each stage in its own fresh Python
process and reports that process's peak RSS (getrusage ru_maxrss) and its throughput
in MB/s of *uncompressed input pixels* (4096·4096·4·2 B = 134 MB for the scene).

    python benchmarks/data_prep_memory.py [--size 4096] [--workdir /tmp/satseg_bench]

Prints a table and writes benchmarks/results/data_prep_memory.json. Fails (exit 1) when
a stage peaks at 1 GiB or more.
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
RESULTS = REPO / "benchmarks" / "results" / "data_prep_memory.json"
LIMIT_MIB = 1024
BANDS = ("blue", "green", "red", "nir")


def _peak_rss_mib() -> float:
    # Linux reports ru_maxrss in KiB, macOS in bytes.
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def run_stage(stage: str, work: Path, size: int, patch: int) -> dict:
    """Run one stage in this process (called in a child) and return its measurements."""
    sample = work / "sample"
    scene = work / "scene.tif"
    t0 = time.perf_counter()
    if stage == "sample":
        from satseg_jax.raster.sample import write_sample_scene

        write_sample_scene(sample, size=size, seed=0, overwrite=True)
        in_bytes = 0
    elif stage == "compose":
        from satseg_jax.raster.compose import compose_bands

        compose_bands([sample / f"{b}.tif" for b in BANDS], scene, progress=False)
        in_bytes = size * size * len(BANDS) * 2
    elif stage in ("patches", "patches_vector"):
        from satseg_jax.raster.patches import make_patches

        labels = {"labels": sample / "labels.tif"} if stage == "patches" else {
            "vector": sample / "labels.geojson"}
        summary = make_patches(scene, work / stage, sample / "classes.json", size=patch,
                               overwrite=True, progress=False, **labels)
        in_bytes = size * size * len(BANDS) * 2 + size * size  # scene + uint8 labels
    else:
        raise ValueError(stage)
    seconds = time.perf_counter() - t0
    out = {"stage": stage, "seconds": round(seconds, 3), "peak_rss_mib": round(_peak_rss_mib(), 1),
           "input_mb": round(in_bytes / 1e6, 1),
           "mb_per_s": round(in_bytes / 1e6 / seconds, 1) if in_bytes else None}
    if stage.startswith("patches"):
        out["num_patches"] = summary["num_patches"]
        out["num_windows"] = summary["num_windows"]
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=4096, help="scene side in pixels")
    p.add_argument("--patch", type=int, default=256, help="patch size")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/satseg_bench_data_prep"),
                   help="scratch folder (outside the repository; removed at the end)")
    p.add_argument("--keep", action="store_true", help="keep the scratch folder")
    p.add_argument("--stage", help=argparse.SUPPRESS)  # internal: run one stage, print JSON
    args = p.parse_args()
    if args.stage:
        print(json.dumps(run_stage(args.stage, args.workdir, args.size, args.patch)))
        return 0

    args.workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    try:
        for stage in ("sample", "compose", "patches", "patches_vector"):
            proc = subprocess.run(
                [sys.executable, __file__, "--stage", stage, "--size", str(args.size),
                 "--patch", str(args.patch), "--workdir", str(args.workdir)],
                capture_output=True, text=True, env=env, check=False)
            if proc.returncode != 0:
                print(proc.stderr, file=sys.stderr)
                return 1
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    finally:
        if not args.keep:
            shutil.rmtree(args.workdir, ignore_errors=True)

    print(f"scene {args.size}x{args.size}x4 uint16, patches {args.patch} px, "
          f"{os.cpu_count()} CPUs")
    print(f"{'stage':<16}{'seconds':>9}{'input MB':>10}{'MB/s':>8}{'peak RSS MiB':>14}")
    for r in rows:
        mbps = f"{r['mb_per_s']:.1f}" if r["mb_per_s"] else "-"
        print(f"{r['stage']:<16}{r['seconds']:>9.2f}{r['input_mb']:>10.1f}{mbps:>8}"
              f"{r['peak_rss_mib']:>14.1f}")
    prep = [r for r in rows if r["stage"] != "sample"]
    ok = all(r["peak_rss_mib"] < LIMIT_MIB for r in prep)
    result = {
        "benchmark": "data_prep_memory",
        "scene": {"size": args.size, "bands": len(BANDS), "dtype": "uint16"},
        "patch_size": args.patch,
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpus": os.cpu_count()},
        "limit_peak_rss_mib": LIMIT_MIB,
        "within_limit": ok,
        "stages": rows,
        "note": "MB/s = uncompressed input pixels / wall seconds of the stage, each stage in "
                "a fresh process (imports included in peak RSS, not in seconds).",
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'OK' if ok else 'FAIL'}: peak RSS of compose/patches "
          f"{'<' if ok else '>='} {LIMIT_MIB} MiB; wrote {RESULTS.relative_to(REPO)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
