"""Segmentation / classification losses on LOGITS, all ignoring label 255.

Never apply softmax before these: they take raw logits (log-softmax is computed inside,
in float32, which is both correct and numerically stable even when the model computes
in bfloat16).

Config shape (``config.loss``, an ml_collections ConfigDict or a plain dict)::

    name: cross_entropy | dice | focal | ce_dice    # ce_dice = cross_entropy + dice, 1:1
    weights: {}            # non-empty -> a weighted sum that replaces ``name``,
                           # e.g. {"cross_entropy": 1.0, "dice": 0.5}
    class_weights: none | inverse_frequency | sqrt_inverse_frequency | "w0,w1,..."
                           # resolved by ``resolve_class_weights`` into a (K,) array
    label_smoothing: 0.0   # cross-entropy only
    focal_gamma: 2.0       # focal only
    dice_smooth: 1.0       # optional; Dice's additive smoothing

Averaging conventions (why: they decide what "one pixel's worth" of loss means):

- Cross-entropy is the weighted mean over valid pixels, ``sum(w_y * ce) / sum(w_y)``,
  PyTorch's ``CrossEntropyLoss(weight=w, ignore_index=255)``. With label smoothing eps
  the per-pixel term is ``(1 - eps) * w_y * ce_y + eps / K * sum_k w_k * (-log p_k)``,
  divided by the same ``sum(w_y)`` (again PyTorch's formula), so the two libraries give
  the same number for the same config.
- Focal loss uses the same weighted mean with ``(1 - p_y)**gamma`` scaling each pixel's CE.
- Soft Dice is ``1 - mean_k (2 I_k + s) / (C_k + s)`` with the intersection ``I_k`` and
  cardinality ``C_k = sum p_k + sum onehot_k`` summed over the whole batch (not per
  image), so an image with few pixels of a class does not dominate. With class weights
  the mean over classes is weighted, ``sum_k w_k D_k / sum_k w_k``, so the same weights
  shift both terms of ``ce_dice`` towards the same classes.
- Ignored pixels (label 255) contribute to no sum, whatever their logits. A batch with
  no valid pixel gives loss 0 with zero (finite) gradients, never NaN.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from satseg_jax.classes import IGNORE_LABEL
from satseg_jax.errors import SatsegError

COMPONENTS = ("cross_entropy", "dice", "focal")
NAMES = (*COMPONENTS, "ce_dice")


def center_crop_labels(labels: jax.Array, out_hw: tuple[int, int]) -> jax.Array:
    """Centre crop (N, H, W) labels to a valid-convolution model's smaller output.

    The valid-convolution U-Net predicts only the centre of its input (the border is
    context), so the labels it is scored against are the same centre window.
    """
    h, w = labels.shape[1], labels.shape[2]
    oh, ow = int(out_hw[0]), int(out_hw[1])
    if (oh, ow) == (h, w):
        return labels
    if oh > h or ow > w or (h - oh) % 2 or (w - ow) % 2:
        raise SatsegError(f"cannot centre-crop {h}×{w} labels to a {oh}×{ow} model output: the "
                          "output must be smaller by an even number of pixels per side")
    dh, dw = (h - oh) // 2, (w - ow) // 2
    return labels[:, dh:dh + oh, dw:dw + ow]


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    """``cfg[key]`` for a dict / ConfigDict, ``cfg.key`` for an attribute object."""
    if isinstance(cfg, Mapping) or hasattr(cfg, "get"):
        value = cfg.get(key, default)
    else:
        value = getattr(cfg, key, default)
    return default if value is None else value


def loss_components(loss_config: Any) -> dict[str, float]:
    """The ``{component: weight}`` mapping a loss config describes (validated)."""
    weights = _get(loss_config, "weights", {})
    weights = dict(weights.items()) if weights else {}
    if weights:
        unknown = sorted(set(weights) - set(COMPONENTS))
        if unknown:
            raise SatsegError(f"config.loss.weights: unknown losses {unknown}; "
                              f"valid: {list(COMPONENTS)}")
        comps = {k: float(v) for k, v in weights.items()}
        if any(v < 0 for v in comps.values()):
            raise SatsegError(f"config.loss.weights={comps}: weights must be >= 0")
        comps = {k: v for k, v in comps.items() if v != 0.0}
        if not comps:
            raise SatsegError("config.loss.weights: every weight is 0; give at least one loss "
                              "a positive weight or leave weights empty and set config.loss.name")
        return comps
    name = _get(loss_config, "name")
    if name == "ce_dice":
        return {"cross_entropy": 1.0, "dice": 1.0}
    if name not in COMPONENTS:
        raise SatsegError(f"config.loss.name={name!r}: expected one of {list(NAMES)}")
    return {name: 1.0}


# ----------------------------------------------------------------------------- sums form
#
# Every loss here is a ratio of batch *sums* (CE: sum w*ce / sum w; Dice: per-class
# intersections and cardinalities). Writing the loss as ``combine(sums)`` lets data
# parallel training reproduce the single-device loss exactly: devices compute their
# local sums, the sums are all-reduced, and each device differentiates the linearised
# loss around the global sums (see train.make_train_step). Means of per-device means
# would weight devices with few valid pixels as much as full ones.


def loss_statistics(logits: jax.Array, labels: jax.Array, loss_config: Any, num_classes: int,
                    class_weights: jax.Array | None = None,
                    ignore_label: int = IGNORE_LABEL) -> dict[str, jax.Array]:
    """Batch sums from which ``loss_from_statistics`` computes the configured loss.

    Works for segmentation (logits N,H,W,K; labels N,H,W) and classification (N,K; N).
    Only the sums the configured components need are computed.
    """
    if logits.shape[-1] != num_classes:
        raise SatsegError(f"the model outputs {logits.shape[-1]} class logits but the dataset "
                          f"has {num_classes} classes; rebuild the model for this dataset")
    if logits.shape[:-1] != labels.shape:
        raise SatsegError(f"logits {logits.shape} and labels {labels.shape} disagree; labels "
                          "must be the logits' shape without the class axis")
    comps = loss_components(loss_config)
    logits = logits.astype(jnp.float32)
    labels = labels.astype(jnp.int32)
    valid = labels != ignore_label
    safe = jnp.where(valid, labels, 0)  # any in-range index; its terms are masked out
    logp = jax.nn.log_softmax(logits, axis=-1)
    logp_true = jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
    cw = None if class_weights is None else jnp.asarray(class_weights, jnp.float32)
    if cw is not None and cw.shape != (num_classes,):
        raise SatsegError(f"class weights have shape {cw.shape}, expected ({num_classes},)")
    w = valid.astype(jnp.float32) if cw is None else jnp.where(valid, cw[safe], 0.0)
    stats: dict[str, jax.Array] = {}
    if "cross_entropy" in comps:
        eps = float(_get(loss_config, "label_smoothing", 0.0))
        per_pixel = w * -logp_true
        if eps:
            smooth = -logp if cw is None else -logp * cw
            per_pixel = (1 - eps) * per_pixel + valid * eps * jnp.mean(smooth, axis=-1)
        stats["ce_sum"] = jnp.sum(per_pixel)
        stats["ce_weight"] = jnp.sum(w)
    if "focal" in comps:
        gamma = float(_get(loss_config, "focal_gamma", 2.0))
        stats["focal_sum"] = jnp.sum(w * _focal_factor(logp_true, valid, gamma) * -logp_true)
        stats["focal_weight"] = jnp.sum(w)
    if "dice" in comps:
        onehot = jax.nn.one_hot(safe, num_classes, dtype=jnp.float32) * valid[..., None]
        probs = jnp.exp(logp) * valid[..., None]
        axes = tuple(range(probs.ndim - 1))
        stats["dice_intersection"] = jnp.sum(probs * onehot, axis=axes)
        stats["dice_cardinality"] = jnp.sum(probs + onehot, axis=axes)
    return stats


def _focal_factor(logp_true: jax.Array, valid: jax.Array, gamma: float) -> jax.Array:
    """(1 - p_y)**gamma with gradients that stay finite.

    ``1 - p`` is computed as ``-expm1(log p)`` (no cancellation near p = 1) and clamped
    away from 0: d/dx x**gamma is infinite at 0 for gamma < 1 and 0*inf = NaN for
    gamma = 0, which would otherwise poison a whole step through one saturated pixel
    (ignored pixels included, since their masked terms are still differentiated).
    """
    if gamma == 0.0:
        return jnp.ones_like(logp_true)
    base = jnp.clip(-jnp.expm1(logp_true), 1e-12, 1.0)
    return jnp.where(valid, base, 1.0) ** gamma


def loss_from_statistics(stats: dict[str, jax.Array], loss_config: Any,
                         smooth: float | None = None,
                         class_weights: jax.Array | None = None,
                         ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The configured loss (and its components) from ``loss_statistics`` sums.

    ``smooth`` (Dice) defaults to ``config.loss.dice_smooth`` or 1.0; ``class_weights``
    weight Dice's mean over classes (the CE sums already hold them).
    """
    comps = loss_components(loss_config)
    if smooth is None:
        smooth = float(_get(loss_config, "dice_smooth", 1.0))
    parts: dict[str, jax.Array] = {}
    if "cross_entropy" in comps:
        parts["cross_entropy"] = _safe_ratio(stats["ce_sum"], stats["ce_weight"])
    if "focal" in comps:
        parts["focal"] = _safe_ratio(stats["focal_sum"], stats["focal_weight"])
    if "dice" in comps:
        inter, card = stats["dice_intersection"], stats["dice_cardinality"]
        # smooth = 0 with an all-ignored batch would be 0/0: such a class scores Dice 1.
        dice = jnp.where(card + smooth > 0,
                         (2 * inter + smooth) / jnp.where(card + smooth > 0, card + smooth, 1.0),
                         1.0)
        if class_weights is None:
            parts["dice"] = 1.0 - jnp.mean(dice)
        else:
            cw = jnp.asarray(class_weights, jnp.float32)
            parts["dice"] = 1.0 - jnp.sum(cw * dice) / jnp.sum(cw)
    total = jnp.zeros((), jnp.float32)
    for k, weight in comps.items():
        total = total + weight * parts[k]
    return total, parts


def _safe_ratio(num: jax.Array, den: jax.Array) -> jax.Array:
    """num / den, and 0 (with zero gradient) for a batch without valid pixels."""
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)


# ----------------------------------------------------------------------------- direct form


def segmentation_loss(logits: jax.Array, labels: jax.Array, loss_config: Any,
                      class_weights: jax.Array | None = None,
                      ignore_label: int = IGNORE_LABEL) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The loss ``loss_config`` describes (see the module docstring) and its components.

    Returns ``(loss, {"cross_entropy": ..., "dice": ...})`` with one entry per component
    actually used (unweighted values; ``loss`` is their weighted sum). If the logits are
    spatially smaller than the labels (valid-convolution U-Net) the labels are
    centre-cropped to match. Single-device form; data-parallel training uses
    ``loss_statistics`` + ``loss_from_statistics`` so sums are reduced across devices.
    """
    if labels.ndim == 3 and logits.ndim == 4:
        labels = center_crop_labels(labels, logits.shape[1:3])
    stats = loss_statistics(logits, labels, loss_config, logits.shape[-1], class_weights,
                            ignore_label)
    return loss_from_statistics(stats, loss_config, class_weights=class_weights)


def cross_entropy(logits: jax.Array, labels: jax.Array, class_weights: jax.Array | None = None,
                  ignore_label: int = IGNORE_LABEL, label_smoothing: float = 0.0) -> jax.Array:
    """Weighted mean cross-entropy over non-ignored pixels (PyTorch's convention)."""
    cfg = {"name": "cross_entropy", "label_smoothing": label_smoothing}
    stats = loss_statistics(logits, labels, cfg, logits.shape[-1], class_weights, ignore_label)
    return loss_from_statistics(stats, cfg)[0]


def dice_loss(logits: jax.Array, labels: jax.Array, num_classes: int,
              ignore_label: int = IGNORE_LABEL, smooth: float = 1.0) -> jax.Array:
    """Soft Dice loss, 1 - mean over classes of the batch Dice of softmax probabilities."""
    cfg = {"name": "dice"}
    stats = loss_statistics(logits, labels, cfg, num_classes, None, ignore_label)
    return loss_from_statistics(stats, cfg, smooth=smooth)[0]


def focal_loss(logits: jax.Array, labels: jax.Array, gamma: float = 2.0,
               class_weights: jax.Array | None = None,
               ignore_label: int = IGNORE_LABEL) -> jax.Array:
    """Focal loss (Lin et al. 2017, "Focal Loss for Dense Object Detection"): CE scaled
    by (1 - p_y)**gamma so easy pixels count less; gamma = 0 is exactly cross-entropy."""
    cfg = {"name": "focal", "focal_gamma": gamma}
    stats = loss_statistics(logits, labels, cfg, logits.shape[-1], class_weights, ignore_label)
    return loss_from_statistics(stats, cfg)[0]


# ----------------------------------------------------------------------------- class weights

CLASS_WEIGHT_MODES = ("none", "inverse_frequency", "sqrt_inverse_frequency")


def resolve_class_weights(spec: Any, dataset_weights: tuple[float, ...] | None,
                          num_classes: int, source: str) -> np.ndarray | None:
    """``config.loss.class_weights`` as a (K,) float32 array, or None for ``none``.

    ``inverse_frequency`` is the dataset's own weights (``satseg_dataset.json``, from the
    train split's class counts); ``sqrt_inverse_frequency`` their square roots, rescaled
    to mean 1 (a milder push towards rare classes, often better with Dice beside CE); an
    explicit list (a tuple in a config file, or ``"1,3"`` on the command line) gives one
    positive weight per class id. ``source`` names where the dataset weights come from.
    """
    if isinstance(spec, str) and spec in CLASS_WEIGHT_MODES:
        if spec == "none":
            return None
        w = np.asarray(dataset_weights or (), np.float64)
        if w.shape != (num_classes,):
            raise SatsegError(f"{source} has no class_weights for {num_classes} classes; "
                              "rebuild the dataset")
        if spec == "sqrt_inverse_frequency":
            w = np.sqrt(w)
            w = w * (len(w) / w.sum())
        return w.astype(np.float32)
    try:
        items = spec.split(",") if isinstance(spec, str) else list(spec)
        w = np.asarray([float(x) for x in items], np.float64)
    except (TypeError, ValueError):
        w = None
    if w is None or w.shape != (num_classes,) or not np.all(np.isfinite(w)) or np.any(w <= 0):
        raise SatsegError(f"config.loss.class_weights={spec!r}: expected one of "
                          f"{', '.join(CLASS_WEIGHT_MODES)} or {num_classes} positive numbers "
                          "(one per class id), e.g. '1,3'")
    return w.astype(np.float32)
