"""The tables of a variant sweep (``satseg benchmark``): one row per variant over its
seeds, baseline rows beside them, and how sure each difference is.

What a row says, and why:

- **mean ± std and a 95 % interval** over seeds (sample std, Student-t interval
  ``mean ± t(0.975, n-1) · std / √n``): with 2-5 seeds a normal interval would be far too
  narrow. One seed has no spread: it prints the value alone, never ``± 0.0000``.
- **A paired comparison with the reference variant** (``unet`` when the sweep has it,
  else the first): the mIoU differences on the seeds both rows ran, their mean, and the
  p-value of a paired t-test (scipy). Pairing by seed removes what the seed does to both
  models alike (initialisation, batch order), which an unpaired test would count as
  noise. ``significant`` is p < 0.05; with fewer than 2 shared seeds there is no test.
- **Baselines** (``satseg baseline``: majority class, random forests) are fitted once
  (their seed is the sweep's first), so they carry no spread; img/s and GFLOPs do not
  apply to them, and their wall time is fit + scoring.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

ALPHA = 0.05  # significance level of the paired test


def _f(x) -> float:
    return math.nan if x is None else float(x)


def seed_stats(values: list[float]) -> dict:
    """mean, std (ddof=1; NaN for one value), the 95 % t-interval's half-width, n."""
    v = np.array([x for x in values if not math.isnan(x)], float)
    n = len(v)
    if n == 0:
        return {"mean": math.nan, "std": math.nan, "ci95": math.nan, "n": 0}
    if n == 1:
        return {"mean": float(v[0]), "std": math.nan, "ci95": math.nan, "n": 1}
    from scipy import stats

    std = float(v.std(ddof=1))
    return {"mean": float(v.mean()), "std": std, "n": n,
            "ci95": float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n))}


def paired_test(a: dict[int, float], b: dict[int, float]) -> dict:
    """Paired comparison of ``a`` against ``b`` (``{seed: value}``) on their shared seeds:
    ``{"delta": mean(a - b), "p": p-value or NaN, "n": shared seeds, "significant": bool
    or None}``. Identical values on every seed give p = 1 (no difference)."""
    seeds = sorted(set(a) & set(b))
    d = np.array([a[s] - b[s] for s in seeds], float)
    d = d[~np.isnan(d)]
    if len(d) == 0:
        return {"delta": math.nan, "p": math.nan, "n": 0, "significant": None}
    if len(d) < 2:
        return {"delta": float(d.mean()), "p": math.nan, "n": len(d), "significant": None}
    if np.all(d == d[0]):  # no spread: the t statistic is undefined
        p = 1.0 if d[0] == 0 else 0.0
    else:
        from scipy import stats

        p = float(stats.ttest_1samp(d, 0.0).pvalue)
    return {"delta": float(d.mean()), "p": p, "n": len(d), "significant": bool(p < ALPHA)}


def reference_variant(labels: list[str]) -> str:
    """The row every other is compared with: ``unet`` when present, else the first."""
    return "unet" if "unet" in labels else labels[0]


def summarise(results: list[dict], costs: dict[str, dict], baselines: list[dict]) -> list[dict]:
    """One row per variant (its seeds' statistics, its costs, the paired test against the
    reference variant), then one row per baseline."""
    labels = list(dict.fromkeys(r["variant"] for r in results))
    ref = reference_variant(labels) if labels else None
    by_seed = {lab: {r["seed"]: _f(r["mean_iou"]) for r in results if r["variant"] == lab}
               for lab in labels}
    rows = []
    for label in labels:
        rs = [r for r in results if r["variant"] == label]
        per_class = np.nanmean(np.array([[_f(x) for x in r["iou_per_class"]] for r in rs]), 0)
        cost = costs.get(label, {})
        rows.append({
            "variant": label, "model": rs[0]["model"], "kind": "model", "seeds": len(rs),
            "params": cost.get("params", rs[0].get("params", 0)),
            "gflops_per_image": cost.get("gflops_per_image", math.nan),
            "train_img_s": cost.get("train_img_s", math.nan),
            "inference_img_s": cost.get("inference_img_s", math.nan),
            "wall_s": seed_stats([_f(r.get("wall_s")) for r in rs])["mean"],
            **{k: seed_stats([_f(r[k]) for r in rs])
               for k in ("mean_iou", "macro_f1", "pixel_accuracy")},
            "vs_reference": (None if label == ref else
                             paired_test(by_seed[label], by_seed[ref])),
            "iou_per_class": per_class.tolist(),
            "best_step": [r["best_step"] for r in rs],
        })
    for b in baselines:
        rows.append({
            "variant": b["variant"], "model": b["method"], "kind": "baseline", "seeds": 1,
            "params": 0, "gflops_per_image": math.nan, "train_img_s": math.nan,
            "inference_img_s": math.nan, "wall_s": _f(b.get("wall_s")),
            **{k: seed_stats([_f(b[k])]) for k in ("mean_iou", "macro_f1", "pixel_accuracy")},
            "vs_reference": None,
            "iou_per_class": [_f(x) for x in b["iou_per_class"]], "best_step": [],
        })
    return rows


def _num(x, digits: int) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _pm(s: dict) -> str:
    """``0.9526 ± 0.0045`` over several seeds; the value alone for one."""
    if s["n"] < 2:
        return _num(s["mean"], 4)
    return f"{s['mean']:.4f} ± {s['std']:.4f}"


def _ci(s: dict) -> str:
    if s["n"] < 2:
        return "-"
    return f"[{s['mean'] - s['ci95']:.4f}, {s['mean'] + s['ci95']:.4f}]"


def _vs(v: dict | None, ref: str) -> tuple[str, str]:
    if v is None:
        return "-", "-"
    delta = f"{v['delta']:+.4f}" if not math.isnan(v["delta"]) else "-"
    if v["significant"] is None:
        return delta, f"n/a ({v['n']} shared seed{'s' if v['n'] != 1 else ''})"
    return f"{delta} (p={v['p']:.3f})", "yes" if v["significant"] else "no"


def write_tables(rows: list[dict], runs_dir: Path, class_names, split: str = "test") -> None:
    """RUNS/benchmark.md, benchmark.csv and benchmark.png."""
    models = [r["variant"] for r in rows if r["kind"] == "model"]
    ref = reference_variant(models) if models else "-"
    header = ["variant", "model", "params", "GFLOPs/img", "train img/s", "infer img/s",
              "wall s/run", "seeds", f"{split} mIoU", "95% CI", f"ΔmIoU vs {ref}",
              f"significant (p<{ALPHA})", "macro F1", "pixel acc",
              *[f"IoU {c}" for c in class_names], "best step"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    csv_rows = []
    for r in rows:
        delta, sig = _vs(r["vs_reference"], ref)
        cells = [r["variant"], r["model"], f"{r['params']:,}" if r["params"] else "-",
                 _num(r["gflops_per_image"], 3), _num(r["train_img_s"], 1),
                 _num(r["inference_img_s"], 1), _num(r["wall_s"], 0), str(r["seeds"]),
                 _pm(r["mean_iou"]), _ci(r["mean_iou"]), delta, sig, _pm(r["macro_f1"]),
                 _pm(r["pixel_accuracy"]), *[_num(x, 3) for x in r["iou_per_class"]],
                 ",".join(map(str, r["best_step"])) or "-"]
        lines.append("| " + " | ".join(cells) + " |")
        v = r["vs_reference"] or {}
        csv_rows.append({
            "variant": r["variant"], "model": r["model"], "kind": r["kind"],
            "seeds": r["seeds"], "params": r["params"],
            "gflops_per_image": r["gflops_per_image"], "train_img_s": r["train_img_s"],
            "inference_img_s": r["inference_img_s"], "wall_s": r["wall_s"],
            **{f"{k}{suffix}": r[k][stat] for k in ("mean_iou", "macro_f1", "pixel_accuracy")
               for suffix, stat in (("", "mean"), ("_std", "std"), ("_ci95", "ci95"))},
            "delta_vs_reference": v.get("delta", math.nan), "p_value": v.get("p", math.nan),
            "significant": v.get("significant"),
            **{f"iou_{c}": x for c, x in zip(class_names, r["iou_per_class"])},
            "best_step": " ".join(map(str, r["best_step"])),
        })
    note = (f"\n{split} split. mean ± std (sample std) over seeds, 95% CI from Student's t; "
            f"one seed shows its value alone. ΔmIoU: paired over shared seeds against {ref}, "
            "p from a paired t-test. mIoU/F1 over classes present in the truth or predictions "
            "(README, metrics conventions). GFLOPs: XLA cost analysis of the forward pass "
            "built with XLA's convolutions (counts what oneDNN calls hide). img/s: median of "
            "round-robin timed calls on one synthetic batch, all models measured together "
            "after training, compile and warm-up excluded. wall s/run: training + evaluation "
            "per seed (baselines: fit + scoring). Baselines (satseg baseline) are fitted "
            "once.\n")
    (runs_dir / "benchmark.md").write_text("\n".join(lines) + "\n" + note)
    with open(runs_dir / "benchmark.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(csv_rows[0].keys()))
        w.writeheader()
        w.writerows(csv_rows)
    _plot(rows, runs_dir / "benchmark.png", split)


def _plot(rows: list[dict], path: Path, split: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from satseg_jax.plots import save_figure

    fig, ax = plt.subplots(figsize=(1.4 * len(rows) + 2, 4))
    ci = [r["mean_iou"]["ci95"] for r in rows]
    ax.bar([r["variant"] for r in rows], [r["mean_iou"]["mean"] for r in rows],
           yerr=[0.0 if math.isnan(c) else c for c in ci], capsize=4,
           color=["#2b8cbe" if r["kind"] == "model" else "#bdbdbd" for r in rows])
    ax.set_ylabel(f"{split} mIoU")
    ax.set_ylim(0, 1)
    ax.set_title(f"variants and baselines: {split} mIoU (mean, 95% CI over seeds)")
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    fig.tight_layout()
    save_figure(fig, path)
