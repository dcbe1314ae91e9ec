"""``satseg weights import`` / ``satseg weights show``: pretrained encoder weights."""

from __future__ import annotations

import argparse

from satseg_jax.commands.common import floats, names, print_table, print_wrote
from satseg_jax.io_utils import refuse_overwriting_inputs

SOURCES = ("torchvision", "timm", "torchgeo", "state-dict")  # weights.importer.SOURCES
# models.encoders.ENCODERS (checked by a test)
ARCHS = ("resnet18", "resnet34", "resnet50", "convnext_tiny")

IMPORT_DOC = (
    "Convert a PyTorch encoder checkpoint (a torchvision-layout ResNet or a timm-layout "
    "ConvNeXt-Tiny state dict, .pth or .safetensors) into an encoder directory that "
    "config.model.encoder_weights takes: Orbax-saved variables plus card.json (source, "
    "arch, input bands in order, normalisation, licence, the file's SHA-256, every key "
    "left out and why). Strict: a missing, unexpected or wrongly shaped key is refused, "
    "each named. --from torchvision|timm default to ImageNet RGB (bands red,green,blue; "
    "inputs /255 then ImageNet mean/std); --from torchgeo|state-dict need --bands, "
    "--mean, --std and --input-scale as the weights' documentation states them (e.g. SSL4EO-S12: "
    "13 Sentinel-2 bands). --download NAME fetches the file through the library that owns "
    "it (a torchvision or torchgeo weight enum, e.g. ResNet34_Weights.IMAGENET1K_V1) into "
    "its cache; offline it says so."
)


def add_import_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from", dest="source", required=True, choices=SOURCES,
                   help="who made the weights (sets the card's defaults)")
    p.add_argument("--arch", required=True, choices=ARCHS, help="encoder architecture")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--file", metavar="WEIGHTS", help="state dict: .pth/.pt/.bin or "
                      ".safetensors")
    what.add_argument("--download", metavar="NAME", help="a weight enum of the --from "
                      "library, downloaded into its cache (needs the network)")
    p.add_argument("--out", required=True, metavar="ENC_DIR", help="encoder directory to write")
    p.add_argument("--prefix", default="", help="take only keys under this prefix, without it "
                   "(e.g. 'backbone.' or 'encoder.'); the others are listed in the card")
    p.add_argument("--bands", type=names, default=None, help="input band names in the "
                   "weights' order, comma-separated")
    p.add_argument("--mean", type=floats, default=None, help="per-band mean, after "
                   "--input-scale")
    p.add_argument("--std", type=floats, default=None, help="per-band std, after "
                   "--input-scale")
    p.add_argument("--input-scale", type=float, default=None, metavar="S",
                   help="raw band values are divided by S before the mean/std (255 for "
                   "8-bit ImageNet inputs, 10000 for Sentinel-2 L1C/L2A reflectance)")
    p.add_argument("--licence", default="", help="the weights' licence, recorded in the card")
    p.add_argument("--overwrite", action="store_true", help="replace an existing ENC_DIR "
                   "(only once the new one is complete)")


def cmd_import(args: argparse.Namespace) -> int:
    from satseg_jax.weights.download import download_weights
    from satseg_jax.weights.importer import import_weights

    file = args.file
    if file is not None:
        refuse_overwriting_inputs({"--out": args.out}, {"--file": file}, folders=("--out",))
    else:
        file = download_weights(args.source, args.download)
    card = import_weights(args.source, args.arch, file, args.out, prefix=args.prefix,
                          bands=args.bands, mean=args.mean, std=args.std,
                          input_scale=args.input_scale, licence=args.licence,
                          overwrite=args.overwrite)
    _print_card(card)
    print(f"converted {card['converted']} tensors; left out {len(card['dropped'])}")
    print_wrote([args.out])
    return 0


def _print_card(card: dict) -> None:
    print_table([("arch", card["arch"]), ("source", card["source"]),
                 ("bands", ", ".join(card["bands"])),
                 ("normalise", f"x / {card['input_scale']:g}, then (x - mean) / std"),
                 ("mean", ", ".join(f"{m:g}" for m in card["mean"])),
                 ("std", ", ".join(f"{s:g}" for s in card["std"])),
                 ("licence", card["licence"]), ("file", f"{card['file']} (sha256 "
                                                        f"{card['file_sha256'][:12]}…)")])


def add_show_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("enc_dir", metavar="ENC_DIR", help="encoder directory")


def cmd_show(args: argparse.Namespace) -> int:
    """Print an encoder directory's card after verifying every array against it."""
    from satseg_jax.weights.store import read_encoder_dir

    _, card = read_encoder_dir(args.enc_dir)
    _print_card(card)
    print(f"{card['arrays']} arrays, digests verified; left out at import: "
          f"{len(card['dropped'])}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """weights import / weights show."""
    parser = sub.add_parser("weights", help="import pretrained encoder weights (PyTorch)",
                            description="Pretrained encoder weights: 'import' converts a "
                            "PyTorch checkpoint, 'show' prints and verifies one.")
    inner = parser.add_subparsers(dest="weights_command", metavar="ACTION", required=True)
    p = inner.add_parser("import", help="PyTorch state dict -> encoder directory",
                         description=IMPORT_DOC)
    add_import_arguments(p)
    p.set_defaults(func=cmd_import)
    s = inner.add_parser("show", help="print and verify an encoder directory",
                         description=cmd_show.__doc__)
    add_show_arguments(s)
    s.set_defaults(func=cmd_show)
