"""Orbax checkpoints: save every N steps, keep the last k and the best, restore anywhere.

Each checkpoint holds two items:

- ``state``: the TrainState as a plain state dict (params, batch_stats, opt_state, step,
  rng, non-finite counters), saved by every process through Orbax;
- ``meta``: JSON with the step, the data position (examples consumed per host, the
  input pipeline's position), the validation metrics that chose "best", and a
  fingerprint of the config parts that must not change across a resume.

Atomicity: Orbax writes each step into ``STEP.orbax-checkpoint-tmp`` and renames it to
``STEP`` only when every item is written (on object stores, which cannot rename, a
``commit_success.txt`` marks the end instead). A process killed at any moment — SIGKILL
included — therefore leaves either a complete checkpoint or a temporary directory that
``latest_step`` ignores and the next writable manager deletes; resuming starts from the
last *complete* step (tests/test_preemption.py kills runs in the middle of this rename).

Restoring goes through an abstract target carrying the *current* shardings, so a
checkpoint written on 4 devices restores on 1 or 8 (arrays are stored unsharded by
Orbax and resharded on read).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from flax import serialization
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from satseg_jax import parallel
from satseg_jax.errors import SatsegError
from satseg_jax.io_utils import DiskFullError, is_disk_full

BEST_METRIC = "mean_iou"


def make_manager(workdir: str | Path, keep: int = 2, read_only: bool = False,
                 best_metric: str = BEST_METRIC) -> ocp.CheckpointManager:
    """A CheckpointManager in ``WORKDIR/checkpoints`` keeping the last ``keep`` and the best."""
    directory = Path(workdir).absolute() / "checkpoints"
    policy = pp.AnyPreservationPolicy([
        pp.LatestN(n=max(1, keep)),
        pp.BestN(get_metric_fn=lambda m: m[best_metric], reverse=False, n=1,
                 keep_checkpoints_without_metrics=False),
    ])
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policy,
        best_fn=lambda m: m[best_metric],
        best_mode="max",
        create=not read_only,
        read_only=read_only,
        # A process killed while saving leaves STEP.orbax-checkpoint-tmp behind; the
        # manager never lists it as a step (only the final rename makes a checkpoint), and
        # a writer removes it on start instead of letting partial copies pile up.
        cleanup_tmp_directories=not read_only,
        enable_async_checkpointing=False,
    )
    # Handlers named up front (not only item names): the manager can then read a
    # checkpoint's array metadata before restoring it (restore_raw).
    handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
    return ocp.CheckpointManager(directory, options=options, item_handlers=handlers)


def save(manager: ocp.CheckpointManager, state: Any, meta: dict,
         metrics: dict[str, float] | None = None, force: bool = False) -> bool:
    """Save ``state`` (any pytree with flax state-dict support) and ``meta`` at its step."""
    step = int(jax.device_get(state.step))
    if step in manager.all_steps():
        return False
    try:
        saved = manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(serialization.to_state_dict(state)),
                meta=ocp.args.JsonSave(meta),
            ),
            metrics=metrics,
            force=force,
        )
        manager.wait_until_finished()
    except Exception as e:
        # Orbax writes into STEP.orbax-checkpoint-tmp and renames it only when complete,
        # so the last complete checkpoint is intact; the temporary one is removed on the
        # next start (cleanup_tmp_directories).
        if is_disk_full(e):
            raise DiskFullError(
                f"{manager.directory}: disk full while writing checkpoint {step} ({e}); free "
                "space and run the same command again to resume from the last complete "
                "checkpoint") from e
        raise
    return saved


def resolve_step(manager: ocp.CheckpointManager, which: str | int | None) -> int | None:
    """'latest' | 'best' | a step -> a saved step (or None when there is no checkpoint)."""
    steps = manager.all_steps()
    if not steps:
        return None
    if which in (None, "latest"):
        return manager.latest_step()
    if which == "best":
        best = manager.best_step()
        return best if best is not None else manager.latest_step()
    try:
        step = int(which)
    except (TypeError, ValueError):
        raise SatsegError(f"checkpoint {which!r}: expected best, latest or a step number") from None
    if step not in steps:
        raise SatsegError(f"checkpoint step {step} not found; saved steps: {sorted(steps)}")
    return step


def restore(manager: ocp.CheckpointManager, step: int, target: Any) -> tuple[Any, dict]:
    """Restore ``(state, meta)`` at ``step`` onto ``target``'s structure and shardings.

    ``target`` is a concrete or abstract (``jax.ShapeDtypeStruct`` with ``sharding``)
    TrainState; a checkpoint of another model or optimizer fails with a clear message.
    """
    abstract = jax.tree.map(_abstract, serialization.to_state_dict(target))
    try:
        restored = manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract),
                meta=ocp.args.JsonRestore(),
            ),
        )
    except (ValueError, KeyError, TypeError) as e:
        raise SatsegError(
            f"{manager.directory}/{step}: checkpoint does not match this model/optimizer "
            f"({str(e).splitlines()[0][:300]}); use a fresh --workdir or the config it was "
            "trained with"
        ) from None
    state = serialization.from_state_dict(target, restored["state"])
    return state, dict(restored["meta"])


def restore_raw(manager: ocp.CheckpointManager, step: int) -> tuple[dict, dict]:
    """(state dict, meta) as saved, without a model to build a target from (inspection,
    tests), on whatever devices this process has.

    The target is made from the checkpoint's own array metadata, every array replicated
    over all current devices: restoring with no target at all makes Orbax reuse the
    saved device layout, which fails on any other device count.
    """
    sharding = parallel.replicated(parallel.make_mesh())
    saved = manager.item_metadata(step)["state"]
    abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding),
                            saved)
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    return restored["state"], dict(restored["meta"])


def _abstract(x: Any) -> Any:
    if isinstance(x, jax.ShapeDtypeStruct):
        return x
    if isinstance(x, jax.Array):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
    return x
