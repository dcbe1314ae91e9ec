"""Stage 1 — band composition: single-band rasters -> one multi-band GeoTIFF.

    python data_prep/02_compose.py --bands B1.tif B2.tif B3.tif B4.tif --out scene.tif

Grids (CRS, transform, size, dtype) must agree, else the error names the file and the
field; pass --resample-to REF.tif to reproject every band onto REF's grid instead.
"""

import argparse
from pathlib import Path

from satseg_jax.raster.compose import compose_bands

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
p.add_argument("--bands", nargs="+", required=True)
p.add_argument("--out", required=True)
p.add_argument("--names", default=None, help="comma-separated band names")
p.add_argument("--resample-to", default=None)
args = p.parse_args()
out = compose_bands([Path(b) for b in args.bands], Path(args.out),
                    names=args.names.split(",") if args.names else None,
                    resample_to=Path(args.resample_to) if args.resample_to else None)
print(f"wrote {out}")
