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

Library call: satseg_jax.datasets.build.build_dataset;
options, defaults and output are those of `satseg build` (one declaration, shared).
"""

from __future__ import annotations

import sys

from satseg_jax.commands.common import run_script
from satseg_jax.commands.data import add_build_arguments, cmd_build


def main(argv: list[str] | None = None) -> int:
    """The ``satseg`` subcommand's own options and handler: nothing declared twice."""
    return run_script(add_build_arguments, cmd_build, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
