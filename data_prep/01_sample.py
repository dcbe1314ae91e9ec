"""Stage 1 — a generated, georeferenced sample scene (stand-in for a downloaded product).

Writes one GeoTIFF per band (blue, green, red, nir; uint16 reflectance x 10000, UTM 23S,
nodata 0 around a rotated footprint), the ground truth as a raster (labels.tif, 255 =
nodata) and as polygons (labels.geojson, attribute "class"), and classes.json. Same
seed, same scene, so the rest of the pipeline is reproducible offline.

    python data_prep/01_sample.py --out runs/quickstart/sample --size 1024

Next: 02_compose.py stacks the band files into one scene.
Library call: satseg_jax.raster.sample.write_sample_scene (CLI: satseg sample).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from satseg_jax.errors import SatsegError
from satseg_jax.raster.sample import write_sample_scene


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="output folder (new or empty)")
    p.add_argument("--size", type=int, default=1024, help="width = height in pixels")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--pixel-size", type=float, default=8.0, help="ground pixel size, metres")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args = p.parse_args()
    try:
        paths = write_sample_scene(args.out, size=args.size, seed=args.seed,
                                   pixel_size=args.pixel_size, overwrite=args.overwrite)
    except SatsegError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for role, path in paths.items():
        print(f"{role:>8}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
