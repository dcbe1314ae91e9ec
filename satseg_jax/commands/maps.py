"""``satseg area`` and ``satseg plot``: what a predicted class map says."""

from __future__ import annotations

import argparse

from satseg_jax.commands.common import add_commands, library_default, print_wrote
from satseg_jax.io_utils import refuse_overwriting_inputs


def add_area_arguments(ar: argparse.ArgumentParser) -> None:
    ar.add_argument("--map", required=True, help="class map GeoTIFF or PNG (from satseg "
                    "predict)")
    ar.add_argument("--classes", default=None, help="classes.json for the column names")
    ar.add_argument("--by", default=None, help="region polygons (GeoJSON/Shapefile)")
    ar.add_argument("--region-field", default=None, help="attribute naming each region")
    ar.add_argument("--out", default=None, help="write the table as CSV")


def cmd_area(args: argparse.Namespace) -> int:
    """Per-class area in km² from the pixel size (ellipsoidal areas for geographic
    CRSs), optionally per region polygon; prints a table (rows = regions, columns =
    classes, totals). A map without a CRS (from a plain image) gives pixel counts
    instead."""
    refuse_overwriting_inputs({"--out": args.out},
                              {"--map": args.map, "--classes": args.classes, "--by": args.by})
    from satseg_jax.area import area_table, format_area_table, write_area_csv

    names = None
    if args.classes:
        from satseg_jax.classes import load_classes

        names = load_classes(args.classes).names
    table = area_table(args.map, names, regions=args.by, region_field=args.region_field)
    print(format_area_table(table))
    if args.out:
        write_area_csv(table, args.out)
        print_wrote([args.out])
    return 0


def add_plot_arguments(pl: argparse.ArgumentParser) -> None:
    pl.add_argument("--image", required=True, help="scene GeoTIFF")
    pl.add_argument("--map", required=True, help="class map from satseg predict")
    pl.add_argument("--classes", required=True, help="classes.json (names and colours)")
    pl.add_argument("--out", required=True, help="output PNG")
    pl.add_argument("--rgb", default=None, help="band numbers for R,G,B (default: the bands "
                    "named red, green, blue, else 1,2,3)")
    pl.add_argument("--max-size", type=int,
                    default=library_default("satseg_jax.plots", "map_preview_png", "max_size"),
                    help="longest side of the preview in pixels (default: %(default)s)")


def cmd_plot(args: argparse.Namespace) -> int:
    """Read the scene and the map decimated (never whole) and draw them side by side
    with a class legend."""
    refuse_overwriting_inputs({"--out": args.out}, {"--image": args.image, "--map": args.map,
                                                    "--classes": args.classes})
    from satseg_jax.classes import load_classes
    from satseg_jax.plots import map_preview_png

    classes = load_classes(args.classes)
    bands = tuple(int(b) for b in args.rgb.split(",")) if args.rgb else None
    out = map_preview_png(args.image, args.map, classes.names, classes.colours, args.out,
                          rgb_bands=bands, max_size=args.max_size)
    print_wrote([out])
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """area, plot."""
    add_commands(sub, [
        ("area", add_area_arguments, cmd_area,
         "area per class (km²) of a class map, optionally per region"),
        ("plot", add_plot_arguments, cmd_plot,
         "PNG: scene RGB preview beside the predicted map"),
    ])
