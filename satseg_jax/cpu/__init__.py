"""The CPU speed machinery in one place, switched on explicitly, never by an import.

What makes a CPU train step fast here (benchmarks/NOTES.md §1-§14), and where it lives:

- ``xla_flags``: ``XLA_FLAGS`` defaults (XLA's Eigen convolutions instead of YNNPACK's);
  ``SATSEG_XLA_DEFAULTS=0`` switches them off, a flag the user set is never changed.
- ``host_memory``: glibc malloc settings so XLA's freed step buffer is reused, not
  re-faulted every step; ``SATSEG_KEEP_FREED_MEMORY=0`` switches them off.
- ``onednn_conv`` (+ ``onednn_conv.cc``, compiled with g++ on first use): oneDNN
  convolutions and fused BatchNorm+ReLU as XLA FFI calls.
- ``convolution.conv_fn_for(config)``: oneDNN's or XLA's convolution for a model.

Both process settings must be made before JAX creates its backends, and they change the
whole process (every later ``jax.jit``, every thread's allocator). So importing
``satseg_jax`` (or any submodule, this one included) changes neither: the ``satseg``
CLI calls :func:`setup_for_command` first thing, the benchmarks call :func:`setup`, and
a notebook user keeps their own flags and allocator unless they call one of them.

This ``__init__`` imports nothing from JAX (``conv_fn_for`` imports it when called), so
it can run before JAX starts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from satseg_jax.cpu.env import backends_initialized, enabled_by_env
from satseg_jax.cpu.host_memory import keep_freed_memory, minor_faults
from satseg_jax.cpu.xla_flags import apply_defaults as apply_xla_defaults

__all__ = ["XLA_COMMANDS", "apply_xla_defaults", "backends_initialized", "conv_fn_for",
           "enabled_by_env", "keep_freed_memory", "minor_faults", "setup",
           "setup_for_command"]

# `satseg` commands that run XLA steps on the model: they get the malloc settings. Data
# prep (patches, build, ...) does not: its work is GDAL/tf.data threads, which a single
# malloc arena slows slightly (`satseg patches` 4096²: median 2.86 s with, 2.76 s without).
XLA_COMMANDS = ("train", "evaluate", "predict", "map", "benchmark")


def setup() -> dict[str, list[str]]:
    """Both process settings, for a script that trains or predicts (the benchmarks, a
    notebook that wants the CLI's speed): the XLA flag defaults and the malloc settings,
    each unless its environment switch says off. Call it before the first JAX
    computation. Returns what was set: ``{"xla_flags": [...], "malloc": [...]}``."""
    return {"xla_flags": apply_xla_defaults(), "malloc": keep_freed_memory()}


def setup_for_command(command: str | None) -> dict[str, list[str]]:
    """What the ``satseg`` CLI sets before it runs ``command`` (its first argument).

    The XLA flag defaults for every command (an XLA step may run in any of them); the
    malloc settings only for :data:`XLA_COMMANDS`, and only before JAX has started: a
    ``cli.main()`` called from a process that already ran JAX leaves malloc as it is.
    Returns what was set, as :func:`setup` does.
    """
    flags = apply_xla_defaults()
    malloc: list[str] = []
    if command in XLA_COMMANDS and not backends_initialized():
        malloc = keep_freed_memory()
    return {"xla_flags": flags, "malloc": malloc}


def conv_fn_for(config: Any) -> Callable[..., Any] | None:
    """The model's convolution for ``config``: a ``lax.conv_general_dilated`` stand-in
    (oneDNN's) or ``None`` (XLA's). See :func:`satseg_jax.cpu.convolution.conv_fn_for`;
    imported on call so that this package stays importable before JAX starts."""
    from satseg_jax.cpu.convolution import conv_fn_for as choose

    return choose(config)
