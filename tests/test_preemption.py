"""Preemption and determinism: SIGTERM/SIGINT save and exit, SIGKILL at any moment loses
only the steps since the last complete checkpoint, and every resumed run ends bit for bit
where the uninterrupted run ends (CPU).

The two-process test needs SATSEG_SLOW_TESTS=1 (about two minutes on 2 cores).

Every run but the in-process pmap one is a subprocess (a SIGKILL must not take pytest
with it); they share one XLA compilation cache so that only the first compiles. A cached
executable is the one a fresh compile would produce, so the cache cannot hide a
difference between runs — and the bit-for-bit comparisons would show one.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from tests.workers.spawn import REPO, worker_env
from tests.workers.tiny_config import tiny_config

STEPS = 12
CHECKPOINT_EVERY = 2
# The tiny config (tests/workers/tiny_config.py) with a checkpoint every 2 steps, so kills
# land both on and between checkpoints; evaluation and logging only at the end.
OVERRIDES = {"train.num_steps": STEPS, "train.checkpoint_every": CHECKPOINT_EVERY,
             "train.eval_every": 1000, "train.log_every": 1000}
KILL_SEED = 9  # seeds the choice of kill steps: the same five on every run of the test
TMP_SUFFIX = ".orbax-checkpoint-tmp"  # Orbax's name for a step still being written


def _overrides(**extra) -> list[str]:
    return [f"--config.{k}={v}" for k, v in {**OVERRIDES, **extra}.items()]


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    """Worker environment (CPU, 1 device) with a shared persistent compilation cache."""
    cache = tmp_path_factory.mktemp("xla_cache")
    # Bit-for-bit comparisons need the same XLA flags in every run, whichever entry point
    # (worker or `satseg train`) starts it: no optional defaults (satseg_jax.cpu.xla_flags).
    return worker_env(SATSEG_XLA_DEFAULTS="0", JAX_COMPILATION_CACHE_DIR=str(cache),
                      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tests.workers.preempt_worker", *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def _steps(workdir: Path) -> list[int]:
    """Complete checkpoints, as Orbax lists them (temporary directories excluded)."""
    from satseg_jax import checkpoints

    manager = checkpoints.make_manager(workdir, read_only=True)
    try:
        return sorted(manager.all_steps())
    finally:
        manager.close()


def _params(workdir: Path, step: int = STEPS) -> list[np.ndarray]:
    """Every array of the saved TrainState (params, BatchNorm, optimizer, rng, step)."""
    from satseg_jax import checkpoints

    manager = checkpoints.make_manager(workdir, read_only=True)
    try:
        state, _ = checkpoints.restore_raw(manager, step)
    finally:
        manager.close()
    return [np.asarray(x) for x in jax.tree.leaves(state)]


def _assert_bit_identical(a: list[np.ndarray], b: list[np.ndarray]) -> None:
    assert len(a) == len(b)
    for i, (x, y) in enumerate(zip(a, b)):
        assert x.dtype == y.dtype and x.shape == y.shape, i
        if not np.array_equal(x, y):
            diff = np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)))
            pytest.fail(f"array {i} {x.shape} differs (max abs diff {diff:.3g})")


class Reference:
    """The uninterrupted run, started in the background when first requested and waited
    for when its result is first needed: it overlaps the first runs of the test that
    asked for it (the machine has 2 cores; each run mostly waits on imports)."""

    def __init__(self, env: dict[str, str], data_dir: Path, root: Path) -> None:
        self.workdir = root / "run"
        self._out = root / "stdout.txt", root / "stderr.txt"
        with open(self._out[0], "w") as out, open(self._out[1], "w") as err:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "tests.workers.preempt_worker", str(self.workdir),
                 str(data_dir), *_overrides()], cwd=REPO, env=env, stdout=out, stderr=err)
        self._state: list[np.ndarray] | None = None

    def state(self) -> list[np.ndarray]:
        """Every array of its final TrainState."""
        if self._state is None:
            rc = self._proc.wait(timeout=300)
            assert rc == 0, self._out[1].read_text()[-4000:]
            assert "Resumed from" not in self._out[0].read_text()
            self._state = _params(self.workdir)
        return self._state

    def close(self) -> None:
        """Stop it if a failing test left it running."""
        self._proc.kill()
        self._proc.wait()


@pytest.fixture(scope="module")
def reference(tiny_dataset, env, tmp_path_factory):
    ref = Reference(env, tiny_dataset, tmp_path_factory.mktemp("reference"))
    yield ref
    ref.close()


def test_sigkill_at_5_random_steps_resumes_bit_identical(tiny_dataset, env, reference,
                                                         tmp_path):
    """Kill a training subprocess with SIGKILL at 5 random steps (seeded), resuming each
    time; the run then finishes, and its final state equals the uninterrupted run's bit
    for bit. A kill at a checkpoint step picks at random between "after the train step,
    before saving" and "inside Orbax's save, before the final rename" (a half-written
    checkpoint directory left behind). After every kill the latest complete checkpoint
    is the last one completed before it, and the next run resumes from it."""
    rng = random.Random(KILL_SEED)
    kills = sorted(rng.sample(range(1, STEPS), 5))
    phases = [rng.choice(("step", "save")) if k % CHECKPOINT_EVERY == 0 else "step"
              for k in kills]
    print(f"SIGKILL at (step, phase): {list(zip(kills, phases))}")
    workdir = tmp_path / "killed"
    for kill, phase in zip(kills, phases):
        before = _steps(workdir) if workdir.exists() else []
        proc = _run(env, str(workdir), str(tiny_dataset), "--kill-at", f"{kill}:{phase}",
                    *_overrides())
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-4000:]
        assert f"SIGKILL {'after train step' if phase == 'step' else 'while saving'}" \
            f" {'checkpoint ' if phase == 'save' else ''}{kill}" in proc.stderr
        if before:
            assert f"Resumed from {workdir / 'checkpoints'}/{before[-1]} " in proc.stdout
        else:
            assert "Resumed from" not in proc.stdout
        # The latest complete checkpoint is the last checkpoint step before the kill.
        last = (kill - 1) // CHECKPOINT_EVERY * CHECKPOINT_EVERY
        after = _steps(workdir)
        assert (after[-1] if after else 0) == last, (kill, phase, after)
        half = workdir / "checkpoints" / f"{kill}{TMP_SUFFIX}"
        assert half.is_dir() == (phase == "save"), sorted(
            p.name for p in (workdir / "checkpoints").iterdir())
    proc = _run(env, str(workdir), str(tiny_dataset), *_overrides())
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"Resumed from {workdir / 'checkpoints'}/{last} " in proc.stdout
    assert not list((workdir / "checkpoints").glob(f"*{TMP_SUFFIX}"))
    _assert_bit_identical(_params(workdir), reference.state())


def _cli_args(data_dir: Path) -> list[str]:
    """``satseg train`` flags giving exactly the worker's config: every field where the
    tiny config differs from configs/unet_sample.py, then OVERRIDES."""
    sys.path.insert(0, str(REPO / "configs"))
    try:
        import unet_sample
    finally:
        sys.path.pop(0)

    def flat(d: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
        return out

    base = flat(unet_sample.get_config().to_dict())
    tiny = flat(tiny_config(str(data_dir)).to_dict())
    return [f"--config.{k}={v}" for k, v in tiny.items() if base[k] != v] + _overrides()


def test_sigterm_saves_current_step_exits_143_and_resumes_bit_identical(
        tiny_dataset, env, reference, tmp_path):
    """``satseg train`` gets SIGTERM mid-run (once step 4 is logged): it finishes the step
    it is in, saves a checkpoint of it (checkpoint_every is off, so that one is the only
    checkpoint), says so, and exits with status 143. A fake half-written checkpoint of a
    later step is then planted; the same command resumes from the saved step (not the
    fake one, which is removed) and ends bit-identical to the uninterrupted run."""
    workdir = tmp_path / "run"
    cmd = [sys.executable, "-m", "satseg_jax.cli", "train", "--config",
           str(REPO / "configs" / "unet_sample.py"), "--workdir", str(workdir),
           *_cli_args(tiny_dataset), "--config.train.log_every=1",
           "--config.train.checkpoint_every=1000"]
    with open(tmp_path / "stderr.txt", "w") as err:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=err,
                                text=True)
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith(f"step 4/{STEPS} "):
                proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=300)
    out = "".join(lines)
    assert rc == 143, out[-2000:] + (tmp_path / "stderr.txt").read_text()[-3000:]
    m = re.search(rf"Stopped by SIGTERM after step (\d+)/{STEPS}: saved checkpoint (\S+) ",
                  out)
    assert m, out[-2000:]
    stopped = int(m.group(1))
    assert 4 <= stopped < STEPS and Path(m.group(2)) == workdir / "checkpoints" / str(stopped)
    assert f"step {stopped + 1}/" not in out  # it stopped where it said
    assert _steps(workdir) == [stopped]

    fake = workdir / "checkpoints" / f"{stopped + 2}{TMP_SUFFIX}"
    shutil.copytree(workdir / "checkpoints" / str(stopped), fake)
    (fake / "commit_success.txt").unlink(missing_ok=True)
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"Resumed from {workdir / 'checkpoints'}/{stopped} (step {stopped}," in proc.stdout
    assert not fake.exists()
    _assert_bit_identical(_params(workdir), reference.state())


def test_half_written_checkpoint_is_ignored(reference, tmp_path):
    """Orbax tmp directories — an unfinished copy of the next step, garbage for a later
    one — are not checkpoints: the latest step stays the last complete one, it restores
    to the reference values, and a writable manager (the one training resumes with)
    deletes them."""
    from satseg_jax import checkpoints

    reference.state()
    workdir = tmp_path / "w"
    shutil.copytree(reference.workdir, workdir)
    ck = workdir / "checkpoints"
    complete = _steps(workdir)
    assert complete[-1] == STEPS
    shutil.rmtree(ck / str(STEPS))  # as if killed before the final rename of step 12
    shutil.copytree(ck / str(STEPS - CHECKPOINT_EVERY), ck / f"{STEPS}{TMP_SUFFIX}")
    for f in (ck / f"{STEPS}{TMP_SUFFIX}" / "state").rglob("*"):
        if f.is_file():
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])  # truncated writes
    (ck / f"{STEPS + 2}{TMP_SUFFIX}" / "state").mkdir(parents=True)
    (ck / f"{STEPS + 2}{TMP_SUFFIX}" / "state" / "garbage").write_bytes(b"\0" * 100)

    assert _steps(workdir) == [s for s in complete if s < STEPS]
    manager = checkpoints.make_manager(workdir)
    try:
        assert manager.latest_step() == STEPS - CHECKPOINT_EVERY
        state, meta = checkpoints.restore_raw(manager, manager.latest_step())
        assert meta["step"] == int(state["step"]) == STEPS - CHECKPOINT_EVERY
    finally:
        manager.close()
    deadline = time.monotonic() + 30  # the manager deletes them in a background thread
    while list(ck.glob(f"*{TMP_SUFFIX}")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not list(ck.glob(f"*{TMP_SUFFIX}"))


def test_stop_request_records_the_first_signal_and_restores_handlers():
    """The handler does nothing but note the first signal; the handlers that were set
    before are back on exit; off the main thread nothing is installed."""
    import threading

    from satseg_jax.train import StopRequest

    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    with StopRequest() as stop:
        assert stop.agreed(1) is None
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
        deadline = time.monotonic() + 5
        while stop.signum is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert stop.agreed(1) == signal.SIGTERM
    assert {s: signal.getsignal(s) for s in before} == before

    seen = []
    thread = threading.Thread(target=lambda: seen.append(StopRequest().__enter__()._previous))
    thread.start()
    thread.join()
    assert seen == [{}]


def test_sigint_under_pmap_saves_exits_130_and_restores_handlers(tiny_dataset, tmp_path,
                                                                 monkeypatch):
    """In-process, parallelism=pmap: a SIGINT delivered during step 2 of 4 stops the loop
    after that step with ``Preempted`` (status 130) and a checkpoint of step 2, and the
    handlers that were there before training are back afterwards."""
    from satseg_jax import steps, train

    class SignallingRunner(steps.Runner):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            inner, self.calls = self.train_step, 0

            def train_step(state, batch):
                self.calls += 1
                if self.calls == 2:
                    os.kill(os.getpid(), signal.SIGINT)  # the handler only sets a flag
                return inner(state, batch)

            self.train_step = train_step

    def previous(signum, frame):  # a caller's own handler, to be put back
        raise AssertionError("the caller's handler ran during training")

    monkeypatch.setattr(steps, "Runner", SignallingRunner)
    old = signal.signal(signal.SIGINT, previous)
    try:
        cfg = tiny_config(tiny_dataset, parallelism="pmap",
                          **{"train.num_steps": 4, "train.checkpoint_every": 100,
                             "train.eval_every": 100})
        with pytest.raises(train.Preempted) as info:
            train.train_and_evaluate(cfg, tmp_path / "w")
        assert signal.getsignal(signal.SIGINT) is previous
    finally:
        signal.signal(signal.SIGINT, old)
    assert info.value.code == 130 and info.value.signum == signal.SIGINT
    assert info.value.step == 2
    assert _steps(tmp_path / "w") == [2]


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("SATSEG_SLOW_TESTS"),
                    reason="two 2-process runs: ~2 min on 2 cores; "
                           "set SATSEG_SLOW_TESTS=1 to run")
def test_two_processes_stop_at_the_same_step_and_resume(tiny_dataset, env, reference,
                                                        tmp_path):
    """Two processes (one jax.distributed job, 1 CPU device each); only process 1 gets
    SIGTERM, after step 5. The flags are combined every 4 steps, so both finish step 8,
    both write their part of checkpoint 8 and both exit with 143; process 0 reports it.
    Both then resume from step 8 and end where the one-process run ends (to rtol 1e-4:
    two devices sum in another order, see tests/test_parallel.py)."""
    from tests.workers.spawn import free_port

    workdir = tmp_path / "run"

    def launch(tag: str, *extra: tuple[str, ...]) -> list[tuple[int, str, str]]:
        address = f"localhost:{free_port()}"
        procs, outs = [], []
        for i in range(2):
            penv = {**env, "SATSEG_COORDINATOR": address, "SATSEG_NUM_PROCESSES": "2",
                    "SATSEG_PROCESS_ID": str(i),
                    "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
            outs.append((tmp_path / f"{tag}_out{i}.txt", tmp_path / f"{tag}_err{i}.txt"))
            with open(outs[i][0], "w") as out, open(outs[i][1], "w") as err:
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "tests.workers.preempt_worker", str(workdir),
                     str(tiny_dataset), *extra[i], *_overrides(),
                     "--config.train.checkpoint_every=1000",
                     "--config.train.stop_check_every=4"],
                    cwd=REPO, env=penv, stdout=out, stderr=err))
        try:
            codes = [p.wait(timeout=300) for p in procs]
        finally:
            for p in procs:
                p.kill()
        return [(c, o.read_text(), e.read_text()) for c, (o, e) in zip(codes, outs)]

    first = launch("stop", (), ("--term-at", "5"))
    assert [c for c, _, _ in first] == [143, 143], [e[-3000:] for _, _, e in first]
    assert "SIGTERM after train step 5" in first[1][2]
    assert f"Stopped by SIGTERM after step 8/{STEPS}: saved checkpoint" in first[0][1]
    assert "Stopped by" not in first[1][1]
    assert _steps(workdir) == [8]

    second = launch("resume", (), ())
    assert [c for c, _, _ in second] == [0, 0], [e[-3000:] for _, _, e in second]
    assert f"Resumed from {workdir / 'checkpoints'}/8 (step 8," in second[0][1]
    for x, y in zip(_params(workdir), reference.state(), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)
