"""Property tests (hypothesis) of the metrics and of the window/tiling arithmetic.

Why fuzz these two: every reported number comes from ``metrics_from_confusion`` and
every patch and predicted pixel from the window arithmetic, and their edge cases (absent
classes, ignore pixels, scenes smaller than a tile, strides larger than the patch,
overlaps near the tile size) are exactly the ones hand-picked examples miss.

Properties:

- metrics: the confusion matrix equals scikit-learn's over the non-ignored pixels;
  accuracy, per-class and macro F1 and IoU equal scikit-learn's, with classes absent
  from truth and prediction NaN and left out of the macro means (README conventions).
- ``patch_windows``: row-major, inside the scene, clipped sizes as documented, starts on
  the stride grid; ``drop`` keeps only complete windows, as many as fit; ``pad`` covers
  every pixel when ``stride <= size``.
- ``covering_windows``: inside the scene, complete unless the scene is smaller than a
  tile, every pixel covered, distinct starts, neighbours overlapping >= ``overlap``.
- ``window_transform`` equals ``rasterio.windows.transform`` and maps a window's pixel
  (i, j) to the scene pixel (row + i, col + j).
- blending (predict.py's accumulate / normalise, emulated with numpy): every pixel gets
  a positive total weight, and when all tiles predict the same field the blended result
  is that field, for each blend mode.
"""

from __future__ import annotations

import numpy as np
import pytest
from affine import Affine
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from satseg_jax.classes import IGNORE_LABEL
from satseg_jax.metrics import confusion_matrix, metrics_from_confusion
from satseg_jax.raster.windows import covering_windows, patch_windows, window_transform
from satseg_jax.tiled_scene import blend_window

sklearn_metrics = pytest.importorskip("sklearn.metrics")

FUZZ = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])
# sklearn warns about a single label even when `labels` gives them all (as here).
pytestmark = pytest.mark.filterwarnings("ignore:A single label was found")

# ----------------------------------------------------------------------------- metrics


@st.composite
def labelled_pixels(draw) -> tuple[np.ndarray, np.ndarray, int]:
    """(truth with some 255, prediction, K): small random label maps."""
    k = draw(st.integers(1, 6))
    n = draw(st.integers(1, 300))
    truth = draw(hnp.arrays(np.int32, n, elements=st.integers(0, k - 1)))
    pred = draw(hnp.arrays(np.int32, n, elements=st.integers(0, k - 1)))
    ignore = draw(hnp.arrays(np.bool_, n))
    truth = np.where(ignore, IGNORE_LABEL, truth)
    return truth, pred, k


@FUZZ
@given(labelled_pixels())
def test_confusion_matrix_equals_sklearn(data):
    truth, pred, k = data
    cm = np.asarray(confusion_matrix(truth, pred, k))
    keep = truth != IGNORE_LABEL
    want = sklearn_metrics.confusion_matrix(truth[keep], pred[keep], labels=list(range(k))) \
        if keep.any() else np.zeros((k, k), np.int64)
    np.testing.assert_array_equal(cm, want)


@FUZZ
@given(hnp.arrays(np.int64, st.integers(1, 6).map(lambda k: (k, k)),
                  elements=st.integers(0, 12)))
def test_metrics_from_a_random_confusion_matrix_equal_sklearn(cm):
    k = cm.shape[0]
    m = metrics_from_confusion(cm)
    rows, cols = np.nonzero(cm)
    truth = np.repeat(rows, cm[rows, cols])
    pred = np.repeat(cols, cm[rows, cols])
    labels = list(range(k))
    tp = np.diag(cm)
    present = tp + cm.sum(0) - tp + cm.sum(1) - tp > 0
    if not present.any():  # an empty matrix: every number is undefined
        assert np.isnan(m["pixel_accuracy"]) and np.isnan(m["mean_iou"])
        return
    assert m["pixel_accuracy"] == pytest.approx(sklearn_metrics.accuracy_score(truth, pred))
    f1 = sklearn_metrics.f1_score(truth, pred, labels=labels, average=None,
                                  zero_division=np.nan)
    iou = sklearn_metrics.jaccard_score(truth, pred, labels=labels, average=None,
                                        zero_division=0)
    iou = np.where(present, iou, np.nan)  # sklearn has no NaN option for IoU
    np.testing.assert_allclose(m["f1_per_class"], f1, rtol=1e-12, equal_nan=True)
    np.testing.assert_allclose(m["iou_per_class"], iou, rtol=1e-12, equal_nan=True)
    assert np.isnan(m["f1_per_class"]).tolist() == (~present).tolist()
    macro_f1 = sklearn_metrics.f1_score(truth, pred, labels=labels, average="macro",
                                        zero_division=np.nan)
    assert m["macro_f1"] == pytest.approx(macro_f1, rel=1e-12)
    assert m["mean_iou"] == pytest.approx(float(np.mean(iou[present])), rel=1e-12)
    assert m["support_per_class"] == cm.sum(1).tolist()


# ----------------------------------------------------------------------------- windows

scene_side = st.integers(1, 300)


@FUZZ
@given(h=scene_side, w=scene_side, size=st.integers(1, 96), stride=st.integers(1, 128),
       edge=st.sampled_from(["drop", "pad"]))
def test_patch_windows(h, w, size, stride, edge):
    wins = patch_windows(h, w, size, stride, edge)
    assert wins == sorted(wins, key=lambda v: (v.row, v.col))  # row-major
    assert len(set(wins)) == len(wins)
    for v in wins:
        assert v.row % stride == 0 and v.col % stride == 0
        assert 0 <= v.row < h and 0 <= v.col < w
        assert (v.height, v.width) == (min(size, h - v.row), min(size, w - v.col))
    if edge == "drop":
        fit = lambda n: (n - size) // stride + 1 if n >= size else 0  # noqa: E731
        assert len(wins) == fit(h) * fit(w)
        assert all((v.height, v.width) == (size, size) for v in wins)
    elif stride <= size:
        covered = np.zeros((h, w), bool)
        for v in wins:
            covered[v.row:v.row + v.height, v.col:v.col + v.width] = True
        assert covered.all()


@st.composite
def tilings(draw) -> tuple[int, int, int, int]:
    size = draw(st.integers(1, 96))
    return draw(scene_side), draw(scene_side), size, draw(st.integers(0, size - 1))


@FUZZ
@given(tilings())
def test_covering_windows_cover_once_per_start_with_the_overlap(t):
    h, w, size, overlap = t
    wins = covering_windows(h, w, size, overlap)
    count = np.zeros((h, w), np.int32)
    for v in wins:
        assert 0 <= v.row and v.row + v.height <= h and 0 <= v.col and v.col + v.width <= w
        assert (v.height, v.width) == (min(size, h), min(size, w))  # complete unless tiny
        count[v.row:v.row + v.height, v.col:v.col + v.width] += 1
    assert count.min() >= 1
    rows = sorted({v.row for v in wins})
    cols = sorted({v.col for v in wins})
    assert len(wins) == len(rows) * len(cols)
    for starts in (rows, cols):
        steps = np.diff(starts)
        assert (steps > 0).all() and (steps <= size - overlap).all()


@FUZZ
@given(tilings(), st.floats(0.1, 100), st.floats(-1e6, 1e6), st.floats(-1e6, 1e6))
def test_window_transforms_agree_with_rasterio(t, res, x0, y0):
    from rasterio.windows import Window
    from rasterio.windows import transform as rio_transform

    h, w, size, overlap = t
    scene = Affine(res, 0, x0, 0, -res, y0)
    for v in covering_windows(h, w, size, overlap)[:20]:
        wt = window_transform(v, scene)
        assert wt == rio_transform(Window(v.col, v.row, v.width, v.height), scene)
        for i, j in ((0, 0), (v.height - 1, v.width - 1)):
            np.testing.assert_allclose(wt * (j, i), scene * (v.col + j, v.row + i),
                                       rtol=1e-12, atol=1e-6)


# ----------------------------------------------------------------------------- blending


def _blend(field: np.ndarray, size: int, overlap: int, mode: str) -> tuple[np.ndarray,
                                                                            np.ndarray]:
    """(blended field, total weight) as predict_scene accumulates them: each tile
    predicts ``field`` on its window; ``none`` lets the later tile win."""
    k, h, w = field.shape
    weights = blend_window(size, mode)
    acc = np.zeros((k, h, w), np.float64)
    wsum = np.zeros((h, w), np.float64)
    for v in covering_windows(h, w, size, overlap):
        sl = (slice(v.row, v.row + v.height), slice(v.col, v.col + v.width))
        tile = field[:, sl[0], sl[1]]
        ww = weights[:v.height, :v.width]
        if mode == "none":
            acc[:, sl[0], sl[1]] = tile
            wsum[sl] = 1.0
        else:
            acc[:, sl[0], sl[1]] += tile * ww
            wsum[sl] += ww
    return acc / np.maximum(wsum, 1e-12), wsum


@FUZZ
@given(tilings(), st.sampled_from(["gaussian", "mean", "none"]), st.integers(1, 4),
       st.integers(0, 2**32 - 1))
def test_blending_gives_every_pixel_weight_and_keeps_a_consistent_field(t, mode, k, seed):
    h, w, size, overlap = t
    h, w = min(h, 160), min(w, 160)  # keep each example fast
    rng = np.random.default_rng(seed)
    constant = np.broadcast_to(rng.random((k, 1, 1)), (k, h, w))
    varying = rng.random((k, h, w))
    for field in (constant, varying):
        out, wsum = _blend(field, size, overlap, mode)
        assert (wsum > 0).all()
        np.testing.assert_allclose(out, field, rtol=1e-5, atol=1e-6)
    weights = blend_window(size, mode)
    assert weights.shape == (size, size) and (weights > 0).all()
