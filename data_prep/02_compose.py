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
Library call: satseg_jax.raster.compose.compose_bands;
options, defaults and output are those of `satseg compose` (one declaration, shared).
"""

from __future__ import annotations

import sys

from satseg_jax.commands.common import run_script
from satseg_jax.commands.data import add_compose_arguments, cmd_compose


def main(argv: list[str] | None = None) -> int:
    """The ``satseg`` subcommand's own options and handler: nothing declared twice."""
    return run_script(add_compose_arguments, cmd_compose, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
