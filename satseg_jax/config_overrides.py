"""``--config FILE.py[:ARG]`` and ``--config.KEY=VALUE`` overrides, without absl.

Why not ml_collections' config_flags: it parses through absl flags, so `satseg train`
needed a second parser style beside argparse (and flag-spelling rewrites between them).
This module keeps what users type unchanged: the same accepted value forms as
config_flags (bools ``true/false/1/0``, ints ``0x10``, tuples ``0.5,0.75``,
``(0.5, 0.75)``, ``[0.5, 0.75]`` or a repeated flag, dicts as Python literals), the
bare boolean ``--config.data.augment`` and ``--noconfig.data.augment``, and a config
locked at the end so nothing later can add a field by mistake. Each value is parsed with
the type of the field it replaces: a typo'd key or a value of the wrong type is one
SatsegError naming the option.
"""

from __future__ import annotations

import ast
import collections.abc
import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from satseg_jax.errors import SatsegError

PREFIX = "--config."
NEGATED = "--noconfig."
TRUE = ("true", "t", "1", "yes", "y")
FALSE = ("false", "f", "0", "no", "n")


@dataclass(frozen=True)
class Override:
    """One ``--config.KEY=VALUE`` as typed; ``value`` None for a bare boolean flag."""

    key: str
    value: str | None
    negated: bool = False  # --noconfig.KEY

    @property
    def option(self) -> str:
        """The option as the user wrote it, for error messages."""
        if self.negated:
            return f"{NEGATED}{self.key}"
        return f"{PREFIX}{self.key}" + ("" if self.value is None else f"={self.value}")


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[Override]]:
    """(the other arguments, the overrides) of ``argv``.

    ``--config.KEY=VALUE`` and ``--config.KEY VALUE`` are both accepted (as absl did);
    the second form takes the next argument unless it is another ``--option``, so a
    bare ``--config.data.augment`` followed by ``--workdir`` means true. Negative
    numbers (``--config.seed -1``) are values, not options.
    """
    rest: list[str] = []
    overrides: list[Override] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a.startswith(NEGATED):
            overrides.append(Override(a[len(NEGATED):], None, negated=True))
        elif a.startswith(PREFIX):
            key, eq, text = a[len(PREFIX):].partition("=")
            value: str | None = text if eq else None
            if not eq and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                value, i = argv[i + 1], i + 1
            overrides.append(Override(key, value))
        else:
            rest.append(a)
        i += 1
    return rest, overrides


def load_config(spec: str | Path):
    """The config of ``FILE.py`` or ``FILE.py:ARG`` (``get_config(ARG)``), as
    ml_collections' config_flags read it: a path that exists as given wins over the
    ``:ARG`` split (a file name may hold a colon)."""
    from satseg_jax.config_files import load_config_file

    spec = str(spec)
    if Path(spec).is_file() or ":" not in spec:
        return load_config_file(spec)
    path, arg = spec.rsplit(":", 1)
    return load_config_file(path, arg)


def parse_bool(text: str, option: str) -> bool:
    """absl's boolean spellings plus yes/no, any case."""
    low = text.strip().lower()
    if low in TRUE:
        return True
    if low in FALSE:
        return False
    raise SatsegError(f"{option}: expected a boolean (true/false, 1/0, yes/no)")


def parse_int(text: str, option: str) -> int:
    """An integer as absl read one: decimal, ``0x`` hex or ``0o`` octal; never a float
    (``1e-3`` for an int field is a mistake to report, not to truncate)."""
    t = text.strip()
    base = 10
    if len(t) > 2 and t[0] == "0" and t[1] in "xXoO":
        base = 16 if t[1] in "xX" else 8
    try:
        return int(t, base)
    except ValueError:
        raise SatsegError(f"{option}: expected an integer") from None


def parse_float(text: str, option: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise SatsegError(f"{option}: expected a number") from None


def parse_literal(text: str) -> Any:
    """A Python literal, else the text itself (fields whose value is None)."""
    t = text.strip()
    if t in ("true", "false"):
        t = t.capitalize()
    try:
        return ast.literal_eval(t)
    except (SyntaxError, ValueError):
        return text


def parse_tuple(text: str, option: str) -> tuple:
    """ml_collections' tuple forms: ``0.5,0.75``, ``(0.5, 0.75)``, ``[0.5, 0.75]``, a
    single value (a 1-tuple), or a bare word (a 1-tuple of that string)."""
    try:
        value = ast.literal_eval(text)
    except ValueError:
        value = text
    except SyntaxError:
        if "," in text or " " in text:
            raise SatsegError(f"{option}: cannot read it as a tuple; quote string elements "
                              "and separate them with commas, e.g. 0.5,0.75 or "
                              "\"('a', 'b')\"") from None
        value = text
    if isinstance(value, tuple):
        return value
    if isinstance(value, collections.abc.Iterable) and not isinstance(value, str):
        return tuple(value)
    return (value,)


def parse_dict(text: str, option: str):
    """A ConfigDict from a dict literal, e.g. ``{'cross_entropy': 1.0, 'dice': 0.5}``."""
    from ml_collections import ConfigDict

    try:
        value = ast.literal_eval(text)
    except (SyntaxError, ValueError):
        value = None
    if not isinstance(value, dict):
        raise SatsegError(f"{option}: expected a dict, e.g. \"{{'dice': 1.0}}\"")
    return ConfigDict(value)


def _holder(config, key: str):
    """(the section holding ``key``'s last part, that part)."""
    *parents, field = key.split(".")
    node = config
    for part in parents:
        node = node[part]
    return node, field


def _field_type(holder, field: str) -> type:
    """The declared type of a field: a placeholder's (``placeholder(int)``) or that of
    its value."""
    get_type = getattr(holder, "get_type", None)
    if get_type is not None:
        return get_type(field)
    return type(holder[field])


def parse_value(field_type: type, text: str, option: str) -> Any:
    """``text`` read as a value of ``field_type`` (the type of the field it replaces)."""
    from ml_collections import ConfigDict

    if field_type is bool:
        return parse_bool(text, option)
    if field_type is int:
        return parse_int(text, option)
    if field_type is float:
        return parse_float(text, option)
    if field_type is str:
        return text
    if field_type is tuple:
        return parse_tuple(text, option)
    if field_type is list:
        return list(parse_tuple(text, option))
    if isinstance(field_type, type) and issubclass(field_type, (ConfigDict, dict)):
        return parse_dict(text, option)
    if field_type is type(None):
        return parse_literal(text)
    raise SatsegError(f"{option}: a field of type {field_type.__name__} cannot be set on the "
                      "command line; set it in the config file")


def apply_overrides(config, overrides: Sequence[Override]) -> None:
    """Set each override on ``config`` with the type of the field it replaces.

    A tuple field given several times collects the values (``--config.x=1
    --config.x=2`` -> ``(1, 2)``), as ml_collections did; any other field keeps the
    last value.
    """
    tuples: dict[str, tuple] = {}
    for o in overrides:
        holder, field = _holder(config, o.key)
        ftype = _field_type(holder, field)
        if o.negated or o.value is None:
            if ftype is not bool:
                raise SatsegError(f"{o.option}: needs a value (--config.{o.key}=VALUE)")
            value: Any = not o.negated
        else:
            try:
                value = parse_value(ftype, o.value, o.option)
            except SatsegError as e:  # say what the field holds, so the fix is plain
                raise SatsegError(f"{e}; config.{o.key} is {ftype.__name__} (now "
                                  f"{holder[field]!r})") from None
        if ftype is tuple:
            value = tuples[o.key] = tuples.get(o.key, ()) + value
        try:
            holder[field] = value
        except (TypeError, ValueError) as e:
            raise SatsegError(f"{o.option}: {e}") from None


def add_model_knobs(config, overrides: Sequence[Override], spec: str | Path) -> None:
    """Add to ``config.model`` each knob an override sets that the file leaves out but the
    chosen model takes (e.g. ``--config.model.encoder=resnet34`` on a recipe written
    before encoders), at the model's default, so the value is read with the knob's type.

    Why: ``config.model`` is checked against the model's own knobs (models.registry), not
    a fixed list, so a file cannot be expected to spell every knob of every model. A name
    that is no knob of the model is refused, listing the model's knobs.
    """
    keys = [o.key.split(".", 1)[1] for o in overrides
            if o.key.startswith("model.") and o.key.count(".") == 1]
    model = config.get("model") if hasattr(config, "get") else None
    if not keys or not callable(getattr(model, "keys", None)):
        return
    name = next((o.value for o in reversed(overrides) if o.key == "model.name"),
                model.get("name"))
    from satseg_jax.models import registry  # importing the package registers every model

    try:
        defaults = registry.model_field_defaults(name)
    except SatsegError:  # an unknown model: get_model names the registered ones
        return
    valid = sorted(set(model.keys()) | set(defaults) | {"name"})
    for key in keys:
        if key in model:
            continue
        if key not in defaults:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise SatsegError(f"--config.model.{key} (config file {spec}): unknown config field "
                              f"config.model.{key}{hint}; valid fields of config.model for "
                              f"{name!r}: {', '.join(valid)}")
        model[key] = defaults[key]


def config_from_args(spec: str, overrides: Sequence[Override]):
    """The locked config of ``--config SPEC`` with ``overrides`` applied.

    Fields are checked twice against the library's list (config_files.CONFIG_FIELDS):
    the file's own, then each override key, so a typo anywhere is one error listing the
    valid fields, and nothing is set before every key is known.
    """
    from satseg_jax.config_files import check_config_fields, check_override_keys

    config = load_config(spec)
    check_config_fields(config, spec)
    add_model_knobs(config, overrides, spec)
    check_override_keys(config, [o.key for o in overrides], spec)
    apply_overrides(config, overrides)
    if hasattr(config, "lock"):
        config.lock()
    return config
