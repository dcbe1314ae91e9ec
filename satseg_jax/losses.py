"""Segmentation / classification losses on LOGITS, all ignoring label 255.

Never apply softmax before these: they take raw logits (log-softmax is computed inside,
in float32, which is both correct and numerically stable).

Config shape (``config.loss``)::

    name: cross_entropy | dice | focal | ce_dice
    weights: {}            # or e.g. {"cross_entropy": 1.0, "dice": 0.5}: a weighted sum
    class_weights: none | inverse_frequency   (resolved by train.py into an array)
    label_smoothing: 0.0   # cross-entropy only
    focal_gamma: 2.0

Averaging: cross-entropy is the weighted mean over valid pixels, sum(w_y * ce) / sum(w_y)
(PyTorch's ``CrossEntropyLoss(weight=...)`` convention); a batch with no valid pixel
gives 0 with zero gradient, never NaN. Soft Dice is 1 - mean over classes of
(2 I_k + s) / (C_k + s) with I_k, C_k summed over the batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from satseg_jax.classes import IGNORE_LABEL
from satseg_jax.errors import SatsegError


def center_crop_labels(labels: jax.Array, out_hw: tuple[int, int]) -> jax.Array:
    """Centre crop (N, H, W) labels to a valid-convolution model's smaller output."""
    h, w = labels.shape[1], labels.shape[2]
    oh, ow = int(out_hw[0]), int(out_hw[1])
    if (oh, ow) == (h, w):
        return labels
    dh, dw = (h - oh) // 2, (w - ow) // 2
    return labels[:, dh:dh + oh, dw:dw + ow]


# ----------------------------------------------------------------------------- sums form
#
# Every loss above is a ratio of batch *sums* (CE: sum w*ce / sum w; Dice: per-class
# intersections and cardinalities). Writing the loss as ``combine(sums)`` lets data
# parallel training reproduce the single-device loss exactly: devices compute their
# local sums, the sums are all-reduced, and each device differentiates the linearised
# loss around the global sums (see train.make_train_step). Means of per-device means
# would weight devices with few valid pixels as much as full ones.


def loss_components(loss_config) -> dict[str, float]:
    """The {component: weight} mapping a loss config describes."""
    weights = dict(loss_config.get("weights", None) or {})
    if weights:
        unknown = set(weights) - set(_COMPONENTS)
        if unknown:
            raise SatsegError(f"config.loss.weights: unknown losses {sorted(unknown)}; "
                              f"valid: {sorted(_COMPONENTS)}")
        return {k: float(v) for k, v in weights.items() if float(v) != 0.0}
    name = loss_config["name"]
    if name == "ce_dice":
        return {"cross_entropy": 1.0, "dice": 1.0}
    if name not in _COMPONENTS:
        raise SatsegError(f"config.loss.name={name!r}: expected one of "
                          f"{sorted([*_COMPONENTS, 'ce_dice'])}")
    return {name: 1.0}


_COMPONENTS = ("cross_entropy", "dice", "focal")


def loss_statistics(logits: jax.Array, labels: jax.Array, loss_config, num_classes: int,
                    class_weights: jax.Array | None = None) -> dict[str, jax.Array]:
    """Batch sums from which ``loss_from_statistics`` computes the configured loss.

    Works for segmentation (logits N,H,W,K; labels N,H,W) and classification (N,K; N).
    """
    comps = loss_components(loss_config)
    logits = logits.astype(jnp.float32)
    labels = labels.astype(jnp.int32)
    valid = labels != IGNORE_LABEL
    safe = jnp.where(valid, labels, 0)
    logp = jax.nn.log_softmax(logits, axis=-1)
    onehot = jax.nn.one_hot(safe, num_classes, dtype=jnp.float32) * valid[..., None]
    w = valid.astype(jnp.float32)
    if class_weights is not None:
        w = w * jnp.asarray(class_weights, jnp.float32)[safe]
    stats: dict[str, jax.Array] = {}
    logp_true = jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
    if "cross_entropy" in comps:
        eps = float(loss_config.get("label_smoothing", 0.0) or 0.0)
        ce = -logp_true
        if eps:
            ce = (1 - eps) * ce - eps * jnp.mean(logp, axis=-1)
        stats["ce_sum"] = jnp.sum(w * ce)
        stats["ce_weight"] = jnp.sum(w)
    if "focal" in comps:
        gamma = float(loss_config.get("focal_gamma", 2.0))
        pt = jnp.exp(logp_true)
        stats["focal_sum"] = jnp.sum(w * (1.0 - pt) ** gamma * -logp_true)
        stats["focal_weight"] = jnp.sum(w)
    if "dice" in comps:
        probs = jnp.exp(logp) * valid[..., None]
        axes = tuple(range(probs.ndim - 1))
        stats["dice_intersection"] = jnp.sum(probs * onehot, axis=axes)
        stats["dice_cardinality"] = jnp.sum(probs + onehot, axis=axes)
    return stats


def loss_from_statistics(stats: dict[str, jax.Array], loss_config,
                         smooth: float = 1.0) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The configured loss (and its components) from ``loss_statistics`` sums."""
    comps = loss_components(loss_config)
    parts: dict[str, jax.Array] = {}
    if "cross_entropy" in comps:
        parts["cross_entropy"] = _safe_ratio(stats["ce_sum"], stats["ce_weight"])
    if "focal" in comps:
        parts["focal"] = _safe_ratio(stats["focal_sum"], stats["focal_weight"])
    if "dice" in comps:
        dice = (2 * stats["dice_intersection"] + smooth) / (stats["dice_cardinality"] + smooth)
        parts["dice"] = 1.0 - jnp.mean(dice)
    total = sum(comps[k] * parts[k] for k in comps)
    return total, parts


def _safe_ratio(num: jax.Array, den: jax.Array) -> jax.Array:
    """num / den, and 0 (with zero gradient) for a batch without valid pixels."""
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)


# ----------------------------------------------------------------------------- direct form


def _single(name: str, **extra) -> dict:
    return {"name": name, "weights": {}, **extra}


def cross_entropy(logits: jax.Array, labels: jax.Array, class_weights: jax.Array | None = None,
                  label_smoothing: float = 0.0) -> jax.Array:
    """Weighted mean cross-entropy over non-ignored pixels (on logits)."""
    cfg = _single("cross_entropy", label_smoothing=label_smoothing)
    stats = loss_statistics(logits, labels, cfg, logits.shape[-1], class_weights)
    return loss_from_statistics(stats, cfg)[0]


def dice_loss(logits: jax.Array, labels: jax.Array, smooth: float = 1.0) -> jax.Array:
    """Soft Dice loss (1 - mean class Dice) over non-ignored pixels."""
    cfg = _single("dice")
    stats = loss_statistics(logits, labels, cfg, logits.shape[-1])
    return loss_from_statistics(stats, cfg, smooth=smooth)[0]


def focal_loss(logits: jax.Array, labels: jax.Array, gamma: float = 2.0,
               class_weights: jax.Array | None = None) -> jax.Array:
    """Focal loss (Lin et al. 2017): CE scaled by (1 - p_t)^gamma; gamma=0 is CE."""
    cfg = _single("focal", focal_gamma=gamma)
    stats = loss_statistics(logits, labels, cfg, logits.shape[-1], class_weights)
    return loss_from_statistics(stats, cfg)[0]
