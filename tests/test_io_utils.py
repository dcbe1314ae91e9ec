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
              ".out.K3J_9X2A.tmp", ".out.k3j_9x2a.tmp.keep", ".out.k3j_9x2a.tmp.cogs",
              "notes.txt"]
    for d in decoys:
        (tmp_path / d).write_text("keep me")
    assert main(["sample", "--out", str(tmp_path / "out"), "--size", "64"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(decoys + ["out"])
    # a file output sweeps its own too
    (tmp_path / ".m.csv.abcdefgh.tmp").write_text("half")
    (tmp_path / ".m.csv.abcdefgh.tmp.cog").write_text("half")  # predict's COG rewrite
    with atomic_path(tmp_path / "m.csv") as tmp:
        tmp.write_text("ok")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(decoys + ["out", "m.csv"])


# ----------------------------------------------------------------------------- real disks


@pytest.fixture
def scene_files(tmp_path):
    from satseg_jax.raster.sample import write_sample_scene

    return write_sample_scene(tmp_path / "in", size=64, seed=0)


def _hashes(folder):
    import hashlib

    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


def _one_error(capsys, argv) -> str:
    capsys.readouterr()
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()
    assert err and err[-1].startswith("satseg: error: "), err
    return err[-1]


@pytest.mark.parametrize("command", ["sample", "compose", "patches", "area"])
def test_read_only_file_system(tmpfs, scene_files, capsys, command):
    """A real read-only mount (chmod 0555 does not stop root): one line naming the output
    and the cause, exit 2, nothing written, inputs unchanged."""
    ro = tmpfs("ro", "ro,size=1m")
    s = scene_files
    out = ro / ("x.tif" if command == "compose" else "a.csv" if command == "area" else "x")
    argv = {"sample": ["sample", "--out", out, "--size", "64"],
            "compose": ["compose", "--bands", s["blue"], s["red"], "--out", out],
            "patches": ["patches", "--image", s["blue"], "--labels", s["labels"],
                        "--classes", s["classes"], "--size", "16", "--out", out],
            "area": ["area", "--map", s["labels"], "--out", out]}[command]
    before = _hashes(s["labels"].parent)
    line = _one_error(capsys, argv)
    assert line == (f"satseg: error: {out}: cannot write it: the file system is read-only "
                    f"({ro}); nothing was left behind. Choose an output in a folder you can "
                    "write to"), line
    assert list(ro.iterdir()) == []
    assert _hashes(s["labels"].parent) == before


def test_full_disk_sample(tmpfs, capsys):
    """A real 1 MiB tmpfs: GDAL's 'Write failed' says nothing of space; it is reported
    as a full disk and the half-written folder is removed."""
    full = tmpfs("full", "size=1m")
    line = _one_error(capsys, ["sample", "--out", full / "s", "--size", "1024"])
    assert line.startswith(f"satseg: error: {full / 's'}: disk full while writing it ("), line
    assert line.endswith("nothing was left behind. Free space on the disk of "
                         f"{full} (or choose an output on another disk) and run the "
                         "command again"), line
    assert list(full.iterdir()) == []


def test_full_disk_compose(tmpfs, scene_files, capsys):
    """compose onto a disk filled up by another file: one line, no partial scene, no
    .tmp, the other file untouched."""
    full = tmpfs("full", "size=1m")
    filler = full / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    s = scene_files
    line = _one_error(capsys, ["compose", "--bands", s["blue"], s["green"], s["red"],
                               s["nir"], "--out", full / "scene.tif"])
    assert f"{full / 'scene.tif'}: disk full while writing it" in line, line
    assert sorted(p.name for p in full.iterdir()) == ["filler"]
