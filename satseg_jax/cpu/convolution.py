"""Which convolution a model gets: oneDNN's (a ``lax.conv_general_dilated`` stand-in) or
XLA's own (``None``).

Why here and not in the models: the models take any conv_fn and know nothing of how it
is made; the choice depends on the backend, the device count, the parallelism and
whether oneDNN and a compiler exist on this machine, which is the CPU speed
machinery's business (benchmarks/NOTES.md §12: ~1.25x faster CPU train steps).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax

from satseg_jax.errors import SatsegError

# The values of config.train.cpu_conv.
CPU_CONVS = ("auto", "onednn", "xla")


@functools.cache
def _say_once(message: str) -> None:
    """Print the choice once per process, not once per model built (evaluation, export
    and predict build the model again)."""
    print(message, flush=True)


def conv_fn_for(config: Any) -> Callable[..., jax.Array] | None:
    """The convolution the model should use: oneDNN's on a single CPU device, else XLA's.

    ``config.train.cpu_conv``: ``'xla'`` always uses ``lax.conv_general_dilated``;
    ``'onednn'`` requires the oneDNN path (``cpu/onednn_conv.py``) on the CPU and fails
    with the fix when it cannot be built; ``'auto'`` (the default) takes it on a
    one-device CPU run when it builds, and says so either way. Why single device for
    ``auto``: the custom call has no sharding rule (under ``jit`` over a mesh XLA would
    gather its operands), and several CPU "devices" share the same cores anyway.
    GPUs/TPUs never see it: the choice is made here, per backend. Returns ``None`` for
    XLA's convolutions (what ``models.get_model(conv_fn=...)`` takes as "the default").
    """
    choice = getattr(config.train, "cpu_conv", "xla")
    if choice not in CPU_CONVS:
        raise SatsegError(f"config.train.cpu_conv={choice!r}: expected one of {CPU_CONVS}")
    if choice == "xla" or jax.default_backend() != "cpu":
        return None
    from satseg_jax.cpu import onednn_conv

    if jax.device_count() > 1:
        if choice == "onednn" and config.parallelism == "jit":
            raise SatsegError(
                f"config.train.cpu_conv='onednn' with {jax.device_count()} devices under "
                "parallelism='jit': the oneDNN custom call has no sharding rule; use "
                "parallelism='pmap', one device, or cpu_conv='auto'")
        if choice == "auto":
            return None
    try:
        onednn_conv.load()
    except onednn_conv.OneDnnUnavailable as e:
        if choice == "onednn":
            raise SatsegError(f"config.train.cpu_conv='onednn': {e}") from None
        _say_once(f"cpu_conv=auto: XLA's convolutions (oneDNN path unavailable: "
                  f"{str(e).splitlines()[0]})")
        return None
    _say_once("cpu_conv: oneDNN convolutions (cpu/onednn_conv.py)")
    return onednn_conv.conv_general_dilated
