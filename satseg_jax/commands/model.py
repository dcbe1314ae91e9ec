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
EVALUATE = ("satseg_jax.evaluate", "evaluate_workdir")

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
    add_ema_argument(e, EVALUATE)


def add_ema_argument(parser: argparse.ArgumentParser, library: tuple[str, str]) -> None:
    """``--ema/--no-ema``: which weights of a run trained with config.train.ema_decay."""
    parser.add_argument("--ema", action=argparse.BooleanOptionalAction,
                        default=library_default(*library, "ema"),
                        help="use the exponential moving average of the weights when the run "
                        "has one (trained with config.train.ema_decay > 0: the weights its "
                        "best checkpoint was chosen by); --no-ema uses the raw weights "
                        "(default: %(default)s)")


def cmd_evaluate(args: argparse.Namespace) -> int:
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
        ema=args.ema,
    )
    print(format_metrics_table(result))
    print_wrote([f"{p}/ (predicted masks)" if Path(p).is_dir() else p
                 for p in result["written"]])
    return 0


# ----------------------------------------------------------------------------- predict


def add_predict_arguments(pr: argparse.ArgumentParser) -> None:
    pr.add_argument("--workdir", required=True, help="training run")
    pr.add_argument("--image", required=True, help="scene GeoTIFF, or a plain image without "
                    "CRS (JPEG/PNG/TIFF); same bands as training")
    pr.add_argument("--out", required=True, help="output class map: GeoTIFF, or .png for an "
                    "image without CRS")
    pr.add_argument("--checkpoint", default=library_default(*PREDICT, "checkpoint"),
                    help="best | latest | a step (default: %(default)s)")
    pr.add_argument("--tile", type=int, default=library_default(*PREDICT, "tile"),
                    help="output tile size in pixels (default: %(default)s)")
    pr.add_argument("--overlap", type=int, default=library_default(*PREDICT, "overlap"),
                    help="overlap between tiles (default: %(default)s)")
    pr.add_argument("--blend", choices=["gaussian", "mean", "none"],
                    default=library_default(*PREDICT, "blend"),
                    help="how overlapping tiles are combined (default: %(default)s)")
    pr.add_argument("--probabilities", default=None,
                    help="also write per-class probabilities (uint8, 0-255) here")
    pr.add_argument("--batch", type=int, default=library_default(*PREDICT, "batch"),
                    help="tiles per model call (default: %(default)s)")
    add_ema_argument(pr, PREDICT)


def cmd_predict(args: argparse.Namespace) -> int:
    """Sliding-window inference over a whole scene, read by windows; overlapping tiles
    are blended; writes a Cloud-Optimised GeoTIFF with the scene's CRS/transform, a
    colour table and nodata (255) where the scene is nodata. A plain image without a CRS
    (JPEG/PNG/TIFF) gives a map of the same size: --out *.png writes a palette PNG
    (value = class id, palette = class colours, 255 = nodata, white and transparent),
    any other name a GeoTIFF without a CRS; areas are then pixel counts only."""
    refuse_overwriting_inputs({"--out": args.out, "--probabilities": args.probabilities},
                              {"--image": args.image, "--workdir": args.workdir})
    from satseg_jax.predict import predict_scene

    r = predict_scene(args.workdir, args.image, args.out, checkpoint=args.checkpoint,
                      tile=args.tile, overlap=args.overlap, blend=args.blend,
                      probabilities=args.probabilities, batch=args.batch,
                      progress=show_progress(), ema=args.ema)
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
        return 0
    if r["crs"] is None:
        from satseg_jax.area import NO_CRS_NOTE

        print(NO_CRS_NOTE)
    else:  # geographic: the pixel area varies by row
        print("geographic CRS: 'satseg area --map MAP' gives ellipsoidal km²")
    print("class pixels: " + ", ".join(f"{n} {c}" for n, c in pixels.items()))
    return 0


# ----------------------------------------------------------------------------- benchmark


def add_benchmark_arguments(m: argparse.ArgumentParser) -> None:
    m.add_argument("--sweep", required=True, help="sweep config, e.g. "
                   "configs/bench/unet_variants.py")
    m.add_argument("--workdir", required=True, help="folder for the runs and the tables")
    m.add_argument("--steps", type=int, default=None, help="training steps per run "
                   "(default: the sweep config's)")
    m.add_argument("--seeds", default=None, help="comma-separated seeds (default: the "
                   "sweep config's)")
    m.add_argument("--data-dir", default=None, help="dataset to use instead of the config's")


def cmd_benchmark(args: argparse.Namespace) -> int:
    """Train every variant of a sweep config on the same data, evaluate on the same test
    split and write RUNS/benchmark.md, .csv and .png (mean ± std over seeds, plus a
    majority-class baseline). Finished runs are not redone."""
    from satseg_jax.config_files import load_config_file
    from satseg_jax.variant_sweep import run_sweep

    sweep = load_config_file(args.sweep)
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
