"""Fine-tuning controls for models with a named encoder, all from the config.

- ``train.freeze_encoder_steps`` [0]: the encoder gets no update for the first K steps
  (-1: for the whole run). While frozen its optimizer state does not move either, so
  when it thaws its Adam moments start fresh, as a new torch parameter group would; its
  learning rate follows the run's schedule at the global step.
- ``optimizer.encoder_lr_multiplier`` [1.0]: the encoder's learning rate is the
  schedule's times this (an ``optax.multi_transform`` over a label tree: ``encoder`` for
  everything under ``params['encoder']``, ``decoder`` for the rest).
- ``optimizer.decay_norms_and_biases`` [True]: False keeps AdamW's weight decay off
  every bias and normalisation scale (the usual fine-tuning choice; True is what runs
  before this option did).
- ``model.encoder_bn`` ['train'|'frozen']: the encoder's BatchNorm in inference mode
  (``models/unet.py``).

Why here and not in steps.py: these are choices about *which* parameters an update
touches; steps.py only runs whatever GradientTransformation it is given.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from satseg_jax.errors import SatsegError
from satseg_jax.models.registry import model_encoder
from satseg_jax.training_control import option

ENCODER = "encoder"  # the submodule name every encoder-backed model uses
# field -> value that means "off" (what configs without the field get)
DEFAULTS = {("train", "freeze_encoder_steps"): 0,
            ("optimizer", "encoder_lr_multiplier"): 1.0,
            ("optimizer", "decay_norms_and_biases"): True}
# Biases; BatchNorm/GroupNorm/LayerNorm scales; ConvNeXt's layer scale (timm decays
# none of them: every 1-D parameter is left out).
NO_DECAY_LEAVES = ("bias", "scale", "gamma")


def setting(config: Any, section: str, key: str) -> Any:
    """``config.section.key``, or its declared default."""
    return option(getattr(config, section, None), key, DEFAULTS[(section, key)])


def has_encoder(config: Any) -> bool:
    """Whether the model has a named encoder (its own default counts: fpn's resnet34)."""
    return model_encoder(config.model) != "none"


def param_labels(params: Any) -> Any:
    """'encoder' for every leaf under ``params['encoder']``, 'decoder' for the rest."""
    return {k: jax.tree.map(lambda _, k=k: ENCODER if k == ENCODER else "decoder", v)
            for k, v in params.items()}


def decay_mask(params: Any) -> Any:
    """True where weight decay applies: not on biases and normalisation scales."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], "key", None) not in NO_DECAY_LEAVES, params)


class FrozenState(NamedTuple):
    count: jax.Array
    inner: Any


def frozen_for(inner: optax.GradientTransformation, steps: int,
               ) -> optax.GradientTransformation:
    """``inner``, but zero updates and an unchanged ``inner`` state for the first
    ``steps`` updates (``jnp.where``, so the parameters stay bit-identical)."""

    def init(params):
        return FrozenState(jnp.zeros((), jnp.int32), inner.init(params))

    def update(updates, state, params=None):
        new_updates, new_inner = inner.update(updates, state.inner, params)
        thawed = state.count >= steps
        new_inner = jax.tree.map(lambda a, b: jnp.where(thawed, a, b), new_inner, state.inner)
        new_updates = jax.tree.map(lambda u: jnp.where(thawed, u, jnp.zeros_like(u)),
                                   new_updates)
        return new_updates, FrozenState(jnp.minimum(state.count + 1, steps), new_inner)

    return optax.GradientTransformation(init, update)


def grouped_optimizer(config: Any, make: Callable[[optax.Schedule], optax.GradientTransformation],
                      schedule: optax.Schedule) -> optax.GradientTransformation:
    """The optimizer ``make(schedule)``, split into encoder and decoder groups when the
    model has a named encoder and a control asks for it (otherwise exactly ``make``'s)."""
    freeze = int(setting(config, "train", "freeze_encoder_steps"))
    mult = float(setting(config, "optimizer", "encoder_lr_multiplier"))
    if freeze < -1:
        raise SatsegError(f"config.train.freeze_encoder_steps={freeze}: expected 0 (off), "
                          "K > 0 (the first K steps) or -1 (the whole run)")
    if mult < 0:
        raise SatsegError(f"config.optimizer.encoder_lr_multiplier={mult}: must be >= 0")
    if (freeze or mult != 1.0) and not has_encoder(config):
        raise SatsegError("config.train.freeze_encoder_steps / optimizer.encoder_lr_"
                          "multiplier need a named encoder (config.model.encoder)")
    decoder = make(schedule)
    if not freeze and mult == 1.0:
        return decoder
    if freeze == -1:
        encoder = optax.set_to_zero()
    else:
        encoder = make(lambda step: schedule(step + freeze) * mult)
        if freeze:
            encoder = frozen_for(encoder, freeze)
    return optax.multi_transform({ENCODER: encoder, "decoder": decoder}, param_labels)


def group_update_norms(updates: Any) -> dict[str, jax.Array]:
    """L2 norm of the update of the encoder and of the rest (train-step metrics)."""
    if not isinstance(updates, dict) or ENCODER not in updates:
        return {}
    rest = {k: v for k, v in updates.items() if k != ENCODER}
    return {"update_norm_encoder": optax.tree.norm(updates[ENCODER]),
            "update_norm_decoder": optax.tree.norm(rest)}
