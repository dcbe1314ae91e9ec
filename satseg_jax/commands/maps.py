"""``satseg area`` and ``satseg plot``: what a predicted class map says."""

from __future__ import annotations

import argparse
from pathlib import Path

from satseg_jax.commands.common import add_commands, library_default, print_wrote, show_progress
from satseg_jax.commands.mapping import add_date_arguments
from satseg_jax.errors import SatsegError
from satseg_jax.io_utils import refuse_overwriting_inputs
from satseg_jax.mapping.scenes import PERIODS


def add_area_arguments(ar: argparse.ArgumentParser) -> None:
    ar.add_argument("--map", default=None, help="class map GeoTIFF or PNG (from satseg "
                    "predict), or mosaic.vrt")
    ar.add_argument("--maps", metavar="MAPDIR", default=None,
                    help="instead of --map: every scene map of 'satseg map --out MAPDIR', "
                    "tallied per region (--by) and --period, a pixel counted once per "
                    "period where scenes overlap (the latest scene's)")
    ar.add_argument("--period", choices=PERIODS, default="month",
                    help="with --maps: rows per month, year, or one row (default: %(default)s)")
    ar.add_argument("--class", dest="class_name", default=None, metavar="NAME",
                    help="with --maps: the class to tally (default: the second of two)")
    ar.add_argument("--items", metavar="manifest.json", default=None,
                    help="with --maps: scene dates from a 'satseg download' manifest")
    add_date_arguments(ar)
    ar.add_argument("--classes", default=None, help="classes.json for the column names")
    ar.add_argument("--by", default=None, help="region polygons (GeoJSON/Shapefile)")
    ar.add_argument("--region-field", default=None, help="attribute naming each region")
    ar.add_argument("--out", default=None, help="write the table as CSV (with --maps: "
                    "OUT.csv, OUT.md and OUT.json, the last listing scenes and failures)")


def cmd_area(args: argparse.Namespace) -> int:
    """Per-class area in km² from the pixel size (ellipsoidal areas for geographic
    CRSs), optionally per region polygon; prints a table (rows = regions, columns =
    classes, totals). A map without a CRS (from a plain image) gives pixel counts
    instead. --maps MAPDIR --by REGIONS --period month: rows are year and month, columns
    the regions and their total, with a total row; each scene is tallied in its own CRS
    and a pixel covered by several scenes of one period counts once (the latest)."""
    if bool(args.map) == bool(args.maps):
        raise SatsegError("satseg area: name one class map with --map MAP, or a folder of "
                          "'satseg map' with --maps MAPDIR (one of them)")
    if args.maps:
        return _area_by_period(args)
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


def _area_by_period(args: argparse.Namespace) -> int:
    from satseg_jax.mapping.period_area import format_markdown, period_area_table, write_table
    from satseg_jax.mapping.scene_maps import done_records
    from satseg_jax.mapping.scenes import Scene, with_dates

    if not args.by:
        raise SatsegError("satseg area --maps: give the region polygons with --by "
                          "REGIONS.geojson --region-field NAME")
    refuse_overwriting_inputs({"--out": args.out}, {"--maps": args.maps, "--by": args.by,
                                                    "--dates": args.dates,
                                                    "--items": args.items})
    dates = None
    if args.dates or args.date_pattern or args.items:
        scenes = [Scene(r["id"], Path(r["source"])) for r in done_records(Path(args.maps))]
        dates = {s.id: s.date.isoformat() for s in with_dates(
            scenes, args.dates, args.date_pattern, args.items) if s.date}
    table = period_area_table(args.maps, args.by, args.region_field, args.period,
                              args.class_name, dates, progress=show_progress())
    print(format_markdown(table), end="")
    if args.out:
        print_wrote(write_table(table, args.out))
    return 1 if table["failed"] else 0


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
