"""TensorBoard summaries of a training run: scalars per step, and the run's config once
as TensorBoard hparams, in ``RUN/events.out.tfevents.*``.

Written with ``tf.summary`` directly rather than through ``clu.metric_writers``: importing
clu's writers imports TensorBoard's hparams Keras callback and, with it, all of Keras —
about 2 s of CPU at the start of every training process (measured on 2 cores), for
nothing a run uses. ``tensorboard.plugins.hparams.summary_v2`` writes the same hparams
record without Keras.

Only the main process writes (one event file per run, however many hosts train it);
the others get a writer that drops everything, so the loop needs no ``if``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import TracebackType


class Summaries:
    """Scalars and hparams into one TensorBoard event file under ``logdir``.

    ``enabled=False`` (a non-main process) writes nothing and opens no file. Use as a
    context manager: leaving it flushes and closes the file, also on an exception or a
    preemption, so the last scalars before a stop are on disk."""

    def __init__(self, logdir: str | Path, *, enabled: bool = True) -> None:
        self._tf = None
        self._writer = None
        if enabled:
            from satseg_jax.datasets.tfenv import import_tf

            self._tf = import_tf()
            self._writer = self._tf.summary.create_file_writer(str(logdir))

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        """One scalar series point per key at ``step``."""
        if self._writer is None:
            return
        with self._writer.as_default():
            for key, value in scalars.items():
                self._tf.summary.scalar(key, float(value), step=int(step))

    def write_hparams(self, hparams: Mapping[str, bool | int | float | str]) -> None:
        """The run's flat config, shown in TensorBoard's HParams tab."""
        if self._writer is None:
            return
        from tensorboard.plugins.hparams import summary_v2

        with self._writer.as_default():
            summary_v2.hparams(dict(hparams))

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> Summaries:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
