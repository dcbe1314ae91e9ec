"""Preemption: SIGTERM / SIGINT become a flag the training loop polls, and ``Preempted``.

Moved out of ``train.py`` (which re-exports both names) so the loop module stays small;
see ``StopRequest`` for why a signal only sets a flag.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

# ----------------------------------------------------------------------------- preemption

# With several processes the stop flags are combined by a collective every this many
# steps (config.train.stop_check_every overrides it). The collective itself is cheap
# (tests/workers/stop_check_cost.py measures it), but reading its result makes the host
# wait for the step in flight, which on an accelerator costs the overlap of host work
# with device work; every 10 steps bounds that and still stops within seconds.
STOP_CHECK_EVERY = 10


class Preempted(SystemExit):
    """Training stopped on a signal after saving a checkpoint of the step it reached.

    A ``SystemExit`` so that, uncaught, the process ends quietly with the shell's
    "killed by signal N" status ``128 + N`` (143 for SIGTERM, 130 for SIGINT): a scheduler
    or script sees an interrupted run, not a finished one, and no traceback is printed.
    Callers that want to go on (a sweep, a test) catch it.
    """

    def __init__(self, signum: int, step: int, checkpoint: Path) -> None:
        super().__init__(128 + int(signum))
        self.signum = int(signum)
        self.step = step
        self.checkpoint = checkpoint


class StopRequest:
    """SIGTERM / SIGINT -> a flag that the training loop polls once per step.

    Why only a flag: a Python signal handler runs between two bytecodes of whatever the
    main thread is doing — inside an Orbax write, a tf.data call, an XLA dispatch — so
    saving or raising there could leave half-done work behind. The loop checks the flag
    after a step is complete (``agreed``), where the state is consistent, and saves there.
    A second signal changes nothing; SIGKILL ends at once and loses only the steps since
    the last completed checkpoint (Orbax writes to a temporary directory and renames it).

    A context manager: the previous handlers are put back on exit, so a caller's own
    handling of Ctrl-C (pytest's, a notebook's) is untouched after training. Handlers can
    only be set from the main thread; elsewhere nothing is installed and the flag stays
    clear.
    """

    def __init__(self, signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT),
                 check_every: int = 1, process_count: int = 1) -> None:
        self.signals = tuple(signals)
        self.check_every = max(1, int(check_every))
        self.process_count = int(process_count)
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is None:
            self.signum = signum

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            # None: the previous handler was not set from Python; the default is closest.
            signal.signal(sig, signal.SIG_DFL if previous is None else previous)
        self._previous.clear()

    def agreed(self, step: int) -> int | None:
        """The signal to stop on after ``step``, the same on every process, or None.

        One process: the local flag, every step. Several: each process must save its part
        of the *same* step, and none may be left waiting in a collective for one that
        left, so the flags are combined (any process's signal stops all) every
        ``check_every`` steps — at the same steps on every process, since all run the same
        loop.
        """
        if self.process_count == 1:
            return self.signum
        if step % self.check_every:
            return None
        from jax.experimental import multihost_utils

        flags = np.ravel(multihost_utils.process_allgather(np.int32(self.signum or 0)))
        return next((int(f) for f in flags if f), None)
