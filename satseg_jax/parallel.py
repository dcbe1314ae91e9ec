"""Device layout: meshes and shardings for ``jit``, replication helpers for ``pmap``.

Data parallelism only: parameters are replicated and every global batch is split along
the leading axis over all devices of all processes. Each process feeds only its own
slice (``jax.make_array_from_process_local_data``), so no host ever materialises the
global batch.
"""

from __future__ import annotations

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
    arrays, so later steps do not copy the state from the host again.
    """
    n = jax.local_device_count()
    stacked = jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), (n, *np.shape(x))), tree)
    return jax.pmap(lambda t: t)(stacked)


def pmap_unreplicate(tree: Any) -> Any:
    """The first replica of a pmapped pytree (replicas are identical by construction)."""
    return jax.tree.map(lambda x: x[0], tree)


def maybe_initialize_distributed(config: Any = None) -> None:
    """Start ``jax.distributed`` when running as one of several processes.

    Reads ``config.distributed`` (coordinator_address, num_processes, process_id) when
    given; otherwise JAX auto-detects SLURM / TPU / environment settings. A no-op for a
    single process, so the same command runs on a laptop and on a pod.
    """
    import os

    dist = getattr(config, "distributed", None) if config is not None else None
    addr = getattr(dist, "coordinator_address", None) if dist is not None else None
    addr = addr or os.environ.get("SATSEG_COORDINATOR")
    if not addr:
        return
    if jax.distributed.is_initialized():
        return
    nproc = int(getattr(dist, "num_processes", 0) or os.environ.get("SATSEG_NUM_PROCESSES", 1))
    pid = int(getattr(dist, "process_id", -1) if dist is not None else -1)
    if pid < 0:
        pid = int(os.environ.get("SATSEG_PROCESS_ID", 0))
    jax.distributed.initialize(coordinator_address=addr, num_processes=nproc, process_id=pid)
