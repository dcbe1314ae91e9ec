"""What the CPU settings share: their on/off environment switches and "has JAX started?".

Why one module: XLA reads ``XLA_FLAGS`` and XLA's thread pools keep the malloc arenas
they were born with, so both settings only work when applied before JAX creates its
backends; and both can be switched off by an environment variable with the same
spelling rules. This module imports nothing from JAX, so it can run first.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

# Values of a switch variable that mean "off" (any case, surrounding spaces ignored).
OFF_VALUES = ("0", "false", "off", "no")


def enabled_by_env(switch: str, environ: Mapping[str, str] | None = None) -> bool:
    """False when the variable ``switch`` says off (0/false/off/no), else True (unset: on).

    ``switch`` is ``xla_flags.ENV_SWITCH`` (``SATSEG_XLA_DEFAULTS``) or
    ``host_memory.ENV_SWITCH`` (``SATSEG_KEEP_FREED_MEMORY``); ``environ`` defaults to
    ``os.environ`` (tests pass a dict).
    """
    environ = os.environ if environ is None else environ
    return environ.get(switch, "1").strip().lower() not in OFF_VALUES


def backends_initialized() -> bool:
    """True when JAX has already created its backends (XLA_FLAGS would be ignored now,
    and XLA's worker threads already hold their malloc arenas). Never imports JAX."""
    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge
    except ImportError:  # pragma: no cover - private module moved
        return False
    check = getattr(xla_bridge, "backends_are_initialized", None)
    return bool(check()) if check is not None else False
