"""``satseg train``, ``evaluate``, ``predict``, ``benchmark``: commands that run the model.

``train`` takes ``--config FILE.py[:ARG]`` and ``--config.KEY=VALUE`` overrides; they
reach the handler as ``args.extra`` (what argparse did not recognise) and are parsed by
satseg_jax.config_overrides with the types of the config's fields.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from satseg_jax.commands.common import (
    add_command,
    add_commands,
    library_default,
    print_wrote,
    show_progress,
)
from satseg_jax.errors import SatsegError
from satseg_jax.io_utils import refuse_overwriting_inputs

PREDICT = ("satseg_jax.predict", "predict_scene")
PREDICT_IMAGES = ("satseg_jax.predict_images", "predict_images")
EVALUATE = ("satseg_jax.evaluate", "evaluate_workdir")
EVALUATE_IMAGES = ("satseg_jax.evaluate_images", "evaluate_images")
TTA_HELP = ("test-time augmentation: average each tile's softmax probabilities over its 8 "
            "flips and 90-degree rotations (mapped back first); non-square patches use the "
            "4 that keep their shape (flips, 180 degrees). About 8x the inference time")
PROBABILITIES_HELP = (
    "also write per-class probabilities to this GeoTIFF: one band per class, named by the "
    "class (band description); uint8 0-255 = probability x 255 (GDAL scale 1/255 set, so "
    "a GIS shows 0-1), the bands of a pixel summing to ~255; pixels where the image is "
    "nodata are 0 in every band and masked by the file's mask band (no uint8 value is "
    "free for a nodata value)")

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
    "WORKDIR/metrics_SPLIT.json and a confusion-matrix PNG. The config is read from WORKDIR. "
    "With --images/--masks/--classes it scores whole labelled images instead (see below). "
    "--tta averages each prediction over flips and rotations. "
    "Ends by naming every file it wrote."
)
OVERRIDES_DOC = (
    "Override any field of the config file: --config.KEY=VALUE or --config.KEY VALUE, e.g. "
    "--config.train.num_steps=100, --config.data.augment=false, "
    "--config.schedule.boundaries=0.5,0.75. The value is read with the type of the field "
    "(bool: true/false/1/0/yes/no; tuples: 0.5,0.75 or '(0.5, 0.75)' or the flag repeated); "
    "a field the config does not have is an error listing the valid ones. "
    "--config FILE.py:ARG calls get_config(ARG)."
)


def reject_extra(args: argparse.Namespace, extra: list[str]) -> None:
    """argparse's error for arguments no option took, as one line."""
    if extra:
        raise SatsegError(f"satseg {args.command}: unrecognized arguments: {' '.join(extra)} "
                          f"(see 'satseg {args.command} --help')")


# ----------------------------------------------------------------------------- train


def add_train_arguments(t: argparse.ArgumentParser) -> None:
    t.add_argument("--config", required=True, metavar="CONFIG.py",
                   help="config file with get_config() (CONFIG.py:ARG passes ARG to it), "
                   "e.g. configs/unet_sample.py")
    t.add_argument("--workdir", required=True, metavar="DIR",
                   help="run directory (checkpoints, summaries, metrics)")
    t.add_argument_group("config overrides (--config.KEY=VALUE ...)", OVERRIDES_DOC)


def cmd_train(args: argparse.Namespace) -> int:
    from satseg_jax.config_overrides import config_from_args, split_overrides

    rest, overrides = split_overrides(args.extra)
    reject_extra(args, rest)
    config = config_from_args(args.config, overrides)
    from satseg_jax.train import Preempted, train_and_evaluate

    try:
        train_and_evaluate(config, args.workdir)
    except Preempted as e:  # saved and reported; the status says which signal
        return int(e.code)
    print_wrote([f"{args.workdir} (checkpoints/, TensorBoard summaries)"])
    return 0


# ----------------------------------------------------------------------------- evaluate


def add_evaluate_arguments(e: argparse.ArgumentParser) -> None:
    e.add_argument("--workdir", required=True, metavar="DIR",
                   help="run directory of satseg train (its config is read from there)")
    e.add_argument("--split", default=library_default(*EVALUATE, "split"),
                   help="split to evaluate (default: %(default)s)")
    e.add_argument("--checkpoint", default=library_default(*EVALUATE, "checkpoint"),
                   help="best | latest | a step number (default: %(default)s)")
    # The underscore spellings are those of the former absl flags, kept for old scripts.
    e.add_argument("--save-predictions", "--save_predictions", action="store_true",
                   dest="save_predictions",
                   help="write predicted masks as GeoTIFFs under WORKDIR/predictions_SPLIT")
    e.add_argument("--data", default=None, metavar="OTHER_DATA",
                   help="evaluate on another built dataset dir instead")
    e.add_argument("--resample-to-train-gsd", "--resample_to_train_gsd", action="store_true",
                   dest="resample_to_train_gsd",
                   help="with --data: resample its patches to the training pixel size")
    e.add_argument("--overlays", type=int, default=library_default(*EVALUATE, "overlays"),
                   metavar="N", help="draw this many patches (spread over the split) as image "
                   "| truth | prediction | errors rows in WORKDIR/overlays_SPLIT.png")
    e.add_argument("--tta", action="store_true", help=TTA_HELP)
    add_ema_argument(e, EVALUATE)
    w = e.add_argument_group(
        "whole images (--images/--masks)",
        "Score the run on whole labelled images instead of a dataset split, as published "
        "benchmarks do: each image is mapped like 'satseg predict' maps it (sliding window, "
        "--tile/--overlap/--blend) and compared with its mask; pairing and mask decoding "
        "are those of 'satseg patches --images/--masks'; no patch is written. Writes "
        "WORKDIR/metrics_NAME.json and confusion_NAME.png (NAME: --name)")
    w.add_argument("--images", metavar="DIR_OR_GLOB", help="image folder, or a quoted glob "
                   "of region folders")
    w.add_argument("--masks", metavar="DIR_OR_GLOB", help="mask folder(s) (same rules)")
    w.add_argument("--classes", metavar="classes.json", help="the classes the masks hold "
                   "(those the run was trained on)")
    w.add_argument("--pair", metavar="PATTERN", help="e.g. '{stem}_sat.jpg:{stem}_mask.png'")
    w.add_argument("--skip-unpaired", action="store_true",
                   help="leave files without a partner out (reported) instead of failing")
    w.add_argument("--mask-mode", choices=["auto", "index", "colour"],
                   default=library_default(*EVALUATE_IMAGES, "mask_mode"),
                   help="how masks are read (default: %(default)s)")
    w.add_argument("--colour-tolerance", type=int, default=None, metavar="N",
                   help="accept lossy (JPEG) masks: nearest declared colour within N")
    w.add_argument("--name", default=library_default(*EVALUATE_IMAGES, "name"),
                   help="NAME of the metrics files (default: %(default)s)")
    add_tiling_arguments(w, EVALUATE_IMAGES)


def add_tiling_arguments(g, library: tuple[str, str]) -> None:
    """--tile, --overlap, --blend, --batch: the sliding window of predict (and of
    evaluate --images), defaults read from ``library``'s signature."""
    g.add_argument("--tile", type=int, default=library_default(*library, "tile"),
                   help="output tile size in pixels (default: %(default)s)")
    g.add_argument("--overlap", type=int, default=library_default(*library, "overlap"),
                   help="overlap between tiles (default: %(default)s)")
    g.add_argument("--blend", choices=["gaussian", "mean", "none"],
                   default=library_default(*library, "blend"),
                   help="how overlapping tiles are combined (default: %(default)s)")
    g.add_argument("--batch", type=int, default=library_default(*library, "batch"),
                   help="tiles per model call (default: %(default)s)")


def add_ema_argument(parser: argparse.ArgumentParser, library: tuple[str, str]) -> None:
    """``--ema/--no-ema``: which weights of a run trained with config.train.ema_decay."""
    parser.add_argument("--ema", action=argparse.BooleanOptionalAction,
                        default=library_default(*library, "ema"),
                        help="use the exponential moving average of the weights when the run "
                        "has one (trained with config.train.ema_decay > 0: the weights its "
                        "best checkpoint was chosen by); --no-ema uses the raw weights "
                        "(default: %(default)s)")


def cmd_evaluate(args: argparse.Namespace) -> int:
    if args.images or args.masks:
        return _evaluate_images(args)
    run = Path(args.workdir)
    written = [run / f"{name}_{args.split}{ext}" for name, ext in (
        ("metrics", ".json"), ("confusion", ".png"), ("overlays", ".png"))]
    refuse_overwriting_inputs(
        {"--workdir": written, "--save-predictions": run / f"predictions_{args.split}"},
        {"--data": args.data}, folders=("--save-predictions",))
    from satseg_jax.evaluate import evaluate_workdir
    from satseg_jax.metrics import format_metrics_table

    result = evaluate_workdir(
        args.workdir, split=args.split, checkpoint=args.checkpoint,
        save_predictions=args.save_predictions, data_dir=args.data,
        resample_to_train_gsd=args.resample_to_train_gsd, overlays=args.overlays,
        tta=args.tta, ema=args.ema,
    )
    print(format_metrics_table(result))
    print_wrote([f"{p}/ (predicted masks)" if Path(p).is_dir() else p
                 for p in result["written"]])
    return 0


# ----------------------------------------------------------------------------- predict


def add_predict_arguments(pr: argparse.ArgumentParser) -> None:
    pr.add_argument("--workdir", help="training run")
    pr.add_argument("--model", metavar="DIR", help="instead of --workdir: a model from "
                    "'satseg export --format savedmodel|onnx' (runs without JAX; --image only)")
    pr.add_argument("--image", help="scene GeoTIFF, or a plain image without CRS "
                    "(JPEG/PNG/TIFF); same bands as training")
    pr.add_argument("--out", help="output class map: GeoTIFF, or .png for an image without CRS")
    pr.add_argument("--images", metavar="DIR_OR_GLOB", help="instead of --image/--out: map "
                    "every image of a folder (searched recursively), a quoted glob of region "
                    "folders or a quoted glob of files, with one restore and one compile, "
                    "into --out-dir")
    pr.add_argument("--out-dir", metavar="OUT", help="with --images: OUT/<name>.tif (COG) "
                    "for each georeferenced image, OUT/<name>.png (palette PNG) for each "
                    "plain one, <name> = its path under the folder without suffix, and "
                    "OUT/predictions.json listing maps and failures. A file that fails is "
                    "reported by name and the others are mapped; the exit status is then 1")
    pr.add_argument("--overwrite", action="store_true",
                    help="with --images: replace an existing, non-empty --out-dir (kept "
                    "until the new one is complete)")
    pr.add_argument("--checkpoint", default=library_default(*PREDICT, "checkpoint"),
                    help="best | latest | a step (default: %(default)s)")
    add_tiling_arguments(pr, PREDICT)
    pr.add_argument("--tta", action="store_true", help=TTA_HELP)
    add_ema_argument(pr, PREDICT)
    pr.add_argument("--probabilities", default=None, metavar="P.tif",
                    help=PROBABILITIES_HELP)


def _check_predict_mode(args: argparse.Namespace) -> None:
    """One image (--image/--out) or a folder (--images/--out-dir), never a mix; a run
    (--workdir) or an exported model (--model)."""
    if bool(args.workdir) == bool(args.model):
        raise SatsegError("satseg predict: name the model with --workdir RUN (a training run) "
                          "or --model DIR (from satseg export), one of them")
    if args.model and (args.images or args.tta or not args.ema):
        raise SatsegError("satseg predict --model: maps one --image (TTA and the weights "
                          "choice were fixed at export); use --workdir RUN for the others")
    if bool(args.image) == bool(args.images):
        raise SatsegError("satseg predict: the following arguments are required: --image "
                          "FILE and --out MAP, or --images DIR_OR_GLOB and --out-dir OUT "
                          "(not both; see 'satseg predict --help')")
    if args.image and (not args.out or args.out_dir or args.overwrite):
        raise SatsegError("satseg predict --image: name the map with --out MAP (--out-dir and "
                          "--overwrite go with --images)")
    if args.images and (not args.out_dir or args.out or args.probabilities):
        raise SatsegError("satseg predict --images: name the output folder with --out-dir OUT "
                          "(--out and --probabilities name one file: use them with --image)")


def cmd_predict(args: argparse.Namespace) -> int:
    """Sliding-window inference over a whole scene, read by windows; overlapping tiles
    are blended; writes a Cloud-Optimised GeoTIFF with the scene's CRS/transform, a
    colour table and nodata (255) where the scene is nodata. A plain image without a CRS
    (JPEG/PNG/TIFF) gives a map of the same size: --out *.png writes a palette PNG
    (value = class id, palette = class colours, 255 = nodata, white and transparent),
    any other name a GeoTIFF without a CRS; areas are then pixel counts only.
    --images DIR_OR_GLOB --out-dir OUT maps every image of a folder set in one process
    (one restore, one compile). --probabilities writes one uint8 band per class (0-255 =
    probability x 255, band descriptions = class names, nodata masked)."""
    _check_predict_mode(args)
    if args.images:
        return _predict_images(args)
    if args.model:
        return _predict_exported(args)
    refuse_overwriting_inputs({"--out": args.out, "--probabilities": args.probabilities},
                              {"--image": args.image, "--workdir": args.workdir})
    from satseg_jax.predict import predict_scene

    r = predict_scene(args.workdir, args.image, args.out, checkpoint=args.checkpoint,
                      tile=args.tile, overlap=args.overlap, blend=args.blend,
                      probabilities=args.probabilities, batch=args.batch,
                      progress=show_progress(), tta=args.tta, ema=args.ema)
    _print_predicted(args, r)
    return 0


def _print_predicted(args: argparse.Namespace, r: dict) -> None:
    """The summary lines of one predicted map: notes, what was written, areas."""
    for note in r["notes"]:
        print(f"satseg: note: {note}", file=sys.stderr)
    print(f"wrote {r['map']} ({r['format']}, {r['width']}x{r['height']} px, {r['tiles']} "
          f"tiles, checkpoint {r['checkpoint_step']}"
          f"{', EMA weights' if r.get('weights') == 'ema' else ''}) in {r['seconds']:.1f} s")
    if args.probabilities:
        print_wrote([f"{args.probabilities} (per-class probabilities, uint8 0-255)"])
    pixels = r["class_pixels"]
    if r["pixel_area_m2"]:
        a = r["pixel_area_m2"] / 1e6
        print("class areas (km²): " + ", ".join(f"{n} {c * a:.3f}" for n, c in pixels.items()))
        return
    if r["crs"] is None:
        from satseg_jax.area import NO_CRS_NOTE

        print(NO_CRS_NOTE)
    else:  # geographic: the pixel area varies by row
        print("geographic CRS: 'satseg area --map MAP' gives ellipsoidal km²")
    print("class pixels: " + ", ".join(f"{n} {c}" for n, c in pixels.items()))


def _predict_exported(args: argparse.Namespace) -> int:
    """predict --model: the exported SavedModel through the same tiled predictor."""
    refuse_overwriting_inputs({"--out": args.out, "--probabilities": args.probabilities},
                              {"--image": args.image, "--model": args.model})
    from satseg_jax.export.serving import predict_exported

    r = predict_exported(args.model, args.image, args.out, tile=args.tile,
                         overlap=args.overlap, blend=args.blend,
                         probabilities=args.probabilities, batch=args.batch,
                         progress=show_progress())
    _print_predicted(args, r)
    return 0


def _predict_images(args: argparse.Namespace) -> int:
    """predict --images: every file mapped, failures named as they happen, status 1 at
    the end if any failed."""
    refuse_overwriting_inputs({"--out-dir": args.out_dir},
                              {"--images": args.images, "--workdir": args.workdir},
                              folders=("--out-dir",))
    from satseg_jax.predict_images import predict_images

    def report(image, message: str) -> None:
        from tqdm import tqdm

        tqdm.write(f"satseg: error: {image}: {message}", file=sys.stderr)

    r = predict_images(args.workdir, args.images, args.out_dir, checkpoint=args.checkpoint,
                       tile=args.tile, overlap=args.overlap, blend=args.blend,
                       batch=args.batch, tta=args.tta, overwrite=args.overwrite,
                       progress=show_progress(), on_error=report, ema=args.ema)
    n_ok, n_bad = len(r["maps"]), len(r["failed"])
    print(f"mapped {n_ok} of {n_ok + n_bad} image(s) (checkpoint {r['checkpoint_step']}"
          f"{', TTA' if r['tta'] else ''}) in {r['seconds']:.1f} s")
    print_wrote([f"{r['out_dir']}/ ({n_ok} maps)", r["summary_file"]])
    if n_bad:
        print(f"satseg: error: {n_bad} image(s) failed (listed above and in "
              f"{r['summary_file']})", file=sys.stderr)
        return 1
    return 0


def _evaluate_images(args: argparse.Namespace) -> int:
    """evaluate --images/--masks: whole images scored, metrics table, files written."""
    missing = [o for o, v in (("--images", args.images), ("--masks", args.masks),
                              ("--classes", args.classes)) if not v]
    if missing:
        raise SatsegError(f"satseg evaluate --images/--masks also needs {', '.join(missing)}")
    if args.data or args.save_predictions or args.overlays or args.resample_to_train_gsd:
        raise SatsegError("satseg evaluate --images scores whole images: --data, "
                          "--save-predictions, --overlays and --resample-to-train-gsd go with "
                          "dataset splits (use 'satseg predict --images' for the maps)")
    run = Path(args.workdir)
    refuse_overwriting_inputs(
        {"--workdir": [run / f"metrics_{args.name}.json", run / f"confusion_{args.name}.png"]},
        {"--images": args.images, "--masks": args.masks, "--classes": args.classes})
    from satseg_jax.evaluate_images import evaluate_images
    from satseg_jax.metrics import format_metrics_table

    result = evaluate_images(
        args.workdir, args.images, args.masks, args.classes, pair=args.pair,
        skip_unpaired=args.skip_unpaired, mask_mode=args.mask_mode,
        colour_tolerance=args.colour_tolerance, checkpoint=args.checkpoint, tile=args.tile,
        overlap=args.overlap, blend=args.blend, batch=args.batch, tta=args.tta,
        name=args.name, progress=show_progress(), ema=args.ema)
    for line in result["skipped_unpaired"]:
        print(f"satseg: note: skipped {line}", file=sys.stderr)
    print(f"{result['num_images']} whole image(s){', TTA' if args.tta else ''}")
    print(format_metrics_table(result))
    print_wrote(result["written"])
    return 0


# ----------------------------------------------------------------------------- benchmark


def add_benchmark_arguments(m: argparse.ArgumentParser) -> None:
    m.add_argument("--sweep", required=True, help="sweep config FILE.py[:ARG], e.g. "
                   "configs/bench/unet_variants.py or configs/bench/unet_variants_real.py:rgb_vhr")
    m.add_argument("--workdir", required=True, help="folder for the runs and the tables")
    m.add_argument("--steps", type=int, default=None, help="training steps per run "
                   "(default: the sweep config's)")
    m.add_argument("--seeds", default=None, help="comma-separated seeds (default: the "
                   "sweep config's)")
    m.add_argument("--data-dir", default=None, help="dataset to use instead of the config's")


def cmd_benchmark(args: argparse.Namespace) -> int:
    """Train every variant of a sweep config on the same data, evaluate on the same split
    and write RUNS/benchmark.md, .csv and .png: per variant mean ± std over seeds, a 95 %
    t-interval, a paired t-test against unet on the same seeds, GFLOPs/img, img/s (all
    variants timed together after training) and wall time per run; plus the sweep's
    baseline rows (majority class, random forests; see 'satseg baseline'). Finished runs
    and baselines are not redone."""
    from satseg_jax.config_overrides import load_config
    from satseg_jax.variant_sweep import run_sweep

    sweep = load_config(args.sweep)
    if args.data_dir:
        sweep.base.data.data_dir = args.data_dir
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
    run_sweep(sweep, args.workdir, steps=args.steps, seeds=seeds)
    runs = Path(args.workdir)
    print((runs / "benchmark.md").read_text())
    print_wrote([runs / f"benchmark.{ext}" for ext in ("md", "csv", "png")
                 if (runs / f"benchmark.{ext}").exists()])
    return 0


# ----------------------------------------------------------------------------- wiring


def add_parser(sub: argparse._SubParsersAction) -> None:
    """train, evaluate, predict, benchmark."""
    add_command(sub, "train", add_train_arguments, cmd_train,
                help="train a model from a config file",
                description=TRAIN_DOC, takes_extra=True)
    add_command(sub, "evaluate", add_evaluate_arguments, cmd_evaluate,
                help="evaluate a run on a split", description=EVALUATE_DOC)
    add_commands(sub, [
        ("predict", add_predict_arguments, cmd_predict,
         "predict a class map for a whole scene or plain image"),
        ("benchmark", add_benchmark_arguments, cmd_benchmark,
         "train and compare model variants from a sweep config"),
    ])
