"""``satseg predict --images`` over a folder vs one ``satseg predict`` per image.

Why: mapping N test tiles one command at a time pays N times for what does not depend on
the tile (interpreter and library start, checkpoint restore, XLA compile); ``--images``
pays it once (issue 30 item 6: at least 5x faster over 15+ images). Both sides run the
real CLI in fresh processes, with the same run, tiling and images, and the maps are
checked to be identical, so the ratio is the start-up cost saved and nothing else.

    python benchmarks/predict_folder.py --workdir RUN --images DIR [--n 16] \\
        [--out benchmarks/results/predict_folder_<machine>.json]

With no ``--images``, ``--n`` tiles of ``--size`` px are cut from ``--scene`` (the
quickstart scene by default: ``bash launch/quickstart.sh`` makes RUN and scene).
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

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def cut_tiles(scene: Path, out: Path, n: int, size: int) -> Path:
    """``n`` georeferenced ``size``-px GeoTIFF tiles of ``scene``, row by row."""
    import rasterio
    from rasterio.windows import Window

    out.mkdir(parents=True, exist_ok=True)
    with rasterio.open(scene) as src:
        per_row = src.width // size
        for i in range(n):
            r, c = divmod(i, per_row)
            win = Window(c * size, (r * size) % (src.height - size + 1), size, size)
            profile = {**src.profile, "width": size, "height": size,
                       "transform": src.window_transform(win)}
            with rasterio.open(out / f"tile_{i:03d}.tif", "w", **profile) as dst:
                dst.write(src.read(window=win))
                dst.descriptions = src.descriptions
    return out


def _satseg(args: list[str]) -> float:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "satseg_jax.cli", *args], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", required=True, help="trained run")
    ap.add_argument("--images", help="folder of images (default: cut from --scene)")
    ap.add_argument("--scene", default="runs/quickstart/scene.tif")
    ap.add_argument("--n", type=int, default=16, help="tiles to cut (default 16)")
    ap.add_argument("--size", type=int, default=256, help="tile size to cut (default 256)")
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--overlap", type=int, default=None, help="default: tile // 4")
    ap.add_argument("--work", default="/tmp/satseg_predict_folder", help="scratch folder")
    ap.add_argument("--out", help="results JSON")
    args = ap.parse_args()
    work = Path(args.work)
    images = Path(args.images) if args.images else cut_tiles(Path(args.scene),
                                                             work / "images", args.n,
                                                             args.size)
    files = sorted(p for p in images.iterdir() if p.suffix.lower() in (".tif", ".png", ".jpg"))
    overlap = args.tile // 4 if args.overlap is None else args.overlap
    common = ["--workdir", args.workdir, "--checkpoint", "latest", "--tile", str(args.tile),
              "--overlap", str(overlap)]
    one_by_one = work / "one_by_one"
    one_by_one.mkdir(parents=True, exist_ok=True)
    t_each = sum(_satseg(["predict", *common, "--image", str(f), "--out",
                          str(one_by_one / (f.stem + ".tif"))]) for f in files)
    t_folder = _satseg(["predict", *common, "--images", str(images), "--out-dir",
                        str(work / "folder"), "--overwrite"])
    import rasterio

    for f in files:  # the same maps, or the timing compares different work
        with rasterio.open(one_by_one / (f.stem + ".tif")) as a, \
                rasterio.open(work / "folder" / (f.stem + ".tif")) as b:
            assert np.array_equal(a.read(), b.read()), f
    result = {
        "command": " ".join(["python", "benchmarks/predict_folder.py", *sys.argv[1:]]),
        "images": len(files), "image_size": args.size, "tile": args.tile, "overlap": overlap,
        "seconds_one_predict_per_image": round(t_each, 2),
        "seconds_predict_images": round(t_folder, 2),
        "speedup": round(t_each / t_folder, 2), "maps_identical": True,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
    }
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
