"""Verified checkpoints (satseg_jax/checkpoints.py): every checkpoint carries a digest of
its arrays; a damaged one — a flipped byte in an array file, unreadable Orbax metadata —
is refused with one line naming its step and path, never evaluated from, and skipped by a
resumed training run, which falls back to the newest checkpoint that verifies."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from satseg_jax import checkpoints
from satseg_jax.cli import main
from satseg_jax.errors import SatsegError
from tests.workers.tiny_config import tiny_config


@pytest.fixture(scope="module")
def trained(tiny_dataset, tmp_path_factory) -> Path:
    """A tiny run (checkpoints at steps 4, 8, 12; keep 2 + best) with test metrics."""
    from satseg_jax.evaluate import evaluate_workdir
    from satseg_jax.train import train_and_evaluate

    run = tmp_path_factory.mktemp("ckpt") / "run"
    train_and_evaluate(tiny_config(str(tiny_dataset), **{"train.keep_checkpoints": 3}), run)
    evaluate_workdir(run, split="test", checkpoint="latest")
    return run


def _copy(run: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    return dst


def flip_array_bytes(step_dir: Path, n: int = 64) -> Path:
    """Invert ``n`` bytes in the middle of the largest array data file Orbax wrote for
    the step's state (OCDBT data under ``state/ocdbt.process_0/d/``); return the file."""
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    target = max(files, key=lambda p: p.stat().st_size)
    data = bytearray(target.read_bytes())
    mid = len(data) // 2
    for i in range(mid, mid + n):
        data[i] ^= 0xFF
    target.write_bytes(bytes(data))
    return target


def _one_line(capsys, argv: list) -> str:
    capsys.readouterr()
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()
    line = err[-1]
    assert line.startswith("satseg: error: "), line
    print(line)
    return line


def test_digests_detect_a_changed_array():
    tree = {"params": {"w": np.arange(6, dtype=np.float32)}, "step": np.int32(3)}
    meta = {"digests": {"algorithm": checkpoints.DIGEST_ALGORITHM,
                        "arrays": checkpoints.digests(tree)}}
    assert checkpoints.verify("/ck", 3, tree, meta)
    assert not checkpoints.verify("/ck", 3, tree, {})  # saved before digests
    tree["params"]["w"][2] = 7.0
    with pytest.raises(checkpoints.CorruptCheckpoint, match=r"/ck/3: checkpoint 3 is corrupt "
                       r"\(array \['params'\]\['w'\] does not match"):
        checkpoints.verify("/ck", 3, tree, meta)


def test_every_checkpoint_records_digests(trained):
    for step in (4, 8, 12):
        meta = json.loads((trained / "checkpoints" / str(step) / "meta" / "metadata").read_text())
        arrays = meta["digests"]["arrays"]
        assert meta["digests"]["algorithm"] == "crc32"
        assert any("['params']" in k for k in arrays) and any("opt_state" in k for k in arrays)


def test_load_run_refuses_a_flipped_array(trained, tmp_path):
    from satseg_jax.runs import load_run

    run = _copy(trained, tmp_path)
    flip_array_bytes(run / "checkpoints" / "12")
    with pytest.raises(SatsegError) as e:
        load_run(run, "latest")
    msg = str(e.value)
    assert "\n" not in msg
    assert f"{run}/checkpoints/12: checkpoint 12 is corrupt" in msg
    assert "pick another with --checkpoint (saved steps: [4, 8])" in msg
    assert load_run(run, 8).step == 8  # the others still load


def test_evaluate_refuses_a_corrupt_checkpoint_and_writes_nothing(trained, tmp_path, capsys):
    run = _copy(trained, tmp_path)
    flip_array_bytes(run / "checkpoints" / "12")
    metrics = run / "metrics_test.json"
    before = hashlib.sha256(metrics.read_bytes()).hexdigest()
    listing = sorted(p.name for p in run.iterdir())
    line = _one_line(capsys, ["evaluate", "--workdir", run, "--checkpoint", "latest"])
    assert f"{run}/checkpoints/12: checkpoint 12 is corrupt" in line
    assert "pick another with --checkpoint" in line
    assert hashlib.sha256(metrics.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in run.iterdir()) == listing


def test_predict_refuses_a_corrupt_checkpoint_and_writes_no_map(trained, tiny_dataset, tmp_path,
                                                                capsys):
    """satseg predict from a checkpoint with flipped bytes: one line, no map, no temporary;
    --checkpoint 8 (intact) then maps the scene."""
    run = _copy(trained, tmp_path)
    flip_array_bytes(run / "checkpoints" / "12")
    scene, out = tiny_dataset.parent / "scene.tif", tmp_path / "maps" / "map.tif"
    out.parent.mkdir()
    line = _one_line(capsys, ["predict", "--workdir", run, "--checkpoint", "latest",
                              "--image", scene, "--out", out])
    assert f"{run}/checkpoints/12: checkpoint 12 is corrupt" in line
    assert "pick another with --checkpoint" in line
    assert list(out.parent.iterdir()) == []
    assert main(["predict", "--workdir", str(run), "--checkpoint", "8", "--image", str(scene),
                 "--out", str(out)]) == 0
    assert out.is_file()


def test_every_checkpoint_corrupt_is_one_line_and_moves_them_aside(trained, tmp_path):
    """train on a workdir whose every checkpoint fails its digests: one error saying so,
    every one set aside in checkpoints_corrupt/ (nothing deleted), no .lock left."""
    from satseg_jax.train import train_and_evaluate

    run = _copy(trained, tmp_path)
    steps = sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())
    for step in steps:
        flip_array_bytes(run / "checkpoints" / str(step))
    with pytest.raises(SatsegError) as e:
        train_and_evaluate(tiny_config(_data_dir(run)), run)
    assert str(e.value).startswith(f"{run / 'checkpoints'}: no checkpoint verifies (skipped "
                                   f"{steps}"), str(e.value)
    assert sorted(int(p.name) for p in (run / "checkpoints_corrupt").iterdir()) == steps
    assert not (run / ".lock").exists()


def _data_dir(run: Path) -> str:
    return json.loads((run / "config.json").read_text())["data"]["data_dir"]


@pytest.mark.parametrize("name", ["state/_METADATA", "meta/metadata"])
def test_corrupt_orbax_json_is_corrupt_not_another_model(trained, tmp_path, capsys, name):
    run = _copy(trained, tmp_path)
    path = run / "checkpoints" / "12" / name
    path.write_bytes(b"\x84" * 64 + path.read_bytes()[64:])
    line = _one_line(capsys, ["evaluate", "--workdir", run, "--checkpoint", "latest"])
    assert f"{run}/checkpoints/12: checkpoint 12 is corrupt (unreadable" in line
    assert "does not match this model" not in line and "--checkpoint" in line


def test_checkpoint_without_digests_restores_with_a_note(trained, tmp_path, capsys):
    from satseg_jax.runs import load_run

    run = _copy(trained, tmp_path)
    path = run / "checkpoints" / "12" / "meta" / "metadata"
    meta = json.loads(path.read_text())
    del meta["digests"]
    path.write_text(json.dumps(meta))
    capsys.readouterr()
    assert load_run(run, "latest").step == 12
    notes = [x for x in capsys.readouterr().out.splitlines() if x.startswith("note:")]
    assert notes == [f"note: {run}/checkpoints/12 was saved before checkpoints carried "
                     "digests; restored without verifying it"]


def test_train_resumes_from_the_newest_good_checkpoint(trained, tiny_dataset, tmp_path,
                                                       capsys):
    """Step 12 damaged: a rerun with more steps skips it (one line), sets it aside,
    resumes from 8 and writes a good 12 again."""
    from satseg_jax.runs import load_run
    from satseg_jax.train import train_and_evaluate

    run = _copy(trained, tmp_path)
    flip_array_bytes(run / "checkpoints" / "12")
    capsys.readouterr()
    train_and_evaluate(tiny_config(str(tiny_dataset), **{"train.keep_checkpoints": 3,
                                                         "train.num_steps": 12}), run)
    out = capsys.readouterr().out.splitlines()
    skipped = [x for x in out if x.startswith("skipped checkpoint")]
    # Flipped bytes that still decode fail the digests ("array ..."); where they land in
    # a compressed chunk's framing, the read itself fails ("unreadable: ..."). Which one
    # depends on how Orbax laid the arrays out in the data file: both are this damage.
    assert len(skipped) == 1
    assert skipped[0].startswith(("skipped checkpoint 12: array",
                                  "skipped checkpoint 12: unreadable")), skipped[0]
    assert f"({run}/checkpoints/12); moved to {run}/checkpoints_corrupt/12" in skipped[0]
    assert any(x.startswith(f"Resumed from {run}/checkpoints/8 (step 8") for x in out)
    assert (run / "checkpoints_corrupt" / "12" / "state").is_dir()
    assert load_run(run, "latest").step == 12


# ----------------------------------------------------------------------------- finite state


@pytest.mark.parametrize("key,value,needle", [
    ("optimizer.learning_rate", 0.0, "config.optimizer.learning_rate=0.0: must be a finite"),
    ("optimizer.learning_rate", -1e-3, "config.optimizer.learning_rate=-0.001: must be"),
    ("optimizer.learning_rate", float("nan"), "config.optimizer.learning_rate=nan: must be"),
    ("optimizer.learning_rate", float("inf"), "config.optimizer.learning_rate=inf: must be"),
    ("train.batch_size", 0, "config.train.batch_size=0: must be a whole number greater than 0"),
    ("train.batch_size", -4, "config.train.batch_size=-4: must be a whole number"),
])
def test_bad_learning_rate_or_batch_refused_before_any_work(tiny_dataset, tmp_path, key, value,
                                                            needle, monkeypatch):
    from satseg_jax import input_pipeline
    from satseg_jax.train import train_and_evaluate

    def no_reading(*a, **k):
        raise AssertionError("the dataset was read before the config was checked")

    monkeypatch.setattr(input_pipeline, "load_meta", no_reading)
    with pytest.raises(SatsegError) as e:
        train_and_evaluate(tiny_config(str(tiny_dataset), **{key: value}), tmp_path / "run")
    assert needle in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "run").exists()


def test_train_on_a_read_only_file_system_is_one_line(tiny_dataset, tmpfs):
    """A real read-only mount: a new workdir on it, and a workdir that exists there, are
    one SatsegError line naming the workdir and the cause (the CLI: exit 2); nothing is
    trained or written."""
    from satseg_jax.train import train_and_evaluate

    ro = tmpfs("ro", "ro,size=1m")
    # to be created (mkdir fails on it) / already there (the lock file cannot be made)
    for run, where in ((ro / "run", ro / "run"), (ro, ro / ".lock")):
        with pytest.raises(SatsegError) as e:
            train_and_evaluate(tiny_config(str(tiny_dataset)), run)
        assert str(e.value) == (f"--workdir {run}: cannot write it: the file system is "
                                f"read-only ({where}); choose a --workdir in a folder you "
                                "can write to")
    assert list(ro.iterdir()) == []


def test_non_finite_state_is_never_saved_and_a_rerun_resumes(tiny_dataset, tmp_path,
                                                             monkeypatch, capsys):
    """Parameters gone non-finite after step 4 (simulated: the host check says so): the
    run stops without saving them, and the rerun resumes from step 4, saying so."""
    from satseg_jax import train

    run = tmp_path / "run"
    real, calls = train._finite, []

    def finite(tree):
        calls.append(1)
        return real(tree) and len(calls) < 2

    monkeypatch.setattr(train, "_finite", finite)
    with pytest.raises(SatsegError, match=r"non-finite at step 8: not saved \(last good "
                       r"checkpoint: 4\); lower config.optimizer.learning_rate"):
        train.train_and_evaluate(tiny_config(str(tiny_dataset)), run)
    assert sorted(int(p.name) for p in (run / "checkpoints").iterdir()) == [4]
    monkeypatch.setattr(train, "_finite", real)
    capsys.readouterr()
    train.train_and_evaluate(tiny_config(str(tiny_dataset)), run)
    assert f"Resumed from {run}/checkpoints/4 (step 4" in capsys.readouterr().out
    assert 12 in [int(p.name) for p in (run / "checkpoints").iterdir()]


def test_finite_check_sees_nan_and_inf():
    from satseg_jax.train import _finite

    assert _finite({"a": np.ones(3, np.float32), "n": np.int32(5)})
    assert not _finite({"a": np.array([1.0, np.nan], np.float32)})
    assert not _finite([np.array([np.inf])])


# ----------------------------------------------------------------------------- refused runs


def _hashes(run: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in (run / "config.json", run / "run.json")}


def _three_band_copy(dataset: Path, tmp_path: Path) -> Path:
    """The tiny dataset as if built with 3 bands (card only: refused before any read)."""
    data = tmp_path / "data3"
    shutil.copytree(dataset, data)
    info = json.loads((data / "satseg_dataset.json").read_text())
    info["bands"], info["num_bands"] = info["bands"][:3], 3
    info["mean"], info["std"] = info["mean"][:3], info["std"][:3]
    (data / "satseg_dataset.json").write_text(json.dumps(info))
    return data


@pytest.mark.parametrize("case", ["crop_larger_than_patch", "three_band_dataset"])
def test_refused_resume_changes_nothing(trained, tiny_dataset, tmp_path, case):
    from satseg_jax.train import train_and_evaluate

    run = _copy(trained, tmp_path)
    before, listing = _hashes(run), sorted(str(p) for p in run.rglob("*"))
    if case == "crop_larger_than_patch":
        config, needle = tiny_config(str(tiny_dataset), **{"data.crop_size": 64}), \
            "config.data.crop_size=64 is larger than the dataset's patch size 32"
    else:
        config, needle = tiny_config(str(_three_band_copy(tiny_dataset, tmp_path))), \
            "checkpoint does not match this model/optimizer"
    config.train.num_steps = 16
    with pytest.raises(SatsegError, match=needle):
        train_and_evaluate(config, run)
    assert _hashes(run) == before
    assert sorted(str(p) for p in run.rglob("*")) == listing


def test_refused_fresh_run_leaves_no_workdir(tiny_dataset, tmp_path):
    from satseg_jax.train import train_and_evaluate

    with pytest.raises(SatsegError, match="config.data.crop_size=64 is larger"):
        train_and_evaluate(tiny_config(str(tiny_dataset), **{"data.crop_size": 64}),
                           tmp_path / "run")
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- one writer

HOLD = """
import sys, time
from satseg_jax.runs import WorkdirLock
WorkdirLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(600)
"""


def test_second_writer_is_refused_and_a_dead_holder_is_taken_over(trained, tmp_path, capsys):
    """A real second process holds RUN/.lock: `satseg train` on RUN exits 2 with one line
    naming its pid and host and touches no checkpoint; once that process is SIGKILLed, the
    next run takes the lock over with a note."""
    import socket
    import subprocess
    import sys

    from tests.workers.spawn import REPO, worker_env

    run = _copy(trained, tmp_path)
    before = {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
              for p in sorted(run.rglob("*")) if p.is_file()}
    data_dir = json.loads((run / "config.json").read_text())["data"]["data_dir"]
    cfg = tmp_path / "cfg.py"
    cfg.write_text(f"import sys\nsys.path.insert(0, {str(REPO)!r})\n"
                   "from tests.workers.tiny_config import tiny_config\n\n\ndef get_config():\n"
                   f"    return tiny_config({data_dir!r}, **{{'train.keep_checkpoints': 3}})\n")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], cwd=REPO,
                              env=worker_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        line = _one_line(capsys, ["train", "--config", cfg, "--workdir", run])
        assert line == (f"satseg: error: {run}: another satseg train is writing it (pid "
                        f"{holder.pid} on host {socket.gethostname()}, lock {run}/.lock); "
                        "wait for it to end, or use another --workdir")
        after = {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
                 for p in sorted(run.rglob("*")) if p.is_file()}
        assert {k: v for k, v in after.items() if k != ".lock"} == \
            {k: v for k, v in before.items() if k != ".lock"}
    finally:
        holder.kill()
        holder.wait()
    capsys.readouterr()
    assert main(["train", "--config", str(cfg), "--workdir", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"note: {run}/.lock: took over the lock of pid {holder.pid} on " in out
    assert not (run / ".lock").exists()  # released and removed


# ----------------------------------------------------------------------------- issue 29, rest


def _config_file(tmp_path: Path, data_dir: str, **overrides) -> Path:
    """A config file for `satseg train`: the tiny config with ``overrides``."""
    from tests.workers.spawn import REPO

    cfg = tmp_path / "cfg.py"
    cfg.write_text(f"import sys\nsys.path.insert(0, {str(REPO)!r})\n"
                   "from tests.workers.tiny_config import tiny_config\n\n\ndef get_config():\n"
                   f"    return tiny_config({data_dir!r}, **{overrides!r})\n")
    return cfg


def _files(run: Path) -> dict[str, str]:
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name", ["_CHECKPOINT_METADATA", "metrics/metrics"])
def test_corrupt_orbax_step_metadata_is_refused_as_corrupt(trained, tmp_path, capsys, name):
    """Orbax reads these for every step when it opens a manager: a damaged one was
    logged and ignored (evaluated anyway) or a traceback. Now: the one-line corrupt
    refusal naming step and path, metrics untouched; another step still loads."""
    from satseg_jax.runs import load_run

    run = _copy(trained, tmp_path)
    path = run / "checkpoints" / "12" / name
    path.write_bytes(b"\x84" * 16 + path.read_bytes()[16:])
    before = _files(run)
    line = _one_line(capsys, ["evaluate", "--workdir", run, "--checkpoint", "latest"])
    assert line == (f"satseg: error: {run}/checkpoints/12: checkpoint 12 is corrupt "
                    f"(unreadable {name}: UnicodeDecodeError: 'utf-8' codec can't decode "
                    "byte 0x84 in position 0: invalid start byte); pick another with "
                    "--checkpoint (saved steps: [4, 8])")
    assert _files(run) == before
    assert load_run(run, 8).step == 8


def test_train_resumes_past_a_corrupt_checkpoint_metadata(trained, tiny_dataset, tmp_path,
                                                          capsys):
    from satseg_jax.runs import load_run
    from satseg_jax.train import train_and_evaluate

    run = _copy(trained, tmp_path)
    (run / "checkpoints" / "12" / "_CHECKPOINT_METADATA").write_text("{not json")
    capsys.readouterr()
    train_and_evaluate(tiny_config(str(tiny_dataset), **{"train.keep_checkpoints": 3}), run)
    out = capsys.readouterr().out.splitlines()
    skipped = [x for x in out if x.startswith("skipped checkpoint")]
    assert skipped == [f"skipped checkpoint 12: unreadable _CHECKPOINT_METADATA: "
                       "JSONDecodeError: Expecting property name enclosed in double quotes: "
                       f"line 1 column 2 (char 1) ({run}/checkpoints/12); moved to "
                       f"{run}/checkpoints_corrupt/12"]
    assert any(x.startswith(f"Resumed from {run}/checkpoints/8 (step 8") for x in out)
    assert load_run(run, "latest").step == 12


def test_a_refused_rerun_leaves_no_lock_file(trained, tiny_dataset, tmp_path):
    """The rerun takes RUN/.lock before restoring, and the restore refuses it (a 3-band
    dataset for a 4-band run): no .lock is left where there was none."""
    from satseg_jax.train import train_and_evaluate

    run = _copy(trained, tmp_path)
    assert not (run / ".lock").exists()
    before = _files(run)
    config = tiny_config(str(_three_band_copy(tiny_dataset, tmp_path)))
    config.train.num_steps = 16
    with pytest.raises(SatsegError, match="checkpoint does not match this model"):
        train_and_evaluate(config, run)
    assert not (run / ".lock").exists()
    assert _files(run) == before


def test_real_divergence_saves_nothing_and_a_sane_rerun_resumes(trained, tiny_dataset,
                                                                tmp_path, capsys):
    """Learning rate 1e30 from step 12: the parameters blow up to huge but finite
    values and every later loss is NaN. Checkpoint 16 is not written (it was, and it
    rotated the good ones out); 4, 8, 12 stay as they were; a rerun with the config's
    learning rate resumes from 12, saying so."""
    run = _copy(trained, tmp_path)
    data = str(tiny_dataset)
    before = _files(run / "checkpoints")
    cfg = _config_file(tmp_path, data, **{"train.keep_checkpoints": 3,
                                          "train.num_steps": 16,
                                          "optimizer.learning_rate": 1e30})
    line = _one_line(capsys, ["train", "--config", cfg, "--workdir", run])
    assert re.fullmatch(
        r"satseg: error: the loss was non-finite in the last \d+ step\(s\) to step 16: the "
        r"state is not saved \(last good checkpoint: 12\); lower "
        r"config.optimizer.learning_rate, enable config.optimizer.grad_clip_norm or check "
        r"the data for NaN/inf, then run again to resume from it", line), line
    assert _files(run / "checkpoints") == before
    assert not (run / "checkpoints_corrupt").exists() and not (run / ".lock").exists()
    capsys.readouterr()
    cfg = _config_file(tmp_path, data, **{"train.keep_checkpoints": 3, "train.num_steps": 16})
    assert main(["train", "--config", str(cfg), "--workdir", str(run)]) == 0
    assert f"Resumed from {run}/checkpoints/12 (step 12" in capsys.readouterr().out
    assert sorted(int(p.name) for p in (run / "checkpoints").iterdir()) == [8, 12, 16]


def test_full_disk_checkpoint_save_is_one_line(trained, tiny_dataset, tmpfs, tmp_path,
                                               capfd):
    """A real tmpfs filled up to 48 KiB: the save of checkpoint 16 fails. Orbax, asyncio
    and tensorstore used to print ~1,100 lines around the message; now stderr holds the
    one line (their output goes to RUN/train.log, which a full disk keeps empty: then
    no file), exit 2, checkpoints 4, 8, 12 intact, no lock left."""
    from tests.conftest import fill_disk

    disk = tmpfs("disk", "size=2m")
    run = disk / "run"
    shutil.copytree(trained, run)
    before = _files(run / "checkpoints")
    filler = fill_disk(disk, leave=48 << 10)
    cfg = _config_file(tmp_path, str(tiny_dataset), **{"train.keep_checkpoints": 3,
                                                       "train.num_steps": 16})
    capfd.readouterr()
    assert main(["train", "--config", str(cfg), "--workdir", str(run)]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    print("\n".join(err))
    assert len(err) == 1, err
    assert err == [f"satseg: error: {run}/checkpoints: disk full while writing checkpoint "
                   "16 (No space left on device); free space and run the same command again "
                   "to resume from the last complete checkpoint"]
    assert {k: v for k, v in _files(run / "checkpoints").items()
            if not k.startswith("16")} == before
    assert sorted(p.name for p in run.iterdir() if p.name.startswith((".", "train"))) == []
    filler.unlink()
