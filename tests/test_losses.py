"""Losses on logits with the ignore label; the sums form used for data parallelism."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from satseg_jax import losses


def _batch(seed=0, k=4):
    key = jax.random.PRNGKey(seed)
    logits = jax.random.normal(key, (2, 8, 8, k)) * 2
    labels = jax.random.randint(jax.random.fold_in(key, 1), (2, 8, 8), 0, k)
    labels = labels.at[0, :3].set(255)
    return logits, labels


def test_cross_entropy_matches_weighted_reference():
    logits, labels = _batch()
    w = jnp.array([1.0, 2.0, 0.5, 3.0])
    lp = np.asarray(jax.nn.log_softmax(logits))
    lab = np.asarray(labels)
    keep = lab != 255
    ce = -np.take_along_axis(lp, np.where(keep, lab, 0)[..., None], -1)[..., 0]
    wt = np.asarray(w)[np.where(keep, lab, 0)] * keep
    expected = (wt * ce).sum() / wt.sum()  # PyTorch CrossEntropyLoss(weight=w) convention
    assert float(losses.cross_entropy(logits, labels, w)) == pytest.approx(expected, rel=1e-5)


def test_ignored_pixels_do_not_matter():
    logits, labels = _batch()
    changed = logits.at[0, :3].set(100.0)  # logits under ignored pixels only
    for fn in (losses.cross_entropy, losses.dice_loss, losses.focal_loss):
        assert float(fn(logits, labels)) == pytest.approx(float(fn(changed, labels)), rel=1e-6)


def test_focal_gamma_zero_is_cross_entropy_and_dice_of_perfect_is_zero():
    logits, labels = _batch()
    assert float(losses.focal_loss(logits, labels, gamma=0.0)) == pytest.approx(
        float(losses.cross_entropy(logits, labels)), rel=1e-6)
    perfect = jax.nn.one_hot(jnp.where(labels == 255, 0, labels), 4) * 50.0
    assert float(losses.dice_loss(perfect, labels, smooth=0.0)) == pytest.approx(0.0, abs=1e-5)


def test_all_ignored_batch_gives_zero_and_finite_grads():
    logits, _ = _batch()
    labels = jnp.full((2, 8, 8), 255)
    cfg = {"name": "ce_dice", "weights": {}}
    fn = jax.jit(lambda lg: losses.loss_from_statistics(
        losses.loss_statistics(lg, labels, cfg, 4), cfg)[0])
    assert float(losses.cross_entropy(logits, labels)) == 0.0
    g = jax.grad(fn)(logits)
    assert np.isfinite(np.asarray(g)).all()


def test_sums_of_halves_give_the_whole_batch_loss():
    logits, labels = _batch()
    cfg = {"name": "cross_entropy", "weights": {"cross_entropy": 1.0, "dice": 0.5, "focal": 0.2},
           "focal_gamma": 2.0}
    whole = losses.loss_statistics(logits, labels, cfg, 4)
    a = losses.loss_statistics(logits[:1], labels[:1], cfg, 4)
    b = losses.loss_statistics(logits[1:], labels[1:], cfg, 4)
    summed = jax.tree.map(jnp.add, a, b)
    la, _ = losses.loss_from_statistics(whole, cfg)
    lb, parts = losses.loss_from_statistics(summed, cfg)
    assert float(la) == pytest.approx(float(lb), rel=1e-6)
    assert set(parts) == {"cross_entropy", "dice", "focal"}


def test_valid_conv_labels_are_centre_cropped():
    labels = jnp.arange(2 * 10 * 10).reshape(2, 10, 10)
    out = losses.center_crop_labels(labels, (6, 6))
    np.testing.assert_array_equal(out, labels[:, 2:8, 2:8])


def test_unknown_loss_is_a_clear_error():
    from satseg_jax.errors import SatsegError

    with pytest.raises(SatsegError, match="expected one of"):
        losses.loss_components({"name": "dise", "weights": {}})
