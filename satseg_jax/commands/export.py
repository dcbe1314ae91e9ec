"""``satseg export``: a trained run as a SavedModel, ONNX or StableHLO for serving."""

from __future__ import annotations

import argparse

from satseg_jax.commands.common import add_commands, library_default, print_wrote
from satseg_jax.commands.model import add_ema_argument
from satseg_jax.io_utils import refuse_overwriting_inputs

EXPORT = ("satseg_jax.export.exporters", "export_run")


def add_export_arguments(e: argparse.ArgumentParser) -> None:
    e.add_argument("--workdir", required=True, help="training run")
    e.add_argument("--format", required=True, choices=["savedmodel", "onnx", "stablehlo"],
                   help="savedmodel (jax2tf; TensorFlow serving), onnx (onnxruntime; both run "
                   "by satseg predict --model) or stablehlo (jax.export)")
    e.add_argument("--out", required=True, metavar="DIR",
                   help="DIR/<format>/ and DIR/serving_card.json")
    e.add_argument("--checkpoint", default=library_default(*EXPORT, "checkpoint"),
                   help="best | latest | a step (default: %(default)s)")
    add_ema_argument(e, EXPORT)
    e.add_argument("--tile", type=int, default=library_default(*EXPORT, "tile"),
                   metavar="N", help="fix height and width to N px (the batch stays "
                   "dynamic): for fpn and deeplabv3plus, whose resizes need a fixed size "
                   "(default: any size, a multiple of the model's input multiple)")
    e.add_argument("--overwrite", action="store_true",
                   help="replace an existing DIR (kept until the new one is complete)")


def cmd_export(args: argparse.Namespace) -> int:
    """Export bands -> probabilities: input raw float32 bands NHWC in the run's band order
    (normalisation and nodata masking baked in), dynamic batch, height and width
    (multiples of the model's input multiple); output float32 softmax probabilities NHWC.
    DIR/serving_card.json lists bands, classes and colours, nodata and tile/overlap
    advice, and the check made at export (exported vs Flax on a random tile, largest
    probability difference, refused above 1e-4)."""
    refuse_overwriting_inputs({"--out": args.out}, {"--workdir": args.workdir},
                              folders=("--out",))
    from satseg_jax.export.exporters import export_run

    r = export_run(args.workdir, args.format, args.out, checkpoint=args.checkpoint,
                   ema=args.ema, overwrite=args.overwrite, tile=args.tile)
    c = r["check"]
    print(f"exported {r['run']['model']} (checkpoint {r['run']['checkpoint_step']}, "
          f"{r['run']['weights']} weights) as {args.format}: exported vs run on a "
          f"{'x'.join(map(str, c['tile']))} tile, largest probability difference "
          f"{c['max_abs_probability_difference']:.1e}, classes agree on "
          f"{100 * c['class_agreement']:.2f} % of pixels")
    print_wrote([args.out])
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """export."""
    add_commands(sub, [
        ("export", add_export_arguments, cmd_export,
         "export a run as a SavedModel, ONNX or StableHLO (normalisation baked in)"),
    ])
