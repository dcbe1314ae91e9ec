"""satseg baseline: majority = the most frequent train class; the forests beat it on the
sample scene; the metrics are scikit-learn's on the same predictions; same seed, same
numbers; the CLI writes evaluate's JSON format."""

from __future__ import annotations

import json

import numpy as np
import pytest

from satseg_jax import baseline, input_pipeline
from satseg_jax.cli import main

sk = pytest.importorskip("sklearn.metrics")

SMALL = {"pixels": 4000, "trees": 8, "min_leaf": 2}


@pytest.fixture(scope="module")
def meta(tiny_dataset):
    return input_pipeline.load_meta(str(tiny_dataset))


def _split_arrays(meta, split):
    pairs = list(baseline._patches(meta, split))
    return np.stack([m for _, m in pairs])


def test_majority_predicts_the_most_frequent_train_class(meta, tiny_dataset):
    train = _split_arrays(meta, "train")
    counts = np.bincount(train[train != 255].ravel(), minlength=meta.num_classes)
    fitted = baseline.fit_baseline(meta, "majority")
    assert fitted["majority_class"] == int(np.argmax(counts))
    assert fitted["train_class_pixels"] == counts.tolist()
    preds = [p for _, p in baseline.predict_patches(fitted, meta, "test")]
    assert all((p == np.argmax(counts)).all() for p in preds)
    r = baseline.run_baseline(tiny_dataset, "majority", split="test")
    assert r["baseline"]["majority_class"] == meta.class_names[int(np.argmax(counts))]


def test_sample_is_the_budget_of_valid_pixels_and_seeded(meta):
    f1, y1, counts = baseline.sample_train_pixels(meta, "train", 500, seed=3, windows=(3,))
    f2, y2, _ = baseline.sample_train_pixels(meta, "train", 500, seed=3, windows=(3,))
    f3, _, _ = baseline.sample_train_pixels(meta, "train", 500, seed=4, windows=(3,))
    assert f1.shape == (500, meta.num_bands * 3) and len(y1) == 500
    assert (y1 != 255).all() and np.array_equal(f1, f2) and np.array_equal(y1, y2)
    assert not np.array_equal(f1, f3)
    # A budget above the split's valid pixels takes them all.
    _, y_all, _ = baseline.sample_train_pixels(meta, "train", 10**7, seed=0, windows=())
    assert len(y_all) == counts.sum()


def test_forest_beats_majority_and_metrics_equal_sklearn(meta, tiny_dataset):
    fitted = baseline.fit_baseline(meta, "rf-texture", seed=0, **SMALL)
    truth, pred = zip(*baseline.predict_patches(fitted, meta, "test"))
    truth, pred = np.concatenate([t.ravel() for t in truth]), np.concatenate(
        [p.ravel() for p in pred])
    keep = truth != 255
    t, p = truth[keep], pred[keep]
    # The command fits again with the same seed: the same forest, the same predictions.
    r = baseline.run_baseline(tiny_dataset, "rf-texture", split="test", seed=0, **SMALL)
    labels = list(range(meta.num_classes))
    np.testing.assert_array_equal(r["confusion_matrix"],
                                  sk.confusion_matrix(t, p, labels=labels))
    assert r["pixel_accuracy"] == pytest.approx(sk.accuracy_score(t, p))
    present = [k for k in labels if (t == k).any() or (p == k).any()]
    iou = sk.jaccard_score(t, p, labels=present, average=None, zero_division=0)
    f1 = sk.f1_score(t, p, labels=present, average=None, zero_division=0)
    assert r["mean_iou"] == pytest.approx(iou.mean())
    assert r["macro_f1"] == pytest.approx(f1.mean())
    const = np.full_like(t, fitted["majority_class"])
    majority_iou = sk.jaccard_score(t, const, labels=sorted(set(t) | {const[0]}),
                                    average=None, zero_division=0).mean()
    assert r["mean_iou"] > majority_iou + 0.2
    assert len(r["baseline"]["features"]) == meta.num_bands * 5
    assert r["baseline"]["train_pixels"] == SMALL["pixels"]


def test_texture_features_are_box_mean_and_std(meta):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (16, 16, meta.num_bands)).astype(np.float32)
    f = baseline.pixel_features(img, meta, (3,))
    c = meta.num_bands
    pad = np.pad(img.astype(np.float64), ((1, 1), (1, 1), (0, 0)), mode="symmetric")
    win = pad[4:7, 5:8]  # the 3x3 window centred on pixel (4, 5)
    np.testing.assert_allclose(f[4, 5, :c], img[4, 5])
    np.testing.assert_allclose(f[4, 5, c:2 * c], win.mean((0, 1)), rtol=1e-5)
    np.testing.assert_allclose(f[4, 5, 2 * c:], win.std((0, 1)), rtol=1e-4)


def test_cli_writes_evaluate_format(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "rf.json"
    assert main(["baseline", "--data", str(tiny_dataset), "--method", "rf", "--pixels",
                 "2000", "--trees", "4", "--split", "validation", "--out", str(out)]) == 0
    m = json.loads(out.read_text())
    for key in ("pixel_accuracy", "mean_iou", "macro_f1", "iou_per_class", "f1_per_class",
                "confusion_matrix", "class_names", "support_per_class", "split"):
        assert key in m
    assert m["split"] == "validation" and m["baseline"]["method"] == "rf"
    text = capsys.readouterr().out
    assert "mIoU" in text and f"wrote {out}" in text
    assert main(["baseline", "--data", str(tiny_dataset), "--split", "nope"]) == 2
    assert main(["baseline", "--data", str(tiny_dataset), "--method", "rf-texture",
                 "--windows", "1"]) == 2
    assert baseline.METHODS == __import__("satseg_jax.commands.baseline",
                                          fromlist=["METHODS"]).METHODS
