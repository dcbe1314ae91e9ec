"""Issue 29, item 3 (part): SIGTERM and SIGINT sent to a real ``satseg`` process remove
its temporaries, print one line and exit 143 / 130 (train saves a checkpoint instead:
tests/test_preemption.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("sig, status, line", [
    (signal.SIGTERM, 143, "satseg: terminated (SIGTERM)"),
    (signal.SIGINT, 130, "satseg: interrupted (SIGINT)"),
])
def test_signal_while_writing_leaves_nothing(tmp_path, sig, status, line):
    """``satseg sample --size 3000`` (about 20 s) is signalled once its temporary folder
    ``.out.*.tmp`` exists: afterwards the parent folder is empty again."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "satseg_jax.cli", "sample", "--out", str(tmp_path / "out"),
         "--size", "3000"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob(".out.*.tmp")):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no temporary folder appeared"
            time.sleep(0.05)
        time.sleep(0.5)  # inside the writing
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == status, err
    assert err.strip().splitlines()[-1] == line, err
    assert list(tmp_path.iterdir()) == []


# A command whose SIGTERM lands inside a garbage-collection callback (jax registers one;
# a real `satseg build` once finished and exited 0 that way): Python cannot propagate an
# exception from there, so the CLI must deliver the termination again right after.
GC_CALLBACK_SIGTERM = """
import argparse, gc, os, signal, sys, time
from satseg_jax import cli

def work(args):
    fired = []
    def callback(phase, info):
        if phase == "start" and not fired:
            fired.append(True)
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(100000):  # the handler runs here, inside the callback
                pass
    gc.callbacks.append(callback)
    try:
        gc.collect()
    finally:
        gc.callbacks.remove(callback)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        time.sleep(0.01)
    print("finished as if never signalled")
    return 0

try:
    sys.exit(cli.run_command(argparse.Namespace(command="build", func=work)))
except cli.Terminated:
    print("terminated")
    sys.exit(143)
"""


def test_sigterm_inside_a_gc_callback_still_terminates_the_command():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", GC_CALLBACK_SIGTERM], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 143, proc.stdout + proc.stderr
    assert proc.stdout.split() == ["terminated"], proc.stdout
    assert "Exception ignored" not in proc.stderr, proc.stderr
