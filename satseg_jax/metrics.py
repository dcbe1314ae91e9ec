"""Confusion matrix and every metric derived from it.

Conventions (the same in every report this project writes):

- Rows are the truth, columns the prediction. Pixels labelled 255 (ignore/nodata) are
  excluded before counting, so they never enter any metric.
- ``pixel_accuracy`` = trace / total (micro average over valid pixels).
- Per class k: IoU = TP / (TP + FP + FN); precision = TP / (TP + FP);
  recall = TP / (TP + FN); F1 = 2 TP / (2 TP + FP + FN).
- A class absent from both the truth and the prediction (TP + FP + FN = 0) has IoU, F1,
  precision and recall = NaN (``null`` in JSON) and is **left out** of ``mean_iou`` and
  ``macro_f1``. A class predicted but absent from the truth has IoU = F1 = 0 and counts.
  So the macro means run over the classes present in the truth *or* the prediction —
  not only over the classes present in the truth.
- ``mean_iou`` and ``macro_f1`` are unweighted (macro) means over those classes.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from satseg_jax.classes import IGNORE_LABEL


def confusion_matrix(labels: jax.Array, preds: jax.Array, num_classes: int,
                     ignore_label: int = IGNORE_LABEL) -> jax.Array:
    """(K, K) int32 counts of (truth, prediction) over non-ignored pixels; jit-able.

    Sums of confusion matrices are confusion matrices, so batches, devices and hosts
    are combined by adding.
    """
    labels = labels.reshape(-1).astype(jnp.int32)
    preds = preds.reshape(-1).astype(jnp.int32)
    valid = labels != ignore_label
    index = jnp.where(valid, labels * num_classes + preds, 0)
    counts = jnp.bincount(index, weights=valid.astype(jnp.int32), length=num_classes**2)
    return counts.astype(jnp.int32).reshape(num_classes, num_classes)


def metrics_from_confusion(cm: np.ndarray, class_names: list[str] | None = None) -> dict:
    """Pixel accuracy, per-class precision/recall/F1/IoU, macro F1 and mIoU (float64)."""
    cm = np.asarray(cm, dtype=np.float64)
    k = cm.shape[0]
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        present = (tp + fp + fn) > 0
        iou = np.where(present, tp / (tp + fp + fn), np.nan)
        f1 = np.where(present, 2 * tp / (2 * tp + fp + fn), np.nan)
        precision = np.where(tp + fp > 0, tp / (tp + fp), np.where(present, 0.0, np.nan))
        recall = np.where(tp + fn > 0, tp / (tp + fn), np.where(present, 0.0, np.nan))
    total = cm.sum()
    names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
    return {
        "pixel_accuracy": float(tp.sum() / total) if total else math.nan,
        "mean_iou": float(np.nanmean(iou)) if present.any() else math.nan,
        "macro_f1": float(np.nanmean(f1)) if present.any() else math.nan,
        "iou_per_class": iou.tolist(),
        "f1_per_class": f1.tolist(),
        "precision_per_class": precision.tolist(),
        "recall_per_class": recall.tolist(),
        "support_per_class": cm.sum(axis=1).astype(np.int64).tolist(),
        "confusion_matrix": cm.astype(np.int64).tolist(),
        "class_names": names,
    }


def to_jsonable(obj: Any) -> Any:
    """NaN -> None (JSON null), numpy scalars -> Python, recursively."""
    if isinstance(obj, dict):
        return {k: to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return None if math.isnan(float(obj)) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def format_metrics_table(m: dict) -> str:
    """A per-class table plus the summary lines, for the console."""
    def f(x):
        return "   n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:6.4f}"

    width = max(8, *(len(n) for n in m["class_names"]))
    lines = [f"{'class':<{width}}    IoU      F1    prec  recall    support"]
    for i, name in enumerate(m["class_names"]):
        lines.append(f"{name:<{width}}  {f(m['iou_per_class'][i])}  {f(m['f1_per_class'][i])}  "
                     f"{f(m['precision_per_class'][i])}  {f(m['recall_per_class'][i])}  "
                     f"{m['support_per_class'][i]:>9}")
    lines.append("-" * len(lines[0]))
    head = ""
    if "split" in m:
        head = f"[{m['split']}, checkpoint step {m.get('checkpoint_step', '?')}] "
    lines.append(f"{head}pixel accuracy {f(m['pixel_accuracy'])}   mIoU {f(m['mean_iou'])}   "
                 f"macro F1 {f(m['macro_f1'])}")
    lines.append("(classes absent from truth and prediction are n/a and left out of the means)")
    return "\n".join(lines)
