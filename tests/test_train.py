"""Training spine: end-to-end run with its summaries, config checks.

SIGKILL and SIGTERM at many points, with bit-identical resume: tests/test_preemption.py.

Parallel modes, several processes and device counts: tests/test_parallel.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from satseg_jax.errors import SatsegError
from tests.test_summaries import summary_tags
from tests.workers.tiny_config import tiny_config


def test_end_to_end_train_checkpoint_evaluate(tiny_dataset, tmp_path):
    from satseg_jax.evaluate import evaluate_workdir
    from satseg_jax.train import train_and_evaluate

    workdir = tmp_path / "run"
    result = train_and_evaluate(tiny_config(tiny_dataset), workdir)
    assert 0.0 <= result["mean_iou"] <= 1.0
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()
                  if p.name.isdigit())[-1] == 12
    (events,) = workdir.glob("events.out.tfevents.*")
    tags = summary_tags(events)
    # Train scalars at the last step (tiny config: logged and evaluated there), the
    # validation metrics, and the config once as TensorBoard hparams.
    for tag in ("train/loss", "train/accuracy", "train/learning_rate",
                "train/steps_per_sec", "eval/mean_iou", "eval/macro_f1"):
        assert 12 in tags.get(tag, ()), (tag, sorted(tags))
    assert "_hparams_/session_start_info" in tags, sorted(tags)
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
