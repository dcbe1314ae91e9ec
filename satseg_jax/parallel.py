"""Device layout: meshes and shardings for ``jit``, replication helpers for ``pmap``.

Data parallelism only: parameters are replicated and every global batch is split along
the leading axis over all devices of all processes. Each process feeds only its own
slice (``jax.make_array_from_process_local_data``), so no host ever materialises the
global batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from satseg_jax.errors import SatsegError

DATA_AXIS = "data"
PMAP_AXIS = "batch"


def make_mesh() -> Mesh:
    """A 1-D mesh named ``data`` over every device of every process."""
    return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_batch(global_batch: int, what: str = "config.train.batch_size") -> None:
    n = jax.device_count()
    if global_batch % n:
        raise SatsegError(
            f"{what}={global_batch} is not divisible by the {n} devices; choose a multiple "
            f"of {n}"
        )


def shard_batch_jit(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Process-local numpy batch -> global jax.Arrays sharded along ``data``."""
    sharding = batch_sharded(mesh)
    return {
        k: jax.make_array_from_process_local_data(sharding, v)
        for k, v in batch.items()
        if v.dtype != object
    }


def shard_batch_pmap(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Process-local numpy batch -> (local_devices, per_device, ...) for ``pmap``."""
    n = jax.local_device_count()
    out = {}
    for k, v in batch.items():
        if v.dtype == object:
            continue
        if v.shape[0] % n:
            raise SatsegError(f"batch of {v.shape[0]} does not split over {n} local devices")
        out[k] = v.reshape(n, v.shape[0] // n, *v.shape[1:])
    return out


def replicate_tree(tree: Any, mesh: Mesh) -> Any:
    """Place a pytree fully replicated on ``mesh`` (params, optimizer state...)."""
    return jax.device_put(tree, replicated(mesh))


def pmap_replicate(tree: Any) -> Any:
    """Stack a pytree onto every local device for ``pmap`` (one copy per device).

    An identity pmap over the host-stacked copies leaves device-resident, pmap-sharded
    arrays, so later steps do not copy the state from the host again. It is named with
    the train step's axis: the arrays' sharding carries the axis name, and a state placed
    under another name differs from the one the step returns, so the step would compile
    a second time at step 2 (tens of seconds on a CPU).
    """
    n = jax.local_device_count()
    stacked = jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), (n, *np.shape(x))), tree)
    return jax.pmap(lambda t: t, axis_name=PMAP_AXIS)(stacked)


def pmap_unreplicate(tree: Any) -> Any:
    """The first replica of a pmapped pytree (replicas are identical by construction).

    Taken from this process's first device shard, not with ``x[0]``: a pmap output is a
    global array over the pmap mesh, so indexing it runs a computation on every device
    of that mesh. With several processes each would then enter a cross-process
    computation per leaf while another process may already be in Orbax's barrier, and
    the job deadlocks (seen: 1 run in 2). A shard read is local and runs nothing global.
    """
    return jax.tree.map(lambda x: x.addressable_data(0).reshape(x.shape[1:]), tree)


def host_local_to_global(tree: Any, mesh: Mesh) -> Any:
    """Identical host-local arrays on every process -> one global array replicated on ``mesh``.

    A pmap replica is local to its process; Orbax refuses to save such arrays when
    several processes write one checkpoint (it cannot know they agree). Declaring them
    one replicated global array lets Orbax write it once, from the primary process.
    """
    sharding = replicated(mesh)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree)


# ----------------------------------------------------------------------------- jax.distributed

# Environment variables naming the processes explicitly (launch/local_two_process.sh);
# SATSEG_DISTRIBUTED_AUTO=1 is config.distributed.auto.
ENV_COORDINATOR = "SATSEG_COORDINATOR"
ENV_NUM_PROCESSES = "SATSEG_NUM_PROCESSES"
ENV_PROCESS_ID = "SATSEG_PROCESS_ID"
ENV_AUTO = "SATSEG_DISTRIBUTED_AUTO"

# What jax's own SLURM detection reads; all must be there. srun sets them for each task;
# the batch script itself has no SLURM_STEP_NODELIST, so it is never taken for a task.
_SLURM_VARS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
               "SLURM_LOCALID")


def _field(dist: Any, name: str) -> Any:
    """``config.distributed.<name>``, or None when the config has no such field."""
    if dist is None:
        return None
    if isinstance(dist, Mapping) or hasattr(dist, "keys"):
        return dist[name] if name in dist.keys() else None
    return getattr(dist, name, None)


def _int(value: Any, what: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise SatsegError(f"{what}={value!r}: expected an integer") from None


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def first_slurm_host(nodelist: str) -> str:
    """The first host of a SLURM node list: ``n001``, ``n[001-004,9],gpu2`` -> ``n001``."""
    i = next((k for k, ch in enumerate(nodelist) if ch in ",["), len(nodelist))
    if i == len(nodelist) or nodelist[i] == ",":
        return nodelist[:i]
    rest = nodelist[i + 1:]
    j = next((k for k, ch in enumerate(rest) if ch in ",-]"), len(rest))
    return nodelist[:i] + rest[:j]


def _slurm_kwargs(env: Mapping[str, str]) -> dict[str, Any] | None:
    """SLURM: one process per task of the srun step, when the step has several tasks.

    One task per node (``launch/slurm_multinode.sbatch``: each process drives every GPU
    of its node): the coordinator, count and id are read from SLURM here and jax's own
    detection is switched off, because it would pin each task to GPU ``SLURM_LOCALID``
    and leave the node's other GPUs idle. Several tasks per node: jax's SLURM detection,
    which gives task ``i`` of a node GPU ``i`` (one process per GPU).
    """
    if not all(v in env for v in _SLURM_VARS):
        return None
    ntasks = _int(env["SLURM_NTASKS"], "SLURM_NTASKS")
    if ntasks <= 1:
        return None
    nodes = env.get("SLURM_STEP_NUM_NODES") or env.get("SLURM_NNODES") or ""
    if nodes and _int(nodes, "SLURM_STEP_NUM_NODES") == ntasks:
        # jax's port rule (so a job's tasks agree on it), or JAX_COORDINATOR_PORT.
        port = env.get("JAX_COORDINATOR_PORT") or \
            str(_int(env["SLURM_JOB_ID"], "SLURM_JOB_ID") % 2**12 + (65535 - 2**12 + 1))
        return {"coordinator_address": f"{first_slurm_host(env['SLURM_STEP_NODELIST'])}:{port}",
                "num_processes": ntasks,
                "process_id": _int(env["SLURM_PROCID"], "SLURM_PROCID"),
                "cluster_detection_method": "deactivate"}
    return {"cluster_detection_method": "slurm"}


def distributed_init_kwargs(config: Any = None,
                            env: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """The keyword arguments for ``jax.distributed.initialize``, or None for one process.

    Pure (reads only ``config`` and ``env``, default ``os.environ``) so the decision can
    be tested without starting a coordinator. First match wins:

    1. an explicit coordinator, ``config.distributed.coordinator_address`` or
       ``SATSEG_COORDINATOR``, with ``num_processes`` / ``SATSEG_NUM_PROCESSES`` and
       ``process_id`` / ``SATSEG_PROCESS_ID`` (config fields win over the environment).
       A missing count or id is an error, not a guess: every process defaulting to id 0
       would hang at start-up. jax's cluster detection is switched off
       (``cluster_detection_method="deactivate"``) so that explicit means explicit: inside
       a SLURM job it would otherwise pin each process to one GPU. Restrict a process's
       devices yourself with ``JAX_LOCAL_DEVICE_IDS`` when several share a node.
    2. ``config.distributed.auto`` or ``SATSEG_DISTRIBUTED_AUTO=1``: ``{}``, jax detects
       the cluster itself (a Cloud TPU VM pod is found through its metadata server, which
       no environment variable reveals).
    3. a task of a multi-task srun step (``SLURM_NTASKS`` > 1): see ``_slurm_kwargs``.
    4. a multi-host Cloud TPU (``TPU_WORKER_HOSTNAMES`` / ``TPU_PROCESS_ADDRESSES``
       listing more than one host, or ``MEGASCALE_NUM_SLICES`` > 1): ``{}``.
    5. otherwise None: a single process, nothing to start.
    """
    import os

    env = os.environ if env is None else env
    dist = getattr(config, "distributed", None) if config is not None else None

    address = _field(dist, "coordinator_address") or env.get(ENV_COORDINATOR) or None
    if address:
        nproc = _field(dist, "num_processes") or env.get(ENV_NUM_PROCESSES)
        if nproc in (None, ""):
            raise SatsegError(f"coordinator {address} set but not the number of processes; set "
                              f"config.distributed.num_processes or {ENV_NUM_PROCESSES}")
        nproc = _int(nproc, "number of processes")
        if nproc < 1:
            raise SatsegError(f"number of processes {nproc}: expected 1 or more")
        if nproc == 1:
            return None
        pid = _field(dist, "process_id")
        if pid is None or (isinstance(pid, int) and pid < 0):
            pid = env.get(ENV_PROCESS_ID)
        if pid in (None, ""):
            raise SatsegError(f"coordinator {address} with {nproc} processes but no process id; "
                              f"set config.distributed.process_id or {ENV_PROCESS_ID} (0.."
                              f"{nproc - 1}, distinct per process)")
        pid = _int(pid, "process id")
        if not 0 <= pid < nproc:
            raise SatsegError(f"process id {pid} is outside 0..{nproc - 1} for {nproc} processes")
        return {"coordinator_address": str(address), "num_processes": nproc, "process_id": pid,
                "cluster_detection_method": "deactivate"}

    if _truthy(_field(dist, "auto")) or _truthy(env.get(ENV_AUTO, "")):
        return {}

    slurm = _slurm_kwargs(env)
    if slurm is not None:
        return slurm

    hosts = env.get("TPU_PROCESS_ADDRESSES") or env.get("TPU_WORKER_HOSTNAMES") or ""
    slices = env.get("MEGASCALE_NUM_SLICES") or "1"
    if len([h for h in hosts.split(",") if h.strip()]) > 1 or \
            _int(slices, "MEGASCALE_NUM_SLICES") > 1:
        return {}
    return None


def maybe_initialize_distributed(config: Any = None) -> dict[str, Any] | None:
    """Start ``jax.distributed`` when this is one of several processes; else do nothing.

    The decision is ``distributed_init_kwargs`` (config, then environment, then SLURM /
    TPU detection), so the same command runs on a laptop, under srun and on a pod. Must
    run before anything touches a jax device. Returns the arguments used (None when
    nothing was started, or when it was already started). Only process 0 prints.
    """
    kwargs = distributed_init_kwargs(config)
    if kwargs is None or jax.distributed.is_initialized():
        return None
    jax.distributed.initialize(**kwargs)
    if jax.process_index() == 0:
        print(f"jax.distributed: {jax.process_count()} processes, {jax.device_count()} devices "
              f"({jax.local_device_count()} per process)", flush=True)
    return kwargs
