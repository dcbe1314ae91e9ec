"""Stage 3 — cut the scene and its labels into image + mask patch GeoTIFFs.

Every patch keeps its own georeferencing (the window's transform), so predictions can be
put back on the map. Masks are uint8 class ids with 255 = ignore: scene nodata, label
nodata and padding all become 255 and are never counted in losses or metrics. Labels
come from a raster on the scene grid (--labels) or from polygons (--vector, rasterized
window by window; GeoJSON works out of the box, other formats need fiona or pyogrio).
Windows whose valid fraction is below --min-valid are skipped.

    python data_prep/03_patches.py --image runs/quickstart/scene.tif \\
        --vector runs/quickstart/sample/labels.geojson \\
        --classes runs/quickstart/sample/classes.json --size 128 --out runs/quickstart/patches

Output: images/, masks/, index.csv (one row per patch with class pixel counts),
classes.json and patches.json (scene grid and parameters). Next: `satseg build`.
Library call: satseg_jax.raster.patches.make_patches;
options, defaults and output are those of `satseg patches` (one declaration, shared).
"""

from __future__ import annotations

import sys

from satseg_jax.commands.common import run_script
from satseg_jax.commands.data import add_patches_arguments, cmd_patches


def main(argv: list[str] | None = None) -> int:
    """The ``satseg`` subcommand's own options and handler: nothing declared twice."""
    return run_script(add_patches_arguments, cmd_patches, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
