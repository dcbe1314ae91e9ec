"""Stage 2 — stack single-band GeoTIFFs into one multi-band scene.

Satellite products ship one file per band (Landsat B2..B5, CBERS-4A WPM B1..B4). The
model needs them stacked pixel for pixel, so compose refuses bands whose CRS,
transform, size or dtype differ from the first one (the error names the file and the
field) unless --resample-to REF is given, which reprojects every band onto REF's grid,
or --dtype names a type that holds every input (multi-sensor stacks: int16 + float32).
The output is tiled (256 px), deflate-compressed, written window by window (memory does
not grow with the scene) and only appears when complete.

    python data_prep/02_compose.py --bands runs/quickstart/sample/{blue,green,red,nir}.tif \\
        --out runs/quickstart/scene.tif

Next: 03_patches.py cuts the scene and its labels into training patches.
Library call: satseg_jax.raster.compose.compose_bands (CLI: satseg compose).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from satseg_jax.errors import SatsegError
from satseg_jax.raster.compose import RESAMPLING, compose_bands


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bands", type=Path, nargs="+", required=True,
                   help="band files (single- or multi-band), in output band order")
    p.add_argument("--out", type=Path, required=True, help="output GeoTIFF")
    p.add_argument("--names", default=None,
                   help="comma-separated band names (default: the file stems)")
    p.add_argument("--resample-to", type=Path, default=None,
                   help="reference raster whose grid every band is reprojected onto")
    p.add_argument("--resampling", choices=RESAMPLING, default="bilinear")
    p.add_argument("--dtype", default=None,
                   help="promote mixed inputs to this dtype, e.g. float32 for int16 + float32")
    p.add_argument("--nodata", type=float, default=None, help="nodata of the output")
    args = p.parse_args()
    names = [n.strip() for n in args.names.split(",")] if args.names else None
    try:
        out = compose_bands(args.bands, args.out, names=names, resample_to=args.resample_to,
                            resampling=args.resampling, dtype=args.dtype, nodata=args.nodata)
    except SatsegError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
