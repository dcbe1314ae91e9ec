"""One process of a (possibly multi-process) training run through ``train_and_evaluate``.

Usage: python -m tests.workers.multihost_worker WORKDIR DATA_DIR OUT_JSON
       [--config.KEY=VALUE ...]

Run it once per process. When several processes take part, the caller sets
``SATSEG_COORDINATOR``, ``SATSEG_NUM_PROCESSES`` and ``SATSEG_PROCESS_ID`` (and
``XLA_FLAGS=--xla_force_host_platform_device_count=N`` for N local CPU devices):
``train_and_evaluate`` starts ``jax.distributed`` from them exactly as ``satseg train``
does. The run is the normal one (train, Orbax checkpoints from every process,
evaluation); the worker only listens in, so the test can compare runs:

- every step's global loss, read from the train step's metrics on this process;
- the ids of the examples this process fed at every step (``keep_ids`` of the input
  pipeline), to check that the processes read disjoint examples;
- the final validation metrics (confusion matrix included).

Writes them as JSON to OUT_JSON (one file per process: the caller passes distinct paths).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str]) -> None:
    workdir, data_dir, out_path, *overrides = argv
    import jax

    from satseg_jax import input_pipeline, steps, train
    from tests.workers.tiny_config import apply_overrides, tiny_config

    losses: list[float] = []
    ids: list[list[str]] = []

    original_iterator = input_pipeline.train_iterator

    def recording_iterator(*args, **kwargs):
        for batch in original_iterator(*args, keep_ids=True, **kwargs):
            ids.append([x.decode() for x in batch["example_id"]])
            yield batch

    class RecordingRunner(steps.Runner):
        """The normal Runner; its train step also notes the (global) loss."""

        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            step = getattr(self, "train_step", None)
            if step is None:
                return

            def train_step(state, batch):
                state, m = step(state, batch)
                losses.append(float(self.unreplicate_metric(m)["loss"]))
                return state, m

            self.train_step = train_step

    input_pipeline.train_iterator = recording_iterator
    steps.Runner = RecordingRunner
    config = apply_overrides(tiny_config(data_dir), overrides)
    result = train.train_and_evaluate(config, workdir)
    record = {
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "devices": jax.device_count(),
        "local_devices": jax.local_device_count(),
        "losses": losses,
        "ids": ids,
        "confusion": result["confusion_matrix"],
        "mean_iou": result["mean_iou"],
    }
    tmp = Path(out_path).with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    tmp.replace(out_path)


if __name__ == "__main__":
    from satseg_jax import cpu

    cpu.apply_xla_defaults()  # XLA_FLAGS defaults as `satseg train` has them, before JAX starts
    main(sys.argv[1:])
