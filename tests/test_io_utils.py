"""satseg_jax.io_utils: atomic outputs (issue 29, item 4: their permissions)."""

from __future__ import annotations

import os
import stat

import pytest

from satseg_jax.cli import main
from satseg_jax.io_utils import atomic_dir, atomic_path


@pytest.fixture
def umask():
    """Set the process umask for one test, then restore it."""
    saved = os.umask(0o022)
    yield lambda m: os.umask(m)
    os.umask(saved)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o755), (0o077, 0o700), (0o002, 0o775)])
def test_atomic_dir_gets_the_mode_mkdir_would_give(tmp_path, umask, mask, mode):
    """mkdtemp makes its folder 0700; the renamed output has 0777 & ~umask, as mkdir."""
    umask(mask)
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "a.txt").write_text("x")
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_atomic_dir_with_overwrite_keeps_the_mode(tmp_path, umask):
    umask(0o022)
    for _ in range(2):
        with atomic_dir(tmp_path / "out", overwrite=True) as tmp:
            (tmp / "a.txt").write_text("x")
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o755
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_sample_output_folder_is_0755_under_umask_022(tmp_path, umask):
    """Through the command: satseg sample's folder was drwx------ whatever the umask."""
    umask(0o022)
    assert main(["sample", "--out", str(tmp_path / "s"), "--size", "64"]) == 0
    assert stat.S_IMODE((tmp_path / "s").stat().st_mode) == 0o755
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_atomic_path_file_mode_follows_the_umask(tmp_path, umask):
    umask(0o022)
    with atomic_path(tmp_path / "f.txt") as tmp:
        tmp.write_text("x")
    assert stat.S_IMODE((tmp_path / "f.txt").stat().st_mode) == 0o644


def test_next_run_sweeps_its_own_leftover_temporaries_only(tmp_path):
    """A run killed by SIGKILL leaves ``.out.XXXXXXXX.tmp`` (and atomic_dir's ``.out.old``)
    beside its output: the next run into the same output removes exactly those; files
    that only look alike (other output, other length, no dot) are kept."""
    leftovers = [tmp_path / ".out.k3j_9x2a.tmp", tmp_path / ".out.old"]
    leftovers[0].mkdir()
    (leftovers[0] / "half.tif").write_bytes(b"x")
    leftovers[1].mkdir()
    decoys = [".other.k3j_9x2a.tmp", ".out.short.tmp", "out.k3j_9x2a.tmp",
              ".out.K3J_9X2A.tmp", ".out.k3j_9x2a.tmp.keep", "notes.txt"]
    for d in decoys:
        (tmp_path / d).write_text("keep me")
    assert main(["sample", "--out", str(tmp_path / "out"), "--size", "64"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(decoys + ["out"])
    # a file output sweeps its own too
    (tmp_path / ".m.csv.abcdefgh.tmp").write_text("half")
    with atomic_path(tmp_path / "m.csv") as tmp:
        tmp.write_text("ok")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(decoys + ["out", "m.csv"])
