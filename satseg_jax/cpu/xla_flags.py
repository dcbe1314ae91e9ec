"""XLA_FLAGS defaults that make the CPU train step fast; applied before JAX starts.

Applied by the ``satseg`` CLI and the benchmarks (``satseg_jax.cpu.setup_for_command``,
``satseg_jax.cpu.apply_xla_defaults`` = :func:`apply_defaults`), never by importing the
package: a library or notebook user keeps their own ``XLA_FLAGS`` unless they call it.

Why this module exists: jaxlib 0.10.x routes every float32 2-D convolution on the CPU
to YNNPACK (``--xla_cpu_experimental_ynn_fusion_type`` contains
``individual_convolution`` by default). On the 2-core AMD EPYC (AVX2) we measured
YNNPACK's convolutions at about half the speed of XLA's own (Eigen) convolutions, and
its kernel-gradient convolutions (a 128×128 "window" producing a 3×3 output) at a
third; taking convolutions away from YNNPACK made the U-Net train step 1.4x faster, and
~2.5-3x once its up-sampling is a matmul (benchmarks/NOTES.md has the figures). On the
2-core Intel Xeon with AVX-512 and AMX, Eigen wins as well (1.1-1.6x forward, 1.3-2.2x
with gradients, per layer; NOTES section 11), so the flag does not depend on the CPU.
The flag only exists as an environment setting: XLA reads ``XLA_FLAGS`` once, when the
first backend is created, and the "remove one item from the default list" form
(``-individual_convolution``) cannot be given per ``jax.jit`` (``compiler_options``
only accepts whole-list values).

So: :func:`apply_defaults` appends the recommended flags to ``XLA_FLAGS`` *before*
``jax`` creates its backends, and never touches a flag the user already set.
Switch it off with ``SATSEG_XLA_DEFAULTS=0`` (or ``enable=False``, e.g. from a
config field). The flags only change which library runs a convolution on the CPU;
GPU/TPU compilation ignores them. This module imports nothing from JAX at import time,
so it can run first.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import MutableMapping

from satseg_jax.cpu.env import backends_initialized
from satseg_jax.cpu.env import enabled_by_env as _enabled_by_env

# Environment switch: "0", "false", "off", "no" (any case) disables the defaults.
ENV_SWITCH = "SATSEG_XLA_DEFAULTS"

# flag name -> value. "-individual_convolution" removes convolutions from YNNPACK's
# default list (dots, reductions stay as they are); XLA then uses its Eigen convolution.
RECOMMENDED_CPU_FLAGS: dict[str, str] = {
    "xla_cpu_experimental_ynn_fusion_type": "-individual_convolution",
}

# The oldest jaxlib whose flag parser knows the flag above (an unknown flag in
# XLA_FLAGS aborts the process, so older versions get nothing).
MIN_JAXLIB = (0, 10, 0)


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def installed_jaxlib_version() -> str | None:
    """jaxlib's version from the package metadata (does not import jaxlib)."""
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:  # pragma: no cover - Python < 3.8
        return None
    try:
        return version("jaxlib")
    except PackageNotFoundError:
        return None


def recommended_flags(jaxlib_version: str | None = None) -> dict[str, str]:
    """The flags to add for this jaxlib (empty when it is too old to know them)."""
    jaxlib_version = jaxlib_version or installed_jaxlib_version()
    if jaxlib_version is None or _version_tuple(jaxlib_version) < MIN_JAXLIB:
        return {}
    return dict(RECOMMENDED_CPU_FLAGS)


def flag_names(xla_flags: str) -> set[str]:
    """Names of the flags in an ``XLA_FLAGS`` string (``--name=value`` or ``--name``)."""
    names = set()
    for token in xla_flags.split():
        if token.startswith("--"):
            names.add(token[2:].split("=", 1)[0])
    return names


def merged_flags(xla_flags: str, flags: dict[str, str]) -> str:
    """``xla_flags`` plus every flag of ``flags`` the string does not already name."""
    present = flag_names(xla_flags)
    extra = [f"--{name}={value}" for name, value in flags.items() if name not in present]
    return " ".join([xla_flags.strip(), *extra]).strip()


def apply_defaults(enable: bool | None = None,
                   environ: MutableMapping[str, str] | None = None,
                   jaxlib_version: str | None = None) -> list[str]:
    """Append the recommended flags to ``XLA_FLAGS``; return the flags added.

    ``enable=None`` follows ``SATSEG_XLA_DEFAULTS``; ``False`` adds nothing. A flag the
    user already set (any value) is left alone. Call this before the first JAX
    computation: once JAX's backends exist, XLA has read its flags, so nothing is
    changed and a warning says so.
    """
    environ = os.environ if environ is None else environ
    if enable is None:
        enable = _enabled_by_env(ENV_SWITCH, environ)
    if not enable:
        return []
    flags = recommended_flags(jaxlib_version)
    current = environ.get("XLA_FLAGS", "")
    present = flag_names(current)
    missing = {k: v for k, v in flags.items() if k not in present}
    if not missing:
        return []
    if environ is os.environ and backends_initialized():
        warnings.warn("satseg_jax.cpu.apply_xla_defaults() called after JAX started its "
                      "backends; XLA_FLAGS is read only once, so the CPU defaults "
                      f"{sorted(missing)} are not applied. Call it before any JAX computation "
                      "or set XLA_FLAGS yourself.", RuntimeWarning, stacklevel=2)
        return []
    environ["XLA_FLAGS"] = merged_flags(current, missing)
    return [f"--{k}={v}" for k, v in missing.items()]
