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
  Why not NaN-as-0: a tile set that simply lacks a class would otherwise be punished
  for it; why not only classes in the truth: predicting a class that is not there is an
  error that must lower the score.
- ``support_per_class`` is the number of valid truth pixels of each class (row sums).

Device side: ``confusion_matrix`` is pure jnp with static shapes, so it runs inside
``jit``/``pmap`` and is combined across devices with ``lax.psum`` (counts add). A
single batch's counts fit int32; sums over a whole split should be accumulated on the
host in int64 (``metrics_from_confusion`` accepts any integer dtype).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from satseg_jax.classes import IGNORE_LABEL
from satseg_jax.errors import SatsegError


def confusion_matrix(labels: jax.Array, preds: jax.Array, num_classes: int,
                     ignore_label: int = IGNORE_LABEL) -> jax.Array:
    """(K, K) int32 counts, rows = truth, columns = prediction, over non-ignored pixels.

    ``labels`` and ``preds`` have the same shape (any rank; ``preds`` are class ids, e.g.
    ``argmax(logits, -1)``). jit-able with ``num_classes`` static. Sums of confusion
    matrices are confusion matrices, so batches, devices and hosts combine by adding.
    Only ``ignore_label`` is excluded: other out-of-range labels are a data bug upstream
    (``classes.value_to_id`` refuses them), not something to hide here.
    """
    labels = labels.reshape(-1).astype(jnp.int32)
    preds = preds.reshape(-1).astype(jnp.int32)
    valid = labels != ignore_label
    index = jnp.where(valid, labels * num_classes + preds, 0)
    counts = jnp.bincount(index, weights=valid.astype(jnp.int32), length=num_classes**2)
    return counts.astype(jnp.int32).reshape(num_classes, num_classes)


def metrics_from_confusion(cm: np.ndarray, class_names: list[str] | None = None) -> dict:
    """Pixel accuracy, per-class precision/recall/F1/IoU, macro F1 and mIoU (float64).

    Keys: ``pixel_accuracy``, ``mean_iou``, ``macro_f1`` (floats), ``iou_per_class``,
    ``f1_per_class``, ``precision_per_class``, ``recall_per_class`` (lists of floats,
    NaN for classes absent from truth and prediction), ``support_per_class`` (ints),
    ``confusion_matrix`` (list of lists of ints), ``class_names``. Pass the result
    through ``to_jsonable`` before ``json.dumps`` (NaN -> null).
    """
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise SatsegError(f"confusion matrix must be square (K, K), got shape {cm.shape}")
    k = cm.shape[0]
    if class_names is not None and len(class_names) != k:
        raise SatsegError(f"{len(class_names)} class names for a {k}-class confusion matrix")
    counts = cm.astype(np.int64)
    cm = cm.astype(np.float64)
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
        "support_per_class": counts.sum(axis=1).tolist(),
        "confusion_matrix": counts.tolist(),
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
    """A per-class table (class, IoU, F1, precision, recall, support) and summary lines.

    Accepts ``metrics_from_confusion`` output before or after ``to_jsonable``.
    """

    def f(x: float | None) -> str:
        return "   n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:6.4f}"

    width = max([8, *(len(str(n)) for n in m["class_names"])])
    cols = "  ".join(f"{c:>6}" for c in ("IoU", "F1", "prec", "recall"))
    lines = [f"{'class':<{width}}  {cols}  {'support':>9}"]
    for i, name in enumerate(m["class_names"]):
        values = "  ".join(f(m[key][i]) for key in (
            "iou_per_class", "f1_per_class", "precision_per_class", "recall_per_class"))
        lines.append(f"{str(name):<{width}}  {values}  {m['support_per_class'][i]:>9}")
    lines.append("-" * len(lines[0]))
    head = ""
    if "split" in m:
        head = f"[{m['split']}, checkpoint step {m.get('checkpoint_step', '?')}] "
    lines.append(f"{head}pixel accuracy {f(m['pixel_accuracy'])}   mIoU {f(m['mean_iou'])}   "
                 f"macro F1 {f(m['macro_f1'])}")
    lines.append("(classes absent from truth and prediction are n/a and left out of the means)")
    return "\n".join(lines)
