"""Start test workers as subprocesses: N forced CPU devices, or several processes as one
``jax.distributed`` job.

A device count is fixed when jax starts its backend, and ``jax.distributed`` can start
only once per process, so anything testing another device or process layout than the
pytest process's own runs in a fresh interpreter started here.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from tests.workers.tiny_config import REPO


def worker_env(devices: int | None = None, **extra: str) -> dict[str, str]:
    """The environment of a worker: the repo importable, TF quiet, CPU only, and
    ``devices`` forced host devices when given."""
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2", JAX_PLATFORMS="cpu")
    for key in ("SATSEG_COORDINATOR", "SATSEG_NUM_PROCESSES", "SATSEG_PROCESS_ID",
                "SATSEG_DISTRIBUTED_AUTO"):
        env.pop(key, None)  # never inherit a distributed setting from the caller
    if devices:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env.update(extra)
    return env


def run_worker(module: str, *args: str, devices: int | None = None, check: bool = True,
               timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``python -m module args`` once; raise with its stderr when it fails."""
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO,
                          env=worker_env(devices), capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{module} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def free_port() -> int:
    """A TCP port free right now on localhost (for a jax.distributed coordinator)."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return int(s.getsockname()[1])


@dataclass
class ProcessResult:
    returncode: int
    stdout: str
    stderr: str


def run_distributed(module: str, args_per_process: Sequence[Sequence[str]], *,
                    devices_per_process: int, timeout: float = 300) -> list[ProcessResult]:
    """Run one ``python -m module`` per entry of ``args_per_process`` as one
    ``jax.distributed`` job on localhost (coordinator set through the SATSEG_* variables,
    as ``launch/local_two_process.sh`` does), and wait for all of them.

    When one process fails or the deadline passes, the others — which would block in a
    collective — are killed, so a broken run fails the test instead of hanging it.
    """
    n = len(args_per_process)
    address = f"localhost:{free_port()}"
    procs = []
    for i, args in enumerate(args_per_process):
        env = worker_env(devices_per_process, SATSEG_COORDINATOR=address,
                         SATSEG_NUM_PROCESSES=str(n), SATSEG_PROCESS_ID=str(i))
        procs.append(subprocess.Popen(
            [sys.executable, "-m", module, *args], cwd=REPO, env=env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    deadline = time.monotonic() + timeout
    # Collect output as it comes (a full pipe would block a worker): one reader per stream.
    outs: list[list[str]] = [[] for _ in range(2 * n)]

    def drain(stream, sink: list[str]) -> None:
        sink.append(stream.read())

    readers = []
    for i, p in enumerate(procs):
        for j, stream in enumerate((p.stdout, p.stderr)):
            t = threading.Thread(target=drain, args=(stream, outs[2 * i + j]), daemon=True)
            t.start()
            readers.append(t)
    failed = False
    while any(p.poll() is None for p in procs):
        if time.monotonic() > deadline or any(p.returncode not in (None, 0) for p in procs):
            failed = True
            break
        time.sleep(0.2)
    if failed:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p in procs:
        p.wait()
    for t in readers:
        t.join()
    return [ProcessResult(p.returncode, "".join(outs[2 * i]), "".join(outs[2 * i + 1]))
            for i, p in enumerate(procs)]
