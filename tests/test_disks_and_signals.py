"""Issue 29, the last cases: ``satseg build`` stopped by a real SIGTERM, ``build`` and
``patches`` on a real full or read-only disk, figure temporaries, and library chatter
kept out of the terminal (io_utils.library_output_to).

Each command case checks the exit status, the one ``satseg: error:`` line, that the
inputs are byte for byte unchanged and that nothing (temporaries included) is left.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from satseg_jax.cli import main
from tests.conftest import fill_disk

REPO = Path(__file__).resolve().parents[1]


def _tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_error(capsys, argv) -> str:
    capsys.readouterr()
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()
    assert err and err[-1].startswith("satseg: error: "), err
    print(err[-1])
    return err[-1]


@pytest.fixture(scope="module")
def patches(tmp_path_factory) -> Path:
    """A patches folder of 64 16-px patches (a 128-px sample scene)."""
    from satseg_jax.raster.patches import make_patches
    from satseg_jax.raster.sample import write_sample_scene

    root = tmp_path_factory.mktemp("disks")
    s = write_sample_scene(root / "sample", size=128, seed=1)
    make_patches(image=s["blue"], out_dir=root / "patches", classes_path=s["classes"],
                 size=16, labels=s["labels"], progress=False)
    return root / "patches"


# ----------------------------------------------------------------------------- build, signal


def test_build_stops_on_sigterm_and_sweeps_a_killed_builds_leftovers(patches, tmp_path):
    """A real ``satseg build`` subprocess gets SIGTERM once its temporary output folder
    exists: exit 143, one line, its temporary removed; the leftover of an earlier build
    killed outright (SIGKILL leaves ``.OUT.XXXXXXXX.tmp``) is swept by this run; a file
    that only looks like one is kept."""
    leftover = tmp_path / ".data.k3j9x2ab.tmp"
    (leftover / "satseg_patches" / "incomplete.ABCDEF_1.0.0").mkdir(parents=True)
    (leftover / "satseg_patches" / "incomplete.ABCDEF_1.0.0" / "x.tfrecord").write_bytes(b"x")
    (tmp_path / ".data.keep.tmp").write_text("not ours")
    before = _tree(patches)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "satseg_jax.cli", "build", "--patches", str(patches),
         "--out", str(tmp_path / "data"), "--split-by", "random"], cwd=tmp_path, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not [p for p in tmp_path.glob(".data.*.tmp") if p != leftover
                   and p.name != ".data.keep.tmp"]:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no temporary output folder appeared"
            time.sleep(0.02)
        assert not leftover.exists()  # swept before this run made its own
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1] == "satseg: terminated (SIGTERM)", err
    assert sorted(p.name for p in tmp_path.iterdir()) == [".data.keep.tmp"]
    assert _tree(patches) == before


# ----------------------------------------------------------------------------- real disks


def test_build_on_a_read_only_disk(patches, tmpfs, capsys):
    ro = tmpfs("ro", "ro,size=1m")
    before = _tree(patches)
    line = _one_error(capsys, ["build", "--patches", patches, "--out", ro / "data"])
    assert line == (f"satseg: error: {ro / 'data'}: cannot write it: the file system is "
                    f"read-only ({ro}); nothing was left behind. Choose an output in a "
                    "folder you can write to")
    assert list(ro.iterdir()) == []
    assert _tree(patches) == before


@pytest.mark.parametrize("command", ["build", "patches", "area"])
def test_build_and_patches_on_a_full_disk(patches, tmpfs, capsys, command):
    """A real tmpfs with 16 KiB left: the write fails part way (TFRecords, patch
    GeoTIFFs); one line naming the output and the cause, the half-written folder gone,
    the other file on the disk untouched."""
    full = tmpfs("full", "size=256k")
    filler = fill_disk(full, leave=0 if command == "area" else 16 << 10)
    size = filler.stat().st_size
    before = _tree(patches)
    out = full / "out"
    if command == "build":
        argv = ["build", "--patches", patches, "--out", out, "--split-by", "random"]
    elif command == "area":  # a few hundred bytes of CSV: the disk must be full to fail
        sample = patches.parent / "sample"
        out = full / "area.csv"
        argv = ["area", "--map", sample / "labels.tif", "--out", out]
    else:
        sample = patches.parent / "sample"
        argv = ["patches", "--image", sample / "blue.tif", "--labels", sample / "labels.tif",
                "--classes", sample / "classes.json", "--size", "8", "--out", out]
    line = _one_error(capsys, argv)
    assert line.startswith(f"satseg: error: {out}: disk full while writing it ("), line
    assert line.endswith("nothing was left behind. Free space on the disk of "
                         f"{full} (or choose an output on another disk) and run the "
                         "command again"), line
    assert sorted(p.name for p in full.iterdir()) == ["filler"]
    assert filler.stat().st_size == size
    assert _tree(patches) == before


# ----------------------------------------------------------------------------- figures


def test_figure_temporaries_are_removed_on_failure_and_swept(tmp_path, monkeypatch):
    """plots.save_figure: a save interrupted (Ctrl-C inside matplotlib's write) leaves no
    temporary; the next save removes what a killed one left (its own names only)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.figure
    import matplotlib.pyplot as plt

    from satseg_jax.plots import save_figure

    out = tmp_path / "confusion_test.png"
    real = matplotlib.figure.Figure.savefig

    def interrupted(self, fname, *a, **k):
        Path(fname).write_bytes(b"\x89PNG half")
        raise KeyboardInterrupt

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_figure(plt.figure(), out)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", real)
    killed = [tmp_path / ".confusion_test.png.ab12cd34.tmp",
              tmp_path / ".confusion_test.png.tmp.png"]  # the name earlier versions used
    for p in killed:
        p.write_bytes(b"half")
    (tmp_path / ".other.png.ab12cd34.tmp").write_bytes(b"keep")
    save_figure(plt.figure(), out)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.png.ab12cd34.tmp",
                                                          "confusion_test.png"]
    assert out.read_bytes()[:4] == b"\x89PNG"


# ----------------------------------------------------------------------------- chatter


def test_library_output_goes_to_the_log_file_not_the_terminal(tmp_path, capfd):
    """What Orbax does when a save fails: absl/asyncio log records, tracebacks printed by
    threads, lines printed to stderr. Inside library_output_to all of it lands in the log
    file."""
    from satseg_jax.io_utils import library_output_to

    log = tmp_path / "train.log"
    capfd.readouterr()
    with library_output_to(log):
        logging.getLogger("absl").error("_SignalingThread.run() raised an exception")
        logging.getLogger("asyncio").error("Task exception was never retrieved")

        def thread_fails():  # a callback failing in a C library's thread: PyErr_Print
            try:
                raise RuntimeError("Event loop is closed")
            except RuntimeError:
                sys.excepthook(*sys.exc_info())

        t = threading.Thread(target=thread_fails)
        t.start()
        t.join()
        print("a library line", file=sys.stderr)
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")
    text = log.read_text()
    for needle in ("ERROR absl: _SignalingThread.run() raised", "ERROR asyncio: Task "
                   "exception", "RuntimeError: Event loop is closed", "a library line"):
        assert needle in text, text
    with library_output_to(tmp_path / "quiet.log"):
        pass
    assert not (tmp_path / "quiet.log").exists()  # nothing said: no file
