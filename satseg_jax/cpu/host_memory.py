"""Keep freed host memory in the process so that each CPU train step does not re-fault it.

Why this module exists: XLA's CPU runtime allocates a step's temporary buffer (453 MB for
the benchmark U-Net, base 32, depth 4, 128 px, batch 8) with ``malloc`` on one of its
worker threads and frees it at the end of the step. glibc serves a request that large
from a per-thread arena by ``mmap`` (a non-main arena cannot grow past 64 MB, and the
mmap threshold sits far below 453 MB), and ``free`` gives it straight back with
``munmap``. The next step maps it again and the kernel zero-fills every page on first
touch: ``strace`` shows one mmap/munmap pair per step, ``/proc/self/stat`` ~115 000
minor page faults and ~0.3 s of system time per 1.4 s step on the 2-core AMD EPYC
(benchmarks/NOTES.md section 12).

:func:`keep_freed_memory` tells glibc, through ``mallopt``, to

* use one arena for all threads (``M_ARENA_MAX=1``): the main arena grows with ``brk``
  and can hold blocks of any size;
* never serve a request with ``mmap`` (``M_MMAP_MAX=0``);
* not trim the top of the heap on free (``M_TRIM_THRESHOLD`` = 2 GiB - 1).

Freed step buffers then stay in the heap and the next step reuses them: 0 page faults
per step, system time 0.01-0.05 s per step, and 1.25x more training images per second
with the oneDNN convolutions. The price is that the process keeps its peak heap size
(it would reach it every step anyway) and that all threads share one arena (malloc is a
small part of a step; the input pipeline was measured with the setting too).

It only helps when applied before JAX creates its backends and thread pools (a thread
keeps the arena it got first), so the ``satseg`` CLI calls it (through
``satseg_jax.cpu.setup_for_command``) before it imports JAX; importing the package never
does.
It does nothing off Linux/glibc, and ``SATSEG_KEEP_FREED_MEMORY=0`` switches it off.
This module imports nothing heavy, so it can run first.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
import warnings
from collections.abc import MutableMapping

from satseg_jax.cpu.env import backends_initialized
from satseg_jax.cpu.env import enabled_by_env as _enabled_by_env

ENV_SWITCH = "SATSEG_KEEP_FREED_MEMORY"

# glibc's mallopt parameter numbers (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8

# mallopt takes a C int: 2**31 - 1 bytes (2 GiB) is the largest trim threshold it accepts.
TRIM_THRESHOLD = 2**31 - 1

SETTINGS: tuple[tuple[str, int, int], ...] = (
    ("M_ARENA_MAX", M_ARENA_MAX, 1),
    ("M_MMAP_MAX", M_MMAP_MAX, 0),
    ("M_TRIM_THRESHOLD", M_TRIM_THRESHOLD, TRIM_THRESHOLD),
)


def _glibc():
    """The C library as a ctypes handle when it is glibc (has ``mallopt``), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    if not hasattr(libc, "mallopt") or not hasattr(libc, "gnu_get_libc_version"):
        return None  # musl and other C libraries: different allocator, nothing to set
    libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    libc.mallopt.restype = ctypes.c_int
    return libc


def keep_freed_memory(enable: bool | None = None,
                      environ: MutableMapping[str, str] | None = None) -> list[str]:
    """Apply the malloc settings above; return the names of those set (empty: none).

    ``enable=None`` follows ``SATSEG_KEEP_FREED_MEMORY``. Returns ``[]`` off glibc. When
    JAX's backends already exist the settings are still made (new threads and the main
    thread follow them) but a warning says that XLA's worker threads may keep their own
    arenas, so the page faults may remain.
    """
    if enable is None:
        enable = _enabled_by_env(ENV_SWITCH, environ)
    if not enable:
        return []
    libc = _glibc()
    if libc is None:
        return []
    if backends_initialized():
        warnings.warn("satseg_jax.cpu.keep_freed_memory() called after JAX started "
                      "its backends: XLA's threads keep the malloc arenas they already "
                      "have, so step buffers may still be unmapped and re-faulted each "
                      "step. Call it before the first JAX computation.",
                      RuntimeWarning, stacklevel=2)
    done = []
    for name, param, value in SETTINGS:
        if libc.mallopt(param, value) == 1:  # mallopt returns 1 on success
            done.append(name)
    return done


def minor_faults() -> int:
    """Minor page faults of this process so far (``/proc/self/stat`` field 10); -1 if
    unknown. The figure that shows whether step buffers are re-faulted."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return -1
    return int(fields[7])
