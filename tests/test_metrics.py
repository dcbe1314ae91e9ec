"""Metrics from the confusion matrix: by hand, against scikit-learn, ignore excluded."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import metrics as skm

from satseg_jax.metrics import confusion_matrix, metrics_from_confusion, to_jsonable


def test_hand_computed_confusion_matrix():
    # truth:      0 0 0 1 1 2 2 2 255 255
    # prediction: 0 0 1 1 2 2 2 0   1   2
    truth = jnp.array([0, 0, 0, 1, 1, 2, 2, 2, 255, 255])
    pred = jnp.array([0, 0, 1, 1, 2, 2, 2, 0, 1, 2])
    cm = np.asarray(confusion_matrix(truth, pred, 3))
    np.testing.assert_array_equal(cm, [[2, 1, 0], [0, 1, 1], [1, 0, 2]])
    m = metrics_from_confusion(cm)
    # class 0: TP 2, FP 1, FN 1 -> IoU 2/4, F1 4/6; class 1: TP 1, FP 1, FN 1 -> 1/3, 2/4;
    # class 2: TP 2, FP 1, FN 1 -> 2/4, 4/6. Accuracy 5/8 (the two 255 pixels excluded).
    np.testing.assert_allclose(m["iou_per_class"], [0.5, 1 / 3, 0.5])
    np.testing.assert_allclose(m["f1_per_class"], [2 / 3, 0.5, 2 / 3])
    assert m["pixel_accuracy"] == pytest.approx(5 / 8)
    assert m["mean_iou"] == pytest.approx((0.5 + 1 / 3 + 0.5) / 3)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.5 + 2 / 3) / 3)


def test_against_sklearn_with_ignore_pixels():
    rng = np.random.default_rng(0)
    k = 5
    truth = rng.integers(0, k, size=(4, 32, 32))
    pred = np.where(rng.random(truth.shape) < 0.6, truth, rng.integers(0, k, truth.shape))
    truth[rng.random(truth.shape) < 0.2] = 255
    cm = np.asarray(jax.jit(confusion_matrix, static_argnums=2)(truth, pred, k))
    m = metrics_from_confusion(cm)
    keep = truth != 255
    t, p = truth[keep], pred[keep]
    labels = list(range(k))
    np.testing.assert_array_equal(cm, skm.confusion_matrix(t, p, labels=labels))
    assert m["pixel_accuracy"] == pytest.approx(skm.accuracy_score(t, p), abs=1e-6)
    np.testing.assert_allclose(m["iou_per_class"],
                               skm.jaccard_score(t, p, labels=labels, average=None), atol=1e-6)
    np.testing.assert_allclose(m["f1_per_class"],
                               skm.f1_score(t, p, labels=labels, average=None), atol=1e-6)
    assert m["mean_iou"] == pytest.approx(
        skm.jaccard_score(t, p, labels=labels, average="macro"), abs=1e-6)
    assert m["macro_f1"] == pytest.approx(
        skm.f1_score(t, p, labels=labels, average="macro"), abs=1e-6)


def test_absent_class_is_nan_and_left_out_of_the_means():
    truth = np.array([0, 0, 1, 1])
    pred = np.array([0, 1, 1, 1])
    m = metrics_from_confusion(np.asarray(confusion_matrix(truth, pred, 3)))
    assert math.isnan(m["iou_per_class"][2]) and math.isnan(m["f1_per_class"][2])
    assert m["mean_iou"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert to_jsonable(m)["iou_per_class"][2] is None
    # Predicted but absent from the truth: IoU 0 and it counts in the mean.
    m2 = metrics_from_confusion(np.asarray(confusion_matrix(truth, np.array([0, 2, 1, 1]), 3)))
    assert m2["iou_per_class"][2] == 0.0
    assert m2["mean_iou"] == pytest.approx((1 / 2 + 1 + 0) / 3)


def test_batch_sums_equal_the_whole():
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 4, (8, 16, 16))
    truth[:, :3] = 255
    pred = rng.integers(0, 4, (8, 16, 16))
    whole = confusion_matrix(truth, pred, 4)
    halves = confusion_matrix(truth[:4], pred[:4], 4) + confusion_matrix(truth[4:], pred[4:], 4)
    np.testing.assert_array_equal(whole, halves)
    assert int(whole.sum()) == int((truth != 255).sum())
