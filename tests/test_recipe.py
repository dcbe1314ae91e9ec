"""The real-imagery recipe: augmentations, CE+Dice, EMA, early stopping, epochs, configs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from satseg_jax import augment, losses, steps, training_control
from satseg_jax.errors import SatsegError
from tests.workers.tiny_config import tiny_config

REPO = Path(__file__).resolve().parents[1]
REAL_CONFIGS = sorted((REPO / "configs" / "real").glob("*.py"))


def _tf():
    from satseg_jax.datasets.tfenv import import_tf

    return import_tf()


# ----------------------------------------------------------------------------- augmentations


def _label_of(r, c):
    """Class of source pixel (r, c): 6-px blocks of 3 classes, one block ignored (255)."""
    lab = ((r // 6) + 2 * (c // 6)) % 3
    return np.where((r // 6 == 1) & (c // 6 == 2), 255, lab)


def test_resized_crop_keeps_mask_values_and_alignment():
    """An image whose bands are its own row/column coordinates: after any crop, zoom,
    aspect, flip and rotation, each output pixel's mask must be the label of the source
    pixel the image says it came from."""
    tf = _tf()
    size = 48
    rr, cc = np.mgrid[0:size, 0:size].astype(np.float32)
    image = tf.constant(np.stack([rr, cc], -1))
    mask = tf.constant(_label_of(rr.astype(int), cc.astype(int)).astype(np.uint8))
    for seed in range(6):
        img, msk = augment.geometric(tf, image, mask, tf.constant([seed, 7], tf.int64), 32,
                                     True, scale_range=(0.6, 1.6), aspect_range=(0.7, 1.4))
        img, msk = img.numpy(), msk.numpy()
        assert img.shape == (32, 32, 2) and msk.shape == (32, 32)
        assert set(np.unique(msk)) <= {0, 1, 2, 255}
        vr, vc = img[..., 0], img[..., 1]
        # Nearest neighbour of the position the bilinear image sampled (clamped at edges).
        near = _label_of(np.clip(np.round(vr), 0, size - 1).astype(int),
                         np.clip(np.round(vc), 0, size - 1).astype(int))
        either = np.zeros_like(msk, bool)
        for fr in (np.floor, np.ceil):
            for fc in (np.floor, np.ceil):
                either |= msk == _label_of(fr(vr).astype(int), fc(vc).astype(int))
        assert either.all(), f"seed {seed}: mask not at the image's source pixel"
        assert (msk == near).mean() > 0.97, f"seed {seed}: {(msk == near).mean():.3f}"


def test_resized_crop_off_is_the_plain_crop_and_zoom_is_honoured():
    tf = _tf()
    rng = np.random.default_rng(0)
    image = tf.constant(rng.standard_normal((40, 40, 3)).astype(np.float32))
    mask = tf.constant(rng.integers(0, 3, (40, 40)).astype(np.uint8))
    seed = tf.constant([3, 4], tf.int64)
    a = augment.geometric(tf, image, mask, seed, 24, True)
    b = augment.geometric(tf, image, mask, seed, 24, True, (1.0, 1.0), (1.0, 1.0))
    assert np.array_equal(a[0].numpy(), b[0].numpy()) and np.array_equal(a[1], b[1])
    for s in range(5):  # zoom 2x: a 12-px window; aspect 1 keeps it square
        y0, x0, h, w = (int(v) for v in augment.resized_crop_window(
            tf, tf.constant([s, 1], tf.int64), (40, 40), 24, (2.0, 2.0), (1.0, 1.0)))
        assert (h, w) == (12, 12) and 0 <= y0 <= 28 and 0 <= x0 <= 28


def test_photometric_is_per_band_affine_and_leaves_invalid_pixels_zero():
    tf = _tf()
    rng = np.random.default_rng(1)
    x = rng.standard_normal((16, 16, 4)).astype(np.float32)
    valid = np.ones((16, 16), bool)
    valid[:3] = False
    x[~valid] = 0
    out = augment.photometric(tf, tf.constant(x), tf.constant(valid),
                              tf.constant([5, 6], tf.int64), 0.5, 0.3).numpy()
    assert np.all(out[~valid] == 0)
    factors = []
    for b in range(4):
        xv, ov = x[valid, b], out[valid, b]
        slope, shift = np.polyfit(xv, ov, 1)
        assert np.allclose(ov, slope * xv + shift, atol=1e-5)
        assert 0.7 - 1e-6 <= slope <= 1.3 + 1e-6
        assert abs(ov.mean() - xv.mean()) <= 0.5 + 1e-5  # only the brightness moves the mean
        factors.append(slope)
    assert len({round(f, 5) for f in factors}) == 4, "bands must be drawn independently"


def test_pipeline_photometric_never_touches_masks(tiny_dataset):
    from satseg_jax import input_pipeline

    meta = input_pipeline.load_meta(str(tiny_dataset))

    def first(**data):
        cfg = tiny_config(tiny_dataset, **{f"data.{k}": v for k, v in data.items()})
        cfg.data.augment = False
        return next(input_pipeline.train_iterator(meta, cfg.data, global_batch=4, seed=0))

    plain, jittered = first(), first(brightness=0.5, contrast=0.3)
    assert np.array_equal(plain["mask"], jittered["mask"])
    assert not np.allclose(plain["image"], jittered["image"])
    with pytest.raises(SatsegError, match="scale_range"):
        input_pipeline.augment_settings(tiny_config(tiny_dataset, **{
            "data.scale_range": (2.0, 1.0)}).data)


@pytest.mark.parametrize("cache", [False, True])
def test_split_reads_are_cached_only_when_the_config_says_so(tiny_dataset, cache):
    """tfds auto-caches small splits unless told not to; its cache, read partly (the first
    example, for the ground pixel size), printed a TensorFlow warning at the start of
    every training run and held the split twice. Only ``config.data.cache`` caches: the
    dataset graph has a CacheDataset node exactly when it is set. (The graph is read
    with tf.data's serialiser, the only way to see which ops a dataset holds.)"""
    from satseg_jax import input_pipeline

    meta = input_pipeline.load_meta(str(tiny_dataset))
    assert b"CacheDataset" not in input_pipeline.split_dataset(
        meta, "train")._as_serialized_graph().numpy()
    cfg = tiny_config(tiny_dataset)
    cfg.data.cache = cache
    it = input_pipeline.train_iterator(meta, cfg.data, global_batch=4, seed=0)
    next(it)
    frame = it.gi_frame.f_locals["ds"]
    assert (b"CacheDataset" in frame._as_serialized_graph().numpy()) == cache


# ----------------------------------------------------------------------------- CE + Dice


def _np_ce_dice(logits, labels, w):
    """Cross-entropy (weighted mean over valid pixels) + soft Dice (batch sums, weighted
    class mean, smooth 1), written out in float64."""
    k = logits.shape[-1]
    lg = np.asarray(logits, np.float64).reshape(-1, k)
    lab = np.asarray(labels).reshape(-1)
    keep = lab != 255
    lg, lab = lg[keep], lab[keep]
    p = np.exp(lg - lg.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    ce = np.sum(w[lab] * -np.log(p[np.arange(len(lab)), lab])) / np.sum(w[lab])
    onehot = np.eye(k)[lab]
    dice = (2 * (p * onehot).sum(0) + 1) / (p.sum(0) + onehot.sum(0) + 1)
    return ce + 1 - np.sum(w * dice) / np.sum(w)


@pytest.mark.parametrize("weighted", [False, True])
def test_ce_dice_matches_numpy_and_ignores_255(weighted):
    rng = np.random.default_rng(2)
    logits = (rng.standard_normal((2, 6, 6, 3)) * 2).astype(np.float32)
    labels = rng.integers(0, 3, (2, 6, 6))
    labels[0, :2] = 255
    w = np.array([1.0, 2.5, 0.5]) if weighted else np.ones(3)
    cw = jnp.asarray(w, jnp.float32) if weighted else None
    got, parts = losses.segmentation_loss(jnp.asarray(logits), jnp.asarray(labels),
                                          {"name": "ce_dice"}, class_weights=cw)
    assert float(got) == pytest.approx(_np_ce_dice(logits, labels, w), rel=1e-5)
    assert set(parts) == {"cross_entropy", "dice"}
    noisy = logits.copy()
    noisy[labels == 255] = 1e3 * rng.standard_normal(noisy[labels == 255].shape)
    again, _ = losses.segmentation_loss(jnp.asarray(noisy), jnp.asarray(labels),
                                        {"name": "ce_dice"}, class_weights=cw)
    assert float(again) == pytest.approx(float(got), rel=1e-6)


def test_class_weight_specs():
    freq = (0.5, 2.0, 8.0)
    assert losses.resolve_class_weights("none", freq, 3, "d") is None
    assert np.allclose(losses.resolve_class_weights("inverse_frequency", freq, 3, "d"), freq)
    sq = losses.resolve_class_weights("sqrt_inverse_frequency", freq, 3, "d")
    assert np.allclose(sq / sq[0], np.sqrt(freq) / np.sqrt(freq[0])) and sq.mean() == \
        pytest.approx(1.0)
    assert np.allclose(losses.resolve_class_weights("1,3,2", None, 3, "d"), [1, 3, 2])
    assert np.allclose(losses.resolve_class_weights((1.0, 2.0, 3.0), None, 3, "d"), [1, 2, 3])
    for bad in ("1,3", "1,0,2", "often"):
        with pytest.raises(SatsegError, match="class_weights"):
            losses.resolve_class_weights(bad, None, 3, "d")


# ----------------------------------------------------------------------------- EMA


def _toy():
    import flax.linen as nn
    import optax

    class Toy(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            return nn.Conv(3, (1, 1))(x)

    tx, model = optax.adam(0.1), Toy()
    step = jax.jit(steps.make_train_step(model, tx, {"name": "cross_entropy"}, 3, None,
                                         "segmentation", ema=(0.9, True)))
    rng = np.random.default_rng(3)
    batch = {"image": jnp.asarray(rng.standard_normal((2, 4, 4, 2)), jnp.float32),
             "mask": jnp.asarray(rng.integers(0, 3, (2, 4, 4)), jnp.int32)}
    return model, tx, step, batch


def test_ema_follows_its_formula_on_a_toy_step():
    model, tx, step, batch = _toy()
    state = steps.create_train_state(0, model, tx, (1, 4, 4, 2), ema=True)
    assert not jax.tree.leaves(steps.create_train_state(0, model, tx, (1, 4, 4, 2)).ema_params)
    ema = jax.tree.map(np.asarray, state.ema_params)
    for t in range(4):
        state, _ = step(state, batch)
        d = min(0.9, (1 + t) / (10 + t))
        expect = jax.tree.map(lambda e, p, d=d: d * e + (1 - d) * np.asarray(p), ema,
                              state.params)
        for a, b in zip(jax.tree.leaves(expect), jax.tree.leaves(state.ema_params)):
            np.testing.assert_allclose(np.asarray(b), a, rtol=1e-6, atol=1e-7)
        ema = jax.tree.map(np.asarray, state.ema_params)
    assert not np.allclose(jax.tree.leaves(state.params)[0], jax.tree.leaves(ema)[0])
    view = steps.eval_state(state)
    assert all(np.array_equal(a, b) for a, b in
               zip(jax.tree.leaves(view.params), jax.tree.leaves(state.ema_params)))


def test_ema_is_saved_verified_and_resumed_exactly(tmp_path):
    """Two toy steps, a checkpoint, a restore into a fresh state, two more steps: the same
    EMA, bit for bit, as four steps in a row; the digests cover the EMA arrays."""
    from satseg_jax import checkpoints

    model, tx, step, batch = _toy()

    def fresh():
        return steps.create_train_state(0, model, tx, (1, 4, 4, 2), ema=True)

    straight = fresh()
    for _ in range(4):
        straight, _ = step(straight, batch)
    half = fresh()
    for _ in range(2):
        half, _ = step(half, batch)
    manager = checkpoints.make_manager(tmp_path)
    checkpoints.save(manager, half, {"step": 2})
    resumed, meta = checkpoints.restore(manager, 2, fresh())
    manager.close()
    assert any("ema_params" in k for k in meta["digests"]["arrays"])
    for _ in range(2):
        resumed, _ = step(resumed, batch)
    for x, y in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed), strict=True):
        assert np.array_equal(np.asarray(x), np.asarray(y))


def _saved(workdir, step):
    from satseg_jax import checkpoints

    manager = checkpoints.make_manager(workdir, read_only=True)
    try:
        return checkpoints.restore_raw(manager, step)
    finally:
        manager.close()


@pytest.mark.skipif(not os.environ.get("SATSEG_SLOW_TESTS"),
                    reason="three tiny training runs (~30 s on 2 cores); the toy test above "
                    "covers the EMA's resume; set SATSEG_SLOW_TESTS=1 to run")
def test_training_with_ema_resumes_exactly_and_predicts_with_it(tiny_dataset, tmp_path):
    from satseg_jax.runs import load_run
    from satseg_jax.train import train_and_evaluate

    over = {"train.ema_decay": 0.8, "schedule.name": "constant", "train.num_steps": 6,
            "train.eval_every": 3, "train.checkpoint_every": 3}
    train_and_evaluate(tiny_config(tiny_dataset, **over), tmp_path / "full")
    part = tmp_path / "part"
    train_and_evaluate(tiny_config(tiny_dataset, **{**over, "train.num_steps": 3}), part)
    train_and_evaluate(tiny_config(tiny_dataset, **over), part)  # resumes from step 3
    a, meta = _saved(tmp_path / "full", 6)
    b, _ = _saved(part, 6)
    assert jax.tree.leaves(a["ema_params"]), "no EMA in the checkpoint"
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert np.array_equal(np.asarray(x), np.asarray(y))
    assert any("ema_params" in k for k in meta["digests"]["arrays"])
    assert any("ema_batch_stats" in k for k in meta["digests"]["arrays"])
    assert meta["evaluated_weights"] == "ema"
    run = load_run(part, "latest")
    raw = load_run(part, "latest", ema=False)
    assert (run.weights, raw.weights) == ("ema", "raw")
    leaf = jax.tree.leaves(run.state.params)[0]
    assert np.array_equal(np.asarray(leaf), np.asarray(jax.tree.leaves(b["ema_params"])[0]))
    assert np.array_equal(np.asarray(jax.tree.leaves(raw.state.params)[0]),
                          np.asarray(jax.tree.leaves(b["params"])[0]))


# ----------------------------------------------------------------------------- early stopping


def test_early_stopping_counts_evaluations_without_improvement():
    es = training_control.EarlyStopping(patience=2, min_delta=0.01)
    assert [es.update(s, v) for s, v in [(1, 0.5), (2, 0.505), (3, 0.6), (4, 0.6), (5, 0.6)]] \
        == [False, False, False, False, True]
    assert (es.best, es.best_step, es.stopped_at) == (0.6, 3, 5)
    again = training_control.EarlyStopping(2, 0.01, json.loads(json.dumps(es.record())))
    assert again.record() == es.record()
    assert not training_control.EarlyStopping(0).update(1, 0.0)


def test_training_stops_early_on_a_plateau(tiny_dataset, tmp_path, capsys):
    from satseg_jax.train import train_and_evaluate

    # min_delta 1: no mIoU can ever improve by more than 1, a plateau by construction.
    cfg = tiny_config(tiny_dataset, **{"train.early_stopping_patience": 1,
                                       "train.early_stopping_min_delta": 1.0,
                                       "train.eval_every": 1, "train.log_every": 1})
    train_and_evaluate(cfg, tmp_path / "es")
    out = capsys.readouterr().out
    assert "Early stop after step 2/12: validation mIoU has not improved" in out
    best = out.split("best checkpoint ")[1].split()[0]  # the one evaluate --checkpoint best takes
    assert Path(best).parent == tmp_path / "es" / "checkpoints" and Path(best).name in "12"
    saved = sorted(int(p.name) for p in (tmp_path / "es" / "checkpoints").iterdir()
                   if p.name.isdigit())
    assert saved == [1, 2]  # the first (best) evaluation is saved although not due
    _, meta = _saved(tmp_path / "es", 2)
    assert meta["early_stopping"]["stopped_at"] == 2
    train_and_evaluate(cfg, tmp_path / "es")
    assert "stopped early at step 2" in capsys.readouterr().out


def test_no_evaluation_split_trains_a_fixed_schedule_and_best_is_the_last(
        tiny_dataset, tmp_path, capsys):
    """A published train/test split without validation: ``eval_split=''`` evaluates
    nothing while training (no split is looked at), keeps the last checkpoints, and
    ``evaluate --checkpoint best`` scores the last step; early stopping is refused."""
    from satseg_jax.evaluate import evaluate_workdir
    from satseg_jax.train import train_and_evaluate

    cfg = tiny_config(tiny_dataset, **{"data.eval_split": "", "train.keep_checkpoints": 1})
    train_and_evaluate(cfg, tmp_path / "fixed")
    out = capsys.readouterr().out
    assert "mIoU" not in out and "Trained steps 1..12" in out
    saved = sorted(int(p.name) for p in (tmp_path / "fixed" / "checkpoints").iterdir()
                   if p.name.isdigit())
    assert saved == [12]
    assert evaluate_workdir(tmp_path / "fixed", split="test")["checkpoint_step"] == 12
    refused = tiny_config(tiny_dataset, **{"data.eval_split": "",
                                           "train.early_stopping_patience": 3})
    with pytest.raises(SatsegError, match="early_stopping_patience=3 needs an evaluation"):
        train_and_evaluate(refused, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()


# ----------------------------------------------------------------------------- epochs, configs


def test_epochs_become_steps_and_conflicts_are_refused():
    cfg = tiny_config("unused", **{"train.num_steps": 0, "train.num_epochs": 2.5,
                                   "train.eval_every": 0, "train.eval_every_epochs": 1.0,
                                   "schedule.warmup_steps": 0, "schedule.warmup_epochs": 0.5})
    notes = training_control.resolve_epochs(cfg, num_train=22)  # batch 4: 5.5 steps/epoch
    assert (cfg.train.num_steps, cfg.train.eval_every, cfg.schedule.warmup_steps) == (14, 6, 3)
    assert cfg.train.checkpoint_every == 4 and "5.50 steps per epoch" in notes[0]
    both = tiny_config("unused", **{"train.num_epochs": 2.0})
    with pytest.raises(SatsegError, match="num_steps=12 and config.train.num_epochs=2"):
        training_control.resolve_epochs(both, num_train=22)
    with pytest.raises(SatsegError, match="num_steps is 0"):
        training_control.resolve_epochs(tiny_config("u", **{"train.num_steps": 0}), 22)


@pytest.mark.parametrize("path", REAL_CONFIGS, ids=lambda p: p.stem)
def test_real_configs_are_valid(path):
    from satseg_jax.config_files import check_config_fields, load_config_file
    from satseg_jax.input_pipeline import augment_settings
    from satseg_jax.models import get_model

    c = load_config_file(path)
    check_config_fields(c, str(path))
    augment_settings(c.data)
    # A fixed schedule judged by its last checkpoint: no split is looked at in training.
    assert c.train.num_steps > 0 and c.train.ema_decay > 0
    assert c.train.early_stopping_patience == 0 and c.data.eval_split == ""
    assert losses.loss_components(c.loss) == {"cross_entropy": 1.0}
    model = get_model(c.model, num_classes=2)
    x = jax.ShapeDtypeStruct((1, c.data.crop_size, c.data.crop_size, 3), jnp.float32)
    jax.eval_shape(lambda x: model.init(jax.random.key(0, impl="rbg"), x), x)
    training_control.resolve_epochs(c, num_train=100)
    steps.create_optimizer(c)
