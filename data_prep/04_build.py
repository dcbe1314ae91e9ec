"""Stage 4 — patches -> a tensorflow-datasets dataset (TFRecords) + satseg_dataset.json.

Patches are split into train/validation/test, by spatial blocks by default (whole
blocks of neighbouring patches go to one split, so test patches have no near-copies in
train) or at random. Per-band mean/std come from the train split only (valid pixels),
class pixel counts from every split; both land in OUT/satseg_dataset.json with the
split assignment. The build is written under a temporary name and renamed at the end.

    python data_prep/04_build.py --patches runs/quickstart/patches \\
        --out runs/quickstart/data --split 0.7,0.15,0.15 --split-by block

Read a split back as a tf.data.Dataset:

    from satseg_jax.datasets.build import builder_for
    ds = builder_for("runs/quickstart/data").as_dataset(split="train")

Library call: satseg_jax.datasets.build.build_dataset (CLI: satseg build).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from satseg_jax.datasets.build import build_dataset, format_summary
from satseg_jax.errors import SatsegError


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--patches", type=Path, required=True, help="folder from satseg patches")
    p.add_argument("--out", type=Path, required=True, help="dataset folder to write")
    p.add_argument("--split", default="0.7,0.15,0.15",
                   help="train,validation,test fractions summing to 1")
    p.add_argument("--split-by", choices=["block", "random"], default="block",
                   help="block: whole spatial blocks per split; random: patch by patch")
    p.add_argument("--block-size", type=int, default=None,
                   help="block side in patches (default: about 20 blocks)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args = p.parse_args()
    try:
        fractions = tuple(float(x) for x in args.split.split(","))
    except ValueError:
        print(f"error: --split {args.split!r}: expected numbers like 0.7,0.15,0.15",
              file=sys.stderr)
        return 2
    try:
        info = build_dataset(args.patches, args.out, split=fractions, seed=args.seed,
                             split_by=args.split_by, block_size=args.block_size,
                             overwrite=args.overwrite)
    except SatsegError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_summary(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
