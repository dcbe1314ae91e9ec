"""``satseg baseline``: a majority-class or random-forest baseline on a built dataset."""

from __future__ import annotations

import argparse

from satseg_jax.commands.common import add_command, library_default, print_wrote, show_progress
from satseg_jax.io_utils import refuse_overwriting_inputs

BASELINE = ("satseg_jax.baseline", "run_baseline")
METHODS = ("majority", "rf", "rf-texture")  # satseg_jax.baseline.METHODS (checked by a test)

DOC = (
    "Fit a classical baseline on a built dataset's train split and score it on another "
    "split with the same confusion-matrix metrics (and JSON format) as 'satseg evaluate': "
    "majority = the most frequent train class everywhere; rf = a per-pixel random forest "
    "on the band values; rf-texture = the forest on the bands plus each band's local mean "
    "and standard deviation in --windows px windows. The forest sees a seeded uniform "
    "sample of --pixels valid train pixels (ignore/nodata never drawn) and uses every "
    "core. Same seed, same numbers."
)


def _windows(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}"
                                         ) from None


def add_baseline_arguments(b: argparse.ArgumentParser) -> None:
    b.add_argument("--data", required=True, metavar="DATA",
                   help="built dataset (satseg build --out DATA)")
    b.add_argument("--method", choices=METHODS, default=library_default(*BASELINE, "method"),
                   help="baseline (default: %(default)s)")
    b.add_argument("--split", default=library_default(*BASELINE, "split"),
                   help="split to score, e.g. validation or test (default: %(default)s)")
    b.add_argument("--pixels", type=int, default=library_default(*BASELINE, "pixels"),
                   metavar="N", help="train pixels the forest is fitted on, drawn uniformly "
                   "at random from the valid train pixels (default: %(default)s)")
    b.add_argument("--seed", type=int, default=library_default(*BASELINE, "seed"),
                   help="seed of the pixel sample and the forest (default: %(default)s)")
    b.add_argument("--trees", type=int, default=library_default(*BASELINE, "trees"),
                   help="trees in the forest (default: %(default)s)")
    b.add_argument("--min-leaf", type=int, default=library_default(*BASELINE, "min_leaf"),
                   help="minimum train pixels per leaf; larger = smaller, faster forest "
                   "(default: %(default)s)")
    b.add_argument("--windows", type=_windows,
                   default=library_default(*BASELINE, "windows"),
                   help="rf-texture window sides in px, comma-separated (default: 5,15)")
    b.add_argument("--out", default=None, metavar="FILE.json",
                   help="write the metrics here as JSON, in evaluate's format plus a "
                   "'baseline' block (default: print only)")


def cmd_baseline(args: argparse.Namespace) -> int:
    refuse_overwriting_inputs({"--out": args.out}, {"--data": args.data})
    from satseg_jax.baseline import run_baseline
    from satseg_jax.metrics import format_metrics_table

    r = run_baseline(args.data, method=args.method, split=args.split, pixels=args.pixels,
                     seed=args.seed, trees=args.trees, min_leaf=args.min_leaf,
                     windows=args.windows, out=args.out, progress=show_progress())
    b = r["baseline"]
    print(format_metrics_table({k: v for k, v in r.items() if k != "split"}))
    fitted = (f"fitted on {b['train_pixels']:,} of {sum(b['train_class_pixels']):,} valid "
              f"train pixels, {len(b['features'])} features, {b['trees']} trees"
              if b["train_pixels"] else f"majority class {b['majority_class']!r}")
    print(f"[{args.method} on {r['split']}] {fitted}; fit {b['fit_seconds']:.1f} s, "
          f"scored in {b['score_seconds']:.1f} s")
    print_wrote(r.get("written", []))
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """baseline."""
    add_command(sub, "baseline", add_baseline_arguments, cmd_baseline,
                help="majority-class / random-forest baseline on a built dataset",
                description=DOC)
