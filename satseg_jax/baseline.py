"""Classical baselines on a built dataset (``satseg baseline``): what a deep model must beat.

A reviewer's first question about a segmentation result is "does it beat a random
forest?". These baselines answer it on the same data and with the same metrics:

- ``majority``: predict the most frequent class of the *train* split's valid pixels
  everywhere (the floor any model must clear);
- ``rf``: a per-pixel random forest on the band values alone;
- ``rf-texture``: the same forest on the band values plus, per band, the local mean and
  standard deviation in square windows of several sizes (default 5 and 15 px), computed
  per patch with box filters: the cheapest context a classical pipeline adds.

Why this shape:

- **Same scoring as ``satseg evaluate``.** Every pixel of the evaluated split is
  predicted and counted in one confusion matrix (ignore label 255 excluded), and every
  number comes from ``metrics.metrics_from_confusion``; the JSON has evaluate's keys plus a
  ``baseline`` block saying how the baseline was fitted.
- **A stated pixel budget.** The forest is fitted on a uniform random sample of
  ``pixels`` valid train pixels (nodata/ignore pixels are never drawn), chosen in one
  pass over the split with seeded random keys (the ``pixels`` smallest keys win), so the
  sample does not depend on how many patches there are or on memory, and the same seed
  gives the same sample, the same forest and the same metrics.
- **Raw band values.** A forest is invariant to per-band affine scaling, so no
  normalisation is needed; nodata pixels (NaN, ±inf, or the dataset's nodata value in
  every band) are filled with the train split's band mean before the box filters so
  they do not smear extreme values into their neighbours' texture.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from satseg_jax import metrics
from satseg_jax.classes import IGNORE_LABEL
from satseg_jax.errors import SatsegError
from satseg_jax.io_utils import atomic_path

METHODS = ("majority", "rf", "rf-texture")


def _cores() -> int:
    """CPU cores this process may use (its affinity mask, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _patches(meta, split: str, progress: bool = False) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(image (H, W, C), mask (H, W) uint8) of every patch of ``split``, in file order."""
    from satseg_jax import input_pipeline

    ds = input_pipeline.split_dataset(meta, split).map(lambda ex: (ex["image"], ex["mask"]))
    it = ds.as_numpy_iterator()
    if progress:
        from tqdm import tqdm

        it = tqdm(it, total=meta.num_examples[split], desc=f"{split} patches", unit="patch")
    yield from it


def pixel_features(image: np.ndarray, meta, windows: tuple[int, ...] = ()) -> np.ndarray:
    """(H, W, F) float32 features of one patch: the C band values, then for each window
    size the C local means and the C local standard deviations (``F = C * (1 + 2 *
    len(windows))``). Box filters reflect at the patch border."""
    x = np.asarray(image, dtype=np.float64)
    invalid = ~np.isfinite(x).all(axis=-1)
    nodata = meta.nodata
    if nodata is not None and not (isinstance(nodata, float) and math.isnan(nodata)):
        invalid |= (x == float(nodata)).all(axis=-1)
    if invalid.any():
        x = np.where(invalid[..., None], np.asarray(meta.mean, np.float64), x)
    feats = [x]
    if windows:
        from scipy.ndimage import uniform_filter

        for w in windows:
            mean = uniform_filter(x, size=(w, w, 1), mode="reflect")
            sq = uniform_filter(x * x, size=(w, w, 1), mode="reflect")
            feats += [mean, np.sqrt(np.maximum(sq - mean * mean, 0.0))]
    return np.concatenate(feats, axis=-1).astype(np.float32)


def _windows_for(method: str, windows: tuple[int, ...]) -> tuple[int, ...]:
    if method != "rf-texture":
        return ()
    windows = tuple(int(w) for w in windows)
    if len(windows) < 1 or any(w < 2 for w in windows):
        raise SatsegError(f"--windows {','.join(map(str, windows))}: rf-texture needs window "
                          "sizes of 2 px or more, e.g. 5,15")
    return windows


def sample_train_pixels(meta, split: str, budget: int, seed: int, windows: tuple[int, ...],
                        progress: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A uniform random sample of at most ``budget`` valid pixels of ``split``: (features
    (n, F), labels (n,), the split's valid-pixel count per class).

    One pass: every valid pixel gets a seeded random key; candidates above the running
    cut-off are dropped, and the pool is pruned to the ``budget`` smallest keys whenever
    it doubles. The result is exactly the ``budget`` smallest keys of the split.
    """
    rng = np.random.default_rng(seed)
    k = meta.num_classes
    counts = np.zeros(k, np.int64)
    keys, feats, labels = [], [], []
    pooled, cut = 0, np.inf
    for image, mask in _patches(meta, split, progress):
        valid = mask != IGNORE_LABEL
        counts += np.bincount(mask[valid].astype(np.int64), minlength=k)[:k]
        r = rng.random(mask.shape)
        take = valid & (r < cut)
        if not take.any():
            continue
        keys.append(r[take])
        labels.append(mask[take].astype(np.int64))
        feats.append(pixel_features(image, meta, windows)[take])
        pooled += int(take.sum())
        if pooled > 2 * budget:
            keys, feats, labels, cut = _prune(keys, feats, labels, budget)
            pooled = len(keys[0])
    if not keys:
        raise SatsegError(f"{meta.data_dir}: split {split!r} has no valid (non-ignore) pixels "
                          "to fit a baseline on")
    keys, feats, labels, _ = _prune(keys, feats, labels, budget)
    return feats[0], labels[0], counts


def _prune(keys, feats, labels, budget: int):
    """Keep the ``budget`` smallest keys; returns one-element lists and the new cut-off."""
    key, feat, label = np.concatenate(keys), np.concatenate(feats), np.concatenate(labels)
    if len(key) > budget:
        keep = np.argpartition(key, budget - 1)[:budget]
        keep.sort()  # stable order: the sample does not depend on the partition's order
        key, feat, label = key[keep], feat[keep], label[keep]
        cut = float(key.max())
    else:
        cut = np.inf
    return [key], [feat], [label], cut


def fit_baseline(meta, method: str = "rf-texture", pixels: int = 200_000, seed: int = 0,
                 trees: int = 50, min_leaf: int = 5, windows: tuple[int, ...] = (5, 15),
                 progress: bool = False) -> dict:
    """Fit ``method`` on the train split; returns ``{"method", "windows", "model" (the
    forest, or None), "majority_class", "train_class_pixels", "train_pixels",
    "fit_seconds"}``: what :func:`predict_patches` needs, and what the report states."""
    if method not in METHODS:
        raise SatsegError(f"--method {method}: expected one of {', '.join(METHODS)}")
    if meta.task != "segmentation":
        raise SatsegError(f"{meta.data_dir}: a {meta.task} dataset; the baselines are "
                          "per-pixel segmentation baselines")
    if int(pixels) < 1 or int(trees) < 1 or int(min_leaf) < 1:
        raise SatsegError(f"--pixels {pixels} / --trees {trees} / --min-leaf {min_leaf}: "
                          "each must be a positive integer")
    windows = _windows_for(method, windows)
    split = "train"
    if not meta.num_examples.get(split):
        raise SatsegError(f"{meta.data_dir}: no train patches to fit a baseline on; build "
                          "the dataset with a train split")
    t0 = time.perf_counter()
    budget = 1 if method == "majority" else int(pixels)
    feats, labels, counts = sample_train_pixels(meta, split, budget, seed, windows, progress)
    model = None
    if method != "majority":
        from sklearn.ensemble import RandomForestClassifier

        model = RandomForestClassifier(n_estimators=int(trees), min_samples_leaf=int(min_leaf),
                                       n_jobs=_cores(), random_state=int(seed))
        model.fit(feats, labels)
    return {"method": method, "windows": windows, "model": model,
            "majority_class": int(np.argmax(counts)),
            "train_class_pixels": counts.tolist(),
            "train_pixels": 0 if model is None else int(len(labels)),
            "fit_seconds": time.perf_counter() - t0}


def predict_patches(fitted: dict, meta, split: str, progress: bool = False
                    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(truth mask, predicted class ids) of every patch of ``split``, in file order."""
    for image, mask in _patches(meta, split, progress):
        if fitted["model"] is None:
            pred = np.full(mask.shape, fitted["majority_class"], np.uint8)
        else:
            f = pixel_features(image, meta, fitted["windows"])
            pred = predict_pixels(fitted["model"], f.reshape(-1, f.shape[-1]))
            pred = pred.reshape(mask.shape).astype(np.uint8)
        yield mask, pred


def predict_pixels(model, features: np.ndarray) -> np.ndarray:
    """Class ids of ``features`` (n, F), the same on every run and core count.

    Why not ``model.predict`` with the forest's ``n_jobs``: scikit-learn then adds the
    trees' probabilities into one array in whatever order its threads finish, and a
    near-tie between two classes can flip between runs (seen: 2 pixels in 9,000). Here
    the pixels are cut into one chunk per core and each chunk is predicted by one thread
    over the trees in their fixed order (tree inference releases the GIL).
    """
    from concurrent.futures import ThreadPoolExecutor

    n_jobs = model.n_jobs
    model.n_jobs = 1
    try:
        chunks = np.array_split(features, min(_cores(), max(1, len(features) // 4096)))
        if len(chunks) == 1:
            return model.predict(features)
        with ThreadPoolExecutor(len(chunks)) as pool:
            return np.concatenate(list(pool.map(model.predict, chunks)))
    finally:
        model.n_jobs = n_jobs


def confusion(truth: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """(K, K) int64, rows = truth, over pixels whose truth is not the ignore label."""
    valid = truth != IGNORE_LABEL
    idx = truth[valid].astype(np.int64) * num_classes + pred[valid].astype(np.int64)
    return np.bincount(idx, minlength=num_classes**2).reshape(num_classes, num_classes)


def run_baseline(data_dir: str | Path, method: str = "rf-texture", split: str = "test",
                 pixels: int = 200_000, seed: int = 0, trees: int = 50, min_leaf: int = 5,
                 windows: tuple[int, ...] = (5, 15), out: str | Path | None = None,
                 progress: bool = False) -> dict:
    """Fit ``method`` on DATA's train split, score it on ``split``: evaluate's metrics
    (``metrics_from_confusion`` keys, plus ``split``, ``data_dir`` and a ``baseline``
    block). ``out`` writes them as JSON (atomically), in evaluate's format."""
    from satseg_jax import input_pipeline

    meta = input_pipeline.load_meta(str(data_dir))
    if split not in meta.num_examples or not meta.num_examples[split]:
        raise SatsegError(f"--split {split}: {data_dir} has no {split} patches; splits with "
                          f"patches: {', '.join(s for s, n in meta.num_examples.items() if n)}")
    fitted = fit_baseline(meta, method, pixels=pixels, seed=seed, trees=trees,
                          min_leaf=min_leaf, windows=windows, progress=progress)
    t0 = time.perf_counter()
    k = meta.num_classes
    cm = np.zeros((k, k), np.int64)
    for truth, pred in predict_patches(fitted, meta, split, progress):
        cm += confusion(truth, pred, k)
    result = metrics.metrics_from_confusion(cm, list(meta.class_names))
    result.update(split=split, data_dir=str(meta.data_dir), baseline={
        "method": method, "seed": int(seed), "train_pixels": fitted["train_pixels"],
        "pixel_budget": int(pixels) if method != "majority" else 0,
        "features": [] if method == "majority" else feature_names(meta.bands,
                                                                  fitted["windows"]),
        "trees": int(trees) if method != "majority" else 0,
        "min_leaf": int(min_leaf) if method != "majority" else 0,
        "majority_class": meta.class_names[fitted["majority_class"]],
        "train_class_pixels": fitted["train_class_pixels"], "n_jobs": _cores(),
        "fit_seconds": fitted["fit_seconds"], "score_seconds": time.perf_counter() - t0})
    if out is not None:
        import json

        with atomic_path(out) as tmp:
            tmp.write_text(json.dumps(metrics.to_jsonable(result), indent=2) + "\n")
        result["written"] = [str(out)]
    return result


def feature_names(bands: tuple[str, ...], windows: tuple[int, ...]) -> list[str]:
    """Names of :func:`pixel_features`' columns, in order (``red``, ``red_mean5``, ...)."""
    names = list(bands)
    for w in windows:
        names += [f"{b}_mean{w}" for b in bands] + [f"{b}_std{w}" for b in bands]
    return names
