"""Variant sweeps: train every model of a sweep config on the same data, evaluate on the
same split, and tabulate quality and cost beside classical baselines (``satseg benchmark``).

A sweep config (``configs/bench/*.py``) returns a ConfigDict with:

- ``base``: a complete training config (data, loss, optimizer, schedule, steps...);
- ``variants``: ``{label: {model fields}}`` — each replaces ``base.model``;
- ``seeds``: the seeds to repeat each variant with;
- ``baselines`` (optional, default ``("majority",)``): ``satseg baseline`` methods to add
  as rows (``majority``, ``rf``, ``rf-texture``), and ``baseline_options`` (optional): a
  dict of ``baseline.run_baseline`` arguments (``pixels``, ``trees``, ``windows``...);
- ``split`` (optional, default ``test``): the split every row is scored on.

Each (variant, seed) trains in ``RUNS/<label>/seed_<s>`` and leaves ``result.json``
there (metrics and wall-clock time); each baseline leaves ``RUNS/baseline_<method>/
result.json``. A rerun skips finished runs, so an interrupted sweep resumes where it
stopped. Costs (GFLOPs, img/s) are measured after all training, for every variant
together (``model_cost``), and the tables (``sweep_tables``) give mean ± std, a 95 %
interval and a paired test against ``unet`` per variant.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from satseg_jax.errors import SatsegError

DEFAULT_SPLIT = "test"
DEFAULT_BASELINES = ("majority",)
BASELINE_NAMES = {"majority": "majority class", "rf": "random forest (bands)",
                  "rf-texture": "random forest + texture"}
SWEEP_FIELDS = frozenset({"base", "variants", "seeds", "baselines", "baseline_options",
                          "split"})


def _config_for(sweep, label: str, seed: int, steps: int | None):
    import ml_collections

    cfg = ml_collections.ConfigDict(sweep.base.to_dict())
    cfg.model = ml_collections.ConfigDict(dict(sweep.variants[label]))
    cfg.seed = int(seed)
    if steps:
        from satseg_jax.training_control import EPOCH_FIELDS

        for section, _, epochs_key in EPOCH_FIELDS:  # --steps replaces a length in epochs
            if epochs_key in cfg[section]:
                cfg[section][epochs_key] = 0.0
        cfg.train.num_steps = int(steps)
        cfg.train.eval_every = int(steps)
        cfg.train.checkpoint_every = int(steps)
        cfg.train.log_every = max(1, min(int(cfg.train.log_every), int(steps)))
        cfg.schedule.warmup_steps = min(int(cfg.schedule.warmup_steps), max(0, int(steps) // 10))
    return cfg


def _check_sweep(sweep) -> tuple[str, tuple[str, ...], dict]:
    """The sweep's split, baselines and baseline options; unknown fields refused."""
    from satseg_jax.baseline import METHODS

    unknown = sorted(set(sweep.keys()) - SWEEP_FIELDS)
    if unknown:
        raise SatsegError(f"sweep config: unknown field(s) {', '.join(unknown)}; valid: "
                          f"{', '.join(sorted(SWEEP_FIELDS))}")
    if not sweep.variants:
        raise SatsegError("sweep config has no variants")
    baselines = tuple(sweep.get("baselines", DEFAULT_BASELINES) or ())
    bad = [b for b in baselines if b not in METHODS]
    if bad:
        raise SatsegError(f"sweep config: baselines {bad} unknown; valid: {', '.join(METHODS)}")
    options = dict(sweep.get("baseline_options", None) or {})
    return str(sweep.get("split", DEFAULT_SPLIT)), baselines, options


def _write_json(path: Path, value: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_nan_to_none(value), indent=2) + "\n")
    tmp.replace(path)


def _train_one(sweep, label: str, seed: int, steps: int | None, wd: Path, split: str) -> dict:
    """Train and evaluate one (variant, seed); its result row, with the wall time."""
    from satseg_jax.evaluate import evaluate_workdir
    from satseg_jax.train import train_and_evaluate

    cfg = _config_for(sweep, label, seed, steps)
    t0 = time.perf_counter()
    train_and_evaluate(cfg, wd)
    m = evaluate_workdir(wd, split=split, checkpoint="best")
    return {"variant": label, "model": cfg.model.name, "seed": seed,
            "best_step": m["checkpoint_step"], "mean_iou": m["mean_iou"],
            "macro_f1": m["macro_f1"], "pixel_accuracy": m["pixel_accuracy"],
            "iou_per_class": m["iou_per_class"], "class_names": m["class_names"],
            "split": split, "wall_s": time.perf_counter() - t0}


def _run_baselines(data_dir: str, runs_dir: Path, methods: tuple[str, ...], split: str,
                   seed: int, options: dict) -> list[dict]:
    """Each baseline once (resumable like the runs): result rows for the table."""
    from satseg_jax.baseline import run_baseline

    out = []
    for method in methods:
        done = runs_dir / f"baseline_{method}" / "result.json"
        if done.exists():
            print(f"[benchmark] baseline {method}: done, skipping", flush=True)
            out.append(json.loads(done.read_text()))
            continue
        print(f"[benchmark] baseline {method} on {split}", flush=True)
        t0 = time.perf_counter()
        try:
            m = run_baseline(data_dir, method, split=split, seed=seed, **options)
        except TypeError as e:  # an option run_baseline does not take
            raise SatsegError(f"sweep config: baseline_options: {e}") from None
        name = BASELINE_NAMES[method]
        if method == "majority":
            name = f"{name} ({m['baseline']['majority_class']})"
        row = {"variant": name, "method": method, "mean_iou": m["mean_iou"],
               "macro_f1": m["macro_f1"], "pixel_accuracy": m["pixel_accuracy"],
               "iou_per_class": m["iou_per_class"], "split": split,
               "wall_s": time.perf_counter() - t0, "baseline": m["baseline"]}
        _write_json(done, row)
        out.append(row)
    return out


def _costs(sweep, runs_dir: Path, seed: int, steps: int | None, batch: int) -> dict:
    """GFLOPs and img/s of every variant, measured together after training; kept in
    RUNS/costs.json and reused while the variants and sizes stay the same, so a resumed
    or re-tabulated sweep does not re-time (and rows stay from one measuring session)."""
    from satseg_jax.model_cost import forward_gflops, measure_speeds
    from satseg_jax.runs import read_card

    models, key = {}, {"batch": batch}
    for label in sweep.variants:
        cfg = _config_for(sweep, label, seed, steps)
        card = read_card(runs_dir / label / f"seed_{seed}", cfg)  # the run's own sizes
        models[label] = (cfg, card.num_classes, card.num_bands, card.input_size)
        key[label] = [cfg.model.to_dict(), str(cfg.train.get("cpu_conv", "")),
                      card.num_classes, card.num_bands, card.input_size]
    path = runs_dir / "costs.json"
    if path.exists():
        saved = json.loads(path.read_text())
        if saved.get("key") == json.loads(json.dumps(key)):
            return saved["costs"]
    print(f"[benchmark] measuring img/s of {len(models)} variants together", flush=True)
    costs = measure_speeds(models, batch=batch)
    for label, (cfg, k, c, size) in models.items():
        costs[label]["gflops_per_image"] = forward_gflops(cfg, k, c, size)
    _write_json(path, {"key": key, "costs": costs})
    return costs


def run_sweep(sweep, runs_dir: str | Path, steps: int | None = None,
              seeds: list[int] | None = None, speed_batch: int = 8) -> list[dict]:
    """Train + evaluate every (variant, seed) not finished yet, fit the baselines not
    fitted yet, measure every variant's cost, write the tables; returns the rows."""
    from satseg_jax import input_pipeline
    from satseg_jax.sweep_tables import summarise, write_tables

    runs_dir = Path(runs_dir)
    split, baselines, options = _check_sweep(sweep)
    seeds = list(seeds if seeds is not None else sweep.seeds)
    if not seeds:
        raise SatsegError("sweep config: no seeds")
    meta = input_pipeline.load_meta(sweep.base.data.data_dir)
    if not meta.num_examples.get(split):
        raise SatsegError(f"sweep config: split={split!r}: {meta.data_dir} has no {split} "
                          "patches; set sweep.split (e.g. 'validation')")
    runs_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for label in sweep.variants:
        for seed in seeds:
            wd = runs_dir / label / f"seed_{seed}"
            done = wd / "result.json"
            if done.exists():
                print(f"[benchmark] {label} seed {seed}: done, skipping", flush=True)
                results.append(json.loads(done.read_text()))
                continue
            print(f"[benchmark] {label} seed {seed}: training in {wd}", flush=True)
            row = _train_one(sweep, label, seed, steps, wd, split)
            _write_json(done, row)
            results.append(row)
    base_rows = _run_baselines(meta.data_dir, runs_dir, baselines, split, seeds[0], options)
    costs = _costs(sweep, runs_dir, seeds[0], steps, speed_batch)
    rows = summarise(results, costs, base_rows)
    write_tables(rows, runs_dir, meta.class_names, split=split)
    return rows


def _nan_to_none(obj):
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_nan_to_none(v) for v in obj]
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return obj
