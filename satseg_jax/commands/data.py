"""``satseg sample``, ``compose``, ``patches``, ``build``, ``inspect``: scenes to a dataset.

Each command has an ``add_*_arguments(parser)`` (used by ``satseg`` and by the matching
data_prep/ script, so an option and its default are declared once) and a ``cmd_*``
handler. Defaults that the library function also has are read from its signature
(common.library_default).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from satseg_jax.commands.common import (
    add_commands,
    floats,
    library_default,
    names,
    print_table,
    print_wrote,
    show_progress,
)
from satseg_jax.errors import SatsegError
from satseg_jax.io_utils import refuse_overwriting_inputs

SAMPLE_SERIES = ("satseg_jax.raster.sample_series", "write_scene_series")
SAMPLE = ("satseg_jax.raster.sample", "write_sample_scene")
COMPOSE = ("satseg_jax.raster.compose", "compose_bands")
PANSHARPEN = ("satseg_jax.raster.pansharpen", "pansharpen")
PATCHES = ("satseg_jax.raster.patches", "make_patches")
FOLDER_PATCHES = ("satseg_jax.raster.folder_patches", "make_folder_patches")
BUILD = ("satseg_jax.datasets.build", "build_dataset")
CLASSIFICATION = ("satseg_jax.datasets.build", "build_classification_dataset")


# ----------------------------------------------------------------------------- sample


def add_sample_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    s.add_argument("--size", type=int, default=library_default(*SAMPLE, "size"),
                   help="scene width and height in pixels (default: %(default)s)")
    s.add_argument("--seed", type=int, default=library_default(*SAMPLE, "seed"),
                   help="random seed (same seed, same scene; default: %(default)s)")
    s.add_argument("--pixel-size", type=float, default=library_default(*SAMPLE, "pixel_size"),
                   help="ground pixel size in metres (default: %(default)s)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    s.add_argument("--series", type=int, default=None, metavar="N",
                   help="instead of one scene: N composed 4-band scenes of --size px over "
                   "--months months in two UTM zones, overlapping, named S2_YYYYMMDD_*.tif, "
                   "with regions.geojson (for satseg map / area --maps)")
    s.add_argument("--months", type=int, default=library_default(*SAMPLE_SERIES, "months"),
                   help="with --series: months the scenes spread over (default: %(default)s)")


def cmd_sample(args: argparse.Namespace) -> int:
    """Write a synthetic but plausible scene: one GeoTIFF per band (blue, green, red,
    nir; uint16, UTM), labels.tif, labels.geojson and classes.json. Deterministic for a
    given --seed."""
    refuse_overwriting_inputs({"--out": args.out}, {}, folders=("--out",))
    if args.series is not None:
        from satseg_jax.raster.sample_series import write_scene_series

        paths = write_scene_series(args.out, count=args.series, size=args.size,
                                   seed=args.seed, pixel_size=args.pixel_size,
                                   months=args.months, overwrite=args.overwrite)
        print_table([(key, path) for key, path in paths.items()])
        print_wrote([args.out])
        return 0
    from satseg_jax.raster.sample import write_sample_scene

    paths = write_sample_scene(
        args.out, size=args.size, seed=args.seed, pixel_size=args.pixel_size,
        overwrite=args.overwrite,
    )
    print_table([(key, path) for key, path in paths.items()])
    print_wrote([args.out])
    return 0


# ----------------------------------------------------------------------------- compose


def add_compose_arguments(c: argparse.ArgumentParser) -> None:
    c.add_argument("--bands", nargs="+", required=True,
                   help="raster files, in output order; every band of each is kept (with "
                   "--item: asset keys or common names, e.g. red,green,blue,nir)")
    c.add_argument("--item", default=None, metavar="DIR/ITEM_ID",
                   help="a folder written by 'satseg download': --bands then name its assets "
                   "(keys or eo:common_name), looked up in DIR/manifest.json")
    c.add_argument("--out", required=True, help="output GeoTIFF")
    c.add_argument("--names", type=names, default=None,
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
    c.add_argument("--resampling", default=library_default(*COMPOSE, "resampling"),
                   choices=["nearest", "bilinear", "cubic", "average"],
                   help="resampling used with --resample-to (default: %(default)s)")
    c.add_argument("--pansharpen", default=None, metavar="PAN.tif",
                   help="fuse the (coarser) bands with this panchromatic band; the output is "
                   "on PAN's grid")
    c.add_argument("--strict", action="store_true",
                   help="refuse a band that is NaN in every pixel (default: warn)")
    c.add_argument("--method", choices=["brovey", "ihs", "weighted"],
                   default=library_default(*PANSHARPEN, "method"),
                   help="pan-sharpening method (with --pansharpen; default: %(default)s)")


def cmd_compose(args: argparse.Namespace) -> int:
    """Stack the bands of single- or multi-band rasters into one tiled, compressed
    GeoTIFF, streaming by windows. Refuses inputs whose CRS, transform or size differ
    unless --resample-to is given, and mixed dtypes unless --dtype is given. Each
    input's nodata becomes nodata of the stacked scene (in every band)."""
    from satseg_jax.raster.compose import compose_bands

    if args.item:
        from satseg_jax.catalog.manifest import item_files

        # --item: --bands are asset keys or eo:common_name values of the downloaded item
        wanted = [n for b in args.bands for n in names(b)]
        args.bands = [str(f) for f in item_files(Path(args.item), wanted)]
    refuse_overwriting_inputs({"--out": args.out},
                              {"--bands": args.bands, "--pansharpen": args.pansharpen,
                               "--resample-to": args.resample_to})
    if args.pansharpen:
        from satseg_jax.raster.pansharpen import pansharpen

        if args.dtype or args.nodata is not None:
            raise SatsegError("--dtype/--nodata are not used with --pansharpen (its output "
                              "dtype and nodata follow the bands); drop them")
        out = pansharpen([Path(b) for b in args.bands], Path(args.pansharpen), Path(args.out),
                         method=args.method, names=args.names, progress=show_progress())
        print_wrote([out])
        return 0
    notes: list[str] = []
    out = compose_bands(
        [Path(b) for b in args.bands], Path(args.out), names=args.names,
        resample_to=Path(args.resample_to) if args.resample_to else None,
        resampling=args.resampling, dtype=args.dtype, nodata=args.nodata,
        progress=show_progress(), strict=args.strict, notes=notes,
    )
    for note in notes:
        print(f"satseg: warning: {note}", file=sys.stderr)
    print_wrote([out])
    return 0


# ----------------------------------------------------------------------------- patches


def _add_patch_inputs(t: argparse.ArgumentParser) -> None:
    """--image/--images and where their labels come from."""
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
    t.add_argument("--crop-masks", action="store_true",
                   help="with --images: crop a mask larger than its image to the image's "
                   "size (top-left part kept; each crop is reported), instead of refusing it")
    t.add_argument("--colour-tolerance", "--color-tolerance", type=int, default=None,
                   metavar="N", dest="colour_tolerance",
                   help="accept lossy (JPEG) masks: map each pixel to the nearest declared "
                   "colour/value at most N levels away per channel (else the error stands)")
    t.add_argument("--mask-mode", choices=["auto", "index", "colour"],
                   default=library_default(*FOLDER_PATCHES, "mask_mode"),
                   help="with --images: auto (RGB -> colours; palette -> colours when every "
                   "class declares one; else values), or force index/colour decoding")
    t.add_argument("--class-field", default=library_default(*PATCHES, "class_field"),
                   help="attribute of --vector holding the class value (default: %(default)s)")
    t.add_argument("--classes", required=True, help="classes.json")


def add_patches_arguments(t: argparse.ArgumentParser) -> None:
    _add_patch_inputs(t)
    t.add_argument("--size", type=int, default=library_default(*PATCHES, "size"),
                   help="patch size in pixels (default: %(default)s)")
    t.add_argument("--stride", type=int, default=None, help="step between patches (default: size)")
    t.add_argument("--min-valid", type=float, default=library_default(*PATCHES, "min_valid"),
                   help="skip patches whose valid (non-nodata) fraction is below this "
                   "(default: %(default)s)")
    t.add_argument("--edge", choices=["drop", "pad"], default=library_default(*PATCHES, "edge"),
                   help="incomplete patches at the right/bottom edge: drop them, or pad with "
                   "nodata/ignore (default: %(default)s)")
    t.add_argument("--scene-label", action="store_true",
                   help="classification patches: label each patch with its majority class and "
                   "write OUT/<class>/<id>.tif (input for build --classification)")
    t.add_argument("--purity", type=float, default=library_default(*PATCHES, "purity"),
                   help="with --scene-label: minimum share of the majority class among the "
                   "patch's labelled pixels (default: %(default)s)")
    t.add_argument("--out", required=True, help="output folder")
    t.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    t.add_argument("--threads", type=int, default=None,
                   help="threads writing (DEFLATE-encoding) patch files; with --images, "
                   "source files tiled at once (default: the cores, at most 4); the output "
                   "is the same for any number")


def print_patches_summary(summary: dict[str, Any]) -> None:
    """A few aligned lines instead of the summary's JSON (which patches.json keeps)."""
    rows: list[tuple[str, Any]] = [
        ("patches", f"{summary['num_patches']} kept of {summary['num_windows']} windows, "
                    f"{summary['skipped_low_valid']} dropped (valid fraction below "
                    "--min-valid)")]
    if "num_sources" in summary:
        kinds = ", ".join(f"{k} {n}" for k, n in summary["mask_kinds"].items())
        geo = "georeferenced" if summary["georeferenced"] else "without CRS"
        rows.append(("source images", f"{summary['num_sources']} ({geo}; masks: {kinds})"))
        if summary["smaller_than_size"]:
            rows.append(("smaller than --size", len(summary["smaller_than_size"])))
    rows.append(("bands", ", ".join(summary["bands"])))
    if summary.get("repaired_geometries"):
        rows.append(("repaired geometries", summary["repaired_geometries"]))
    counts = summary["class_pixel_counts"]
    total = sum(counts.values()) or 1
    width = max((len(n) for n in counts), default=0)
    digits = len(str(max(counts.values(), default=0)))
    for i, (name, n) in enumerate(counts.items()):
        rows.append(("pixels per class" if i == 0 else "",
                     f"{name:<{width}} {n:>{digits}} ({100 * n / total:5.1f} %)"))
    rows.append(("ignored pixels", f"{summary['ignored_pixels']} (label 255: nodata, "
                 "unlabelled, padding)"))
    rows.append(("time", f"{summary['seconds']:.2f} s ({summary['input_mb_per_s']} MB/s "
                 "of input)"))
    print_table(rows)
    out = Path(summary["out"])
    print_wrote([f"{out} (images/, masks/, index.csv, patches.json, classes.json)"])


def cmd_patches(args: argparse.Namespace) -> int:
    """Cut a scene (--image) or every image of a labelled dataset (--images/--masks)
    into patches by windowed reads. Each image patch and mask patch is a GeoTIFF with
    its own georeferencing (none for plain images); nodata becomes the ignore label 255;
    index.csv lists every patch (and its source image)."""
    refuse_overwriting_inputs(
        {"--out": args.out},
        {"--image": args.image, "--labels": args.labels, "--vector": args.vector,
         "--classes": args.classes, "--images": args.images, "--masks": args.masks},
        folders=("--out",))
    if args.stride and args.stride > args.size:
        print(f"satseg: warning: --stride {args.stride} is larger than --size {args.size}: "
              f"the {args.stride - args.size}-px strips between patches are in no patch; "
              f"use --stride {args.size} or less to cover the whole scene", file=sys.stderr)
    common = dict(out_dir=Path(args.out), classes_path=Path(args.classes), size=args.size,
                  stride=args.stride, min_valid=args.min_valid, edge=args.edge,
                  overwrite=args.overwrite, scene_label=args.scene_label, purity=args.purity,
                  threads=args.threads, progress=show_progress())
    if args.images:
        if not args.masks:
            raise SatsegError("satseg patches --images DIR needs --masks DIR (the label masks; "
                              "--labels/--vector go with --image SCENE)")
        from satseg_jax.raster.folder_patches import make_folder_patches

        summary = make_folder_patches(
            args.images, args.masks, pair=args.pair, skip_unpaired=args.skip_unpaired,
            colour_tolerance=args.colour_tolerance, mask_mode=args.mask_mode,
            crop_masks=args.crop_masks, **common)
        for line in summary["skipped_unpaired"]:
            print(f"skipped {line}")
        for line in summary["cropped_masks"]:
            print(line)
    else:
        if args.masks or args.pair or args.skip_unpaired or args.crop_masks:
            raise SatsegError("--masks/--pair/--skip-unpaired/--crop-masks go with --images "
                              "DIR; a scene "
                              "(--image) takes --labels RASTER or --vector FILE")
        if not (args.labels or args.vector):
            raise SatsegError("satseg patches --image SCENE needs --labels RASTER or "
                              "--vector FILE")
        from satseg_jax.raster.patches import make_patches

        summary = make_patches(
            image=Path(args.image), labels=Path(args.labels) if args.labels else None,
            vector=Path(args.vector) if args.vector else None, class_field=args.class_field,
            **common)
    print_patches_summary(summary)
    return 0


# ----------------------------------------------------------------------------- build


BEAM_RUNNER_HELP = (
    "generate the examples with an Apache Beam pipeline on this runner (DirectRunner on "
    "this machine; DataflowRunner, FlinkRunner, SparkRunner on a cluster whose workers see "
    '--patches and --out); needs pip install "satseg-jax[beam]". Same dataset as without it')


def add_build_arguments(b: argparse.ArgumentParser) -> None:
    b.add_argument("--patches", help="folder written by 'satseg patches'")
    b.add_argument("--classification", action="store_true",
                   help="build a scene-classification dataset from --images instead")
    b.add_argument("--images", help="with --classification: DIR/<class>/<image> files "
                   "(GeoTIFF/PNG/JPEG), e.g. from 'satseg patches --scene-label'")
    b.add_argument("--out", required=True, help="dataset folder (tfds data_dir)")
    b.add_argument("--split", type=floats, default=None,
                   help="train,validation,test fractions (default 0.7,0.15,0.15)")
    b.add_argument("--seed", type=int, default=library_default(*BUILD, "seed"),
                   help="seed of the split (default: %(default)s)")
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
    b.add_argument("--beam-runner", default=None, metavar="RUNNER", help=BEAM_RUNNER_HELP)
    b.add_argument("--beam-options", default=None, metavar="FLAGS",
                   help="with --beam-runner: Beam pipeline options as one quoted string, "
                   'e.g. "--direct_num_workers=2 --direct_running_mode=multi_processing" '
                   '(a single flag needs the = form: --beam-options="--direct_num_workers=2")')


def cmd_build(args: argparse.Namespace) -> int:
    """Build a tensorflow-datasets dataset from a patches folder: train/validation/test
    splits, per-band statistics (train split only), class pixel counts; writes
    satseg_dataset.json beside it."""
    refuse_overwriting_inputs(
        {"--out": args.out},
        {"--patches": args.patches, "--images": args.images, "--split-file": args.split_file},
        folders=("--out",))
    from satseg_jax.datasets.build import (
        build_classification_dataset,
        build_dataset,
        format_summary,
    )

    common = dict(beam_runner=args.beam_runner, beam_options=args.beam_options,
                  overwrite=args.overwrite, progress=show_progress())
    if args.classification:
        if not args.images:
            raise SatsegError("satseg build --classification needs --images DIR "
                              "(one sub-folder per class)")
        if args.split_file:
            raise SatsegError("--split-file is for patches folders of several source images "
                              "(satseg patches --images/--masks), not --classification")
        info = build_classification_dataset(
            Path(args.images), Path(args.out),
            split=args.split or library_default(*CLASSIFICATION, "split"),
            seed=args.seed, split_by=args.split_by or "block", block_size=args.block_size,
            **common)
    else:
        if not args.patches:
            raise SatsegError("satseg build needs --patches DIR (or --classification --images)")
        # --split/--split-by default to None so that build_dataset can tell them given
        # (refused with --split-file) from defaulted.
        info = build_dataset(
            patches_dir=Path(args.patches), out_dir=Path(args.out), split=args.split,
            seed=args.seed, split_by=args.split_by, block_size=args.block_size,
            split_file=args.split_file, **common)
    print(format_summary(info))  # its first line names the records folder written
    return 0


# ----------------------------------------------------------------------------- wiring


def add_parser(sub: argparse._SubParsersAction) -> None:
    """sample, compose, patches, build, inspect."""
    add_commands(sub, [
        ("sample", add_sample_arguments, cmd_sample,
         "write a generated, georeferenced sample scene"),
        ("compose", add_compose_arguments, cmd_compose,
         "stack band rasters into one multi-band GeoTIFF"),
        ("patches", add_patches_arguments, cmd_patches,
         "crop a scene into image + mask patch GeoTIFFs"),
        ("build", add_build_arguments, cmd_build,
         "write patches as a tfds dataset (sharded TFRecords)"),
        ("inspect", add_inspect_arguments, cmd_inspect,
         "what a scene, image/mask folder, patches folder or dataset holds, before importing it"),
    ])


# ----------------------------------------------------------------------------- inspect


def add_inspect_arguments(ins: argparse.ArgumentParser) -> None:
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
    ins.add_argument("--max-files", type=int, metavar="N",
                     default=library_default("satseg_jax.inspection.report", "inspect_path",
                                             "max_files"),
                     help="open at most N image and N mask headers (evenly spaced; default "
                     "%(default)s)")
    ins.add_argument("--json", action="store_true", help="print the report as JSON")


def cmd_inspect(args: argparse.Namespace) -> int:
    """Report sizes, bands, dtypes, CRS (or none), nodata and, for masks, the distinct
    values or colours with pixel counts; with --masks the pairs and unpaired files.
    Fast: folders are read by headers only and pixels by bounded, decimated samples."""
    import json

    from satseg_jax.inspection import format_inspection, inspect_path

    report = inspect_path(args.path, masks=args.masks, pair=args.pair, classes=args.classes,
                          max_files=args.max_files)
    print(json.dumps(report, indent=2) if args.json else format_inspection(report))
    return 0
