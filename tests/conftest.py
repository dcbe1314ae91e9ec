"""Shared test fixtures: the team's real samples (skipped when absent), a tiny dataset."""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

# Tests run on the CPU; keep TensorFlow off any accelerator and quiet.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

# One persistent XLA compilation cache for this test session, shared by the pytest
# process and every worker subprocess (they inherit the environment): the same tiny
# models are compiled by dozens of processes, and on a 2-core CPU compiling is most of
# a tiny run. Set before anything imports jax; removed when the session ends.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="satseg_test_xla_cache_")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

# The CPU XLA_FLAGS defaults, as the `satseg` CLI applies them, for this session and every
# subprocess that inherits its environment: the tests pin what the CLI runs (and compare
# worker runs with `satseg train` runs), and importing satseg_jax no longer applies them.
# Explicit here, before anything starts JAX; SATSEG_XLA_DEFAULTS=0 still switches them off.
# The malloc settings are not made here: only the CLI and benchmark processes get those.
from satseg_jax import cpu as _cpu  # noqa: E402

_cpu.apply_xla_defaults()

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SATSEG_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_rasterio() -> Path:
    """../shared/data/rasterio (real Landsat subset etc.); skip when the folder is absent."""
    d = SHARED_DATA / "rasterio"
    if not (d / "RGB.byte.tif").exists():
        pytest.skip(f"real sample data not found at {d} (set SATSEG_SHARED_DATA to its parent)")
    return d


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """A tiny segmentation dataset built from the sample scene: 32-px patches.

    22 train / 7 validation / 7 test examples: an even train split, so one and two
    processes see the same global batches (see input_pipeline.train_iterator), and an
    odd validation split, so evaluation pads.
    """
    from satseg_jax.datasets.build import build_dataset
    from satseg_jax.raster.compose import compose_bands
    from satseg_jax.raster.patches import make_patches
    from satseg_jax.raster.sample import write_sample_scene

    root = tmp_path_factory.mktemp("tiny")
    s = write_sample_scene(root / "sample", size=192, seed=3)
    scene = compose_bands([s["blue"], s["green"], s["red"], s["nir"]], root / "scene.tif")
    make_patches(image=scene, out_dir=root / "patches", classes_path=s["classes"], size=32,
                 stride=32, min_valid=0.5, edge="drop", labels=s["labels"])
    build_dataset(patches_dir=root / "patches", out_dir=root / "data", split=(0.6, 0.2, 0.2),
                  seed=0, split_by="random")
    return root / "data"


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test: dataset builds and loads
    (tfds GCS lookups included) must work offline. Use with
    ``pytestmark = pytest.mark.usefixtures("no_network")``."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.fixture
def tmpfs(tmp_path):
    """``tmpfs(name, options)`` mounts a small tmpfs at tmp_path/name (unmounted after the
    test); skips where mounting is not allowed (not root, no CAP_SYS_ADMIN)."""
    mounted = []

    def mount(name: str, options: str):
        d = tmp_path / name
        d.mkdir()
        try:
            r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(d)],
                               capture_output=True, text=True)
            why = r.stderr.strip() or r.returncode
        except FileNotFoundError:  # no mount command at all
            r, why = None, "no mount command"
        if r is None or r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({why}); "
                        "the real read-only / full disk cases need root with mount rights")
        mounted.append(d)
        return d

    yield mount
    for d in mounted:
        # lazy (-l): a file the test process still holds open there (a summary writer)
        # must not keep the mount alive after the test
        if subprocess.run(["umount", str(d)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(d)], capture_output=True)


def fill_disk(folder: Path, leave: int = 0) -> Path:
    """Fill the disk of ``folder`` with one file ``folder/filler`` until at most ``leave``
    bytes are left; return the file (the test checks that it is all that remains)."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            st = os.statvfs(folder)
            room = st.f_bavail * st.f_frsize - leave
            if room <= 0 or not os.write(fd, b"\0" * min(room, 1 << 16)):
                break
    except OSError:
        pass
    finally:
        os.close(fd)
    return filler


# The longest test files (seconds of one 2-core run, most first). pytest-xdist's
# --dist loadfile hands whole files to workers in collection order, so these start
# first and the short files fill the gaps at the end instead of one long file running
# alone on a worker while the other sits idle (longest-first scheduling).
LONGEST_FIRST = ("test_parallel.py", "test_preemption.py", "test_finetune.py",
                 "test_checkpoints.py", "test_speed_benchmark.py", "test_cpu_onednn_conv.py",
                 "test_models.py", "test_predict_area.py", "test_decoders.py",
                 "test_convnext.py", "test_encoders.py", "test_variant_sweep.py",
                 "test_export.py", "test_scene_mapping.py", "test_train.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Longest files first; the order within a file is kept (module fixtures rely on it)."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: two workers more than cores (at most 4). Why: much of a 2-core run is a
    worker waiting on a subprocess start, a child's import or a signal poll, which other
    workers fill: on 2 cores the same commit took 628 s with 4 workers and 709 s with 3,
    minutes apart; --maxprocesses still caps it."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return min(4, (cores or 1) + 2)
