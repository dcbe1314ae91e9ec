"""summaries.Summaries: what a run's TensorBoard event file holds, that a non-main
process writes none, and that writing summaries does not import Keras (why the module
exists instead of clu's writers)."""

from __future__ import annotations

import subprocess
import sys

from satseg_jax.summaries import Summaries


def summary_tags(events) -> dict[str, list[int]]:
    """{tag: [steps]} of a TensorBoard event file, read back with TensorFlow's reader."""
    from satseg_jax.datasets.tfenv import import_tf

    tf = import_tf()
    tags: dict[str, list[int]] = {}
    for event in tf.compat.v1.train.summary_iterator(str(events)):
        for value in event.summary.value:
            tags.setdefault(value.tag, []).append(int(event.step))
    return tags


def test_scalars_and_hparams_read_back(tmp_path):
    with Summaries(tmp_path) as writer:
        writer.write_hparams({"model.name": "unet", "train.batch_size": 8, "ema": True,
                              "optimizer.learning_rate": 1e-3})
        writer.write_scalars(3, {"train/loss": 0.5, "eval/mean_iou": 0.25})
        writer.write_scalars(7, {"train/loss": 0.4})
    (events,) = tmp_path.glob("events.out.tfevents.*")
    tags = summary_tags(events)
    assert tags["train/loss"] == [3, 7] and tags["eval/mean_iou"] == [3]
    assert "_hparams_/session_start_info" in tags


def test_a_disabled_writer_opens_no_file(tmp_path):
    with Summaries(tmp_path, enabled=False) as writer:
        writer.write_hparams({"a": 1})
        writer.write_scalars(1, {"train/loss": 1.0})
        writer.flush()
    assert not list(tmp_path.iterdir())


def test_writing_summaries_leaves_keras_out(tmp_path):
    code = ("import sys\n"
            "from satseg_jax.summaries import Summaries\n"
            f"with Summaries({str(tmp_path)!r}) as w:\n"
            "    w.write_hparams({'a': 1}); w.write_scalars(1, {'x': 1.0})\n"
            "print('keras' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["False"], proc.stdout
