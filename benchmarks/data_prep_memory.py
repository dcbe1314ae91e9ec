"""Peak memory and throughput of data prep (compose + patches) on a large scene.

    python benchmarks/data_prep_memory.py [--size 4096] [--patch 256] [--workdir /tmp/dp]

Each stage runs in its own subprocess so that its peak RSS (ru_maxrss of the child) is
measured alone. The sample scene generation is not timed (it is test-data generation,
not data prep). Prints a table and writes benchmarks/results/data_prep_memory.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

STAGE = r"""
import resource, sys, time, json
from pathlib import Path
stage, work, size = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
t = time.perf_counter()
if stage == "compose":
    from satseg_jax.raster.compose import compose_bands
    compose_bands([work / "sample" / f"{b}.tif" for b in ("blue", "green", "red", "nir")],
                  work / "scene.tif", progress=False)
else:
    from satseg_jax.raster.patches import make_patches
    make_patches(work / "scene.tif", work / "patches", work / "sample" / "classes.json",
                 size=size, labels=work / "sample" / "labels.tif", overwrite=True,
                 progress=False)
dt = time.perf_counter() - t
print(json.dumps({"seconds": dt,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--patch", type=int, default=256)
    p.add_argument("--workdir", default="/tmp/satseg_dataprep_bench")
    a = p.parse_args()
    work = Path(a.workdir)
    if not (work / "sample" / "nir.tif").exists():
        from satseg_jax.raster.sample import write_sample_scene

        write_sample_scene(work / "sample", size=a.size, seed=0, overwrite=True)
    input_mb = a.size * a.size * 4 * 2 / 1e6  # 4 uint16 bands
    results = {}
    for stage in ("compose", "patches"):
        if stage == "compose" and (work / "scene.tif").exists():
            (work / "scene.tif").unlink()
        out = subprocess.run([sys.executable, "-c", STAGE, stage, str(work), str(a.patch)],
                             capture_output=True, text=True, check=True,
                             env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        r = json.loads(out.stdout.strip().splitlines()[-1])
        r["mb_per_s"] = input_mb / r["seconds"]
        results[stage] = r
    report = {"scene": f"{a.size}x{a.size}x4 uint16 ({input_mb:.0f} MB)",
              "patch_size": a.patch, "machine": platform.processor() or platform.machine(),
              "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d"), "stages": results}
    print(f"{'stage':<10}{'seconds':>10}{'MB/s':>10}{'peak RSS MiB':>15}")
    for stage, r in results.items():
        print(f"{stage:<10}{r['seconds']:>10.2f}{r['mb_per_s']:>10.1f}{r['peak_rss_mib']:>15.0f}")
    out = Path(__file__).parent / "results" / "data_prep_memory.json"
    out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
