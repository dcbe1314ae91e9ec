"""Training spine: end-to-end run, exact resume after SIGKILL, config checks.

Parallel modes, several processes and device counts: tests/test_parallel.py.
"""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from satseg_jax.errors import SatsegError
from tests.workers.spawn import run_worker
from tests.workers.tiny_config import tiny_config


def _final_params(workdir, step):
    from satseg_jax import checkpoints

    manager = checkpoints.make_manager(workdir, read_only=True)
    state, _ = checkpoints.restore_raw(manager, step)
    manager.close()
    return state["params"]


def test_end_to_end_train_checkpoint_evaluate(tiny_dataset, tmp_path):
    from satseg_jax.evaluate import evaluate_workdir
    from satseg_jax.train import train_and_evaluate

    workdir = tmp_path / "run"
    result = train_and_evaluate(tiny_config(tiny_dataset), workdir)
    assert 0.0 <= result["mean_iou"] <= 1.0
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()
                  if p.name.isdigit())[-1] == 12
    assert list(workdir.glob("events.out.tfevents.*")), "no TensorBoard summaries written"
    m = evaluate_workdir(workdir, split="test", checkpoint="latest", save_predictions=True)
    saved = json.loads((workdir / "metrics_test.json").read_text())
    # The library reports exactly what this call wrote (the CLI prints these lines).
    assert m["written"] == [str(workdir / "metrics_test.json"),
                            str(workdir / "confusion_test.png"),
                            str(workdir / "predictions_test")]
    for key in ("pixel_accuracy", "mean_iou", "macro_f1", "iou_per_class", "f1_per_class",
                "confusion_matrix", "class_names", "checkpoint_step"):
        assert key in saved, key
    assert saved["checkpoint_step"] == 12
    assert np.isclose(saved["pixel_accuracy"], m["pixel_accuracy"])
    assert (workdir / "confusion_test.png").stat().st_size > 0
    info = json.loads((tiny_dataset / "satseg_dataset.json").read_text())
    preds = sorted((workdir / "predictions_test").glob("*.tif"))
    assert len(preds) == info["num_examples"]["test"]
    # Each prediction is georeferenced like its patch.
    import rasterio

    patches = tiny_dataset.parent / "patches"
    with rasterio.open(preds[0]) as p, rasterio.open(patches / "masks" / preds[0].name) as t:
        assert p.transform == t.transform and p.crs == t.crs and p.shape == t.shape
    # Confusion matrix counts exactly the non-ignored test pixels.
    cm = np.asarray(saved["confusion_matrix"])
    assert cm.sum() == sum(info["class_pixel_counts"]["test"])


def test_resume_after_sigkill_matches_uninterrupted(tiny_dataset, tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    run_worker("tests.workers.train_worker", str(full), str(tiny_dataset))
    proc = run_worker("tests.workers.train_worker", str(killed), str(tiny_dataset),
                       "--kill-after-save", "4", check=False)
    assert proc.returncode == -9, proc.stderr[-2000:]
    steps = sorted(int(p.name) for p in (killed / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [4]
    proc = run_worker("tests.workers.train_worker", str(killed), str(tiny_dataset))
    assert "Resumed from" in proc.stdout and "step 4" in proc.stdout
    a, b = _final_params(full, 12), _final_params(killed, 12)
    # Bit for bit on the CPU (README "Determinism and preemption"; more kill points and
    # SIGTERM in tests/test_preemption.py).
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert np.array_equal(np.asarray(x), np.asarray(y))


def test_incompatible_config_is_refused(tiny_dataset, tmp_path):
    from satseg_jax.train import train_and_evaluate

    cfg = tiny_config(tiny_dataset, **{"train.num_steps": 2, "train.eval_every": 2,
                                       "train.checkpoint_every": 2})
    train_and_evaluate(cfg, tmp_path / "w")
    cfg.model.base_width = 8
    with pytest.raises(SatsegError, match="incompatible config.*model"):
        train_and_evaluate(cfg, tmp_path / "w")


def test_nonfinite_losses_stop_with_clear_error(tiny_dataset, tmp_path):
    from satseg_jax.train import train_and_evaluate

    cfg = tiny_config(tiny_dataset, **{"train.log_every": 1, "train.max_nonfinite_steps": 3,
                                       "optimizer.learning_rate": 1e30,
                                       "optimizer.grad_clip_norm": 0.0,
                                       "schedule.name": "constant"})
    with pytest.raises(SatsegError, match="non-finite for 3 steps in a row"):
        train_and_evaluate(cfg, tmp_path / "nan")
