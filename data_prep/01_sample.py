"""Stage 1 — a generated, georeferenced sample scene (stand-in for a downloaded product).

Writes one GeoTIFF per band (blue, green, red, nir; uint16 reflectance x 10000, UTM 23S,
nodata 0 around a rotated footprint), the ground truth as a raster (labels.tif, 255 =
nodata) and as polygons (labels.geojson, attribute "class"), and classes.json. Same
seed, same scene, so the rest of the pipeline is reproducible offline.

    python data_prep/01_sample.py --out runs/quickstart/sample --size 1024

Next: 02_compose.py stacks the band files into one scene.
Library call: satseg_jax.raster.sample.write_sample_scene;
options, defaults and output are those of `satseg sample` (one declaration, shared).
"""

from __future__ import annotations

import sys

from satseg_jax.commands.common import run_script
from satseg_jax.commands.data import add_sample_arguments, cmd_sample


def main(argv: list[str] | None = None) -> int:
    """The ``satseg`` subcommand's own options and handler: nothing declared twice."""
    return run_script(add_sample_arguments, cmd_sample, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
