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
