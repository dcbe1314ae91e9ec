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
Library call: satseg_jax.raster.patches.make_patches (CLI: satseg patches).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from satseg_jax.errors import SatsegError
from satseg_jax.raster.patches import make_patches


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--image", type=Path, required=True, help="multi-band scene GeoTIFF")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--labels", type=Path, help="label raster on the scene grid")
    src.add_argument("--vector", type=Path, help="label polygons (GeoJSON, ...)")
    p.add_argument("--class-field", default="class", help="attribute holding the class")
    p.add_argument("--classes", type=Path, required=True, help="classes.json")
    p.add_argument("--size", type=int, default=256, help="patch size in pixels")
    p.add_argument("--stride", type=int, default=None, help="step (default: --size)")
    p.add_argument("--min-valid", type=float, default=0.5, help="minimum valid fraction")
    p.add_argument("--edge", choices=["drop", "pad"], default="drop",
                   help="partial windows at the right/bottom edge")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args = p.parse_args()
    try:
        summary = make_patches(
            image=args.image, out_dir=args.out, classes_path=args.classes, size=args.size,
            stride=args.stride, min_valid=args.min_valid, edge=args.edge, labels=args.labels,
            vector=args.vector, class_field=args.class_field, overwrite=args.overwrite)
    except SatsegError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
