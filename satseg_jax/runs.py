"""A trained run as one self-contained artefact: written by training, loaded anywhere.

Why this module exists: inference used to rebuild a run from the training *dataset*
(``config.data.data_dir`` -> ``satseg_dataset.json``), found through a path relative to
whatever directory training was started from. Copy a run to another machine, or delete
its dataset, and ``satseg predict`` failed. A run folder now carries everything
inference needs:

- ``config.json``: the config it was trained with (``data.data_dir`` made absolute:
  paths stored in a run are never relative to the current directory);
- ``run.json``: the run card: task, model name, bands (names, order, dtype, nodata),
  normalisation (the train split's per-band mean/std), patch and input size, classes
  with colours, the ground pixel size of the training patches, and — as provenance
  only — the training dataset's absolute path and the sha256 of its
  ``satseg_dataset.json``;
- ``checkpoints/``: Orbax checkpoints (``checkpoints.py``).

``load_run(path)`` returns a :class:`Run`: config, card, model, the chosen checkpoint
restored onto this process's devices, and a jitted predict function. evaluate, predict
and the variant sweep use it. Runs written before cards existed still load, through
their dataset's card, with a one-line note.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import numpy as np

from satseg_jax import checkpoints, parallel, steps
from satseg_jax.classes import BandsAndClasses
from satseg_jax.errors import SatsegError
from satseg_jax.io_utils import atomic_path

CARD_NAME = "run.json"
CONFIG_NAME = "config.json"
CARD_FORMAT = "satseg-run/1"

# Config fields that must be equal between a workdir's first run and a resume: changing
# them would make the restored state meaningless or the data stream different.
RESUME_KEYS = ("task", "seed", "model", "optimizer.name", "train.batch_size",
               "data.crop_size", "data.train_split", "loss.class_weights")


# ----------------------------------------------------------------------------- config


def _get(d: dict, dotted: str):
    for part in dotted.split("."):
        d = d.get(part) if isinstance(d, dict) else None
    return d


def config_as_saved(config) -> dict:
    """The config as ``config.json`` stores it: plain JSON, ``data.data_dir`` absolute."""
    current = json.loads(config.to_json_best_effort())
    data = current.get("data")
    if isinstance(data, dict) and data.get("data_dir"):
        data["data_dir"] = str(Path(data["data_dir"]).absolute())
    return current


def check_dataset(config, meta) -> None:
    """Refuse a dataset of another task, without train examples (a test-only dataset),
    a crop larger than its patches, or an evaluation split without examples, before
    anything is built or written. An empty ``config.data.eval_split`` means no evaluation
    during training (a published train/test split with no validation: a fixed schedule,
    and "best" is the last checkpoint); early stopping then has nothing to watch."""
    if meta.task != config.task:
        raise SatsegError(f"{config.data.data_dir} is a {meta.task} dataset but config.task="
                          f"{config.task!r}")
    train_split = str(config.data.train_split)
    if not meta.num_examples.get(train_split, 0):  # e.g. a test-only dataset (build 0,0,1)
        raise SatsegError(
            f"{config.data.data_dir}: no {train_split!r} examples (a dataset built without "
            "train patches is for scoring: satseg evaluate --workdir RUN --data "
            f"{config.data.data_dir}); train on a dataset built with a train split")
    # The input pipeline checks the crop too, but only once the loop starts, after the
    # workdir is written; checked here, a refused run changes nothing.
    crop = int(config.data.crop_size or 0)
    if crop > meta.patch_size:
        raise SatsegError(f"config.data.crop_size={crop} is larger than the dataset's "
                          f"patch size {meta.patch_size}")
    eval_split = str(config.data.eval_split)
    if not eval_split:  # no evaluation during training: a fixed schedule, the last step
        patience = int(config.train.get("early_stopping_patience", 0) or 0)
        if patience > 0:
            raise SatsegError(
                f"config.train.early_stopping_patience={patience} needs an evaluation split "
                "to watch, but config.data.eval_split is empty; set it (e.g. 'validation') "
                "or set --config.train.early_stopping_patience=0")
        return
    if not meta.num_examples.get(eval_split, 0):
        # Published sets often come with train/test lists only (satseg build
        # --split-file): say so now, not after the first eval_every steps of training.
        have = ", ".join(f"{k} {v}" for k, v in meta.num_examples.items() if v)
        raise SatsegError(
            f"{config.data.data_dir}: config.data.eval_split={eval_split!r} has no examples "
            f"(the dataset has {have}); evaluate on another split with "
            "--config.data.eval_split=test (checkpoints are then chosen on it), or rebuild "
            "with a validation split (a 'validation' list in --split-file, or --split)")


def check_train_config(config) -> None:
    """Refuse settings that could only fail later (or train on garbage) before anything is
    read or written: a learning rate that is not a finite number > 0, a batch size that is
    not a positive multiple of the device count."""
    lr = config.optimizer.learning_rate
    try:
        ok = math.isfinite(float(lr)) and float(lr) > 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise SatsegError(f"config.optimizer.learning_rate={lr!r}: must be a finite number "
                          "greater than 0")
    batch = config.train.batch_size
    if not isinstance(batch, int) or isinstance(batch, bool) or batch <= 0:
        raise SatsegError(f"config.train.batch_size={batch!r}: must be a whole number greater "
                          f"than 0 (a multiple of the {jax.device_count()} device(s))")
    parallel.check_batch(batch)


def check_resume_config(workdir: Path, config, write: bool = True) -> None:
    """Refuse a workdir written by an incompatible config; with ``write``, (re)write
    WORKDIR/config.json (atomically, from process 0).

    Training calls it twice: first without writing, before anything is built, so a
    refused run fails fast; then with ``write`` once the checkpoint has been restored
    and verified, so a run refused for another reason (no workdir yet, or a checkpoint
    that does not match) leaves the workdir as it was.
    """
    path = workdir / CONFIG_NAME
    current = config_as_saved(config)
    if path.exists():
        saved = json.loads(path.read_text())
        diffs = [k for k in RESUME_KEYS if _get(saved, k) != _get(current, k)]
        if diffs:
            detail = "; ".join(f"{k}: {_get(saved, k)!r} -> {_get(current, k)!r}" for k in diffs)
            raise SatsegError(
                f"{workdir}: written by an incompatible config ({detail}). Use a new --workdir, "
                f"or the original settings to resume"
            )
    if write and jax.process_index() == 0:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")


def load_workdir_config(workdir: str | Path):
    """The ConfigDict a workdir was trained with (from WORKDIR/config.json)."""
    import ml_collections

    path = Path(workdir) / CONFIG_NAME
    if not path.exists():
        raise SatsegError(f"{path}: not found; is {workdir} a training workdir?")
    return ml_collections.ConfigDict(json.loads(path.read_text()))


# ----------------------------------------------------------------------------- lock

LOCK_NAME = ".lock"


class WorkdirLock:
    """One writer per workdir: an advisory ``fcntl`` lock on ``WORKDIR/.lock``, held by a
    training run for its whole life.

    Why: two ``satseg train`` on one workdir would both write checkpoints of the same
    steps, and the second one's manager deletes the first one's checkpoint in progress
    (a temporary folder to it). The kernel releases the lock when its holder dies, however
    it dies, so a crashed run never blocks the next; the file keeps the holder's pid and
    host only to name it in the refusal (and, after a crash, in a note).

    The file exists only while a run holds it (or after a crash): ``release`` removes it,
    so a finished or refused run leaves no ``.lock`` behind. Removing a lock file is safe
    because a taker checks, once it holds the lock, that the name still leads to the
    file it locked (else it locked a removed file, and tries again).
    """

    def __init__(self, workdir: Path) -> None:
        self.path = Path(workdir) / LOCK_NAME
        self.fd: int | None = None

    def _holder(self, fd: int) -> dict:
        try:
            return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        except (OSError, ValueError):
            return {}

    def _open_locked(self) -> int:
        """A descriptor of ``self.path`` holding its lock, or SatsegError naming the holder."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = self._holder(fd)
                os.close(fd)
                raise SatsegError(
                    f"{self.path.parent}: another satseg train is writing it (pid "
                    f"{holder.get('pid', '?')} on host {holder.get('host', '?')}, lock "
                    f"{self.path}); wait for it to end, or use another --workdir") from None
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                return fd
            os.close(fd)  # the holder released (and removed) it between open and lock

    def acquire(self) -> None:
        """Take the lock or raise SatsegError naming the holder; writes only when taken."""
        fd = self._open_locked()
        stale, host = self._holder(fd), socket.gethostname()
        if stale.get("pid") and stale.get("host") == host and not _alive(int(stale["pid"])):
            print(f"note: {self.path}: took over the lock of pid {stale['pid']} on {host}, "
                  "which ended without releasing it", flush=True)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": host}).encode(), 0)
        self.fd = fd

    def release(self) -> None:
        """Remove the lock file and drop the lock (no-op when not held)."""
        if self.fd is not None:
            try:
                self.path.unlink(missing_ok=True)  # while held: no taker is in between
            except OSError:  # a folder gone read-only: at least clear the holder's name
                with contextlib.suppress(OSError):
                    os.ftruncate(self.fd, 0)
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ----------------------------------------------------------------------------- card


@dataclass(frozen=True)
class RunCard(BandsAndClasses):
    """What inference needs to know about a trained run (``RUN/run.json``)."""

    task: str
    model: str
    bands: tuple[str, ...]
    image_dtype: str | None
    nodata: float | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    patch_size: int
    input_size: int
    classes: tuple[dict, ...]  # {"id", "name", "colour"} per class id
    pixel_size: float | None  # ground units of the patches' CRS; None without a CRS
    provenance: dict = field(default_factory=dict)  # training dataset path + sha256

    def to_json(self) -> dict:
        """The card as written to ``run.json``."""
        return {
            "format": CARD_FORMAT, "task": self.task, "model": self.model,
            "bands": list(self.bands), "image_dtype": self.image_dtype, "nodata": self.nodata,
            "normalisation": {"mean": list(self.mean), "std": list(self.std),
                              "statistics_of": "the training dataset's train split"},
            "patch_size": self.patch_size, "input_size": self.input_size,
            "classes": [dict(c) for c in self.classes], "pixel_size": self.pixel_size,
            "provenance": dict(self.provenance),
        }

    @classmethod
    def from_json(cls, d: dict, path: Path) -> RunCard:
        """Parse ``run.json``; a missing field is an error naming the file."""
        try:
            if d.get("format") != CARD_FORMAT:
                raise KeyError(f"format {d.get('format')!r} (expected {CARD_FORMAT!r})")
            norm = d["normalisation"]
            return cls(task=str(d["task"]), model=str(d["model"]),
                       bands=tuple(d["bands"]), image_dtype=d.get("image_dtype"),
                       nodata=d.get("nodata"),
                       mean=tuple(float(x) for x in norm["mean"]),
                       std=tuple(float(x) for x in norm["std"]),
                       patch_size=int(d["patch_size"]), input_size=int(d["input_size"]),
                       classes=tuple(d["classes"]), pixel_size=d.get("pixel_size"),
                       provenance=dict(d.get("provenance", {})))
        except (KeyError, TypeError, ValueError) as e:
            raise SatsegError(f"{path}: not a valid run card ({e}); retrain, or delete it to "
                              "read the training dataset's card instead") from None

    def dataset_meta(self):
        """The card as the input pipeline's ``DatasetMeta`` (no splits: for inference and
        for normalising another dataset with this run's statistics)."""
        from satseg_jax.input_pipeline import DatasetMeta

        return DatasetMeta(
            data_dir=str(self.provenance.get("data_dir", "")), bands=self.bands,
            num_classes=self.num_classes, class_names=self.class_names, mean=self.mean,
            std=self.std, nodata=self.nodata, patch_size=self.patch_size, num_examples={},
            class_weights=(), task=self.task,
            info={"classes": [dict(c) for c in self.classes], "image_dtype": self.image_dtype})


def _sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def card_from_dataset(meta, config) -> RunCard:
    """The card of a run trained on the dataset ``meta`` with ``config``."""
    from satseg_jax.classes import classes_from_list, hex_colour
    from satseg_jax.input_pipeline import ground_pixel_size

    entries = meta.info.get("classes") or [
        {"id": i, "name": n} for i, n in enumerate(meta.class_names)]
    data_dir = Path(meta.data_dir).absolute()
    classes = classes_from_list(entries, f"{data_dir}/satseg_dataset.json")
    colours = classes.colours[:meta.num_classes]
    info = meta.info
    return RunCard(
        task=meta.task, model=str(config.model.name), bands=tuple(meta.bands),
        image_dtype=info.get("image_dtype"), nodata=meta.nodata, mean=tuple(meta.mean),
        std=tuple(meta.std), patch_size=int(meta.patch_size),
        input_size=steps.input_hw(config, meta.patch_size),
        classes=tuple({"id": i, "name": n, "colour": hex_colour(c)}
                      for i, (n, c) in enumerate(zip(meta.class_names, colours))),
        pixel_size=ground_pixel_size(meta),
        provenance={"data_dir": str(data_dir),
                    "satseg_dataset_sha256": _sha256(data_dir / "satseg_dataset.json"),
                    "tfds_name": info.get("tfds_name"),
                    "tfds_version": info.get("tfds_version"),
                    "split": info.get("split")},
    )


def write_card(workdir: Path, card: RunCard) -> Path:
    """Write ``WORKDIR/run.json`` atomically (process 0 only); return its path."""
    path = Path(workdir) / CARD_NAME
    if jax.process_index() == 0:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(card.to_json(), indent=2) + "\n")
    return path


def read_card(workdir: Path, config) -> RunCard:
    """The run's card; for a run written before cards, its training dataset's (noted)."""
    path = Path(workdir) / CARD_NAME
    if path.exists():
        try:
            return RunCard.from_json(json.loads(path.read_text()), path)
        except json.JSONDecodeError as e:
            raise SatsegError(f"{path}: not valid JSON ({e}); retrain, or delete it to read "
                              "the training dataset's card instead") from None
    from satseg_jax.input_pipeline import load_meta

    data_dir = Path(config.data.data_dir)
    if not data_dir.is_absolute() and not (data_dir / "satseg_dataset.json").exists():
        data_dir = Path(workdir) / data_dir  # a run moved together with its dataset
    if not (data_dir / "satseg_dataset.json").exists():
        raise SatsegError(
            f"{workdir}: has no {CARD_NAME} (trained before run cards) and its training "
            f"dataset {config.data.data_dir} is gone; such a run needs its dataset to "
            "predict: restore it there, or retrain")
    print(f"note: {workdir} has no {CARD_NAME} (trained before run cards); bands, classes "
          f"and normalisation are read from {data_dir}/satseg_dataset.json", flush=True)
    return card_from_dataset(load_meta(str(data_dir)), config)


# ----------------------------------------------------------------------------- loading


@dataclass
class Run:
    """A trained run restored onto this process's devices."""

    path: Path
    config: Any
    card: RunCard
    checkpoint: str | int  # what was asked for: best | latest | a step
    step: int  # the step restored
    runner: steps.Runner
    state: steps.TrainState
    checkpoint_meta: dict
    weights: str = "raw"  # "ema": ``state`` holds the moving-average weights

    @property
    def model(self):
        return self.runner.model

    def predict(self, images: np.ndarray | jax.Array) -> jax.Array:
        """Logits for a (batch, H, W, bands) array of *normalised* images (jitted; the
        batch must divide by the device count)."""
        return self.runner.predict(self.state, self.runner.shard({"image": images})["image"])


def load_run(path: str | Path, checkpoint: str | int = "best",
             parallelism: str | None = None, ema: bool = True) -> Run:
    """Load the run at ``path`` with its ``checkpoint`` (best | latest | a step).

    The restore target is built from the run's own config and card, so a checkpoint
    restores on whatever devices this process has, and nothing of the training dataset
    is read. ``parallelism`` overrides the run's jit/pmap mode (restore under another).
    A run trained with ``config.train.ema_decay`` > 0 predicts with its EMA weights (the
    ones training evaluated and chose "best" by) unless ``ema`` is False.
    """
    path = Path(path)
    config = load_workdir_config(path)
    if parallelism is not None:
        config.parallelism = parallelism
    card = read_card(path, config)
    # Steps whose Orbax metadata is damaged stay out of the manager (Orbax reads every
    # step's metadata when it opens) and are refused when chosen.
    corrupt = checkpoints.metadata_problems(path.absolute() / "checkpoints")
    manager = checkpoints.make_manager(path, read_only=True, skip=corrupt)
    try:
        try:
            step = checkpoints.resolve_step(manager, checkpoint, corrupt)
            if step is None:
                raise SatsegError(f"{path}/checkpoints: no checkpoint; train first")
            k = card.num_classes
            runner = steps.Runner(config, lambda axis: steps.build_model(config, k, axis), k)
            tx, _ = steps.create_optimizer(config)  # the restore target needs moments' shapes
            hw = card.input_size
            template = steps.create_train_state(0, steps.build_model(config, k), tx,
                                                (1, hw, hw, card.num_bands),
                                                ema=steps.ema_settings(config)[0] > 0)
            state, ck_meta = checkpoints.restore(manager, step, runner.abstract_state(template))
        except checkpoints.CorruptCheckpoint as e:
            # Never evaluate or predict from damaged weights; name the ones left to use.
            others = sorted(s for s in manager.all_steps() if s != e.step)
            raise SatsegError(f"{e}; pick another with --checkpoint (saved steps: "
                              f"{others or 'none'})") from None
    finally:
        manager.close()
    weights = "ema" if ema and steps.has_ema(state) else "raw"
    if weights == "ema":
        state = steps.eval_state(state)
    return Run(path=path, config=config, card=card, checkpoint=checkpoint, step=int(step),
               runner=runner, state=runner.place_state(state), checkpoint_meta=ck_meta,
               weights=weights)
