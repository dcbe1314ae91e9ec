"""A trained run is one self-contained artefact (satseg_jax/runs.py): its card carries what
inference needs, it loads after being moved and after its dataset is deleted, and runs
written before cards existed still load."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from satseg_jax.cli import main
from satseg_jax.errors import SatsegError
from tests.workers.tiny_config import tiny_config


@pytest.fixture(scope="module")
def trained(tiny_dataset, tmp_path_factory):
    """A tiny run trained on a copy of the tiny dataset given by a path *relative* to the
    working directory (as users type it), with its test metrics before any move."""
    import os

    from satseg_jax.evaluate import evaluate_workdir
    from satseg_jax.train import train_and_evaluate

    root = tmp_path_factory.mktemp("runs")
    shutil.copytree(tiny_dataset, root / "data")
    old = os.getcwd()
    os.chdir(root)
    try:
        train_and_evaluate(tiny_config("data"), root / "run")
    finally:
        os.chdir(old)
    before = evaluate_workdir(root / "run", split="test", checkpoint="latest")
    return root, before


def _copy(trained, tmp_path):
    """A copy of the trained run whose training dataset is a copy of its own (so a test
    can delete it), as if it had been trained on that copy."""
    root, before = trained
    run, data = tmp_path / "run", tmp_path / "data"
    shutil.copytree(root / "data", data)
    shutil.copytree(root / "run", run)
    card = json.loads((run / "run.json").read_text())
    config = json.loads((run / "config.json").read_text())
    card["provenance"]["data_dir"] = config["data"]["data_dir"] = str(data)
    (run / "run.json").write_text(json.dumps(card))
    (run / "config.json").write_text(json.dumps(config))
    return run, data, before


def test_card_holds_bands_classes_normalisation_and_provenance(trained):
    root, _ = trained
    card = json.loads((root / "run" / "run.json").read_text())
    info = json.loads((root / "data" / "satseg_dataset.json").read_text())
    assert card["format"] == "satseg-run/1"
    assert card["bands"] == info["bands"] and card["image_dtype"] == info["image_dtype"]
    assert card["normalisation"]["mean"] == info["mean"]
    assert card["normalisation"]["std"] == info["std"]
    assert [c["name"] for c in card["classes"]] == info["class_names"]
    assert all(c["colour"].startswith("#") and len(c["colour"]) == 7 for c in card["classes"])
    assert card["patch_size"] == info["patch_size"] == card["input_size"]
    assert card["model"] == "unet" and card["task"] == "segmentation"
    assert card["pixel_size"] == pytest.approx(8.0)  # the sample scene's 8 m pixels
    prov = card["provenance"]
    assert prov["data_dir"] == str((root / "data").absolute())
    digest = hashlib.sha256((root / "data" / "satseg_dataset.json").read_bytes()).hexdigest()
    assert prov["satseg_dataset_sha256"] == digest
    # Paths stored in the run are never relative to the directory training started in.
    config = json.loads((root / "run" / "config.json").read_text())
    assert config["data"]["data_dir"] == str((root / "data").absolute())


def test_moved_run_predicts_and_evaluates_without_its_dataset(trained, tiny_dataset, tmp_path,
                                                              monkeypatch, capsys):
    run, data, before = _copy(trained, tmp_path / "a")
    moved = tmp_path / "elsewhere" / "moved_run"
    moved.parent.mkdir()
    shutil.move(run, moved)
    second_copy = tmp_path / "second_copy"
    shutil.copytree(data, second_copy)
    shutil.rmtree(data)  # the run's training dataset is deleted
    monkeypatch.chdir(tmp_path / "elsewhere")
    scene = tiny_dataset.parent / "scene.tif"
    assert main(["predict", "--workdir", "moved_run", "--image", str(scene),
                 "--out", "map.tif", "--checkpoint", "latest"]) == 0
    import rasterio

    with rasterio.open(tmp_path / "elsewhere" / "map.tif") as m, rasterio.open(scene) as s:
        assert m.shape == s.shape and m.crs == s.crs
    assert main(["evaluate", "--workdir", "moved_run", "--data", str(second_copy),
                 "--split", "test", "--checkpoint", "latest"]) == 0
    after = json.loads((moved / "metrics_test.json").read_text())
    assert np.array_equal(after["confusion_matrix"], before["confusion_matrix"])
    # Without --data, the training dataset's absence is one clear error naming the fix.
    capsys.readouterr()
    assert main(["evaluate", "--workdir", "moved_run", "--split", "test"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--data" in err


def test_run_written_before_cards_loads_through_its_dataset_with_a_note(trained, tmp_path,
                                                                         capsys):
    from satseg_jax.runs import load_run

    run, data, _ = _copy(trained, tmp_path)
    card = json.loads((run / "run.json").read_text())
    (run / "run.json").unlink()
    config = json.loads((run / "config.json").read_text())
    config["data"]["data_dir"] = str(data)  # the old layout: the path as it was given
    (run / "config.json").write_text(json.dumps(config))
    loaded = load_run(run, "latest")
    assert "no run.json" in capsys.readouterr().out
    old = loaded.card.to_json()
    for key in ("bands", "normalisation", "classes", "patch_size", "input_size", "model"):
        assert old[key] == card[key], key
    assert loaded.step == 12
    logits = np.asarray(loaded.predict(np.zeros((1, 32, 32, 4), np.float32)))
    assert logits.shape == (1, 32, 32, loaded.card.num_classes)
    # ... and once its dataset is gone too, the error says what to do.
    shutil.rmtree(data)
    with pytest.raises(SatsegError, match="needs its dataset"):
        load_run(run, "latest")


def test_corrupt_card_is_one_clear_error(trained, tmp_path):
    from satseg_jax.runs import load_run

    run, _, _ = _copy(trained, tmp_path)
    (run / "run.json").write_text('{"format": "satseg-run/1", "task": "segmentation"}')
    with pytest.raises(SatsegError, match=r"run\.json: not a valid run card"):
        load_run(run)


def test_rerun_of_finished_workdir_trains_nothing_and_writes_no_event_file(trained, tmp_path,
                                                                           capsys):
    from satseg_jax.train import train_and_evaluate

    run, data, _ = _copy(trained, tmp_path)
    events = sorted(run.glob("events.out.tfevents.*"))
    result = train_and_evaluate(tiny_config(str(data)), run)
    assert "already at step 12 of 12" in capsys.readouterr().out
    assert sorted(run.glob("events.out.tfevents.*")) == events
    assert 0.0 <= result["mean_iou"] <= 1.0  # the last evaluation, from the checkpoint


def test_test_only_dataset_builds_and_evaluate_data_scores_it(trained, tiny_dataset, tmp_path,
                                                              capsys):
    """`satseg build --split 0,0,1` makes a dataset of test patches only: it stores no
    band statistics (its card says the run's are used), and `evaluate --data` scores it
    with the run's. It holds every patch of the tiny set, so its confusion matrix is the
    sum of the run's over the three splits of its training dataset."""
    from satseg_jax.evaluate import evaluate_workdir

    run, data, before = _copy(trained, tmp_path)
    test_only = tmp_path / "test_only"
    assert main(["build", "--patches", str(tiny_dataset.parent / "patches"), "--out",
                 str(test_only), "--split", "0,0,1"]) == 0
    out = capsys.readouterr().out
    assert "train 0, validation 0, test 36" in out and "run's train statistics" in out
    info = json.loads((test_only / "satseg_dataset.json").read_text())
    assert info["mean"] is None and info["std"] is None and info["stats_split"] is None
    assert main(["evaluate", "--workdir", str(run), "--data", str(test_only), "--split",
                 "test", "--checkpoint", "latest"]) == 0
    got = np.array(json.loads((run / "metrics_test.json").read_text())["confusion_matrix"])
    want = np.array(before["confusion_matrix"]) + sum(
        np.array(evaluate_workdir(run, split=s, checkpoint="latest")["confusion_matrix"])
        for s in ("train", "validation"))
    assert got.sum() > 0 and np.array_equal(got, want)
    # Training on it is refused before the workdir is written.
    config = Path(__file__).resolve().parents[1] / "configs" / "unet_sample.py"
    assert main(["train", "--config", str(config), "--workdir",
                 str(tmp_path / "no_run"), f"--config.data.data_dir={test_only}",
                 "--config.data.eval_split=test"]) == 2
    assert "no 'train' examples" in capsys.readouterr().err
    assert not (tmp_path / "no_run").exists()
