"""satseg_jax.cpu: the CPU settings are made by the CLI and an explicit call, never by an import.

Importing ``satseg_jax`` once rewrote ``XLA_FLAGS`` (issue #28): a notebook user's flags
changed behind their back. These tests run each case in a fresh interpreter (the pytest
process's own flags were set by conftest, and malloc settings cannot be undone).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import jax
import pytest

from satseg_jax import cpu
from satseg_jax.cpu import host_memory, xla_flags
from satseg_jax.errors import SatsegError

REPO = Path(__file__).resolve().parents[1]
FLAG = "xla_cpu_experimental_ynn_fusion_type"
USER_FLAGS = "--xla_force_host_platform_device_count=2"
PAGES = (256 << 20) // 4096  # the probe's malloc block, in 4 KiB pages

# Fresh process: optionally import every satseg_jax module (and start JAX), then time a
# 256 MB malloc/free loop in page faults: with glibc's defaults every round after the
# first faults the whole block in again; with the settings of cpu.keep_freed_memory none.
PROBE = textwrap.dedent("""
    import ctypes, importlib, json, os, pkgutil, sys
    mode = sys.argv[1]
    out = {"before": os.environ.get("XLA_FLAGS")}
    if mode == "import":
        import satseg_jax.cpu
        out["cpu_imports_jax"] = "jax" in sys.modules
        import satseg_jax, satseg_jax.models, satseg_jax.train, satseg_jax.cli
        failed = {}
        for m in pkgutil.walk_packages(satseg_jax.__path__, "satseg_jax."):
            try:
                importlib.import_module(m.name)
            except ImportError as e:  # an optional dependency missing here
                failed[m.name] = str(e)
        out["failed"] = failed
        out["after_import"] = os.environ.get("XLA_FLAGS")
        import jax.numpy as jnp
        jnp.ones(3).block_until_ready()  # JAX started: nothing may set flags lazily either
        out["after_jax"] = os.environ.get("XLA_FLAGS")
    elif mode.startswith("cli:"):
        from satseg_jax import cli
        try:
            cli.main([mode[4:], "--help"])
        except SystemExit:
            pass
    elif mode.startswith("command:"):
        from satseg_jax import cpu
        out["set"] = cpu.setup_for_command(mode[8:] or None)
    elif mode == "setup":
        from satseg_jax import cpu
        out["set"] = cpu.setup()
    out["after"] = os.environ.get("XLA_FLAGS")
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = (ctypes.c_size_t,)
    libc.free.argtypes = (ctypes.c_void_p,)
    from satseg_jax.cpu.host_memory import minor_faults
    n, faults = 256 << 20, []
    for _ in range(3):
        p = libc.malloc(n)
        f0 = minor_faults()
        ctypes.memset(p, 1, n)
        faults.append(minor_faults() - f0)
        libc.free(p)
    out["faults"] = faults
    print("RESULT " + json.dumps(out))
""")


def _probe(mode: str, xla: str | None = None, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("XLA_FLAGS", xla_flags.ENV_SWITCH, host_memory.ENV_SWITCH)}
    env.update(extra, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2")
    if xla is not None:
        env["XLA_FLAGS"] = xla
    proc = subprocess.run([sys.executable, "-c", PROBE, mode], env=env, capture_output=True,
                          text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def _refaults(res: dict) -> bool:
    """Whether every round after the first faulted the block in again (glibc defaults)."""
    return min(res["faults"][1:]) > PAGES // 2


@pytest.mark.parametrize("user", [None, USER_FLAGS], ids=["unset", "user_flags"])
def test_importing_satseg_jax_changes_neither_xla_flags_nor_malloc(user):
    """``import satseg_jax`` and every submodule (models, train, cli, cpu, ...), then
    starting JAX, leaves XLA_FLAGS exactly as the user had it (unset stays unset) and
    glibc's malloc at its defaults (the freed block is still unmapped and re-faulted)."""
    res = _probe("import", user)
    assert not res["cpu_imports_jax"]  # the CLI imports satseg_jax.cpu before JAX
    assert not [m for m in res["failed"] if "satseg_jax" in res["failed"][m]], res["failed"]
    assert res["before"] == res["after_import"] == res["after_jax"] == user
    if host_memory._glibc() is None:
        return
    control = _probe("none")
    if not _refaults(control):
        pytest.skip("this kernel/libc already keeps the freed block (transparent huge pages?)")
    assert _refaults(res), res["faults"]


def test_the_cli_applies_the_xla_defaults_and_keeps_user_flags():
    """``satseg <command>`` adds the defaults before anything else (the malloc half is
    pinned in tests/test_cpu_host_memory.py); SATSEG_XLA_DEFAULTS=0 switches them off."""
    if not xla_flags.recommended_flags():
        pytest.skip("jaxlib too old for the flag")
    default = f"--{FLAG}=-individual_convolution"
    assert _probe("cli:patches")["after"] == default
    assert _probe("cli:train", USER_FLAGS)["after"].split() == [USER_FLAGS, default]
    assert _probe("cli:train", SATSEG_XLA_DEFAULTS="0")["after"] is None
    kept = f"--{FLAG}=+individual_convolution"
    assert _probe("cli:predict", kept)["after"] == kept


def test_setup_for_command_sets_malloc_only_for_xla_commands():
    """Data-prep commands get the flags only; train/evaluate/predict/map/benchmark and
    ``cpu.setup()`` get the malloc settings too (glibc only), each behind its switch."""
    if not xla_flags.recommended_flags():
        pytest.skip("jaxlib too old for the flag")
    default = f"--{FLAG}=-individual_convolution"
    names = ["M_ARENA_MAX", "M_MMAP_MAX", "M_TRIM_THRESHOLD"] if host_memory._glibc() else []
    assert cpu.XLA_COMMANDS == ("train", "evaluate", "predict", "map", "benchmark")
    assert _probe("command:patches")["set"] == {"xla_flags": [default], "malloc": []}
    assert _probe("command:")["set"] == {"xla_flags": [default], "malloc": []}
    assert _probe("command:evaluate")["set"] == {"xla_flags": [default], "malloc": names}
    assert _probe("setup")["set"] == {"xla_flags": [default], "malloc": names}
    off = _probe("setup", SATSEG_XLA_DEFAULTS="0", SATSEG_KEEP_FREED_MEMORY="0")
    assert off["set"] == {"xla_flags": [], "malloc": []} and off["after"] is None
    if names and _refaults(off):  # glibc defaults unmap the block here: the settings keep it
        assert max(_probe("command:benchmark")["faults"][1:]) < PAGES // 100


def _config(choice: str, parallelism: str = "jit") -> SimpleNamespace:
    return SimpleNamespace(train=SimpleNamespace(cpu_conv=choice), parallelism=parallelism)


def test_conv_fn_for_picks_the_convolution():
    """'xla' = XLA's (None); unknown values name the field and the choices; 'auto' on
    one CPU device = the oneDNN stand-in when it builds here, else XLA's."""
    from satseg_jax.cpu import convolution, onednn_conv

    assert cpu.conv_fn_for(_config("xla")) is None
    with pytest.raises(SatsegError, match=r"config.train.cpu_conv='cudnn'.*auto"):
        cpu.conv_fn_for(_config("cudnn"))
    assert convolution.CPU_CONVS == ("auto", "onednn", "xla")
    if jax.default_backend() != "cpu" or jax.device_count() != 1:
        pytest.skip("the oneDNN choice is made on a one-device CPU run")
    expected = onednn_conv.conv_general_dilated if onednn_conv.available() else None
    assert cpu.conv_fn_for(_config("auto")) is expected
    if expected is not None:
        assert cpu.conv_fn_for(_config("onednn")) is expected
        assert callable(expected.batch_norm_relu)  # the fused kernel the models look for
