"""Variant sweeps: train every model of a sweep config on the same data, evaluate on the
same test split, and tabulate quality and cost (``satseg benchmark``).

A sweep config (``configs/bench/*.py``) returns a ConfigDict with:

- ``base``: a complete training config (data, loss, optimizer, schedule, steps...);
- ``variants``: ``{label: {model fields}}`` — each replaces ``base.model``;
- ``seeds``: the seeds to repeat each variant with.

Each (variant, seed) trains in ``RUNS/<label>/seed_<s>`` and leaves ``result.json``
there; a rerun skips finished runs, so an interrupted sweep resumes where it stopped.
The table reports mean ± std over seeds, next to a majority-class baseline computed
from the test split's class counts.
"""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path

import numpy as np

from satseg_jax.errors import SatsegError


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


def measure_cost(config, num_classes: int, num_bands: int, size: int, batch: int,
                 repeats: int = 5) -> dict:
    """Parameters, GFLOPs per image (XLA cost analysis) and train / inference img/s."""
    import jax
    import jax.numpy as jnp

    from satseg_jax.steps import Runner, build_model, create_optimizer, create_train_state

    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.parallelism = "jit"
    tx, _ = create_optimizer(config)
    runner = Runner(config, lambda axis: build_model(config, num_classes, axis), num_classes,
                    tx=tx, loss_config=config.loss)
    model = build_model(config, num_classes)
    state = create_train_state(0, model, tx, (1, size, size, num_bands))
    n_params = int(sum(x.size for x in jax.tree.leaves(state.params)))
    state = runner.place_state(state)
    rng = np.random.default_rng(0)
    images = rng.standard_normal((batch, size, size, num_bands)).astype(np.float32)
    key = "mask" if config.task == "segmentation" else "label"
    labels = rng.integers(0, num_classes, (batch, size, size) if key == "mask" else (batch,))
    data = runner.shard({"image": images, key: labels.astype(np.int32)})
    fwd = jax.jit(lambda v, x: model.apply(v, x, train=False))
    variables = {"params": state.params, **({"batch_stats": state.batch_stats}
                                           if state.batch_stats else {})}
    compiled = fwd.lower(variables, jnp.asarray(images)).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    gflops = float(cost.get("flops", float("nan"))) / batch / 1e9 if cost else math.nan

    def timed(fn, n):
        out = fn()
        jax.block_until_ready(out)
        times = []
        for _ in range(n):
            t = time.perf_counter()
            jax.block_until_ready(fn())
            times.append(time.perf_counter() - t)
        return batch / float(np.median(times))

    # Inference first: the train step donates (deletes) the state's buffers.
    infer_ips = timed(lambda: compiled(variables, jnp.asarray(images)), repeats)
    holder = {"state": state}

    def train_once():
        holder["state"], m = runner.train_step(holder["state"], data)
        return m["loss"]

    train_ips = timed(train_once, repeats)
    return {"params": n_params, "gflops_per_image": gflops, "train_img_s": train_ips,
            "inference_img_s": infer_ips}


def run_sweep(sweep, runs_dir: str | Path, steps: int | None = None,
              seeds: list[int] | None = None, speed_batch: int = 8) -> list[dict]:
    """Train + evaluate every (variant, seed) not finished yet; write the tables."""
    from satseg_jax import input_pipeline
    from satseg_jax.evaluate import evaluate_workdir
    from satseg_jax.runs import read_card
    from satseg_jax.train import train_and_evaluate

    runs_dir = Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    seeds = list(seeds if seeds is not None else sweep.seeds)
    if not sweep.variants:
        raise SatsegError("sweep config has no variants")
    meta = input_pipeline.load_meta(sweep.base.data.data_dir)
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
            cfg = _config_for(sweep, label, seed, steps)
            train_and_evaluate(cfg, wd)
            m = evaluate_workdir(wd, split="test", checkpoint="best")
            card = read_card(wd, cfg)  # the trained run's own input size, bands, classes
            cost = measure_cost(cfg, card.num_classes, card.num_bands, card.input_size,
                                speed_batch)
            row = {"variant": label, "model": cfg.model.name, "seed": seed,
                   "best_step": m["checkpoint_step"], "mean_iou": m["mean_iou"],
                   "macro_f1": m["macro_f1"], "pixel_accuracy": m["pixel_accuracy"],
                   "iou_per_class": m["iou_per_class"], "class_names": m["class_names"],
                   **cost}
            tmp = done.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(_nan_to_none(row), indent=2) + "\n")
            tmp.replace(done)
            results.append(row)
    rows = summarise(results, meta)
    write_tables(rows, runs_dir, meta.class_names)
    return rows


def _nan_to_none(obj):
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_nan_to_none(v) for v in obj]
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return obj


def _f(x) -> float:
    return math.nan if x is None else float(x)


def majority_baseline(meta) -> dict:
    """Scores of always predicting the most frequent *train* class, on the test split."""
    counts = meta.info["class_pixel_counts"]
    train, test = np.asarray(counts["train"], float), np.asarray(counts["test"], float)
    k = int(np.argmax(train))
    total = test.sum()
    iou = np.full(len(test), np.nan)
    f1 = np.full(len(test), np.nan)
    present = test > 0
    iou[present], f1[present] = 0.0, 0.0
    iou[k] = test[k] / total if total else math.nan
    f1[k] = 2 * test[k] / (test[k] + total) if total else math.nan
    return {"variant": f"majority class ({meta.class_names[k]})", "mean_iou": np.nanmean(iou),
            "macro_f1": np.nanmean(f1), "pixel_accuracy": test[k] / total,
            "iou_per_class": iou.tolist()}


def summarise(results: list[dict], meta) -> list[dict]:
    """One row per variant: mean ± std over seeds (std is 0 for a single seed)."""
    rows = []
    for label in dict.fromkeys(r["variant"] for r in results):
        rs = [r for r in results if r["variant"] == label]

        def stat(key, rs=rs):
            v = np.array([_f(r[key]) for r in rs])
            return float(np.nanmean(v)), float(np.nanstd(v))

        per_class = np.nanmean(np.array([[_f(x) for x in r["iou_per_class"]] for r in rs]), 0)
        rows.append({
            "variant": label, "model": rs[0]["model"], "seeds": len(rs),
            "params": rs[0]["params"], "gflops_per_image": stat("gflops_per_image")[0],
            "train_img_s": stat("train_img_s")[0], "inference_img_s": stat("inference_img_s")[0],
            "mean_iou": stat("mean_iou"), "macro_f1": stat("macro_f1"),
            "pixel_accuracy": stat("pixel_accuracy"), "iou_per_class": per_class.tolist(),
            "best_step": [r["best_step"] for r in rs],
        })
    base = majority_baseline(meta)
    rows.append({"variant": base["variant"], "model": "-", "seeds": 0, "params": 0,
                 "gflops_per_image": math.nan, "train_img_s": math.nan,
                 "inference_img_s": math.nan, "mean_iou": (base["mean_iou"], 0.0),
                 "macro_f1": (base["macro_f1"], 0.0),
                 "pixel_accuracy": (base["pixel_accuracy"], 0.0),
                 "iou_per_class": base["iou_per_class"], "best_step": []})
    return rows


def write_tables(rows: list[dict], runs_dir: Path, class_names) -> None:
    """RUNS/benchmark.md, benchmark.csv and benchmark.png (mIoU ± std per variant)."""
    def pm(v):
        return f"{v[0]:.4f} ± {v[1]:.4f}"

    header = ["variant", "model", "params", "GFLOPs/img", "train img/s", "infer img/s",
              "test mIoU", "macro F1", "pixel acc", *[f"IoU {c}" for c in class_names],
              "best step"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    csv_rows = []
    for r in rows:
        cells = [r["variant"], r["model"], f"{r['params']:,}" if r["params"] else "-",
                 _num(r["gflops_per_image"], 3), _num(r["train_img_s"], 1),
                 _num(r["inference_img_s"], 1), pm(r["mean_iou"]), pm(r["macro_f1"]),
                 pm(r["pixel_accuracy"]), *[_num(x, 3) for x in r["iou_per_class"]],
                 ",".join(map(str, r["best_step"])) or "-"]
        lines.append("| " + " | ".join(cells) + " |")
        csv_rows.append({
            "variant": r["variant"], "model": r["model"], "seeds": r["seeds"],
            "params": r["params"], "gflops_per_image": r["gflops_per_image"],
            "train_img_s": r["train_img_s"], "inference_img_s": r["inference_img_s"],
            "mean_iou": r["mean_iou"][0], "mean_iou_std": r["mean_iou"][1],
            "macro_f1": r["macro_f1"][0], "macro_f1_std": r["macro_f1"][1],
            "pixel_accuracy": r["pixel_accuracy"][0],
            "pixel_accuracy_std": r["pixel_accuracy"][1],
            **{f"iou_{c}": x for c, x in zip(class_names, r["iou_per_class"])},
            "best_step": " ".join(map(str, r["best_step"])),
        })
    note = ("\nmean ± std over seeds; mIoU/F1 over classes present in the test truth or "
            "predictions (see README, metrics conventions); GFLOPs from XLA's cost analysis "
            "of the forward pass; img/s measured on this machine with a synthetic batch.\n")
    (runs_dir / "benchmark.md").write_text("\n".join(lines) + "\n" + note)
    with open(runs_dir / "benchmark.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(csv_rows[0].keys()))
        w.writeheader()
        w.writerows(csv_rows)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.4 * len(rows) + 2, 4))
    names = [r["variant"] for r in rows]
    ax.bar(names, [r["mean_iou"][0] for r in rows], yerr=[r["mean_iou"][1] for r in rows],
           capsize=4, color=["#2b8cbe"] * (len(rows) - 1) + ["#bdbdbd"])
    ax.set_ylabel("test mIoU")
    ax.set_ylim(0, 1)
    ax.set_title("U-Net variants: test mIoU (mean ± std over seeds)")
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    fig.tight_layout()
    from satseg_jax.plots import save_figure

    save_figure(fig, runs_dir / "benchmark.png")


def _num(x, digits: int) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"
