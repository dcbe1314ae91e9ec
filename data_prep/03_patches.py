"""Stage 2 — patches and masks: crop the scene into georeferenced image/mask GeoTIFFs.

    python data_prep/03_patches.py --image scene.tif --labels labels.tif \
        --classes classes.json --size 256 --out patches/
    python data_prep/03_patches.py --image scene.tif --vector labels.geojson \
        --class-field class --classes classes.json --size 256 --out patches/

Reads by windows (the scene is never loaded whole); nodata -> mask 255 (ignore);
patches with less than --min-valid valid pixels are skipped; index.csv lists them all.
"""

import argparse
import json
from pathlib import Path

from satseg_jax.raster.patches import make_patches

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
p.add_argument("--image", required=True)
g = p.add_mutually_exclusive_group(required=True)
g.add_argument("--labels")
g.add_argument("--vector")
p.add_argument("--class-field", default="class")
p.add_argument("--classes", required=True)
p.add_argument("--size", type=int, default=256)
p.add_argument("--stride", type=int, default=None)
p.add_argument("--min-valid", type=float, default=0.5)
p.add_argument("--edge", choices=["drop", "pad"], default="drop")
p.add_argument("--out", required=True)
a = p.parse_args()
summary = make_patches(Path(a.image), Path(a.out), Path(a.classes), size=a.size,
                       stride=a.stride, min_valid=a.min_valid, edge=a.edge,
                       labels=Path(a.labels) if a.labels else None,
                       vector=Path(a.vector) if a.vector else None, class_field=a.class_field)
print(json.dumps(summary, indent=2))
