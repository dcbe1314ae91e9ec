"""satseg_jax.cpu.host_memory: freed large buffers stay in the process (no re-faulting).

XLA frees and re-allocates its step buffer every train step; these tests pin the
mechanism with a plain 256 MB malloc/free loop in a fresh process, where glibc's
defaults unmap the block on free and the next touch faults every page in again.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from satseg_jax import cpu
from satseg_jax.cpu import host_memory

REPO = Path(__file__).resolve().parents[1]

glibc = pytest.mark.skipif(host_memory._glibc() is None,
                           reason="malloc settings only exist for Linux/glibc")

LOOP = textwrap.dedent("""
    import ctypes, json, sys
    from satseg_jax.cpu import host_memory
    mode = sys.argv[1]
    if mode == "on":
        set_ = host_memory.keep_freed_memory(enable=True)
    elif mode.startswith("cli:"):
        from satseg_jax import cli
        try:  # `satseg <command> --help`: malloc is set up (or not) before the parsing
            cli.main([mode[4:], "--help"])
        except SystemExit:
            pass
        set_ = None
    else:
        set_ = []
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = (ctypes.c_size_t,)
    libc.free.argtypes = (ctypes.c_void_p,)
    n = 256 << 20
    faults = []
    for _ in range(3):
        p = libc.malloc(n)
        f0 = host_memory.minor_faults()
        ctypes.memset(p, 1, n)
        faults.append(host_memory.minor_faults() - f0)
        libc.free(p)
    print("RESULT", json.dumps({"set": set_, "faults": faults}))
""")


def _run(mode: str) -> dict:
    import json

    proc = subprocess.run([sys.executable, "-c", LOOP, mode], capture_output=True, text=True,
                          check=True, env={"SATSEG_KEEP_FREED_MEMORY": "1",
                                           "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)})
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


@glibc
def test_freed_block_is_reused_without_page_faults():
    pages = (256 << 20) // 4096
    off = _run("off")
    on = _run("on")
    assert on["set"] == ["M_ARENA_MAX", "M_MMAP_MAX", "M_TRIM_THRESHOLD"]
    # First touch faults everything in either way.
    assert off["faults"][0] > pages // 2 and on["faults"][0] > pages // 2
    if max(off["faults"][1:]) < pages // 10:
        pytest.skip("this kernel/libc already keeps the block (transparent huge pages?)")
    # glibc defaults: munmap on free, every later round faults all pages again.
    assert min(off["faults"][1:]) > pages // 2
    # Kept in the heap: later rounds reuse the pages.
    assert max(on["faults"][1:]) < pages // 100


@glibc
def test_the_cli_sets_malloc_up_before_anything_else():
    """`satseg train` (and evaluate, predict, benchmark) keep freed memory; data prep
    commands leave malloc alone (their GDAL threads prefer one arena each)."""
    pages = (256 << 20) // 4096
    for command in ("train", "predict"):
        res = _run(f"cli:{command}")
        assert max(res["faults"][1:]) < pages // 100, command
    if min(_run("off")["faults"][1:]) > pages // 2:  # glibc defaults unmap the block here
        res = _run("cli:patches")
        assert min(res["faults"][1:]) > pages // 2


def test_switches():
    assert host_memory.keep_freed_memory(enable=False) == []
    switch = host_memory.ENV_SWITCH
    assert switch == "SATSEG_KEEP_FREED_MEMORY"
    assert cpu.enabled_by_env(switch, {"SATSEG_KEEP_FREED_MEMORY": "0"}) is False
    assert cpu.enabled_by_env(switch, {"SATSEG_KEEP_FREED_MEMORY": "Off"}) is False
    assert cpu.enabled_by_env(switch, {}) is True
    assert cpu.keep_freed_memory is host_memory.keep_freed_memory
    assert host_memory.keep_freed_memory(environ={"SATSEG_KEEP_FREED_MEMORY": "no"}) == []


def test_minor_faults_counts_up():
    before = host_memory.minor_faults()
    if before < 0:
        pytest.skip("no /proc/self/stat here")
    # A fresh anonymous mapping: its pages fault on the first write whatever malloc holds
    # (a bytearray may reuse heap pages earlier tests already touched).
    import mmap

    buf = mmap.mmap(-1, 8 << 20)
    for offset in range(0, len(buf), mmap.PAGESIZE):
        buf[offset] = 1
    faults = host_memory.minor_faults() - before
    buf.close()
    assert faults > 0  # (one per page, or per huge page where the kernel uses them)
