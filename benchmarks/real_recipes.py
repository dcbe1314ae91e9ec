"""The recipes for real imagery on the team's real sets, against the classical baselines.

Why: issue 30 asks whether the deep recipe beats a per-pixel random forest with texture
features on real labelled imagery, by how much, and at what cost on 2 CPU cores. This
runs the README's commands (section "The real labelled sets: one import each") and then,
per set: ``satseg train`` with its recipe, ``satseg evaluate`` on the held-out test split
with EMA and TTA each on and off (the last checkpoint of the recipe's fixed schedule:
no split is looked at while training, test never), and ``satseg baseline`` majority /
rf / rf-texture on the same split. For Kampala it also scores the out-of-region
Philippines set (test-only dataset). Every figure comes from the metrics JSON the
commands write; nothing is computed here.

    python benchmarks/real_recipes.py --runs runs [--sets amazon,kampala] \\
        [--out benchmarks/results/real_recipes_cpu-2core.json] [--collect-only]

``--collect-only`` reads what an earlier (or interrupted-then-finished) sequence left in
RUNS and writes the JSON without running anything. Steps whose outputs exist are not
run again. Needs ``../shared/data`` (or ``SATSEG_SHARED_DATA``); says so and exits 0
when it is absent.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SATSEG_SHARED_DATA", REPO.parent / "shared")) / "data"

RECIPES = {"amazon": "configs/real/multispectral.py", "kampala": "configs/real/rgb_vhr.py"}
EVALS = {"ema": [], "raw": ["--no-ema"], "ema_tta": ["--tta"], "raw_tta": ["--no-ema", "--tta"]}
BASELINES = ("majority", "rf", "rf-texture")
KEEP = ("mean_iou", "macro_f1", "pixel_accuracy", "iou_per_class", "f1_per_class",
        "class_names", "checkpoint_step", "weights", "tta")


def run(argv: list[str], log: Path) -> float:
    """Run one command (output to ``log``); its wall time in seconds. Stops on failure."""
    t0 = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, cwd=REPO).returncode
    if rc:
        sys.exit(f"real_recipes: {' '.join(argv)} failed (exit {rc}); see {log}")
    return time.perf_counter() - t0


def readme_block(start: str) -> str:
    """The README's import commands (the fenced block after ``start``), so that what runs
    here is exactly what a user copies."""
    text = (REPO / "README.md").read_text()
    block = text[text.index(start):]
    begin = block.index("```bash") + len("```bash")
    return block[begin:block.index("```", begin)]


def prepare(runs: Path) -> None:
    """Import and build the three datasets with the README's commands (once)."""
    if all((runs / s / "data" / "satseg_dataset.json").exists()
           for s in ("amazon", "kampala", "philippines")):
        return
    script = readme_block("## The real labelled sets: one import each")
    script = script.replace("D=../shared/data", f"D={SHARED}").replace("runs/", f"{runs}/")
    run(["bash", "-euc", script], runs / "import.log")


def metrics_of(path: Path) -> dict:
    m = json.loads(path.read_text())
    return {k: m[k] for k in KEEP if k in m} | {"baseline": m.get("baseline", {}).get("method")}


def evaluate_set(name: str, runs: Path, collect_only: bool) -> dict:
    """Train (if not done), evaluate every EMA/TTA combination, fit every baseline."""
    d = runs / name
    workdir = d / "run"
    out: dict = {"recipe": RECIPES[name], "data": str(d / "data")}
    wall = d / "train_wall_s"
    if not collect_only and not (workdir / "run.json").exists():
        wall.write_text(str(run(["satseg", "train", "--config", RECIPES[name], "--workdir",
                                 str(workdir), f"--config.data.data_dir={d / 'data'}"],
                                d / "train.log")))
    if wall.exists():
        out["train_wall_s"] = float(wall.read_text())
    targets = [("test", [])]
    if name == "kampala":
        targets.append(("philippines", ["--data", str(runs / "philippines" / "data")]))
    for target, data in targets:
        for label, flags in EVALS.items():
            kept = d / f"metrics_{target}_{label}.json"
            if not collect_only and not kept.exists():
                wall = run(["satseg", "evaluate", "--workdir", str(workdir), "--split", "test",
                            *data, *flags], d / f"eval_{target}_{label}.log")
                kept.write_text((workdir / "metrics_test.json").read_text())
                out[f"{target}_{label}_wall_s"] = wall
            if kept.exists():
                out[f"{target}_{label}"] = metrics_of(kept)
    for kept in sorted(d.glob("metrics_whole_test*.json")):  # evaluate --images, if run
        out[kept.stem.removeprefix("metrics_")] = metrics_of(kept)
    for method in BASELINES:
        kept = d / f"baseline_{method}_test.json"
        if not collect_only and not kept.exists():
            run(["satseg", "baseline", "--data", str(d / "data"), "--split", "test",
                 "--method", method, "--out", str(kept)], d / f"baseline_{method}.log")
        if kept.exists():
            out[f"baseline_{method}"] = metrics_of(kept) | {
                "fit_s": json.loads(kept.read_text())["baseline"].get("fit_seconds")}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=Path, default=REPO / "runs")
    p.add_argument("--sets", default="amazon,kampala")
    p.add_argument("--out", type=Path,
                   default=REPO / "benchmarks" / "results" / "real_recipes_cpu-2core.json")
    p.add_argument("--collect-only", action="store_true")
    a = p.parse_args(argv)
    if not SHARED.is_dir():
        print(f"real_recipes: {SHARED} not found (set SATSEG_SHARED_DATA); nothing to do")
        return 0
    a.runs.mkdir(parents=True, exist_ok=True)
    if not a.collect_only:
        prepare(a.runs)
    results = {"machine": {"cpu": platform.processor() or platform.machine(),
                           "cores": len(os.sched_getaffinity(0))},
               "command": "python benchmarks/real_recipes.py " + " ".join(argv or sys.argv[1:]),
               "sets": {s: evaluate_set(s, a.runs, a.collect_only) for s in a.sets.split(",")}}
    a.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
