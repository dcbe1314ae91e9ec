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

Verification: ``save`` records a CRC-32 of every array of the state dict, computed from
the host copy, in ``meta["digests"]``; ``restore`` recomputes them and refuses a mismatch,
an unreadable array file or unreadable Orbax metadata with ``CorruptCheckpoint`` (a
``SatsegError`` naming the step and its path). Orbax's own JSON files of a step
(``_CHECKPOINT_METADATA``, ``metrics/metrics``) are read by Orbax for every step when a
manager opens, so they are checked first (``metadata_problems``) and a damaged step is
left out of the manager (and refused when chosen). A silently flipped byte on disk would
otherwise resume training, or evaluate, from garbage. CRC-32 (zlib) is meant for
accidental corruption and runs at several GB/s, a small fraction of the save
(benchmarks/checkpoint_digest.py, NOTES.md). Checkpoints saved before digests existed
restore with a one-line note.

Restoring goes through an abstract target carrying the *current* shardings, so a
checkpoint written on 4 devices restores on 1 or 8 (arrays are stored unsharded by
Orbax and resharded on read).
"""

from __future__ import annotations

import contextlib
import gc
import json
import zlib
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import serialization
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from satseg_jax import parallel
from satseg_jax.errors import SatsegError
from satseg_jax.io_utils import DiskFullError, is_disk_full, library_output_to

BEST_METRIC = "mean_iou"
DIGEST_ALGORITHM = "crc32"


class CorruptCheckpoint(SatsegError):
    """A checkpoint whose arrays or metadata cannot be trusted (digest mismatch, unreadable
    array file, unreadable Orbax JSON): callers pick another one instead of using it."""

    def __init__(self, directory: str | Path, step: int, reason: str) -> None:
        self.step = int(step)
        self.path = Path(directory) / str(step)
        self.reason = reason
        super().__init__(f"{self.path}: checkpoint {step} is corrupt ({reason})")


def _host_bytes(x: Any) -> np.ndarray | None:
    """The array's bytes on this host, or None when this process holds only a shard."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        if not x.is_fully_replicated:
            return None
        x = x.addressable_data(0)
    return np.ascontiguousarray(np.asarray(jax.device_get(x)))


def digests(state_dict: Any) -> dict[str, str]:
    """CRC-32 per array leaf of a state dict, keyed by its path (arrays this process
    holds only a shard of are left out: another process checks its own part)."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(state_dict)[0]:
        data = _host_bytes(leaf)
        if data is not None:
            out[jax.tree_util.keystr(path)] = f"{zlib.crc32(data.view(np.uint8)):08x}"
    return out


def verify(directory: str | Path, step: int, state_dict: Any, meta: dict) -> bool:
    """Compare a restored state dict with the digests saved in ``meta``; False when the
    checkpoint predates digests; raise ``CorruptCheckpoint`` on a mismatch."""
    saved = meta.get("digests")
    if not isinstance(saved, dict):
        return False
    if saved.get("algorithm") != DIGEST_ALGORITHM or not isinstance(saved.get("arrays"), dict):
        raise CorruptCheckpoint(directory, step, f"unknown digest record {str(saved)[:80]}")
    expected = saved["arrays"]
    for key, value in digests(state_dict).items():
        if key in expected and expected[key] != value:
            raise CorruptCheckpoint(directory, step, f"array {key} does not match its "
                                    f"{DIGEST_ALGORITHM} digest ({value} != {expected[key]})")
    return True


# Orbax's own small JSON files of a finished checkpoint, read when a manager opens (for
# every step: "best" needs each step's metrics) or when a step is restored.
ORBAX_JSON = ("_CHECKPOINT_METADATA", "metrics/metrics")


def metadata_problems(directory: str | Path) -> dict[int, CorruptCheckpoint]:
    """The finished checkpoints in ``directory`` whose Orbax JSON (``ORBAX_JSON``) exists
    but cannot be read, each as the CorruptCheckpoint to report.

    Why before any manager opens: Orbax reads these files for every step when a manager
    starts, and a damaged one either stops every command with a traceback
    (``metrics/metrics``) or is logged and ignored (``_CHECKPOINT_METADATA``), so the
    damage would otherwise pass as "does not match this model" or pass unseen.
    A file that is absent (an older Orbax, a step saved without metrics) is no problem.
    """
    directory = Path(directory)
    found: dict[int, CorruptCheckpoint] = {}
    if not directory.is_dir():
        return found
    for d in directory.iterdir():
        if not (d.name.isdigit() and d.is_dir()):
            continue
        for name in ORBAX_JSON:
            path = d / name
            if not path.exists():
                continue
            try:
                value = json.loads(path.read_bytes())
                if not isinstance(value, dict) and not (name != ORBAX_JSON[0] and value is None):
                    raise ValueError(f"a JSON {type(value).__name__}, not an object")
            except (OSError, ValueError) as e:  # UnicodeDecodeError, JSONDecodeError too
                found[int(d.name)] = CorruptCheckpoint(directory, int(d.name),
                                                       f"unreadable {name}: {_first_line(e)}")
                break
    return found


class _Skipping(ocp.step.NameFormat):
    """Orbax's standard step names, with some steps left out of every listing, so that a
    manager can open (and restore the other steps) beside a checkpoint whose Orbax
    metadata is damaged."""

    def __init__(self, skip: Collection[int]) -> None:
        self.inner = ocp.step.standard_name_format()
        self.skip = frozenset(int(s) for s in skip)

    def build_name(self, step: int) -> str:
        return self.inner.build_name(step)

    def find_all(self, base_path) -> Iterator[Any]:
        return (m for m in self.inner.find_all(base_path) if m.step not in self.skip)

    def find_step(self, base_path, step: int) -> Any:
        if int(step) in self.skip:
            raise ValueError(f"checkpoint {step} is left out (damaged Orbax metadata)")
        return self.inner.find_step(base_path, step)


def make_manager(workdir: str | Path, keep: int = 2, read_only: bool = False,
                 best_metric: str = BEST_METRIC,
                 skip: Collection[int] = ()) -> ocp.CheckpointManager:
    """A CheckpointManager in ``WORKDIR/checkpoints`` keeping the last ``keep`` and the best.

    ``skip``: steps the manager must not see (see :func:`metadata_problems`).
    """
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
        step_name_format=_Skipping(skip) if skip else None,
    )
    # Handlers named up front (not only item names): the manager can then read a
    # checkpoint's array metadata before restoring it (restore_raw).
    handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
    return ocp.CheckpointManager(directory, options=options, item_handlers=handlers)


def save(manager: ocp.CheckpointManager, state: Any, meta: dict,
         metrics: dict[str, float] | None = None, force: bool = False,
         verified: bool = True, log: Path | None = None) -> bool:
    """Save ``state`` (any pytree with flax state-dict support) and ``meta`` at its step.

    With ``verified`` (always, except to measure its cost) ``meta`` also records the
    arrays' digests, so that ``restore`` can tell a damaged checkpoint from a good one.
    ``log``: a file that receives what Orbax and its threads print or log during the
    save (io_utils.library_output_to), instead of the terminal; a failed save then
    reports one line, which names the file when something was written to it.
    """
    step = int(jax.device_get(state.step))
    if step in manager.all_steps():
        return False
    state_dict = serialization.to_state_dict(state)
    if verified:
        meta = {**meta, "digests": {"algorithm": DIGEST_ALGORITHM,
                                    "arrays": digests(state_dict)}}
    args = ocp.args.Composite(state=ocp.args.StandardSave(state_dict),
                              meta=ocp.args.JsonSave(meta))
    if log is None:
        saved = manager.save(step, args=args, metrics=metrics, force=force)
        manager.wait_until_finished()
        return saved
    with library_output_to(log):
        try:
            saved = manager.save(step, args=args, metrics=metrics, force=force)
            manager.wait_until_finished()
            return saved
        except Exception as e:
            if not is_disk_full(e):
                raise
            # Orbax's message is a long path per failed array; the cause is at its end.
            text = str(e).lower()
            reason = next((c for c in ("No space left on device", "Disk quota exceeded")
                           if c.lower() in text), _first_line(e))
        # Out of the except block, so the failure's traceback (whose frames hold the
        # failed writers' futures) is gone: closing the manager and collecting them now
        # puts their complaints in the log, not on the terminal at exit.
        with contextlib.suppress(Exception):
            manager.close()
        gc.collect()
    # Orbax writes into STEP.orbax-checkpoint-tmp and renames it only when complete, so
    # the last complete checkpoint is intact; the temporary one is removed on the next
    # start (cleanup_tmp_directories). The manager is closed: the run ends here.
    where = (f"; Orbax's messages are in {log}"
             if log.is_file() and log.stat().st_size else "")
    raise DiskFullError(
        f"{manager.directory}: disk full while writing checkpoint {step} ({reason}); free "
        "space and run the same command again to resume from the last complete "
        f"checkpoint{where}")


def _saved_metric(step_dir: Path, best_metric: str = BEST_METRIC) -> float | None:
    """The metric "best" is chosen on, as saved with a step (None: none or unreadable)."""
    try:
        value = json.loads((step_dir / ORBAX_JSON[1]).read_bytes())[best_metric]
        return float(value)
    except (OSError, ValueError, TypeError, KeyError):
        return None


def _refuse_corrupt_choice(manager: ocp.CheckpointManager, which: str | int | None,
                           step: int | None, corrupt: dict[int, CorruptCheckpoint]) -> None:
    """Raise the CorruptCheckpoint of a damaged step (left out of ``manager``) that
    'latest' or 'best' would have chosen instead of ``step``: a newer one for 'latest',
    one whose metric is better or cannot be read for 'best'."""
    if which in (None, "latest"):
        newest = max(corrupt)
        if step is None or newest > step:
            raise corrupt[newest]
        return
    good = _saved_metric(Path(manager.directory) / str(step)) if step is not None else None
    for s in sorted(corrupt, reverse=True):
        metric = _saved_metric(Path(manager.directory) / str(s))
        if metric is None or good is None or metric > good:
            raise corrupt[s]


def resolve_step(manager: ocp.CheckpointManager, which: str | int | None,
                 corrupt: dict[int, CorruptCheckpoint] | None = None) -> int | None:
    """'latest' | 'best' | a step -> a saved step (or None when there is no checkpoint).

    ``corrupt``: steps with damaged Orbax metadata (:func:`metadata_problems`, left out
    of ``manager``); choosing one of them raises its CorruptCheckpoint.
    """
    corrupt = corrupt or {}
    if which not in (None, "latest", "best"):
        with contextlib.suppress(TypeError, ValueError):
            if int(which) in corrupt:
                raise corrupt[int(which)]
    steps = manager.all_steps()
    if not steps and not corrupt:
        return None
    if which in (None, "latest", "best"):
        step = manager.latest_step() if steps else None
        if which == "best" and steps:
            best = manager.best_step()
            step = best if best is not None else step
        if corrupt:
            _refuse_corrupt_choice(manager, which, step, corrupt)
        return step
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
    A damaged checkpoint (see the module docstring) raises ``CorruptCheckpoint``: the
    saved array shapes are compared with the target first, so that only a checkpoint
    that matches the model and still fails to read or verify counts as corrupt.
    """
    abstract = jax.tree.map(_abstract, serialization.to_state_dict(target))
    mismatch = _shape_mismatch(manager, step, abstract)
    if mismatch:
        raise SatsegError(
            f"{manager.directory}/{step}: checkpoint does not match this model/optimizer "
            f"({mismatch[:300]}); use a fresh --workdir or the config it was "
            "trained with"
        )
    try:
        restored = manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract),
                meta=ocp.args.JsonRestore(),
            ),
        )
    except Exception as e:  # tensorstore, zstd, JSON, Orbax: all mean "cannot be read"
        raise CorruptCheckpoint(manager.directory, step,
                                f"unreadable: {_first_line(e)}") from None
    meta = dict(restored["meta"] or {})
    if not verify(manager.directory, step, restored["state"], meta) \
            and jax.process_index() == 0:
        print(f"note: {manager.directory}/{step} was saved before checkpoints carried "
              "digests; restored without verifying it", flush=True)
    state = serialization.from_state_dict(target, restored["state"])
    return state, meta


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200] if text else ''}"


def _shape_mismatch(manager: ocp.CheckpointManager, step: int, abstract: Any) -> str | None:
    """What differs between the saved arrays and ``abstract`` (paths and shapes), or None.

    Unreadable Orbax metadata raises ``CorruptCheckpoint``.
    """
    try:
        saved = manager.item_metadata(step)["state"]
        saved_shapes = _shapes(saved)
    except Exception as e:
        raise CorruptCheckpoint(manager.directory, step,
                                f"unreadable metadata: {_first_line(e)}") from None
    if saved is None or not saved_shapes:
        raise CorruptCheckpoint(manager.directory, step, "no array metadata")
    wanted = _shapes(abstract)
    if saved_shapes == wanted:
        return None
    missing = sorted(set(wanted) - set(saved_shapes))
    extra = sorted(set(saved_shapes) - set(wanted))
    differ = [f"{k}: saved {saved_shapes[k]}, model {wanted[k]}"
              for k in sorted(set(wanted) & set(saved_shapes)) if saved_shapes[k] != wanted[k]]
    parts = ([f"not in checkpoint: {', '.join(missing[:3])}"] if missing else []) + \
        ([f"not in model: {', '.join(extra[:3])}"] if extra else []) + differ[:3]
    return "; ".join(parts)


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(p): tuple(x.shape) for p, x in leaves if hasattr(x, "shape")}


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
