"""Stage 3 — TFRecords: patches -> a tensorflow-datasets dataset + satseg_dataset.json.

    python data_prep/04_build.py --patches patches/ --out data/ [--split 0.7,0.15,0.15]

The split is by spatial blocks by default (neighbouring patches stay in one split);
band mean/std come from the train split only. Load the result with
tfds.builder_from_directory(data/satseg_patches/1.0.0).
"""

import argparse
from pathlib import Path

from satseg_jax.datasets.build import build_dataset, format_summary

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
p.add_argument("--patches", required=True)
p.add_argument("--out", required=True)
p.add_argument("--split", default="0.7,0.15,0.15")
p.add_argument("--split-by", choices=["block", "random"], default="block")
p.add_argument("--seed", type=int, default=0)
a = p.parse_args()
info = build_dataset(Path(a.patches), Path(a.out), split=tuple(map(float, a.split.split(","))),
                     seed=a.seed, split_by=a.split_by)
print(format_summary(info))
