"""The ``satseg`` command: parses arguments, calls the library, prints results.

No logic of its own lives here. Heavy modules are imported inside each handler so that
``satseg --help`` starts fast and errors a user can cause (SatsegError) are printed on
one line with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from satseg_jax.errors import SatsegError


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        msg = f"expected comma-separated numbers, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _join_negative_values(argv: list[str]) -> list[str]:
    """``--bbox -47.9,-15.9,-47.7,-15.7`` -> ``--bbox=-47.9,...``: argparse would read a
    value starting with '-' as an option, and western/southern coordinates are negative."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--bbox" and i + 1 < len(argv) and re.match(r"^-\d", argv[i + 1]):
            out.append(f"{a}={argv[i + 1]}")
            i += 2
            continue
        out.append(a)
        i += 1
    return out


# ----------------------------------------------------------------------------- handlers


def _cmd_sample(args: argparse.Namespace) -> int:
    from satseg_jax.raster.sample import write_sample_scene

    paths = write_sample_scene(
        args.out, size=args.size, seed=args.seed, pixel_size=args.pixel_size,
        overwrite=args.overwrite,
    )
    for key, path in paths.items():
        print(f"{key:>10}: {path}")
    return 0


def _cmd_compose(args: argparse.Namespace) -> int:
    from satseg_jax.raster.compose import compose_bands

    if args.item:
        from satseg_jax.catalog.manifest import item_files

        # --item: --bands are asset keys or eo:common_name values of the downloaded item
        wanted = [n for b in args.bands for n in _names(b)]
        args.bands = [str(f) for f in item_files(Path(args.item), wanted)]
    if args.pansharpen:
        from satseg_jax.raster.pansharpen import pansharpen

        if args.dtype or args.nodata is not None:
            raise SatsegError("--dtype/--nodata are not used with --pansharpen (its output "
                              "dtype and nodata follow the bands); drop them")
        out = pansharpen([Path(b) for b in args.bands], Path(args.pansharpen), Path(args.out),
                         method=args.method, names=args.names)
        print(f"wrote {out}")
        return 0
    out = compose_bands(
        [Path(b) for b in args.bands], Path(args.out), names=args.names,
        resample_to=Path(args.resample_to) if args.resample_to else None,
        resampling=args.resampling, dtype=args.dtype, nodata=args.nodata,
    )
    print(f"wrote {out}")
    return 0


def _cmd_patches(args: argparse.Namespace) -> int:
    common = dict(out_dir=Path(args.out), classes_path=Path(args.classes), size=args.size,
                  stride=args.stride, min_valid=args.min_valid, edge=args.edge,
                  overwrite=args.overwrite, scene_label=args.scene_label, purity=args.purity,
                  threads=args.threads)
    if args.images:
        if not args.masks:
            raise SatsegError("satseg patches --images DIR needs --masks DIR (the label masks; "
                              "--labels/--vector go with --image SCENE)")
        from satseg_jax.raster.folder_patches import make_folder_patches

        summary = make_folder_patches(
            args.images, args.masks, pair=args.pair, skip_unpaired=args.skip_unpaired,
            colour_tolerance=args.colour_tolerance, mask_mode=args.mask_mode, **common)
        for line in summary["skipped_unpaired"]:
            print(f"skipped {line}")
    else:
        if args.masks or args.pair or args.skip_unpaired:
            raise SatsegError("--masks/--pair/--skip-unpaired go with --images DIR; a scene "
                              "(--image) takes --labels RASTER or --vector FILE")
        if not (args.labels or args.vector):
            raise SatsegError("satseg patches --image SCENE needs --labels RASTER or "
                              "--vector FILE")
        from satseg_jax.raster.patches import make_patches

        summary = make_patches(
            image=Path(args.image), labels=Path(args.labels) if args.labels else None,
            vector=Path(args.vector) if args.vector else None, class_field=args.class_field,
            **common)
    print(json.dumps(summary, indent=2))
    return 0


def _cmd_build(args: argparse.Namespace) -> int:
    from satseg_jax.datasets.build import (
        build_classification_dataset,
        build_dataset,
        format_summary,
    )

    if args.classification:
        if not args.images:
            raise SatsegError("satseg build --classification needs --images DIR "
                              "(one sub-folder per class)")
        if args.split_file:
            raise SatsegError("--split-file is for patches folders of several source images "
                              "(satseg patches --images/--masks), not --classification")
        info = build_classification_dataset(
            Path(args.images), Path(args.out), split=args.split or (0.7, 0.15, 0.15),
            seed=args.seed, split_by=args.split_by or "block", block_size=args.block_size,
            overwrite=args.overwrite, beam_runner=args.beam_runner,
            beam_options=args.beam_options)
    else:
        if not args.patches:
            raise SatsegError("satseg build needs --patches DIR (or --classification --images)")
        # --split/--split-by default to None so that build_dataset can tell them given
        # (refused with --split-file) from defaulted.
        info = build_dataset(
            patches_dir=Path(args.patches), out_dir=Path(args.out), split=args.split,
            seed=args.seed, split_by=args.split_by, block_size=args.block_size,
            overwrite=args.overwrite, beam_runner=args.beam_runner,
            beam_options=args.beam_options, split_file=args.split_file,
        )
    print(format_summary(info))
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from satseg_jax.predict import predict_scene

    r = predict_scene(args.workdir, args.image, args.out, checkpoint=args.checkpoint,
                      tile=args.tile, overlap=args.overlap, blend=args.blend,
                      probabilities=args.probabilities, batch=args.batch)
    for note in r["notes"]:
        print(f"satseg: note: {note}", file=sys.stderr)
    print(f"wrote {r['map']} ({r['format']}, {r['width']}x{r['height']} px, {r['tiles']} "
          f"tiles, checkpoint {r['checkpoint_step']}) in {r['seconds']:.1f} s")
    pixels = r["class_pixels"]
    if r["pixel_area_m2"]:
        a = r["pixel_area_m2"] / 1e6
        print("class areas (km²): " + ", ".join(f"{n} {c * a:.3f}" for n, c in pixels.items()))
        return 0
    if r["crs"] is None:
        from satseg_jax.area import NO_CRS_NOTE

        print(NO_CRS_NOTE)
    else:  # geographic: the pixel area varies by row
        print("geographic CRS: 'satseg area --map MAP' gives ellipsoidal km²")
    print("class pixels: " + ", ".join(f"{n} {c}" for n, c in pixels.items()))
    return 0


def _cmd_area(args: argparse.Namespace) -> int:
    from satseg_jax.area import area_table, format_area_table, write_area_csv

    names = None
    if args.classes:
        from satseg_jax.classes import load_classes

        names = load_classes(args.classes).names
    table = area_table(args.map, names, regions=args.by, region_field=args.region_field)
    print(format_area_table(table))
    if args.out:
        write_area_csv(table, args.out)
        print(f"wrote {args.out}")
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from satseg_jax.classes import load_classes
    from satseg_jax.plots import map_preview_png

    classes = load_classes(args.classes)
    bands = tuple(int(b) for b in args.rgb.split(",")) if args.rgb else None
    out = map_preview_png(args.image, args.map, classes.names, classes.colours, args.out,
                          rgb_bands=bands, max_size=args.max_size)
    print(f"wrote {out}")
    return 0


def _cmd_benchmark(args: argparse.Namespace) -> int:
    from satseg_jax.config_files import load_config_file
    from satseg_jax.variant_sweep import run_sweep

    sweep = load_config_file(args.sweep)
    if args.data_dir:
        sweep.base.data.data_dir = args.data_dir
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
    run_sweep(sweep, args.workdir, steps=args.steps, seeds=seeds)
    print((Path(args.workdir) / "benchmark.md").read_text())
    return 0


def _cmd_download(args: argparse.Namespace) -> int:
    from satseg_jax.catalog.aoi import parse_bbox, read_aoi
    from satseg_jax.catalog.auth import redact, request_headers
    from satseg_jax.catalog.download import download_items

    headers = request_headers(args.token_header, args.header)
    aoi_bounds, aoi_geom = read_aoi(args.aoi) if args.aoi else (None, None)
    catalog = None if args.items else args.catalog  # items from a file: their own hrefs
    if args.items:
        if args.collection:
            raise SatsegError("give --items FILE or search options (--collection ...), not both")
        path = Path(args.items)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise SatsegError(f"{path}: items file not found (write one with satseg search "
                              "--out)") from None
        except json.JSONDecodeError as e:
            raise SatsegError(f"{path}: not valid JSON ({e})") from None
        items = data.get("features", []) if isinstance(data, dict) else data
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise SatsegError(f"{path}: expected a STAC ItemCollection (satseg search --out)")
    else:
        if not args.collection:
            raise SatsegError("satseg download needs --items items.json or --collection ID "
                              "(with the search options of satseg search)")
        from satseg_jax.catalog.search import search_items

        res = search_items(catalog, args.collection,
                           bbox=parse_bbox(args.bbox) if args.bbox else None,
                           intersects=aoi_geom, datetime=args.datetime,
                           max_cloud=args.max_cloud, limit=args.limit, headers=headers)
        items, catalog = res.items, res.catalog
        print(f"{len(items)} item(s) found in {args.collection}")
    summary = download_items(items, _names(args.assets), Path(args.out),
                             aoi_bounds=aoi_bounds, headers=headers, workers=args.workers,
                             retries=args.retries, backoff=args.retry_backoff,
                             catalog=catalog)
    print(redact(json.dumps(summary, indent=2), headers))
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from satseg_jax.inspection import format_inspection, inspect_path

    report = inspect_path(args.path, masks=args.masks, pair=args.pair, classes=args.classes,
                          max_files=args.max_files)
    print(json.dumps(report, indent=2) if args.json else format_inspection(report))
    return 0


# ----------------------------------------------------------------------------- STAC search


def _cmd_search(args: argparse.Namespace) -> int:
    from satseg_jax.catalog import search as stac
    from satseg_jax.catalog.aoi import parse_bbox, read_aoi
    from satseg_jax.catalog.auth import redact, request_headers

    headers = request_headers(args.token_header, args.header)
    if args.list_collections:
        print(stac.format_collections(stac.list_collections(args.catalog, headers)))
        return 0
    if args.bbox and args.aoi:
        raise SatsegError("give --bbox or --aoi, not both")
    result = stac.search_items(
        args.catalog, args.collection, bbox=parse_bbox(args.bbox) if args.bbox else None,
        intersects=read_aoi(args.aoi)[1] if args.aoi else None, datetime=args.datetime,
        max_cloud=args.max_cloud, limit=args.limit, page_size=args.page_size,
        headers=headers)
    if result.items:
        print(stac.format_table(result.items))
    for note in result.notes:
        print(f"note: {note}")
    print(redact(f"{len(result.items)} item(s) in {result.collection} at {result.catalog}"
                 + ("" if result.items else "; widen --bbox/--aoi, --datetime or "
                    "--max-cloud"), headers))
    if args.out:
        out = stac.write_item_collection(result.items, args.out)
        print(f"wrote {out} (STAC ItemCollection; satseg download --items {out})")
    return 0


def _config_command(name: str, argv: list[str], doc: str) -> tuple[object, object]:
    """Parse ``--config file.py --workdir DIR --config.a.b=v`` with ml_collections flags.

    Unknown ``--config.*`` keys are rejected by ml_collections (the config is locked), so a
    typo in an override is an error instead of a silently ignored setting.
    """
    from absl import flags
    from ml_collections import config_flags

    fv = flags.FlagValues()
    argv = [a.replace("--save-predictions", "--save_predictions")
            .replace("--resample-to-train-gsd", "--resample_to_train_gsd") for a in argv]
    full_argv = [f"satseg {name}", *argv]
    config_flags.DEFINE_config_file(
        "config", None, "Path to a config file with get_config(); override fields with "
        "--config.FIELD=VALUE (e.g. --config.train.num_steps=100).", flag_values=fv,
        lock_config=True, sys_argv=full_argv,
    )
    flags.DEFINE_string("workdir", None, "Run directory (checkpoints, summaries, metrics).",
                        flag_values=fv)
    if name == "evaluate":
        flags.DEFINE_string("split", "test", "Split to evaluate.", flag_values=fv)
        flags.DEFINE_string("checkpoint", "best", "best | latest | a step number.",
                            flag_values=fv)
        flags.DEFINE_bool("save_predictions", False,
                          "Write predicted masks as GeoTIFFs under WORKDIR/predictions_SPLIT.",
                          flag_values=fv)
        flags.DEFINE_string("data", None, "Evaluate on another built dataset dir instead.",
                            flag_values=fv)
        flags.DEFINE_bool("resample_to_train_gsd", False,
                          "With --data: resample its patches to the training pixel size.",
                          flag_values=fv)
        flags.DEFINE_integer("overlays", 0,
                             "Draw this many patches (spread over the split) as image | truth "
                             "| prediction | errors rows in WORKDIR/overlays_SPLIT.png.",
                             flag_values=fv)
    if any(a in ("-h", "--help", "-help") for a in argv):
        print(f"usage: satseg {name} [--config CONFIG.py] --workdir DIR [--config.KEY=VALUE ...]"
              f"\n\n{doc}\n")
        print(fv.get_help())
        raise SystemExit(0)
    _check_config_argv(argv)
    try:
        fv(full_argv)
    except (flags.Error, AttributeError, KeyError, ValueError, TypeError) as e:
        msg = " ".join(str(e).replace("\\n", " ").replace("\\'", "'").strip("'\"").split())
        raise SatsegError(f"satseg {name}: bad --config option: {msg}. "
                          "Valid fields are those in the config file's get_config().") from None
    if not fv.workdir:
        raise SatsegError(f"satseg {name}: --workdir is required")
    config = fv.config
    if config is not None:
        try:  # ml_collections defers a failed load to the first use of the config
            config.keys()
        except OSError as e:
            msg = " ".join(str(e).split())[:500]
            raise SatsegError(f"satseg {name}: cannot load --config ({msg})") from None
    return fv, config


def _check_config_argv(argv: list[str]) -> None:
    """Check ``--config FILE`` and its ``--config.KEY=VALUE`` overrides before absl parses
    them: a missing file, a field no code reads (config_files.CONFIG_FIELDS) or an
    override naming no field is one SatsegError listing the valid fields."""
    from satseg_jax.config_files import (
        check_config_fields,
        check_override_keys,
        load_config_file,
    )

    path, keys = None, []
    for i, a in enumerate(argv):
        if a == "--config" and i + 1 < len(argv):
            path = argv[i + 1]
        elif a.startswith("--config="):
            path = a.split("=", 1)[1]
        elif a.startswith("--config."):
            keys.append(a[len("--config."):].split("=", 1)[0])
    if path is None:
        return
    if not Path(path).is_file() and ":" in path:  # FILE.py:ARG, passed to get_config(ARG)
        file_part = path.split(":", 1)[0]
        if not Path(file_part).is_file():
            raise SatsegError(f"{file_part}: config file not found (e.g. configs/unet_sample.py)")
        return  # get_config(ARG) may build another config: ml_collections checks overrides
    config = load_config_file(path)
    check_config_fields(config, path)
    check_override_keys(config, keys, path)


def _cmd_train(argv: list[str]) -> int:
    fv, config = _config_command("train", argv, TRAIN_DOC)
    if config is None:
        raise SatsegError("satseg train: --config is required (e.g. configs/unet_sample.py)")
    from satseg_jax.train import Preempted, train_and_evaluate

    try:
        train_and_evaluate(config, fv.workdir)
    except Preempted as e:  # saved and reported; the status says which signal
        return int(e.code)
    return 0


def _cmd_evaluate(argv: list[str]) -> int:
    fv, _ = _config_command("evaluate", argv, EVALUATE_DOC)
    from satseg_jax.evaluate import evaluate_workdir
    from satseg_jax.metrics import format_metrics_table

    result = evaluate_workdir(
        fv.workdir, split=fv.split, checkpoint=fv.checkpoint,
        save_predictions=fv.save_predictions, data_dir=fv.data,
        resample_to_train_gsd=fv.resample_to_train_gsd, overlays=fv.overlays,
    )
    print(format_metrics_table(result))
    return 0


TRAIN_DOC = (
    "Train a model from a config file. Restores the latest checkpoint in WORKDIR/checkpoints "
    "automatically (refusing a workdir written by an incompatible config), evaluates every "
    "config.eval_every steps and writes TensorBoard summaries to WORKDIR. On SIGTERM or "
    "SIGINT (Ctrl-C) it finishes the current step, saves a checkpoint of it and exits with "
    "status 143 (SIGTERM) or 130 (SIGINT); run the same command again to resume."
)
EVALUATE_DOC = (
    "Evaluate a trained run on a split: confusion matrix over the whole split (ignore label "
    "255 excluded) -> pixel accuracy, per-class F1 and IoU, macro F1, mIoU. Writes "
    "WORKDIR/metrics_SPLIT.json and a confusion-matrix PNG. The config is read from WORKDIR."
)


# ----------------------------------------------------------------------------- parser


def _add_stac_args(p: argparse.ArgumentParser) -> None:
    """Catalogue, search filters and credentials: shared by search and download."""
    p.add_argument("--catalog", default="inpe-dgi", metavar="inpe-dgi|inpe-bdc|URL|PATH",
                    help="inpe-dgi (default: https://www.dgi.inpe.br/lgi-stac), inpe-bdc "
                    "(https://data.inpe.br/bdc/stac/v1/), any STAC API URL, or a static "
                    "catalog.json")
    p.add_argument("--collection", default=None, metavar="ID",
                    help="collection id, e.g. CBERS4A_WPM_L4_DN (see --list-collections)")
    p.add_argument("--bbox", default=None, metavar="W,S,E,N",
                    help="area in WGS84 degrees, e.g. -47.9,-15.9,-47.7,-15.7")
    p.add_argument("--aoi", default=None, metavar="AOI.geojson",
                    help="area of interest as GeoJSON (WGS84), instead of --bbox")
    p.add_argument("--datetime", default=None, metavar="START/END",
                    help="date or interval, e.g. 2023-01-01/2023-12-31, 2023-06, 2023-01-01/..")
    p.add_argument("--max-cloud", type=float, default=None, metavar="PCT",
                    help="keep items with eo:cloud_cover <= PCT; items reporting no cloud "
                    "cover are then left out (and counted)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="at most N items")
    p.add_argument("--header", action="append", default=[], metavar="'NAME: VALUE'",
                    help="extra HTTP header for catalogue and file requests (repeatable)")
    p.add_argument("--token-header", default=None, metavar="NAME",
                    help="send SATSEG_STAC_TOKEN as this header instead of Authorization")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="satseg",
        description="Satellite image segmentation with JAX/Flax: sample -> compose -> patches "
        "-> build -> train -> evaluate. Run 'satseg COMMAND --help' for each command.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("sample", help="write a generated, georeferenced sample scene",
                       description="Write a synthetic but plausible scene: one GeoTIFF per band "
                       "(blue, green, red, nir; uint16, UTM), labels.tif, labels.geojson and "
                       "classes.json. Deterministic for a given --seed.")
    s.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    s.add_argument("--size", type=int, default=1024, help="scene width and height in pixels")
    s.add_argument("--seed", type=int, default=0, help="random seed (same seed, same scene)")
    s.add_argument("--pixel-size", type=float, default=8.0, help="ground pixel size in metres")
    s.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    s.set_defaults(func=_cmd_sample)

    c = sub.add_parser("compose", help="stack band rasters into one multi-band GeoTIFF",
                       description="Stack the bands of single- or multi-band rasters into one "
                       "tiled, compressed GeoTIFF, streaming by windows. Refuses inputs whose "
                       "CRS, transform or size differ unless --resample-to is given, and mixed "
                       "dtypes unless --dtype is given. Each input's nodata becomes nodata of "
                       "the stacked scene (in every band).")
    c.add_argument("--bands", nargs="+", required=True,
                   help="raster files, in output order; every band of each is kept (with "
                   "--item: asset keys or common names, e.g. red,green,blue,nir)")
    c.add_argument("--item", default=None, metavar="DIR/ITEM_ID",
                   help="a folder written by 'satseg download': --bands then name its assets "
                   "(keys or eo:common_name), looked up in DIR/manifest.json")
    c.add_argument("--out", required=True, help="output GeoTIFF")
    c.add_argument("--names", type=_names, default=None,
                   help="comma-separated band names, one per output band (default: each band's "
                   "description, else the file stem, or STEM_b<i> for multi-band files)")
    c.add_argument("--dtype", default=None,
                   choices=["uint8", "uint16", "int16", "uint32", "int32", "float32", "float64"],
                   help="promote every band to this dtype (must hold all input values, e.g. "
                   "int16 + float32 -> float32)")
    c.add_argument("--nodata", type=float, default=None,
                   help="nodata of the output (default: the inputs' common nodata; NaN for a "
                   "float output when they differ)")
    c.add_argument("--resample-to", default=None,
                   help="reference raster: reproject every band onto its grid")
    c.add_argument("--resampling", default="bilinear",
                   choices=["nearest", "bilinear", "cubic", "average"],
                   help="resampling used with --resample-to")
    c.add_argument("--pansharpen", default=None, metavar="PAN.tif",
                   help="fuse the (coarser) bands with this panchromatic band; the output is "
                   "on PAN's grid")
    c.add_argument("--method", choices=["brovey", "ihs", "weighted"], default="brovey",
                   help="pan-sharpening method (with --pansharpen)")
    c.set_defaults(func=_cmd_compose)

    t = sub.add_parser("patches", help="crop a scene into image + mask patch GeoTIFFs",
                       description="Cut a scene (--image) or every image of a labelled dataset "
                       "(--images/--masks) into patches by windowed reads. Each image patch "
                       "and mask patch is a GeoTIFF with its own georeferencing (none for plain "
                       "images); nodata becomes the ignore label 255; index.csv lists every "
                       "patch (and its source image).")
    inp = t.add_mutually_exclusive_group(required=True)
    inp.add_argument("--image", help="multi-band scene GeoTIFF")
    inp.add_argument("--images", metavar="DIR_OR_GLOB",
                     help="a labelled dataset: folder (searched recursively) or quoted glob of "
                     "folders ('LoveDA/Train/*/images_png') of image files GDAL reads "
                     "(GeoTIFF, PNG, JPEG, JP2), georeferenced or not, any sizes")
    lab = t.add_mutually_exclusive_group(required=True)
    lab.add_argument("--labels", help="label raster on the scene grid (with --image)")
    lab.add_argument("--vector", help="label polygons (GeoJSON, Shapefile, ...) (with --image)")
    lab.add_argument("--masks", metavar="DIR_OR_GLOB",
                     help="with --images: the mask folder(s); index masks (class values), "
                     "RGB or palette colour-coded masks, decoded through --classes")
    t.add_argument("--pair", metavar="PATTERN", default=None,
                   help="with --images: how image and mask names differ, e.g. "
                   "'{stem}_sat.jpg:{stem}_mask.png' (default: same relative path / stem)")
    t.add_argument("--skip-unpaired", action="store_true",
                   help="with --images: leave out (and report) files without a partner "
                   "instead of failing")
    t.add_argument("--colour-tolerance", "--color-tolerance", type=int, default=None,
                   metavar="N", dest="colour_tolerance",
                   help="accept lossy (JPEG) masks: map each pixel to the nearest declared "
                   "colour/value at most N levels away per channel (else the error stands)")
    t.add_argument("--mask-mode", choices=["auto", "index", "colour"], default="auto",
                   help="with --images: auto (RGB -> colours; palette -> colours when every "
                   "class declares one; else values), or force index/colour decoding")
    t.add_argument("--class-field", default="class",
                   help="attribute of --vector holding the class value (default: class)")
    t.add_argument("--classes", required=True, help="classes.json")
    t.add_argument("--size", type=int, default=256, help="patch size in pixels")
    t.add_argument("--stride", type=int, default=None, help="step between patches (default: size)")
    t.add_argument("--min-valid", type=float, default=0.5,
                   help="skip patches whose valid (non-nodata) fraction is below this")
    t.add_argument("--edge", choices=["drop", "pad"], default="drop",
                   help="incomplete patches at the right/bottom edge: drop them, or pad with "
                   "nodata/ignore")
    t.add_argument("--scene-label", action="store_true",
                   help="classification patches: label each patch with its majority class and "
                   "write OUT/<class>/<id>.tif (input for build --classification)")
    t.add_argument("--purity", type=float, default=0.9,
                   help="with --scene-label: minimum share of the majority class among the "
                   "patch's labelled pixels")
    t.add_argument("--out", required=True, help="output folder")
    t.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    t.add_argument("--threads", type=int, default=None,
                   help="threads writing (DEFLATE-encoding) patch files (default: the cores, "
                   "at most 4); the output is the same for any number")
    t.set_defaults(func=_cmd_patches)

    b = sub.add_parser("build", help="write patches as a tfds dataset (sharded TFRecords)",
                       description="Build a tensorflow-datasets dataset from a patches folder: "
                       "train/validation/test splits, per-band statistics (train split only), "
                       "class pixel counts; writes satseg_dataset.json beside it.")
    b.add_argument("--patches", help="folder written by 'satseg patches'")
    b.add_argument("--classification", action="store_true",
                   help="build a scene-classification dataset from --images instead")
    b.add_argument("--images", help="with --classification: DIR/<class>/<image> files "
                   "(GeoTIFF/PNG/JPEG), e.g. from 'satseg patches --scene-label'")
    b.add_argument("--out", required=True, help="dataset folder (tfds data_dir)")
    b.add_argument("--split", type=_floats, default=None,
                   help="train,validation,test fractions (default 0.7,0.15,0.15)")
    b.add_argument("--seed", type=int, default=0, help="seed of the split")
    b.add_argument("--split-by", choices=["block", "random", "source"], default=None,
                   help="block (default): spatial blocks of patches go to one split together "
                   "(no neighbour leakage; never spanning two source images); random: "
                   "patches independently; source: all patches of a source image in one "
                   "split (folders from satseg patches --images/--masks)")
    b.add_argument("--split-file", default=None, metavar="JSON",
                   help='explicit source images per split, e.g. a published list: {"train": '
                   '[...], "validation": [...], "test": [...]} ("val" also accepted; missing '
                   "splits are empty); entries are source keys (region/images/name), image "
                   "file names or stems. Excludes --split/--split-by/--block-size")
    b.add_argument("--block-size", type=int, default=None,
                   help="block side in patches for --split-by block (default: chosen so there "
                   "are about 20 blocks)")
    b.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    b.add_argument("--beam-runner", default=None, metavar="RUNNER",
                   help="generate the examples with an Apache Beam pipeline on this runner "
                   "(DirectRunner on this machine; DataflowRunner, FlinkRunner, SparkRunner "
                   "on a cluster whose workers see --patches and --out); needs "
                   'pip install "satseg-jax[beam]". Same dataset as without it')
    b.add_argument("--beam-options", default=None, metavar="FLAGS",
                   help="with --beam-runner: Beam pipeline options as one quoted string, "
                   'e.g. "--direct_num_workers=2 --direct_running_mode=multi_processing" '
                   '(a single flag needs the = form: --beam-options="--direct_num_workers=2")')
    b.set_defaults(func=_cmd_build)

    pr = sub.add_parser("predict", help="predict a class map for a whole scene or plain image",
                        description="Sliding-window inference over a whole scene, read by "
                        "windows; overlapping tiles are blended; writes a Cloud-Optimised "
                        "GeoTIFF with the scene's CRS/transform, a colour table and nodata "
                        "(255) where the scene is nodata. A plain image without a CRS "
                        "(JPEG/PNG/TIFF) gives a map of the same size: --out *.png writes a "
                        "palette PNG (value = class id, palette = class colours, 255 = "
                        "nodata, white and transparent), any other name a GeoTIFF without a "
                        "CRS; areas are then pixel counts only.")
    pr.add_argument("--workdir", required=True, help="training run")
    pr.add_argument("--image", required=True, help="scene GeoTIFF, or a plain image without "
                    "CRS (JPEG/PNG/TIFF); same bands as training")
    pr.add_argument("--out", required=True, help="output class map: GeoTIFF, or .png for an "
                    "image without CRS")
    pr.add_argument("--checkpoint", default="best", help="best | latest | a step")
    pr.add_argument("--tile", type=int, default=256, help="output tile size in pixels")
    pr.add_argument("--overlap", type=int, default=64, help="overlap between tiles")
    pr.add_argument("--blend", choices=["gaussian", "mean", "none"], default="gaussian",
                    help="how overlapping tiles are combined")
    pr.add_argument("--probabilities", default=None,
                    help="also write per-class probabilities (uint8, 0-255) here")
    pr.add_argument("--batch", type=int, default=8, help="tiles per model call")
    pr.set_defaults(func=_cmd_predict)

    ar = sub.add_parser("area", help="area per class (km²) of a class map, optionally per region",
                        description="Per-class area in km² from the pixel size (ellipsoidal "
                        "areas for geographic CRSs), optionally per region polygon; prints a "
                        "table (rows = regions, columns = classes, totals). A map without a "
                        "CRS (from a plain image) gives pixel counts instead.")
    ar.add_argument("--map", required=True, help="class map GeoTIFF or PNG (from satseg "
                    "predict)")
    ar.add_argument("--classes", default=None, help="classes.json for the column names")
    ar.add_argument("--by", default=None, help="region polygons (GeoJSON/Shapefile)")
    ar.add_argument("--region-field", default=None, help="attribute naming each region")
    ar.add_argument("--out", default=None, help="write the table as CSV")
    ar.set_defaults(func=_cmd_area)

    pl = sub.add_parser("plot", help="PNG: scene RGB preview beside the predicted map",
                        description="Read the scene and the map decimated (never whole) and "
                        "draw them side by side with a class legend.")
    pl.add_argument("--image", required=True, help="scene GeoTIFF")
    pl.add_argument("--map", required=True, help="class map from satseg predict")
    pl.add_argument("--classes", required=True, help="classes.json (names and colours)")
    pl.add_argument("--out", required=True, help="output PNG")
    pl.add_argument("--rgb", default=None, help="band numbers for R,G,B (default: the bands "
                    "named red, green, blue, else 1,2,3)")
    pl.add_argument("--max-size", type=int, default=1024, help="longest side of the preview")
    pl.set_defaults(func=_cmd_plot)

    m = sub.add_parser("benchmark", help="train and compare model variants from a sweep config",
                       description="Train every variant of a sweep config on the same data, "
                       "evaluate on the same test split and write RUNS/benchmark.md, .csv and "
                       ".png (mean ± std over seeds, plus a majority-class baseline). Finished "
                       "runs are not redone.")
    m.add_argument("--sweep", required=True, help="sweep config, e.g. "
                   "configs/bench/unet_variants.py")
    m.add_argument("--workdir", required=True, help="folder for the runs and the tables")
    m.add_argument("--steps", type=int, default=None, help="training steps per run "
                   "(default: the sweep config's)")
    m.add_argument("--seeds", default=None, help="comma-separated seeds (default: the "
                   "sweep config's)")
    m.add_argument("--data-dir", default=None, help="dataset to use instead of the config's")
    m.set_defaults(func=_cmd_benchmark)

    dl = sub.add_parser(
        "download", help="fetch assets of STAC items (whole files, or only an --aoi window)",
        description="Fetch the chosen assets of STAC items into OUT/<item id>/<asset>.tif "
        "and write OUT/manifest.json. Items come from 'satseg search --out items.json' or "
        "from the same search options given here. With --aoi only the window covering the "
        "area is read (HTTP range requests on Cloud-Optimised GeoTIFFs). Resumable (a rerun "
        "skips complete files and continues partial ones), verified (size, file:checksum), "
        "retried with backoff. Credentials: SATSEG_STAC_TOKEN (sent as 'Authorization: "
        "Bearer ...' or as --token-header NAME) and --header; never printed or written.")
    dl.add_argument("--items", default=None, help="STAC ItemCollection from satseg search --out")
    _add_stac_args(dl)
    dl.add_argument("--assets", required=True,
                    help="comma-separated asset keys or eo:common_name values, e.g. "
                    "red,green,blue,nir or BAND13,BAND14")
    dl.add_argument("--out", required=True, help="download folder")
    dl.add_argument("--workers", type=int, default=4, help="files fetched in parallel")
    dl.add_argument("--retries", type=int, default=5,
                    help="retries per file on network errors, 5xx and 429 (backoff doubles)")
    dl.add_argument("--retry-backoff", type=float, default=0.5,
                    help="seconds before the first retry")
    dl.set_defaults(func=_cmd_download)

    ins = sub.add_parser("inspect", help="what a scene, image/mask folder, patches folder or "
                         "dataset holds, before importing it",
                         description="Report sizes, bands, dtypes, CRS (or none), nodata and, "
                         "for masks, the distinct values or colours with pixel counts; with "
                         "--masks the pairs and unpaired files. Fast: folders are read by "
                         "headers only and pixels by bounded, decimated samples.")
    ins.add_argument("path", metavar="PATH", help="a raster, a folder (or quoted glob of "
                     "folders, e.g. 'LoveDA/Train/*/images_png') of images, a patches folder "
                     "or a dataset folder written by satseg build")
    ins.add_argument("--masks", default=None, metavar="DIR_OR_GLOB",
                     help="mask folder (or glob) to pair with PATH's images, as satseg patches "
                     "--images/--masks does; with a single raster PATH, its mask file")
    ins.add_argument("--pair", default=None, metavar="PATTERN",
                     help="file-name pattern pairing images and masks, e.g. "
                     "'{stem}_sat.jpg:{stem}_mask.png' (without --masks: both in PATH)")
    ins.add_argument("--classes", default=None, help="classes.json: flag mask values/colours "
                     "it does not declare")
    ins.add_argument("--max-files", type=int, default=2000, metavar="N",
                     help="open at most N image and N mask headers (evenly spaced; default "
                     "2000)")
    ins.add_argument("--json", action="store_true", help="print the report as JSON")
    ins.set_defaults(func=_cmd_inspect)

    se = sub.add_parser(
        "search", help="find scenes in a STAC catalogue (INPE's DGI by default)",
        description="Search a STAC API (or a static STAC catalog on disk) for the items of a "
        "collection over an area and dates; print id, date, cloud cover and assets (with "
        "eo:common_name), and with --out write them as a STAC ItemCollection for 'satseg "
        "download --items'. Credentials: SATSEG_STAC_TOKEN (sent as 'Authorization: Bearer "
        "...' or as --token-header NAME) and --header; never printed. Needs network access "
        "(except for a catalog on disk).")
    _add_stac_args(se)
    se.add_argument("--page-size", type=int, default=100, metavar="N",
                    help="items per request to the API (default 100)")
    se.add_argument("--out", default=None, metavar="items.json",
                    help="write the matches as a STAC ItemCollection")
    se.add_argument("--list-collections", action="store_true",
                    help="list the catalogue's collections (id, title) and exit")
    se.set_defaults(func=_cmd_search)

    sub.add_parser("train", help="train a model from a config file (see 'satseg train --help')",
                   add_help=False)
    sub.add_parser("evaluate", help="evaluate a run on a split (see 'satseg evaluate --help')",
                   add_help=False)
    return p


def _quiet_libraries() -> None:
    """Keep the console for our progress lines: library chatter (TF, tfds, Orbax) is
    routed through absl/TF logging at WARNING; show it only for errors."""
    import logging
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.getLogger("absl").setLevel(logging.ERROR)
    # urllib3's retry warnings print request paths with their query strings (signed URLs,
    # API keys); our own errors say what failed, redacted.
    logging.getLogger("urllib3").setLevel(logging.ERROR)


# Commands that run XLA steps on the model: they get the malloc settings. Data prep
# (patches, build, ...) does not: its work is GDAL/tf.data threads, which a single malloc
# arena slows slightly (`satseg patches` 4096²: median 2.86 s with, 2.76 s without).
XLA_COMMANDS = ("train", "evaluate", "predict", "benchmark")


def _keep_freed_memory(argv: Sequence[str]) -> None:
    """malloc keeps XLA's freed step buffers (satseg_jax/host_memory.py: ~110k page faults
    and 0.3 s of kernel time less per CPU train step). Only for XLA_COMMANDS and only
    before JAX has started: a ``main()`` called from a process that already ran JAX
    leaves malloc as it is."""
    from satseg_jax import host_memory, xla_flags

    if argv and argv[0] in XLA_COMMANDS and not xla_flags.backends_initialized():
        host_memory.keep_freed_memory()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _keep_freed_memory(argv)
    _quiet_libraries()
    try:
        if argv and argv[0] in ("train", "evaluate"):
            handler = _cmd_train if argv[0] == "train" else _cmd_evaluate
            return handler(argv[1:])
        parser = build_parser()
        args = parser.parse_args(_join_negative_values(argv))
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        return args.func(args)
    except SatsegError as e:
        print(f"satseg: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("satseg: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
