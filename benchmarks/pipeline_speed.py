"""Throughput of the two stages that must stay off the trainer's critical path.

1. **Data prep**: ``satseg patches`` against GDAL's ``gdal_retile.py`` on the same
   scene (default 4096×4096×4 uint16, 256-px tiles, no overlap, DEFLATE both sides).
   gdal_retile cuts the image only, so it is timed twice: on the scene alone and on the
   scene plus the label raster (what ``satseg patches`` does in one pass: image patches,
   mask patches, the per-class pixel counts in ``index.csv``). Each side runs as a
   command in a fresh process (imports included, as a user would see it).
2. **Input pipeline**: images/s out of :func:`satseg_jax.input_pipeline.train_iterator`
   (TFRecord read, decode, normalise, random crop, flips/rotations, shuffle, batch) with
   no model attached, with the config's ``num_parallel_calls`` threads — the rate at
   which it could feed an accelerator.

Median of ``--reps`` timed repetitions after one warm-up, with min–max. MB/s counts
uncompressed input pixels. Needs ``gdal_retile.py`` (Debian: ``apt-get install
gdal-bin python3-gdal``); without it, that row says so and the rest still runs.

    python benchmarks/pipeline_speed.py [--size 4096] [--reps 5]

Writes benchmarks/results/pipeline_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from a checkout, installed or not
BANDS = ("blue", "green", "red", "nir")


def _stats(times: list[float]) -> dict:
    t = sorted(times)
    return {"median_s": round(t[len(t) // 2], 3), "min_s": round(t[0], 3),
            "max_s": round(t[-1], 3), "reps": len(t)}


def _timed(cmd: list[str], reps: int, clean: Path | None = None, env=None) -> dict:
    """Run ``cmd`` once to warm the page cache, then ``reps`` timed times."""
    times = []
    for i in range(reps + 1):
        if clean is not None:
            shutil.rmtree(clean, ignore_errors=True)
            clean.mkdir(parents=True)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        dt = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
        if i:
            times.append(dt)
    return _stats(times)


def make_scene(work: Path, size: int) -> tuple[Path, Path, Path]:
    from satseg_jax.raster.compose import compose_bands
    from satseg_jax.raster.sample import write_sample_scene

    s = write_sample_scene(work / "sample", size=size, seed=0, overwrite=True)
    scene = compose_bands([s[b] for b in BANDS], work / "scene.tif", progress=False)
    return scene, s["labels"], s["classes"]


def data_prep(work: Path, size: int, patch: int, reps: int) -> dict:
    scene, labels, classes = make_scene(work, size)
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TF_CPP_MIN_LOG_LEVEL="2")
    scene_bytes = size * size * len(BANDS) * 2
    label_bytes = size * size
    rows = []
    out = work / "satseg_patches"
    satseg = [sys.executable, "-m", "satseg_jax.cli", "patches", "--image", str(scene),
              "--labels", str(labels), "--classes", str(classes), "--size", str(patch),
              "--stride", str(patch), "--min-valid", "0", "--edge", "pad", "--out", str(out),
              "--overwrite"]
    r = _timed(satseg, reps, env=env)
    rows.append({"tool": "satseg patches (image + mask + index)", **r,
                 "mb_per_s": round((scene_bytes + label_bytes) / 1e6 / r["median_s"], 1)})
    retile = shutil.which("gdal_retile.py")
    if retile is None:
        rows.append({"tool": "gdal_retile.py", "skipped": "gdal_retile.py not found "
                     "(apt-get install gdal-bin python3-gdal)"})
        return {"scene": str(scene), "size": size, "patch": patch, "rows": rows}
    base = ["gdal_retile.py", "-q", "-ps", str(patch), str(patch), "-co", "COMPRESS=DEFLATE",
            "-co", "TILED=NO"]
    tiles = work / "retile_image"
    r = _timed([*base, "-targetDir", str(tiles), str(scene)], reps, clean=tiles)
    rows.append({"tool": "gdal_retile.py (image only)", **r,
                 "mb_per_s": round(scene_bytes / 1e6 / r["median_s"], 1)})
    both = work / "retile_both"
    script = (f"set -e; {' '.join(base)} -targetDir {both}/img {scene}; "
              f"{' '.join(base)} -targetDir {both}/mask {labels}")
    times = []
    for i in range(reps + 1):
        shutil.rmtree(both, ignore_errors=True)
        (both / "img").mkdir(parents=True)
        (both / "mask").mkdir()
        t0 = time.perf_counter()
        subprocess.run(["bash", "-c", script], check=True, capture_output=True)
        if i:
            times.append(time.perf_counter() - t0)
    r = _stats(times)
    rows.append({"tool": "gdal_retile.py (image + label raster)", **r,
                 "mb_per_s": round((scene_bytes + label_bytes) / 1e6 / r["median_s"], 1)})
    return {"scene": f"{size}x{size}x{len(BANDS)} uint16", "patch": patch, "rows": rows}


def input_pipeline(work: Path, reps: int, batch: int, steps: int, threads: int,
                   crop: int = 0) -> dict:
    """Images/s from train_iterator on the quickstart-like dataset (no model).

    128-px patches as in the speed benchmark's train step (``crop`` 0 = the whole patch).
    """
    import ml_collections

    from satseg_jax import input_pipeline as ip
    from satseg_jax.datasets.build import build_dataset
    from satseg_jax.raster.patches import make_patches

    scene, labels, classes = make_scene(work / "pipe", 1024)
    make_patches(scene, work / "pipe" / "patches", classes, size=128, stride=64,
                 labels=labels, progress=False)
    build_dataset(work / "pipe" / "patches", work / "pipe" / "data", split=(0.7, 0.15, 0.15),
                  split_by="block", progress=False)
    meta = ip.load_meta(str(work / "pipe" / "data"))
    cfg = ml_collections.ConfigDict({
        "train_split": "train", "crop_size": crop, "augment": True, "shuffle_buffer": 1024,
        "cache": True, "num_parallel_calls": threads})
    it = ip.train_iterator(meta, cfg, global_batch=batch, seed=0)
    for _ in range(steps):  # warm-up: fills the cache and the shuffle buffer
        next(it)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(steps):
            next(it)
        times.append(time.perf_counter() - t0)
    r = _stats(times)
    return {"examples_in_train_split": meta.num_examples["train"], "batch": batch,
            "steps_per_rep": steps, "crop": crop or 128, "augment": True, "threads": threads, **r,
            "images_per_s": round(batch * steps / r["median_s"], 1)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=4096, help="data-prep scene side (px)")
    p.add_argument("--patch", type=int, default=256)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--batch", type=int, default=16, help="input-pipeline batch")
    p.add_argument("--steps", type=int, default=50, help="input-pipeline batches per rep")
    p.add_argument("--threads", type=int, default=2, help="tf.data num_parallel_calls")
    p.add_argument("--crop", type=int, default=0,
                   help="input-pipeline random crop (0: the whole 128-px patch)")
    p.add_argument("--scratch", type=Path, default=Path("/tmp/satseg_bench_pipeline"))
    p.add_argument("--only", choices=("prep", "pipeline"), default=None)
    args = p.parse_args()
    args.scratch.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": "pipeline_speed",
              "machine": {"platform": platform.platform(), "python": platform.python_version(),
                          "cpus": os.cpu_count()}}
    try:
        if args.only in (None, "prep"):
            result["data_prep"] = data_prep(args.scratch, args.size, args.patch, args.reps)
        if args.only in (None, "pipeline"):
            result["input_pipeline"] = input_pipeline(args.scratch, args.reps, args.batch,
                                                      args.steps, args.threads, args.crop)
    finally:
        shutil.rmtree(args.scratch, ignore_errors=True)
    if "data_prep" in result:
        print(f"data prep, {result['data_prep']['scene']}, {args.patch}-px tiles "
              f"(median of {args.reps}, min–max):")
        for r in result["data_prep"]["rows"]:
            if "skipped" in r:
                print(f"  {r['tool']:<40} skipped: {r['skipped']}")
            else:
                print(f"  {r['tool']:<40} {r['median_s']:6.2f} s ({r['min_s']:.2f}–"
                      f"{r['max_s']:.2f})  {r['mb_per_s']:6.1f} MB/s")
    if "input_pipeline" in result:
        ip = result["input_pipeline"]
        print(f"input pipeline: {ip['images_per_s']:.0f} images/s (batch {ip['batch']}, crop "
              f"{ip['crop']}, augment, {ip['threads']} threads; {ip['min_s']:.2f}–"
              f"{ip['max_s']:.2f} s per {ip['steps_per_rep']} batches)")
    out = REPO / "benchmarks" / "results" / "pipeline_speed.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
