"""Stage 0 — a generated, georeferenced sample scene (offline stand-in for a real one).

    python data_prep/01_sample.py --out runs/demo/sample [--size 1024 --seed 0]

Writes blue/green/red/nir.tif (uint16, UTM 23S, 8 m), labels.tif, labels.geojson and
classes.json. Replace this stage with your own band files and labels.
"""

import argparse

from satseg_jax.raster.sample import write_sample_scene

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
p.add_argument("--out", required=True)
p.add_argument("--size", type=int, default=1024)
p.add_argument("--seed", type=int, default=0)
args = p.parse_args()
for role, path in write_sample_scene(args.out, size=args.size, seed=args.seed).items():
    print(f"{role:>8}: {path}")
