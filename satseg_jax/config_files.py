"""Load a ``get_config()`` Python file by path and reject fields nothing reads.

Why a list of fields: a config is plain Python, so a misspelt field in a config file
(``c.train.batch_sise = 4``) or on the command line would otherwise be silently
ignored while the run uses another value. ``CONFIG_FIELDS`` is the set of fields the
library reads from a training config, section by section; ``config.model`` is left to
``models.registry``, which checks it against the chosen model's own knobs. A new config
field must be added here as well (tests/test_bad_inputs.py checks every configs/*.py).
"""

from __future__ import annotations

import difflib
import importlib.util
from pathlib import Path
from typing import Any

from satseg_jax.errors import SatsegError

# None: any value (a leaf, or a section checked elsewhere).
CONFIG_FIELDS: dict[str, frozenset[str] | None] = {
    "seed": None,
    "task": None,
    "parallelism": None,
    "data": frozenset({"data_dir", "train_split", "eval_split", "crop_size", "augment",
                       "shuffle_buffer", "cache", "num_parallel_calls", "scale_range",
                       "aspect_range", "brightness", "contrast"}),
    "model": None,  # models.registry.get_model checks the knobs of config.model.name
    "loss": frozenset({"name", "weights", "class_weights", "label_smoothing", "focal_gamma",
                       "dice_smooth"}),
    "optimizer": frozenset({"name", "learning_rate", "weight_decay", "momentum", "b1", "b2",
                            "grad_clip_norm", "encoder_lr_multiplier",
                            "decay_norms_and_biases"}),
    "schedule": frozenset({"name", "warmup_steps", "end_factor", "boundaries", "scales",
                           "decay_rate", "transition_steps", "warmup_epochs"}),
    "train": frozenset({"batch_size", "num_steps", "compute_dtype", "cpu_conv", "log_every",
                        "eval_every", "checkpoint_every", "keep_checkpoints",
                        "max_nonfinite_steps", "stop_check_every", "num_epochs",
                        "eval_every_epochs", "checkpoint_every_epochs", "ema_decay",
                        "ema_warmup", "early_stopping_patience",
                        "early_stopping_min_delta", "freeze_encoder_steps"}),
    "eval": frozenset({"batch_size", "crop_size"}),
    "distributed": frozenset({"coordinator_address", "num_processes", "process_id", "auto"}),
}


def load_config_file(path: str | Path, arg: str | None = None):
    """``get_config()`` (``get_config(arg)`` when ``arg`` is given: the ``FILE.py:ARG``
    form) of the Python file at ``path``; SatsegError naming the file when it is missing,
    does not run, or defines no ``get_config``."""
    path = Path(path)
    if not path.is_file():
        raise SatsegError(f"{path}: config file not found (e.g. configs/unet_sample.py)")
    spec = importlib.util.spec_from_file_location(f"satseg_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        raise SatsegError(f"{path}:{e.lineno}: syntax error in the config file ({e.msg})") \
            from None
    if not hasattr(module, "get_config"):
        raise SatsegError(f"{path}: defines no get_config()")
    return module.get_config() if arg is None else module.get_config(arg)


def _keys(node: Any) -> list[str] | None:
    """The field names of a config section, or None when ``node`` is a leaf."""
    if hasattr(node, "keys") and callable(node.keys) and not isinstance(node, (str, bytes)):
        return sorted(str(k) for k in node.keys())
    return None


def _unknown(field: str, where: str, valid: list[str], source: str) -> SatsegError:
    """``source: unknown config field WHERE (did you mean X?); valid fields of ...``."""
    close = difflib.get_close_matches(field, valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return SatsegError(f"{source}: unknown config field {where}{hint}; valid fields of "
                       f"{where.rsplit('.', 1)[0]}: {', '.join(valid)}")


def check_override_keys(config: Any, keys: list[str], config_path: str | Path) -> None:
    """Each dotted ``key`` (``train.batch_size`` from ``--config.train.batch_size=4``) must
    name a field of ``config`` (read from ``config_path``); else a SatsegError naming the
    option and listing the valid fields at the level where it went wrong."""
    for key in keys:
        node = config
        path = "config"
        source = f"--config.{key} (config file {config_path})"
        for part in key.split("."):
            fields = _keys(node)
            if fields is None:
                raise SatsegError(f"{source}: {path} is a value, not a section; it has no "
                                  f"field {part!r}")
            path = f"{path}.{part}"
            if part not in fields:
                raise _unknown(part, path, fields, source)
            node = node[part]


def check_config_fields(config: Any, source: str) -> None:
    """Every section and field of ``config`` must be one the library reads
    (``CONFIG_FIELDS``); else a SatsegError naming it and listing the valid ones."""
    top = _keys(config) or []
    for name in top:
        if name not in CONFIG_FIELDS:
            raise _unknown(name, f"config.{name}", sorted(CONFIG_FIELDS), source)
        allowed = CONFIG_FIELDS[name]
        if allowed is None:
            continue
        fields = _keys(config[name])
        if fields is None:
            raise SatsegError(f"{source}: config.{name} must be a section (a ConfigDict) with "
                              f"the fields {', '.join(sorted(allowed))}")
        for field in fields:
            if field not in allowed:
                raise _unknown(field, f"config.{name}.{field}", sorted(allowed), source)
