"""What decides how long training runs: a schedule stated in epochs, and early stopping.

Why epochs: a recipe meant for any dataset (``configs/real/*.py``) cannot state its
length in steps, since the same number of steps is 3 passes over one set and 300 over
another. ``resolve_epochs`` turns the ``*_epochs`` fields into the step fields the rest
of the library reads (``train.num_steps``, ``train.eval_every``,
``train.checkpoint_every``, ``schedule.warmup_steps``), using the size of the train
split, once, before anything is built. A field pair where both are set (e.g.
``num_steps=300`` and ``num_epochs=40``) is refused rather than one silently winning.

Why early stopping lives outside the loop: its whole state (best validation mIoU, its
step, evaluations since) is a small JSON record saved in every checkpoint's ``meta``, so
a resumed run makes the same decision an uninterrupted one would.

Every field read here is optional (``option``): configs written before these fields
existed, and runs' saved ``config.json``, mean "off".
"""

from __future__ import annotations

import math
from typing import Any

from satseg_jax.errors import SatsegError

# (section, steps field, epochs field): the step fields an epoch field can replace.
EPOCH_FIELDS = (
    ("train", "num_steps", "num_epochs"),
    ("train", "eval_every", "eval_every_epochs"),
    ("train", "checkpoint_every", "checkpoint_every_epochs"),
    ("schedule", "warmup_steps", "warmup_epochs"),
)


def option(section: Any, key: str, off: Any) -> Any:
    """``section.key``, or ``off`` when the section lacks it (older configs and runs)."""
    if section is None:
        return off
    value = section.get(key, off) if hasattr(section, "get") else getattr(section, key, off)
    return off if value is None else value


def steps_per_epoch(num_train: int, global_batch: int, process_count: int = 1) -> float:
    """Global steps per pass over the train split (each host reads ``n // P`` of it)."""
    used = (int(num_train) // max(1, process_count)) * max(1, process_count)
    if used <= 0:
        raise SatsegError("the train split is empty: an epoch has no steps")
    return used / int(global_batch)


def resolve_epochs(config, num_train: int, process_count: int = 1) -> list[str]:
    """Fill the step fields of ``config`` (in place) from its ``*_epochs`` fields.

    Returns one line per converted field for the log. An epoch field > 0 needs its step
    field at 0; the number of steps is rounded up (at least 1).
    """
    per_epoch = steps_per_epoch(num_train, int(config.train.batch_size), process_count)
    notes = []
    for section, steps_key, epochs_key in EPOCH_FIELDS:
        node = config[section] if section in config else None
        epochs = float(option(node, epochs_key, 0.0))
        if epochs < 0:
            raise SatsegError(f"config.{section}.{epochs_key}={epochs:g}: must be >= 0")
        if not epochs:
            continue
        current = int(option(node, steps_key, 0))
        if current:
            raise SatsegError(
                f"config.{section}.{steps_key}={current} and config.{section}.{epochs_key}="
                f"{epochs:g} are both set; set one of them to 0 (e.g. "
                f"--config.{section}.{steps_key}=0)")
        steps = max(1, math.ceil(epochs * per_epoch - 1e-9))
        node[steps_key] = steps
        notes.append(f"config.{section}.{epochs_key}={epochs:g} -> {steps_key}={steps}")
    if notes:
        notes.insert(0, f"{num_train} train examples, batch {int(config.train.batch_size)}: "
                        f"{per_epoch:.2f} steps per epoch")
    if int(config.train.num_steps) <= 0:
        raise SatsegError("config.train.num_steps is 0 and config.train.num_epochs is not set; "
                          "give one of them a value above 0")
    return notes


class EarlyStopping:
    """Stop when validation mIoU has not improved by ``min_delta`` for ``patience``
    evaluations in a row (``patience`` 0: never).

    Only the evaluation split the loop scores (``config.data.eval_split``, validation by
    default) ever reaches it, and the best checkpoint is the one with the best of those
    scores, so the stopping point and the checkpoint kept are never chosen on test data.
    """

    def __init__(self, patience: int, min_delta: float = 0.0,
                 record: dict | None = None) -> None:
        self.patience = int(patience)
        self.min_delta = float(min_delta)
        r = record or {}
        self.best = r.get("best")
        self.best_step = r.get("best_step")
        self.since = int(r.get("since", 0))
        self.stopped_at = r.get("stopped_at")

    @classmethod
    def from_config(cls, train_config, record: dict | None = None) -> EarlyStopping:
        return cls(int(option(train_config, "early_stopping_patience", 0)),
                   float(option(train_config, "early_stopping_min_delta", 0.0)), record)

    def update(self, step: int, score: float) -> bool:
        """Record the evaluation at ``step``; True when training should stop now."""
        if self.best is None or score > self.best + self.min_delta:
            self.best, self.best_step, self.since = float(score), int(step), 0
        else:
            self.since += 1
        if self.patience > 0 and self.since >= self.patience:
            self.stopped_at = int(step)
            return True
        return False

    def record(self) -> dict:
        """The JSON saved with each checkpoint (what a resume needs)."""
        return {"best": self.best, "best_step": self.best_step, "since": self.since,
                "stopped_at": self.stopped_at}

    def reason(self, split: str) -> str:
        """Why it stopped, for the log."""
        return (f"{split} mIoU has not improved by more than {self.min_delta:g} for "
                f"{self.since} evaluations (patience {self.patience}); best "
                f"{self.best:.4f} at step {self.best_step}")
