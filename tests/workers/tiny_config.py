"""A tiny config for tests: base width 4, 32-px inputs, a handful of steps."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def tiny_config(data_dir: str, **overrides):
    sys.path.insert(0, str(REPO / "configs"))
    try:
        import unet_sample
    finally:
        sys.path.pop(0)
    c = unet_sample.get_config()
    c.data.data_dir = str(data_dir)
    c.data.crop_size = 0
    c.data.num_parallel_calls = 1
    c.model.depth = 2
    c.model.base_width = 4
    c.train.batch_size = 4
    c.train.num_steps = 12
    c.train.log_every = 4
    c.train.eval_every = 4
    c.train.checkpoint_every = 4
    c.schedule.warmup_steps = 2
    c.eval.batch_size = 8
    for k, v in overrides.items():
        node = c
        *parents, leaf = k.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = v
    return c


def apply_overrides(config, items: list[str]):
    """Apply ``--config.a.b=VALUE`` strings (as ``satseg train`` takes them) in place.

    Values are converted to the type of the field they replace, so ``--config.x=4``
    stays an int where the config holds an int.
    """
    for item in items:
        key, value = item.removeprefix("--config.").split("=", 1)
        *parents, leaf = key.split(".")
        node = config
        for p in parents:
            node = node[p]
        if leaf not in node:  # a field the tiny config does not set (e.g. model.encoder)
            node[leaf] = _parse(value)
            continue
        old = node[leaf]
        node[leaf] = value.lower() in ("1", "true") if isinstance(old, bool) else type(old)(value)
    return config


def _parse(value: str):
    """int, float or the string itself."""
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def two_step_run(tiny_dataset, workdir: Path) -> Path:
    """A run of 2 steps on the tiny dataset (checkpoint at step 2): for tests that need a
    restorable run, not a trained one."""
    from satseg_jax.train import train_and_evaluate

    train_and_evaluate(tiny_config(tiny_dataset, **{"train.num_steps": 2,
                                                    "train.eval_every": 2,
                                                    "train.checkpoint_every": 2}), workdir)
    return workdir
