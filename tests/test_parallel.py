"""Scale-out: device counts, parallel modes, several processes, restoring anywhere.

Device and process layouts are fixed when jax starts, so every run here happens in a
subprocess worker (tests/workers/) with ``--xla_force_host_platform_device_count``;
several processes form one real ``jax.distributed`` job on localhost over gloo.
The decision of when and how to start ``jax.distributed`` is a pure function and is
tested directly.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import jax
import ml_collections
import numpy as np
import pytest

from satseg_jax import parallel
from satseg_jax.errors import SatsegError
from tests.workers.spawn import REPO, run_distributed, run_worker, worker_env


def _results(stdout: str) -> list[dict]:
    return [json.loads(line.split("RESULT ", 1)[1]) for line in stdout.splitlines()
            if line.startswith("RESULT ")]


def _checkpoint(workdir: Path, step: int) -> tuple[dict, dict]:
    from satseg_jax import checkpoints

    manager = checkpoints.make_manager(workdir, read_only=True)
    try:
        assert sorted(manager.all_steps())[-1] == step
        return checkpoints.restore_raw(manager, step)
    finally:
        manager.close()


# ----------------------------------------------------------------------------- 8 devices


def test_jit_and_pmap_on_8_devices_match_one_device(tiny_dataset):
    """10 steps of a global batch of 16 on 1 device, and on 8 devices under jit and pmap:
    the same loss at every step, the same BatchNorm statistics and parameters (every
    value, rtol 1e-4), the same validation confusion matrix, and no recompilation after
    step 1. (SGD here: see tests/workers/parallel_worker.py for why not Adam.)"""
    steps, batch = "10", "16"
    (one,) = _results(run_worker("tests.workers.parallel_worker", str(tiny_dataset), "jit",
                                 steps, batch, devices=1).stdout)
    many = _results(run_worker("tests.workers.parallel_worker", str(tiny_dataset), "jit,pmap",
                               steps, batch, devices=8).stdout)
    assert one["devices"] == 1 and len(one["losses"]) == 10
    assert [m["mode"] for m in many] == ["jit", "pmap"]
    assert sum(map(sum, one["confusion"])) > 0
    for m in many:
        assert m["devices"] == 8, m["mode"]
        np.testing.assert_allclose(m["losses"], one["losses"], rtol=1e-4, err_msg=m["mode"])
        # Reductions run in another order on 8 devices: relative 1e-4 with an absolute
        # floor for values near zero.
        np.testing.assert_allclose(m["batch_stats"], one["batch_stats"], rtol=1e-4, atol=1e-6,
                                   err_msg=m["mode"])
        np.testing.assert_allclose(m["params"], one["params"], rtol=1e-4, atol=1e-6,
                                   err_msg=m["mode"])
        assert m["confusion"] == one["confusion"], m["mode"]
        assert m["compiles_after_first_step"] == 0, m["mode"]
    assert one["compiles_after_first_step"] == 0


# ----------------------------------------------------------------------------- 2 processes

MULTIHOST_OVERRIDES = ("--config.train.batch_size=8", "--config.train.num_steps=20",
                       "--config.train.eval_every=10", "--config.train.checkpoint_every=10",
                       "--config.train.log_every=10")


@pytest.fixture(scope="module")
def one_process_run(tiny_dataset, tmp_path_factory) -> tuple[Path, dict]:
    """The reference: one process with 4 devices (jit), 20 steps through the worker."""
    root = tmp_path_factory.mktemp("one_process")
    run_worker("tests.workers.multihost_worker", str(root / "run"), str(tiny_dataset),
               str(root / "record.json"), *MULTIHOST_OVERRIDES, devices=4, timeout=300)
    return root / "run", json.loads((root / "record.json").read_text())


def _two_process_run(tiny_dataset, tmp_path: Path, *extra: str):
    """Both processes' output and records of a 2 x 2-device run of the worker."""
    workdir = tmp_path / "two"
    procs = run_distributed(
        "tests.workers.multihost_worker",
        [[str(workdir), str(tiny_dataset), str(tmp_path / f"two_{i}.json"),
          *MULTIHOST_OVERRIDES, *extra] for i in range(2)],
        devices_per_process=2, timeout=300)
    for i, p in enumerate(procs):
        assert p.returncode == 0, f"process {i} failed ({p.returncode}):\n{p.stderr[-4000:]}"
    records = [json.loads((tmp_path / f"two_{i}.json").read_text()) for i in range(2)]
    return workdir, procs, records


def test_two_processes_match_one_process_with_four_devices(tiny_dataset, one_process_run,
                                                           tmp_path):
    """A real two-process jax.distributed run (2 CPU devices each, gloo collectives)
    through ``train_and_evaluate``: 20 steps, Orbax checkpoints written by both
    processes, evaluation. Its loss curve, checkpointed parameters and validation
    confusion matrix equal those of one process with 4 devices; each process read its own
    half of every epoch, and together they fed exactly the one-process global batches."""
    n = json.loads((Path(tiny_dataset) / "satseg_dataset.json").read_text())["num_examples"]
    assert n["train"] % 2 == 0, "the comparison needs a train split that 2 processes share evenly"
    one_dir, one = one_process_run
    two_dir, procs, (r0, r1) = _two_process_run(tiny_dataset, tmp_path)

    assert (one["process_count"], one["devices"]) == (1, 4)
    for i, r in enumerate((r0, r1)):
        assert (r["process_index"], r["process_count"], r["devices"], r["local_devices"]) == \
            (i, 2, 4, 2)

    # The loss is global: identical on both processes, equal to the one-process curve.
    assert len(one["losses"]) == 20
    assert r0["losses"] == r1["losses"]
    np.testing.assert_allclose(r0["losses"], one["losses"], rtol=1e-4)
    assert r0["confusion"] == r1["confusion"] == one["confusion"]

    # Input: each process fed 4 of every 8, and together exactly the one-process batch.
    assert [len(b) for b in r0["ids"]] == [len(b) for b in r1["ids"]] == [4] * 20
    for step, (a, b, ref) in enumerate(zip(r0["ids"], r1["ids"], one["ids"])):
        assert sorted(a + b) == sorted(ref), f"step {step + 1}"
    # Within every epoch the two processes read disjoint halves covering the split.
    per_host = n["train"] // 2
    flat0 = [x for b in r0["ids"] for x in b]
    flat1 = [x for b in r1["ids"] for x in b]
    epochs = len(flat0) // per_host
    assert epochs >= 7
    for e in range(epochs):
        a = set(flat0[e * per_host:(e + 1) * per_host])
        b = set(flat1[e * per_host:(e + 1) * per_host])
        assert len(a) == len(b) == per_host, f"epoch {e}: an example twice on one process"
        assert not a & b, f"epoch {e}: both processes read {sorted(a & b)}"
        assert len(a | b) == n["train"]

    # Orbax: one checkpoint series written by both processes, equal to the one-process one.
    assert sorted(int(p.name) for p in (two_dir / "checkpoints").iterdir()
                  if p.name.isdigit()) == [10, 20]
    state2, meta2 = _checkpoint(two_dir, 20)
    state1, meta1 = _checkpoint(one_dir, 20)
    assert meta2["data_position"] == 20 * 4 and meta1["data_position"] == 20 * 8
    for x, y in zip(jax.tree.leaves(state2["params"]), jax.tree.leaves(state1["params"])):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-6)

    # Only process 0 reports and writes summaries; process 1 stays quiet.
    assert "step 20/20" in procs[0].stdout and "validation mIoU" in procs[0].stdout
    assert "jax.distributed: 2 processes, 4 devices" in procs[0].stdout
    assert not any(line.startswith(("step ", "Model ", "Trained ", "jax.distributed"))
                   for line in procs[1].stdout.splitlines()), procs[1].stdout[-2000:]
    assert len(list(two_dir.glob("events.out.tfevents.*"))) == 1


def test_two_processes_under_pmap_checkpoint_and_match(tiny_dataset, one_process_run,
                                                      tmp_path):
    """The same two-process run under pmap: Orbax cannot save pmap replicas (host-local
    arrays) from several processes, so the Runner hands it a global replicated copy; the
    run checkpoints, and its losses and parameters equal the one-process jit run's."""
    one_dir, one = one_process_run
    two_dir, procs, (r0, r1) = _two_process_run(tiny_dataset, tmp_path,
                                                "--config.parallelism=pmap")
    assert "parallelism=pmap" in procs[0].stdout
    np.testing.assert_allclose(r0["losses"], one["losses"], rtol=1e-4)
    assert r0["losses"] == r1["losses"]
    state2, meta2 = _checkpoint(two_dir, 20)
    state1, _ = _checkpoint(one_dir, 20)
    assert meta2["data_position"] == 20 * 4
    for x, y in zip(jax.tree.leaves(state2["params"]), jax.tree.leaves(state1["params"])):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-6)


def test_local_two_process_script_reports_each_process_error(tiny_dataset, tmp_path):
    """launch/local_two_process.sh starts 2 processes x 2 devices as one job (the error
    names the 4 global devices), prefixes each process's lines, and each process prints
    its own error, naming itself; the script exits with the CLI's status 2."""
    env = worker_env()
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run(
        ["bash", str(REPO / "launch" / "local_two_process.sh"),
         str(REPO / "configs" / "unet_sample.py"), str(tmp_path / "w"), str(tiny_dataset),
         "--config.train.batch_size=6"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    for i in range(2):
        assert (f"[process {i}] satseg: error: process {i} of 2: config.train.batch_size=6 is "
                "not divisible by the 4 devices") in proc.stderr, proc.stderr[-3000:]
    assert "[process 0] jax.distributed: 2 processes, 4 devices (2 per process)" in proc.stdout


# ----------------------------------------------------------------------------- restore


def test_checkpoint_from_4_devices_restores_on_1_and_8(one_process_run, tmp_path):
    """A checkpoint written by a 4-device jit run (the one-process reference above, read
    only) restores, through the path ``satseg evaluate`` takes, on 1 device (jit) and on
    8 devices (jit and pmap): every saved value comes back bit for bit, laid out for the
    new devices (replicated on all of them, or one identical pmap replica per device),
    and all three evaluate identically."""
    from tests.workers.restore_worker import flatten_state_dict

    workdir, record = one_process_run
    assert (record["process_count"], record["devices"]) == (1, 4)
    saved, meta = _checkpoint(workdir, 20)
    expected = flatten_state_dict(saved)
    out = tmp_path / "restored"
    out.mkdir()
    results = _results(run_worker("tests.workers.restore_worker", str(workdir), "jit",
                                  str(out), devices=1).stdout)
    results += _results(run_worker("tests.workers.restore_worker", str(workdir), "jit,pmap",
                                   str(out), devices=8).stdout)
    assert [(r["mode"], r["devices"]) for r in results] == [("jit", 1), ("jit", 8), ("pmap", 8)]
    for r in results:
        what = f"{r['mode']} on {r['devices']}"
        assert r["step"] == 20, what
        if r["mode"] == "jit":
            assert r["placement"] == {"all_fully_replicated": True,
                                      "devices_per_leaf": [r["devices"]]}, what
        else:
            assert r["placement"] == {"replicas": [8], "replicas_identical": True}, what
        got = dict(np.load(out / f"{r['mode']}_{r['devices']}.npz"))
        assert sorted(got) == sorted(expected), what
        for key, value in expected.items():
            assert got[key].dtype == value.dtype and np.array_equal(got[key], value), \
                f"{what}: {key}"
        assert r["confusion"] == results[0]["confusion"], what
    assert sum(map(sum, results[0]["confusion"])) > 0


# ----------------------------------------------------------------------------- when to start


SLURM_TASK = {"SLURM_JOB_ID": "4242", "SLURM_STEP_NODELIST": "gpu[003-004]",
              "SLURM_NTASKS": "2", "SLURM_PROCID": "1", "SLURM_LOCALID": "0",
              "SLURM_STEP_NUM_NODES": "2"}


def _dist(**fields) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({"distributed": fields})


@pytest.mark.parametrize("config, env, expected", [
    # One host: nothing to start.
    (None, {}, None),
    (_dist(coordinator_address="", num_processes=0, process_id=-1, auto=False), {}, None),
    (None, {"SATSEG_COORDINATOR": "h:1", "SATSEG_NUM_PROCESSES": "1"}, None),
    # Explicit: from the environment, from the config, config winning; detection off.
    (None, {"SATSEG_COORDINATOR": "localhost:1234", "SATSEG_NUM_PROCESSES": "2",
            "SATSEG_PROCESS_ID": "1"},
     {"coordinator_address": "localhost:1234", "num_processes": 2, "process_id": 1,
      "cluster_detection_method": "deactivate"}),
    (_dist(coordinator_address="n0:99", num_processes=4, process_id=3, auto=False), {},
     {"coordinator_address": "n0:99", "num_processes": 4, "process_id": 3,
      "cluster_detection_method": "deactivate"}),
    (_dist(coordinator_address="n0:99", num_processes=4, process_id=-1),
     {"SATSEG_COORDINATOR": "other:1", "SATSEG_NUM_PROCESSES": "8", "SATSEG_PROCESS_ID": "2"},
     {"coordinator_address": "n0:99", "num_processes": 4, "process_id": 2,
      "cluster_detection_method": "deactivate"}),
    # An explicit coordinator wins over SLURM detection.
    (None, {**SLURM_TASK, "SATSEG_COORDINATOR": "me:5", "SATSEG_NUM_PROCESSES": "2",
            "SATSEG_PROCESS_ID": "0"},
     {"coordinator_address": "me:5", "num_processes": 2, "process_id": 0,
      "cluster_detection_method": "deactivate"}),
    # Forced auto-detection (Cloud TPU VMs: found through the metadata server).
    (_dist(auto=True), {}, {}),
    (None, {"SATSEG_DISTRIBUTED_AUTO": "1"}, {}),
    (None, {"SATSEG_DISTRIBUTED_AUTO": "0"}, None),
    # SLURM, one task per node: explicit values from SLURM, every local GPU kept.
    (None, SLURM_TASK,
     {"coordinator_address": f"gpu003:{4242 % 4096 + 61440}", "num_processes": 2,
      "process_id": 1, "cluster_detection_method": "deactivate"}),
    (None, {**SLURM_TASK, "JAX_COORDINATOR_PORT": "7000"},
     {"coordinator_address": "gpu003:7000", "num_processes": 2, "process_id": 1,
      "cluster_detection_method": "deactivate"}),
    # SLURM, several tasks per node: jax's SLURM detection (one GPU per task).
    (None, {**SLURM_TASK, "SLURM_NTASKS": "16"}, {"cluster_detection_method": "slurm"}),
    # SLURM but not a multi-task step: a single task, or the batch script itself.
    (None, {**SLURM_TASK, "SLURM_NTASKS": "1"}, None),
    (None, {k: v for k, v in SLURM_TASK.items() if k != "SLURM_STEP_NODELIST"}, None),
    # Cloud TPU: several hosts or slices -> jax's own detection; one host -> nothing.
    (None, {"TPU_WORKER_HOSTNAMES": "t0,t1,t2,t3"}, {}),
    (None, {"TPU_WORKER_HOSTNAMES": "t0"}, None),
    (None, {"MEGASCALE_NUM_SLICES": "2", "TPU_WORKER_HOSTNAMES": "t0"}, {}),
])
def test_distributed_init_kwargs(config, env, expected):
    assert parallel.distributed_init_kwargs(config, env) == expected


@pytest.mark.parametrize("env, message", [
    ({"SATSEG_COORDINATOR": "h:1"}, "SATSEG_NUM_PROCESSES"),
    ({"SATSEG_COORDINATOR": "h:1", "SATSEG_NUM_PROCESSES": "2"}, "SATSEG_PROCESS_ID"),
    ({"SATSEG_COORDINATOR": "h:1", "SATSEG_NUM_PROCESSES": "2", "SATSEG_PROCESS_ID": "2"},
     r"outside 0\.\.1"),
    ({"SATSEG_COORDINATOR": "h:1", "SATSEG_NUM_PROCESSES": "two"}, "expected an integer"),
])
def test_distributed_init_kwargs_refuses_incomplete_settings(env, message):
    with pytest.raises(SatsegError, match=message):
        parallel.distributed_init_kwargs(None, env)


@pytest.mark.parametrize("nodelist, host", [
    ("n001", "n001"), ("n001,gpu2", "n001"), ("n[001-004,9],gpu2", "n001"),
    ("n[7,9]", "n7"), ("n[3]", "n3"), ("gpu-a[01-02]", "gpu-a01"),
])
def test_first_slurm_host(nodelist, host):
    assert parallel.first_slurm_host(nodelist) == host


def test_maybe_initialize_distributed_passes_the_decision_on(monkeypatch):
    """On one host nothing is started; with a coordinator configured, exactly the
    decided arguments reach jax.distributed.initialize (stubbed: no real start here)."""
    for key in list(os.environ):
        if key.startswith(("SATSEG_", "SLURM_", "TPU_", "MEGASCALE_")):
            monkeypatch.delenv(key)
    calls: list[dict] = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    assert parallel.maybe_initialize_distributed(None) is None
    assert parallel.maybe_initialize_distributed(_dist(auto=False)) is None
    assert calls == []
    config = _dist(coordinator_address="n0:99", num_processes=2, process_id=1)
    used = parallel.maybe_initialize_distributed(config)
    assert calls == [used] == [{"coordinator_address": "n0:99", "num_processes": 2,
                                "process_id": 1, "cluster_detection_method": "deactivate"}]
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: True)
    assert parallel.maybe_initialize_distributed(config) is None and len(calls) == 1
