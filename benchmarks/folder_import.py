"""Speed of ``satseg patches --images/--masks`` on real JPEG tiles, before and after.

Why: a user imported 72 JPEG tiles (98 Mpx) in 206 s, ~1.4 MB/s of decoded pixels,
against ~79 MB/s for a GeoTIFF scene. JPEG and PNG decode only from the top of the file,
and the window-by-window reads restarted the decoder for every patch; each mask window
was sorted (np.unique) to decode its colours; files went one at a time. Issue 30 asks
for >= 30 MB/s of decoded pixels on 2 cores, with byte-identical patches.

Inputs (never in git; read in place / generated under --workdir):

- ``philippines``: the shared OAM set's 84 Philippine images, JPEG data named .png
  (256x256, the only JPEG tiles of the shared sets) with their 0/255 GeoTIFF masks;
- ``mosaic``: larger JPEG tiles made from the same real images, N x N of them per
  tile (default 6: 1536x1536 px, 24 tiles, 170 MB decoded), with RGB PNG colour masks
  (building red, background black) from the real masks, like the sets the slow
  import was seen on.

Each run is a fresh Python process calling ``make_folder_patches`` of one checkout
(``--before DIR``: a copy of the code before the speed-up, e.g. ``mkdir
/tmp/satseg-before && git archive a6ee938 | tar -x -C /tmp/satseg-before``). It reports
the in-process seconds (imports excluded), MB/s of decoded input pixels, and the CPU
seconds used inside ``make_folder_patches`` (user + sys, all threads), which show the
work done even when other jobs share the cores: ``mb_per_s_2_idle_cores_from_cpu`` =
input MB / (CPU s / 2) is what the import reaches on 2 cores of its own if its threads
keep both busy (an estimate, labelled as such; wall-clock MB/s is measured as is). The
outputs of before and after are compared file by file (sha256).

    python benchmarks/folder_import.py [--before /tmp/satseg-before] [--repeats 3]

Prints a table and writes benchmarks/results/folder_import_cpu-2core.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "folder_import_cpu-2core.json"
SHARED = Path(os.environ.get("SATSEG_SHARED_DATA", REPO.parent / "shared" / "data"))
PHILIPPINES = SHARED / "oam_buildings_fair" / "philippines"
TARGET_MB_S = 30.0

CHILD = """
import json, resource, sys
from pathlib import Path
from satseg_jax.raster.folder_patches import make_folder_patches
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
a = json.loads(sys.argv[1])
c0 = cpu()
s = make_folder_patches(a["images"], a["masks"], Path(a["out"]), Path(a["classes"]),
                        size=256, overwrite=True, progress=False, threads=a["threads"])
out = {k: s[k] for k in ("num_patches", "seconds", "input_mb_per_s")}
out["input_mb"] = round(s["input_mb_per_s"] * s["seconds"], 1)
out["cpu_s"] = round(cpu() - c0, 2)
print(json.dumps(out))
"""


def _classes(path: Path, building: dict) -> Path:
    path.write_text(json.dumps([{"id": 0, "name": "background", "value": 0,
                                 "colour": "#000000"},
                                {"id": 1, "name": "building", **building}]))
    return path


def make_mosaic(work: Path, n_tiles: int, per_side: int, seed: int = 0) -> dict:
    """JPEG tiles of per_side x per_side real Philippine images (random picks), with RGB
    PNG colour masks built from the real masks."""
    import numpy as np
    import rasterio
    from PIL import Image

    root = work / "mosaic"
    if (root / "done").exists():
        return {"images": str(root / "images"), "masks": str(root / "masks"),
                "classes": str(root / "classes.json")}
    shutil.rmtree(root, ignore_errors=True)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    names = sorted(p.stem for p in (PHILIPPINES / "data").glob("*.png"))
    rng = np.random.default_rng(seed)
    side = 256 * per_side
    for k in range(n_tiles):
        img = np.zeros((side, side, 3), np.uint8)
        mask = np.zeros((side, side, 3), np.uint8)
        for i in range(per_side):
            for j in range(per_side):
                name = names[rng.integers(len(names))]
                cell = (slice(256 * i, 256 * i + 256), slice(256 * j, 256 * j + 256))
                img[cell] = np.asarray(Image.open(PHILIPPINES / "data" / f"{name}.png")
                                       .convert("RGB"))
                with rasterio.open(PHILIPPINES / "labels" / f"{name}.tif") as src:
                    mask[cell][src.read(1) > 0] = (255, 0, 0)
        Image.fromarray(img).save(root / "images" / f"t{k:02d}.jpg", quality=92)
        Image.fromarray(mask).save(root / "masks" / f"t{k:02d}.png")
    _classes(root / "classes.json", {"colour": "#ff0000"})
    (root / "done").touch()
    return {"images": str(root / "images"), "masks": str(root / "masks"),
            "classes": str(root / "classes.json")}


def run_once(code: Path, inputs: dict, out: Path, threads: int) -> dict:
    """One import in a fresh process of checkout ``code``: its summary + CPU seconds."""
    env = {**os.environ, "PYTHONPATH": str(code)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    args = json.dumps({**inputs, "out": str(out), "threads": threads})
    proc = subprocess.run([sys.executable, "-c", CHILD, args], env=env, cwd=code,
                          capture_output=True, text=True, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        raise SystemExit(f"import with {code} failed:\n{proc.stderr[-2000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["cpu_s_process"] = round((after.ru_utime - before.ru_utime)
                                    + (after.ru_stime - before.ru_stime), 2)
    # What the import's own CPU time allows on 2 cores to itself (the work spread over
    # both, as the threads do): the figure other jobs on a shared machine cannot lower.
    result["mb_per_s_2_idle_cores_from_cpu"] = round(
        result["input_mb"] / max(result["cpu_s"] / 2, 1e-9), 1)
    return result


def digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def measure(name: str, inputs: dict, code: dict[str, Path], work: Path, repeats: int,
            threads: int) -> dict:
    """Best-of-``repeats`` figures per checkout and whether their outputs are equal."""
    row: dict = {"input": name}
    outs = {}
    for label, path in code.items():
        runs = [run_once(path, inputs, work / f"out_{name}_{label}", threads)
                for _ in range(repeats)]
        best = max(runs, key=lambda r: r["input_mb_per_s"])
        row[label] = {**best, "all_mb_per_s": [r["input_mb_per_s"] for r in runs]}
        outs[label] = digests(work / f"out_{name}_{label}")
        row["num_patches"] = best["num_patches"]
    if len(outs) == 2:
        row["identical_to_before"] = outs["before"] == outs["after"]
        row["speed_up"] = round(row["after"]["input_mb_per_s"]
                                / max(row["before"]["input_mb_per_s"], 1e-9), 1)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", type=Path, default=None,
                    help="a checkout of the code before the speed-up (omit: after only)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/satseg_folder_import"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="satseg patches --threads")
    ap.add_argument("--mosaic-tiles", type=int, default=24)
    ap.add_argument("--mosaic-side", type=int, default=6, help="images per tile side")
    args = ap.parse_args(argv)
    if not (PHILIPPINES / "data").is_dir():
        print(f"shared data not found at {PHILIPPINES}; set SATSEG_SHARED_DATA")
        return 0
    args.workdir.mkdir(parents=True, exist_ok=True)
    code = {"after": REPO} if args.before is None else {"before": args.before.resolve(),
                                                        "after": REPO}
    sets = {
        "philippines": {"images": str(PHILIPPINES / "data"),
                        "masks": str(PHILIPPINES / "labels"),
                        "classes": str(_classes(args.workdir / "ph_classes.json",
                                                {"value": 255, "colour": "#ff0000"}))},
        "mosaic": make_mosaic(args.workdir, args.mosaic_tiles, args.mosaic_side),
    }
    load = os.getloadavg()
    rows = [measure(n, i, code, args.workdir, args.repeats, args.threads)
            for n, i in sets.items()]
    result = {"benchmark": "folder_import", "cores": os.cpu_count(),
              "machine": platform.processor() or platform.machine(),
              "load_average_at_start": [round(x, 2) for x in load],
              "threads": args.threads, "target_mb_per_s": TARGET_MB_S,
              "command": "python benchmarks/folder_import.py"
                         + (f" --before {args.before}" if args.before else ""),
              "rows": rows}
    for r in rows:
        cells = [f"{r['input']:<12} {r['num_patches']:>5} patches"]
        for label in code:
            x = r[label]
            cells.append(f"{label}: {x['seconds']:6.2f} s {x['input_mb_per_s']:5.1f} MB/s, "
                         f"cpu {x['cpu_s']:5.2f} s -> {x['mb_per_s_2_idle_cores_from_cpu']:5.1f}"
                         " MB/s")
        if "identical_to_before" in r:
            cells.append(f"x{r['speed_up']} identical={r['identical_to_before']}")
        print("  ".join(cells))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
