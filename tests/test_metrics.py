"""Metrics from the confusion matrix: by hand, against scikit-learn, ignore excluded."""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import metrics as skm

from satseg_jax.errors import SatsegError
from satseg_jax.metrics import (
    confusion_matrix,
    format_metrics_table,
    metrics_from_confusion,
    to_jsonable,
)


def test_hand_computed_confusion_matrix():
    # truth:      0 0 0 1 1 2 2 2 255 255
    # prediction: 0 0 1 1 2 2 2 0   1   2
    truth = jnp.array([0, 0, 0, 1, 1, 2, 2, 2, 255, 255])
    pred = jnp.array([0, 0, 1, 1, 2, 2, 2, 0, 1, 2])
    cm = np.asarray(confusion_matrix(truth, pred, 3))
    # rows = truth, columns = prediction; the two 255 pixels are not counted.
    np.testing.assert_array_equal(cm, [[2, 1, 0],
                                       [0, 1, 1],
                                       [1, 0, 2]])
    m = metrics_from_confusion(cm, ["water", "forest", "crop"])
    # class 0: TP 2, FP 1 (a 2 predicted as 0), FN 1 -> IoU 2/4, P 2/3, R 2/3, F1 4/6
    # class 1: TP 1, FP 1, FN 1                        -> IoU 1/3, P 1/2, R 1/2, F1 2/4
    # class 2: TP 2, FP 1, FN 1                        -> IoU 2/4, P 2/3, R 2/3, F1 4/6
    # accuracy (2 + 1 + 2) / 8 = 5/8
    np.testing.assert_allclose(m["iou_per_class"], [1 / 2, 1 / 3, 1 / 2])
    np.testing.assert_allclose(m["f1_per_class"], [2 / 3, 1 / 2, 2 / 3])
    np.testing.assert_allclose(m["precision_per_class"], [2 / 3, 1 / 2, 2 / 3])
    np.testing.assert_allclose(m["recall_per_class"], [2 / 3, 1 / 2, 2 / 3])
    assert m["support_per_class"] == [3, 2, 3]
    assert m["pixel_accuracy"] == pytest.approx(5 / 8)
    assert m["mean_iou"] == pytest.approx((1 / 2 + 1 / 3 + 1 / 2) / 3)  # 0.4444
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1 / 2 + 2 / 3) / 3)  # 0.6111
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [1, 0, 2]]
    assert m["class_names"] == ["water", "forest", "crop"]
    table = format_metrics_table(m)
    assert "forest" in table and "0.3333" in table and "mIoU 0.4444" in table


@pytest.mark.parametrize("absent", [None, 3])
def test_against_sklearn_with_ignore_pixels(absent):
    rng = np.random.default_rng(0)
    k = 5
    truth = rng.integers(0, k, size=(4, 32, 32))
    pred = np.where(rng.random(truth.shape) < 0.6, truth, rng.integers(0, k, truth.shape))
    if absent is not None:  # a class in neither truth nor prediction
        truth[truth == absent] = 0
        pred[pred == absent] = 1
    truth[rng.random(truth.shape) < 0.2] = 255
    cm = np.asarray(jax.jit(confusion_matrix, static_argnums=2)(truth, pred, k))
    m = metrics_from_confusion(cm)
    keep = truth != 255
    t, p = truth[keep], pred[keep]
    np.testing.assert_array_equal(cm, skm.confusion_matrix(t, p, labels=list(range(k))))
    present = sorted(set(t.tolist()) | set(p.tolist()))
    assert (absent is None) == (len(present) == k)
    assert m["pixel_accuracy"] == pytest.approx(skm.accuracy_score(t, p), abs=1e-6)
    kw = {"labels": present, "zero_division": 0}
    np.testing.assert_allclose(np.asarray(m["iou_per_class"])[present],
                               skm.jaccard_score(t, p, average=None, **kw), atol=1e-6)
    np.testing.assert_allclose(np.asarray(m["f1_per_class"])[present],
                               skm.f1_score(t, p, average=None, **kw), atol=1e-6)
    np.testing.assert_allclose(np.asarray(m["precision_per_class"])[present],
                               skm.precision_score(t, p, average=None, **kw), atol=1e-6)
    np.testing.assert_allclose(np.asarray(m["recall_per_class"])[present],
                               skm.recall_score(t, p, average=None, **kw), atol=1e-6)
    assert m["mean_iou"] == pytest.approx(skm.jaccard_score(t, p, average="macro", **kw),
                                          abs=1e-6)
    assert m["macro_f1"] == pytest.approx(skm.f1_score(t, p, average="macro", **kw), abs=1e-6)
    if absent is not None:
        assert math.isnan(m["iou_per_class"][absent]) and math.isnan(m["f1_per_class"][absent])


def test_absent_class_is_nan_and_left_out_of_the_means():
    truth = np.array([0, 0, 1, 1])
    pred = np.array([0, 1, 1, 1])
    m = metrics_from_confusion(np.asarray(confusion_matrix(truth, pred, 3)))
    assert math.isnan(m["iou_per_class"][2]) and math.isnan(m["f1_per_class"][2])
    assert m["mean_iou"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 4 / 5) / 2)
    jsonable = to_jsonable(m)
    assert jsonable["iou_per_class"][2] is None
    assert json.loads(json.dumps(jsonable, allow_nan=False))["f1_per_class"][2] is None
    assert "n/a" in format_metrics_table(jsonable)
    # Predicted but absent from the truth: IoU 0 and F1 0, and it counts in the means.
    m2 = metrics_from_confusion(np.asarray(confusion_matrix(truth, np.array([0, 2, 1, 1]), 3)))
    assert m2["iou_per_class"][2] == 0.0 and m2["f1_per_class"][2] == 0.0
    assert m2["mean_iou"] == pytest.approx((1 / 2 + 1 + 0) / 3)


def test_empty_and_malformed_inputs():
    m = metrics_from_confusion(np.zeros((2, 2), np.int64))
    assert all(math.isnan(m[k]) for k in ("pixel_accuracy", "mean_iou", "macro_f1"))
    with pytest.raises(SatsegError, match="square"):
        metrics_from_confusion(np.zeros((2, 3)))
    with pytest.raises(SatsegError, match="class names"):
        metrics_from_confusion(np.zeros((2, 2)), ["only one"])


def test_batch_and_device_sums_equal_the_whole():
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 4, (8, 16, 16))
    truth[:, :3] = 255
    pred = rng.integers(0, 4, (8, 16, 16))
    whole = confusion_matrix(truth, pred, 4)
    assert whole.dtype == jnp.int32
    halves = confusion_matrix(truth[:4], pred[:4], 4) + confusion_matrix(truth[4:], pred[4:], 4)
    np.testing.assert_array_equal(whole, halves)
    assert int(whole.sum()) == int((truth != 255).sum())
    # The psum of per-device matrices (vmap with a named axis stands in for 2 devices;
    # pmap on the available device checks the collective compiles there too).
    per_device = lambda t, p: jax.lax.psum(confusion_matrix(t, p, 4), "d")  # noqa: E731
    split = lambda a: a.reshape(2, 4, 16, 16)  # noqa: E731
    summed = jax.jit(jax.vmap(per_device, axis_name="d"))(split(truth), split(pred))
    np.testing.assert_array_equal(summed[0], whole)
    np.testing.assert_array_equal(summed[1], whole)
    n = jax.local_device_count()
    pm = jax.pmap(per_device, axis_name="d")(truth[:n], pred[:n])
    np.testing.assert_array_equal(pm[0], confusion_matrix(truth[:n], pred[:n], 4))
