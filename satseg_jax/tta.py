"""Test-time augmentation (``--tta`` of ``satseg evaluate`` and ``satseg predict``).

Each image is seen under the symmetries of the square (the dihedral group: identity,
90°/180°/270° rotations, and each of those flipped), the model's softmax probabilities
are mapped back by the inverse transform, and the average is the prediction. Overhead
imagery has no "up", so a model should answer the same for a rotated tile; averaging the
answers removes part of its orientation-dependent error (typically +0.5-2 mIoU points,
at 8x the inference cost).

Why the transforms depend on the shape: a 90° rotation turns an H×W tile into W×H. On a
square tile that is the same shape, so all 8 transforms are used. On a non-square tile
only the 4 that keep the shape are used (identity, left-right flip, up-down flip, 180°
rotation): a rotated tile would have another shape, which a model compiled for H×W cannot
take (and a valid-convolution U-Net may not accept at all). ``satseg predict`` always
feeds square tiles (``--tile``), so it always averages 8; ``satseg evaluate`` on a
dataset of non-square patches averages 4.

The wrapper is a model, not a step: :class:`TTAModel` has the ``apply`` of the model it
wraps and returns log-probabilities, so the existing eval and predict steps (argmax,
softmax, confusion matrix) run unchanged on it, whatever weights the run restores.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from satseg_jax import steps
from satseg_jax.errors import SatsegError

# Smallest probability kept before the log: log(0) would be -inf, and -inf - -inf = NaN
# in a later softmax; 1e-30 is far below anything float32 softmax tells apart from 0.
_TINY = 1e-30


def dihedral_transforms(height: int, width: int) -> list[tuple[int, bool]]:
    """The (quarter turns k, flip) pairs used for an ``height`` × ``width`` tile: all 8
    for a square tile, the 4 that keep the shape (k even) for any other."""
    ks = (0, 1, 2, 3) if height == width else (0, 2)
    return [(k, flip) for k in ks for flip in (False, True)]


def forward(x: jax.Array, k: int, flip: bool) -> jax.Array:
    """Transform the (..., H, W, C) images: flip left-right (if ``flip``), then rotate
    ``k`` quarter turns (numpy's ``rot90`` direction)."""
    if flip:
        x = jnp.flip(x, axis=-2)
    return jnp.rot90(x, k, axes=(-3, -2))


def inverse(y: jax.Array, k: int, flip: bool) -> jax.Array:
    """Undo :func:`forward` on per-pixel outputs (..., h, w, K)."""
    y = jnp.rot90(y, -k, axes=(-3, -2))
    return jnp.flip(y, axis=-2) if flip else y


def average_probabilities(logits_fn: Callable[[jax.Array], jax.Array],
                          images: jax.Array) -> jax.Array:
    """Softmax probabilities of ``logits_fn`` averaged over the dihedral transforms of
    ``images`` (..., H, W, C), each mapped back to the original orientation first.

    ``logits_fn`` maps (..., H, W, C) to per-pixel logits (..., h, w, K); a valid-
    convolution model's smaller output is centred, so the same transforms undo it.
    """
    h, w = images.shape[-3], images.shape[-2]
    transforms = dihedral_transforms(h, w)
    total = None
    for k, flip in transforms:
        logits = logits_fn(forward(images, k, flip))
        p = inverse(jax.nn.softmax(logits.astype(jnp.float32), axis=-1), k, flip)
        total = p if total is None else total + p
    return total / len(transforms)


class TTAModel:
    """A segmentation model seen through test-time augmentation: ``apply`` returns the
    log of the dihedral-averaged probabilities, so argmax and softmax of its output are
    the TTA prediction and probabilities. Inference only (``train=False``)."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def apply(self, variables: dict, images: jax.Array, train: bool = False,
              **kwargs: Any) -> jax.Array:
        if train:
            raise SatsegError("test-time augmentation is for evaluation and prediction, "
                              "not training")
        probs = average_probabilities(
            lambda x: self.model.apply(variables, x, train=False, **kwargs), images)
        return jnp.log(jnp.maximum(probs, _TINY))

    def __getattr__(self, name: str) -> Any:  # name, depth, ... of the wrapped model
        if name == "model":  # not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.model, name)


def tta_runner(run) -> steps.Runner:
    """A :class:`steps.Runner` for ``run``'s config whose model is the run's model under
    TTA: its ``eval_step`` and ``predict`` take ``run.state`` as they are (same
    parameters, same device placement) and compile on first use."""
    config, k = run.config, run.card.num_classes
    if config.task != "segmentation":
        raise SatsegError(f"{run.path}: --tta averages per-pixel probabilities; this is a "
                          f"{config.task} run")
    return steps.Runner(config, lambda axis: TTAModel(steps.build_model(config, k, axis)), k)
