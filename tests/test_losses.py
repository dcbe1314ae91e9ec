"""Losses on logits with the ignore label: numpy references, edge cases, the sums form."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from satseg_jax import losses
from satseg_jax.errors import SatsegError

K = 4


def _batch(seed: int = 0):
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal((2, 8, 8, K)) * 2).astype(np.float32)
    labels = rng.integers(0, K, (2, 8, 8))
    labels[0, :3] = 255
    return jnp.asarray(logits), jnp.asarray(labels)


def _np_reference_ce(logits, labels, w=None, eps=0.0, gamma=None):
    """PyTorch's CrossEntropyLoss(weight=w, ignore_index=255, label_smoothing=eps) and
    the focal loss, written out pixel by pixel in float64."""
    lg = np.asarray(logits, np.float64).reshape(-1, K)
    lab = np.asarray(labels).reshape(-1)
    w = np.ones(K) if w is None else np.asarray(w, np.float64)
    num = den = 0.0
    for row, y in zip(lg, lab):
        if y == 255:
            continue
        logp = row - np.log(np.exp(row - row.max()).sum()) - row.max()
        term = -logp[y] * w[y]
        if gamma is not None:
            term *= (1 - np.exp(logp[y])) ** gamma
        num += (1 - eps) * term + eps / K * np.sum(w * -logp)
        den += w[y]
    return num / den


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_cross_entropy_matches_weighted_reference(eps):
    logits, labels = _batch()
    w = jnp.array([1.0, 2.0, 0.5, 3.0])
    got = float(losses.cross_entropy(logits, labels, w, label_smoothing=eps))
    assert got == pytest.approx(_np_reference_ce(logits, labels, w, eps), rel=1e-5)
    unweighted = float(losses.cross_entropy(logits, labels, label_smoothing=eps))
    assert unweighted == pytest.approx(_np_reference_ce(logits, labels, None, eps), rel=1e-5)


def test_focal_matches_reference_and_gamma_zero_is_cross_entropy():
    logits, labels = _batch(1)
    w = jnp.array([0.5, 1.0, 2.0, 1.5])
    got = float(losses.focal_loss(logits, labels, gamma=2.0, class_weights=w))
    assert got == pytest.approx(_np_reference_ce(logits, labels, w, gamma=2.0), rel=1e-5)
    assert float(losses.focal_loss(logits, labels, gamma=0.0, class_weights=w)) == pytest.approx(
        float(losses.cross_entropy(logits, labels, w)), rel=1e-6)


def test_ignored_pixels_do_not_matter():
    logits, labels = _batch()
    changed = logits.at[0, :3].set(100.0)  # logits under ignored pixels only
    fns = [losses.cross_entropy, losses.focal_loss,
           lambda lg, lb: losses.dice_loss(lg, lb, K)]
    for fn in fns:
        assert float(fn(logits, labels)) == pytest.approx(float(fn(changed, labels)), rel=1e-6)
    # ...and the loss equals the loss on the valid pixels alone (here: image 1 only when
    # image 0's ignored rows are also dropped).
    valid_only = losses.cross_entropy(logits[1:], labels[1:])
    rows = losses.cross_entropy(logits[:1, 3:], labels[:1, 3:])
    n1, n0 = 64, 5 * 8
    assert float(losses.cross_entropy(logits, labels)) == pytest.approx(
        (float(valid_only) * n1 + float(rows) * n0) / (n1 + n0), rel=1e-5)
    # A different ignore label is honoured too.
    relabelled = jnp.where(labels == 255, 7, labels)
    assert float(losses.cross_entropy(logits, relabelled, ignore_label=7)) == pytest.approx(
        float(losses.cross_entropy(logits, labels)), rel=1e-6)


def test_dice_of_perfect_prediction_is_zero_and_of_wrong_is_high():
    _, labels = _batch()
    perfect = jax.nn.one_hot(jnp.where(labels == 255, 0, labels), K) * 50.0
    assert float(losses.dice_loss(perfect, labels, K, smooth=0.0)) == pytest.approx(0.0, abs=1e-5)
    assert float(losses.dice_loss(perfect, labels, K)) == pytest.approx(0.0, abs=1e-5)
    wrong = jax.nn.one_hot((jnp.where(labels == 255, 0, labels) + 1) % K, K) * 50.0
    assert float(losses.dice_loss(wrong, labels, K, smooth=0.0)) == pytest.approx(1.0, abs=1e-5)


def test_all_ignored_batch_gives_zero_and_finite_grads():
    logits, real = _batch()
    # Saturated pixels (p = 1 exactly in float32): one ignored, one valid and correct.
    logits = logits.at[0, 0, 0, 0].set(80.0).at[1, 0, 0, int(real[1, 0, 0])].set(80.0)
    labels = jnp.full((2, 8, 8), 255)
    cfg = {"weights": {"cross_entropy": 1.0, "dice": 1.0, "focal": 1.0}, "focal_gamma": 0.5}
    fn = jax.jit(lambda lg: losses.segmentation_loss(lg, labels, cfg)[0])
    assert float(fn(logits)) == 0.0
    g = jax.grad(fn)(logits)
    assert np.isfinite(np.asarray(g)).all() and not np.asarray(g).any()
    for gamma in (0.0, 0.5, 2.0):  # (1 - p)**gamma at p = 1 must not give NaN gradients
        gf = jax.grad(lambda lg, gm=gamma: losses.focal_loss(lg, real, gamma=gm))(logits)
        assert np.isfinite(np.asarray(gf)).all()


def test_segmentation_loss_config_shapes():
    logits, labels = _batch()
    ce = losses.cross_entropy(logits, labels)
    dice = losses.dice_loss(logits, labels, K)
    loss, parts = losses.segmentation_loss(logits, labels, {"name": "cross_entropy"})
    assert float(loss) == pytest.approx(float(ce)) and set(parts) == {"cross_entropy"}
    loss, parts = losses.segmentation_loss(logits, labels, {"name": "ce_dice"})
    assert float(loss) == pytest.approx(float(ce) + float(dice), rel=1e-6)
    cfg = {"name": "cross_entropy", "weights": {"cross_entropy": 1.0, "dice": 0.5}}
    loss, parts = losses.segmentation_loss(logits, labels, cfg)
    assert float(loss) == pytest.approx(float(ce) + 0.5 * float(dice), rel=1e-6)
    assert float(parts["dice"]) == pytest.approx(float(dice), rel=1e-6)
    ml_collections = pytest.importorskip("ml_collections")
    cd = ml_collections.ConfigDict({"name": "focal", "weights": {}, "focal_gamma": 1.0,
                                    "label_smoothing": 0.0})
    loss, parts = losses.segmentation_loss(logits, labels, cd)
    assert float(loss) == pytest.approx(float(losses.focal_loss(logits, labels, 1.0)))


def test_valid_conv_logits_get_centre_cropped_labels():
    logits, labels = _batch()
    small = logits[:, 2:6, 2:6]
    loss, _ = losses.segmentation_loss(small, labels, {"name": "cross_entropy"})
    assert float(loss) == pytest.approx(
        float(losses.cross_entropy(small, labels[:, 2:6, 2:6])), rel=1e-6)
    arange = jnp.arange(2 * 10 * 10).reshape(2, 10, 10)
    np.testing.assert_array_equal(losses.center_crop_labels(arange, (6, 6)), arange[:, 2:8, 2:8])
    with pytest.raises(SatsegError, match="even"):
        losses.center_crop_labels(arange, (5, 5))


def test_jit_and_sums_of_halves_give_the_whole_batch_loss():
    logits, labels = _batch()
    cfg = {"name": "cross_entropy", "weights": {"cross_entropy": 1.0, "dice": 0.5, "focal": 0.2},
           "focal_gamma": 2.0}
    eager = losses.segmentation_loss(logits, labels, cfg)[0]
    jitted = jax.jit(lambda lg, lb: losses.segmentation_loss(lg, lb, cfg)[0])(logits, labels)
    assert float(jitted) == pytest.approx(float(eager), rel=1e-6)
    whole = losses.loss_statistics(logits, labels, cfg, K)
    a = losses.loss_statistics(logits[:1], labels[:1], cfg, K)
    b = losses.loss_statistics(logits[1:], labels[1:], cfg, K)
    summed = jax.tree.map(jnp.add, a, b)
    la, _ = losses.loss_from_statistics(whole, cfg)
    lb, parts = losses.loss_from_statistics(summed, cfg)
    assert float(la) == pytest.approx(float(lb), rel=1e-6)
    assert float(la) == pytest.approx(float(eager), rel=1e-6)
    assert set(parts) == {"cross_entropy", "dice", "focal"}


def test_config_errors_are_clear():
    with pytest.raises(SatsegError, match="expected one of"):
        losses.loss_components({"name": "dise", "weights": {}})
    with pytest.raises(SatsegError, match="unknown losses"):
        losses.loss_components({"weights": {"lovasz": 1.0}})
    with pytest.raises(SatsegError, match="every weight is 0"):
        losses.loss_components({"weights": {"dice": 0.0}})
    logits, labels = _batch()
    with pytest.raises(SatsegError, match="class weights"):
        losses.cross_entropy(logits, labels, jnp.ones(3))
