"""``satseg build``: a patches folder -> a tfds dataset + ``satseg_dataset.json``.

Output folder (a tfds ``data_dir``)::

    OUT/satseg_dataset.json             what the rest of satseg reads about the dataset
    OUT/satseg_patches/1.0.0/           tfds records + dataset_info.json, features.json

``satseg_dataset.json`` holds bands, classes, per-band mean/std of the **train** split
(valid pixels only), class pixel counts per split, example counts, class weights and
the split assignment. Open a split with ``builder_for(OUT).as_dataset(split="train")``
(or ``tfds.load("satseg_patches", data_dir=OUT, split="train")``).

Why one pass: each patch is read once; the statistics are accumulated from the very
examples handed to the tfds writer (a callback of the builder), so the numbers in
satseg_dataset.json describe exactly what is in the records. Why atomic: the whole
OUT folder is built under a temporary name beside it and renamed at the end, so a
failed build leaves no OUT behind (and ``--overwrite`` keeps the old one until the
new one is complete). Why offline: tfds is told never to look for prepared data on
GCS (``try_download_gcs=False``) and the builder reads only its manual dir.

With ``beam_runner`` (``satseg build --beam-runner DirectRunner|DataflowRunner|...``) the
examples are read and written by an Apache Beam pipeline instead (``beam_pipeline``),
so a build can spread over a cluster; the statistics are then combined inside that
pipeline. Without it nothing changes: not a byte of the records, not a number.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from satseg_jax.classes import IGNORE_LABEL
from satseg_jax.datasets import classification_folder
from satseg_jax.datasets.patches_folder import PatchLayout, read_patches_folder
from satseg_jax.datasets.split_file import assign_from_split_file
from satseg_jax.datasets.splits import (
    SPLITS,
    assign_splits,
    check_fractions,
    split_counts,
)
from satseg_jax.datasets.statistics import (
    BandStats,
    DatasetStats,
    inverse_frequency_weights,
)
from satseg_jax.datasets.tfds_prepare import (
    beam_config,
    beam_work_dir,
    prepare,
    tfds_progress,
)
from satseg_jax.errors import SatsegError
from satseg_jax.io_utils import atomic_dir, refuse_overwriting_inputs
from satseg_jax.raster.io import valid_pixels

FORMAT_VERSION = 1
INFO_FILE = "satseg_dataset.json"


DEFAULT_SPLIT = (0.7, 0.15, 0.15)
NORMALISATION_FROM_RUN = ("none stored: no train split; satseg evaluate normalises with "
                          "the run's train statistics (RUN/run.json)")


def _check_split_file_alone(split_file, split, split_by, block_size) -> None:
    """A split file fixes every patch's split, so fractions/method/block size given with
    it would be silently ignored: refuse them instead."""
    given = [flag for flag, v in (("--split", split), ("--split-by", split_by),
                                  ("--block-size", block_size)) if v is not None]
    if split_file is not None and given:
        raise SatsegError(f"--split-file {split_file}: the file fixes the splits; drop "
                          f"{', '.join(given)} (they apply only without --split-file)")


def _assign(folder, split_file, fractions, seed: int, split_by: str | None,
            block_size: int | None, index_path: str) -> tuple[dict, dict]:
    """(patch id -> split, split description) from the split file or by ``split_by``."""
    if split_file is not None:
        return assign_from_split_file(folder.index_rows(), split_file, folder.sources,
                                      index_path=index_path)
    return assign_splits(folder.index_rows(), fractions, seed=seed, method=split_by or "block",
                         block_size=block_size, stride=folder.stride, index_path=index_path)


def _write_patch_records(tfds, tmp: Path, folder, patches_dir: Path, layout,
                         assignment: dict, stats: DatasetStats, beam: dict | None,
                         progress: bool):
    """Generate the TFRecords into ``tmp``, plainly or with Beam, filling ``stats`` either
    way (on the fly here, or from the pipeline's per-split files); return the builder."""
    from satseg_jax.datasets.segmentation_builder import SatsegPatches

    if beam is None:
        def on_example(split_name: str, ex: dict) -> None:
            stats.add(split_name, ex["image"], ex["mask"],
                      where=str(folder.mask_path(ex["patch_id"])))

        builder = SatsegPatches(data_dir=str(tmp), layout=layout, assignment=assignment,
                                on_example=on_example, progress=progress)
        prepare(builder, tfds, tmp, patches_dir)
        return builder
    from satseg_jax.datasets.beam_pipeline import read_stats

    work = beam_work_dir(tmp)
    builder = SatsegPatches(data_dir=str(tmp), layout=layout, assignment=assignment,
                            beam_work_dir=work, progress=progress)
    prepare(builder, tfds, tmp, patches_dir, beam)
    read_stats(work, into=stats)
    shutil.rmtree(work)
    return builder


def _check_written(builder, assignment: dict, stats: DatasetStats) -> dict[str, int]:
    """Examples per split as tfds wrote them; they must equal the assignment and what the
    statistics saw (a mismatch is a bug, not a user error)."""
    written = {s: (builder.info.splits[s].num_examples if s in builder.info.splits else 0)
               for s in SPLITS}
    if written != split_counts(assignment) or written != stats.examples:
        raise RuntimeError(f"tfds wrote {written} examples, expected "
                           f"{split_counts(assignment)} (seen {stats.examples})")
    return written


def _segmentation_info(folder, stats: DatasetStats, written: dict, split_info: dict,
                       assignment: dict, patches_dir: Path) -> dict:
    """The satseg_dataset.json of a segmentation dataset (what training reads)."""
    from satseg_jax.datasets.segmentation_builder import NAME, VERSION

    classes = folder.classes
    test_only = written["train"] == 0
    # No train split (a test set built on its own): no statistics to normalise with;
    # evaluate uses the run's (RUN/run.json), i.e. those of the data it was trained on.
    mean, std = (None, None) if test_only else stats.band_summary()
    return {
        "format_version": FORMAT_VERSION,
        "task": "segmentation",
        "tfds_name": NAME,
        "tfds_version": VERSION,
        "builder_dir": f"{NAME}/{VERSION}",
        "bands": folder.bands,
        "num_bands": len(folder.bands),
        "image_dtype": folder.dtype,
        "patch_size": folder.size,
        "nodata": folder.nodata,
        "crs": folder.crs,
        "classes": classes.to_json(),
        "class_names": classes.names,
        "num_classes": classes.num_classes,
        "ignore_label": IGNORE_LABEL,
        "mean": mean,
        "std": std,
        "stats_split": None if test_only else "train",
        "normalisation": NORMALISATION_FROM_RUN if test_only else "train split statistics",
        "stats_valid_pixels": int(stats.bands.n[0]),
        "class_pixel_counts": {s: stats.class_counts[s].tolist() for s in SPLITS},
        "ignored_pixel_counts": dict(stats.ignored),
        "num_examples": written,
        "class_weights": None if test_only else
        inverse_frequency_weights(stats.class_counts["train"]).tolist(),
        "class_weights_method": "inverse_frequency_train_mean1_absent0",
        "split": split_info,
        "assignment": assignment,
        "source_patches": str(patches_dir.resolve()),
    }


def build_dataset(patches_dir: str | Path, out_dir: str | Path,
                  split: Sequence[float] | None = None, seed: int = 0,
                  split_by: str | None = None, block_size: int | None = None,
                  overwrite: bool = False, progress: bool = True,
                  beam_runner: str | None = None, beam_options: str | None = None,
                  split_file: str | Path | None = None) -> dict:
    """Write the tfds dataset and ``satseg_dataset.json`` into ``out_dir``; return the info.

    ``split``: train/validation/test fractions (sum 1; default 0.7, 0.15, 0.15).
    ``split_by``: ``block`` (default; whole spatial blocks of ``block_size``×``block_size``
    patches per split, default size gives about 20 blocks; blocks never span two source
    images), ``random``, or ``source`` (whole source images per split; folders from
    ``satseg patches --images/--masks``). ``split_file``: a JSON file listing the source
    images of each split (``{"train": [...], "validation": [...], "test": [...]}``),
    exclusive with ``split``/``split_by``/``block_size``; its validation (or test) split
    may be empty. ``seed`` fixes the assignment. ``beam_runner``
    (e.g. ``DirectRunner``) generates the examples with Apache Beam, with
    ``beam_options`` a string of Beam flags (``"--direct_num_workers=2"``); the dataset
    holds the same examples and numbers. Raises SatsegError (and leaves no ``out_dir``)
    for a missing/empty/incomplete patches folder, bad fractions, an existing ``out_dir``
    without ``overwrite``, inconsistent patches, or an unusable Beam runner/options.
    """
    from satseg_jax.datasets.tfenv import import_tfds

    _check_split_file_alone(split_file, split, split_by, block_size)
    fractions = check_fractions(DEFAULT_SPLIT if split is None else split)
    beam = beam_config(beam_runner, beam_options)
    patches_dir, out_dir = Path(patches_dir), Path(out_dir)
    refuse_overwriting_inputs({"out_dir": out_dir}, {"patches_dir": patches_dir,
                              "split_file": split_file}, folders=("out_dir",))
    folder = read_patches_folder(patches_dir)
    assignment, split_info = _assign(folder, split_file, fractions, seed, split_by,
                                     block_size, str(patches_dir / "index.csv"))
    tfds = import_tfds()
    stats = DatasetStats(len(folder.bands), folder.classes.num_classes, folder.nodata)
    layout = PatchLayout(size=folder.size, bands=tuple(folder.bands), dtype=folder.dtype,
                         nodata=folder.nodata)
    with tfds_progress(tfds, False), atomic_dir(out_dir, overwrite=overwrite) as tmp:
        builder = _write_patch_records(tfds, tmp, folder, patches_dir, layout, assignment,
                                       stats, beam, progress)
        written = _check_written(builder, assignment, stats)
        info = _segmentation_info(folder, stats, written, split_info, assignment, patches_dir)
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return info


def load_dataset_info(data_dir: str | Path) -> dict:
    """Read and check ``DATA/satseg_dataset.json`` (format version, required keys)."""
    path = Path(data_dir) / INFO_FILE
    if not path.is_file():
        raise SatsegError(f"{path}: not found; is {data_dir} a dataset folder written by "
                          "satseg build? Build one with satseg build --patches DIR --out "
                          f"{data_dir}")
    try:
        info = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise SatsegError(f"{path}: not valid JSON ({e}); rebuild with satseg build") from None
    version = info.get("format_version") if isinstance(info, dict) else None
    if version != FORMAT_VERSION:
        raise SatsegError(f"{path}: dataset dir from an incompatible version: rebuild with "
                          f"satseg build (format_version {version!r}, this satseg reads "
                          f"{FORMAT_VERSION})")
    missing = [k for k in ("builder_dir", "bands", "num_classes", "num_examples", "mean", "std")
               if k not in info]
    if missing:
        raise SatsegError(f"{path}: missing field(s) {', '.join(missing)}: rebuild with "
                          "satseg build")
    return info


def builder_for(data_dir: str | Path):
    """The tfds builder of a built dataset, read back from its directory (no code needed).

    ``builder_for(DATA).as_dataset(split="train")`` is a ``tf.data.Dataset`` of dicts.
    """
    from satseg_jax.datasets.tfenv import import_tfds

    info = load_dataset_info(data_dir)
    path = Path(data_dir) / info["builder_dir"]
    if not (path / "dataset_info.json").is_file():
        raise SatsegError(f"{path}: tfds records not found (no dataset_info.json); the dataset "
                          "folder is incomplete: rebuild with satseg build")
    return import_tfds().builder_from_directory(str(path))


# ----------------------------------------------------------------------------- summary


def _fmt_num(x: float) -> str:
    return f"{x:.4g}" if abs(x) < 1e4 else f"{x:.0f}"


def format_summary(info: dict) -> str:
    """A readable multi-line summary of a built dataset (``satseg build`` prints it)."""
    sp = info["split"]
    how = sp["method"]
    if how == "block":
        how += f", blocks of {sp['block_size']}x{sp['block_size']} patches ({sp['num_blocks']})"
        if sp.get("num_sources"):
            how += f" within {sp['num_sources']} source images"
    if sp["method"] == "file":
        split_line = (f"split: file {sp['split_file']} (sha256 "
                      f"{sp['split_file_sha256'][:12]})")
    else:
        fr = "/".join(f"{f:g}" for f in sp["fractions"])
        split_line = f"split: {how}; fractions {fr}; seed {sp['seed']}"
    if sp.get("sources"):
        split_line += "; source images: " + ", ".join(f"{s} {len(sp['sources'][s])}"
                                                      for s in SPLITS)
    n = info["num_examples"]
    lines = [
        f"dataset: {info['tfds_name']} {info['tfds_version']} ({info.get('task', 'segmentation')}"
        f"), records in {info['builder_dir']}",
        f"bands: {', '.join(info['bands'])} ({info['image_dtype']}, {info['patch_size']} px, "
        f"nodata {info.get('nodata')})",
        split_line,
        "examples: " + ", ".join(f"{s} {n.get(s, 0)}" for s in SPLITS)
        + f" (total {sum(n.values())})",
    ]
    test_only = info.get("mean") is None
    if not n.get("validation") and not test_only:
        # Training evaluates config.data.eval_split ("validation" in the shipped configs).
        lines.append("note: the validation split is empty, and training evaluates it by "
                     "default: rebuild with validation images, or train with "
                     "--config.data.eval_split=test (checkpoints are then chosen on test)")
    if test_only:
        lines += ["test-only dataset (no train patches): score a run on it with satseg "
                  "evaluate --workdir RUN --data DATA --split "
                  + ("test" if n.get("test") else "validation"),
                  f"band statistics: {info.get('normalisation', NORMALISATION_FROM_RUN)}"]
    else:
        lines.append(f"band statistics ({info.get('stats_split', 'train')} split, valid "
                     "pixels):")
        bw = max(len(b) for b in info["bands"] + ["band"])
        lines.append(f"  {'band':<{bw}}  {'mean':>10}  {'std':>10}")
        for b, m, s in zip(info["bands"], info["mean"], info["std"]):
            lines.append(f"  {b:<{bw}}  {_fmt_num(m):>10}  {_fmt_num(s):>10}")
    names = info["class_names"]
    cw = max(len(x) for x in names + ["ignored", "class"])
    if info.get("task") == "classification":
        counts, title = info["class_example_counts"], "examples per class and split:"
    else:
        counts, title = info["class_pixel_counts"], "class pixel share per split (pixels):"
    totals = {s: max(1, sum(counts[s])) for s in SPLITS}
    cells = {s: [f"{100 * c / totals[s]:.1f}% ({c})" for c in counts[s]] for s in SPLITS}
    width = {s: max(len(s), *(len(c) for c in cells[s])) for s in SPLITS}
    lines += [title, f"  {'class':<{cw}}  " + "  ".join(f"{s:>{width[s]}}" for s in SPLITS)
              + f"  {'weight':>7}"]
    # A test-only dataset has no train pixels, hence no weights: '-', not 'nan'.
    weights = info.get("class_weights") or [None] * len(names)
    for i, name in enumerate(names):
        row = "  ".join(f"{cells[s][i]:>{width[s]}}" for s in SPLITS)
        w = "-" if weights[i] is None else f"{weights[i]:.3f}"
        lines.append(f"  {name:<{cw}}  {row}  {w:>7}")
    if info.get("task") != "classification":
        ign = info["ignored_pixel_counts"]
        lines.append(f"  {'ignored':<{cw}}  "
                     + "  ".join(f"{ign[s]:>{width[s]}}" for s in SPLITS))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- classification


def _class_images(images_dir: Path, split_by: str) -> tuple[list[str], list, list[dict]]:
    """(class names, [(example id, class id, path)], index rows for the split) of a
    classification folder; block splits need ``r<row>_c<col>`` in every name."""
    names = classification_folder.class_names_for(images_dir)
    items = classification_folder.list_images(images_dir, names)
    if not items:
        raise SatsegError(f"{images_dir}: contains no images "
                          f"({', '.join(classification_folder.IMAGE_SUFFIXES)})"
                          " in its class sub-folders")
    rc = [classification_folder.rowcol(eid) for eid, _, _ in items]
    if split_by == "block" and any(x is None for x in rc):
        raise SatsegError(f"{images_dir}: --split-by block needs names with r<row>_c<col> "
                          "(from satseg patches --scene-label); use --split-by random")
    index_rows = [{"patch_id": eid, "row": x[0] if x else 0, "col": x[1] if x else 0}
                  for (eid, _, _), x in zip(items, rc)]
    return names, items, index_rows


@dataclass
class _ImageStats:
    """What one pass over the classification images found (see ``_scan_images``)."""

    shape: tuple[int, ...]
    dtype: np.dtype
    nodata: float | int | None
    bands: BandStats
    counts: dict[str, np.ndarray]


def _scan_images(images_dir: Path, items: list, names: list[str], assignment: dict,
                 progress: bool) -> _ImageStats:
    """Read every image once: all must share the first one's shape and dtype; band
    statistics from the train split's valid pixels, examples per class and split."""
    from tqdm import tqdm

    first = classification_folder.read_image(items[0][2])
    shape, dtype = first.shape, first.dtype
    nodata = classification_folder.nodata_of(items[0][2])
    stats = BandStats(shape[-1])
    counts = {s: np.zeros(len(names), np.int64) for s in SPLITS}
    for eid, cid, path in tqdm(items, desc="statistics", unit="image", disable=not progress):
        img = classification_folder.read_image(path)
        if img.shape != shape or img.dtype != dtype:
            raise SatsegError(f"{path}: {img.shape} {img.dtype} differs from {items[0][2]}'s "
                              f"{shape} {dtype}; all images must share size, bands and dtype")
        s = assignment[eid]
        counts[s][cid] += 1
        if s == "train":
            stats.update(img, valid_pixels(img, nodata, channels_last=True))
    if stats.n.min() == 0:
        raise SatsegError(f"{images_dir}: the train split has no valid pixel to compute band "
                          "statistics from")
    return _ImageStats(shape, dtype, nodata, stats, counts)


def _classification_info(scan: _ImageStats, bands: list[str], names: list[str],
                         by_split: dict, split_info: dict, assignment: dict,
                         images_dir: Path) -> dict:
    """The satseg_dataset.json of a classification dataset."""
    from satseg_jax.datasets.classification_builder import NAME, SatsegScenes

    counts = scan.counts
    return {
        "format_version": FORMAT_VERSION, "task": "classification",
        "tfds_name": NAME, "tfds_version": str(SatsegScenes.VERSION),
        "builder_dir": f"{NAME}/{SatsegScenes.VERSION}",
        "bands": bands, "num_bands": len(bands), "image_dtype": str(scan.dtype),
        "patch_size": int(scan.shape[0]), "nodata": scan.nodata, "crs": None,
        "classes": [{"id": i, "name": n} for i, n in enumerate(names)],
        "class_names": names, "num_classes": len(names), "ignore_label": IGNORE_LABEL,
        "mean": scan.bands.mean.tolist(), "std": scan.bands.std.tolist(),
        "stats_split": "train",
        "class_pixel_counts": {s: counts[s].tolist() for s in SPLITS},
        "class_example_counts": {s: counts[s].tolist() for s in SPLITS},
        "ignored_pixel_counts": dict.fromkeys(SPLITS, 0),
        "num_examples": {s: len(v) for s, v in by_split.items()},
        "class_weights": inverse_frequency_weights(counts["train"]).tolist(),
        "split": split_info, "assignment": assignment,
        "source_patches": str(images_dir.resolve()),
    }


def build_classification_dataset(images_dir: str | Path, out_dir: str | Path,
                                 split: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 0,
                                 split_by: str = "random", block_size: int | None = None,
                                 overwrite: bool = False, progress: bool = True,
                                 beam_runner: str | None = None,
                                 beam_options: str | None = None) -> dict:
    """Class-folder images -> tfds ``satseg_scenes`` dataset + satseg_dataset.json.

    ``split_by='block'`` needs example names holding ``r<row>_c<col>`` (as written by
    ``satseg patches --scene-label``); the block split then keeps neighbours together.
    ``beam_runner``/``beam_options``: as for :func:`build_dataset` (the statistics pass
    over the images, which also checks their shapes, stays in this process).
    """
    from satseg_jax.datasets.tfenv import import_tfds

    if split_by == "source":
        raise SatsegError("--split-by source needs a patches folder of several source images "
                          "(satseg patches --images/--masks); with --classification use "
                          "--split-by random or block")
    fractions = check_fractions(split)
    beam = beam_config(beam_runner, beam_options)
    images_dir, out_dir = Path(images_dir), Path(out_dir)
    refuse_overwriting_inputs({"out_dir": out_dir}, {"images_dir": images_dir},
                              folders=("out_dir",))
    if not images_dir.is_dir():
        raise SatsegError(f"{images_dir}: folder not found; expected DIR/<class>/<image>")
    tfds = import_tfds()
    from satseg_jax.datasets.classification_builder import SatsegScenes

    names, items, index_rows = _class_images(images_dir, split_by)
    assignment, split_info = assign_splits(index_rows, fractions, seed=seed, method=split_by,
                                           block_size=block_size)
    scan = _scan_images(images_dir, items, names, assignment, progress)
    by_split = {s: [it for it in items if assignment[it[0]] == s] for s in SPLITS}
    bands = classification_folder.band_names(items[0][2], scan.shape[-1])
    with tfds_progress(tfds, progress), atomic_dir(out_dir, overwrite=overwrite) as tmp:
        work = beam_work_dir(tmp) if beam is not None else None
        builder = SatsegScenes(
            data_dir=str(tmp), examples={s: v for s, v in by_split.items() if v},
            layout={"size": scan.shape[0], "bands": bands, "dtype": str(scan.dtype),
                    "classes": names},
            beam_work_dir=work)
        prepare(builder, tfds, tmp, None, beam)
        if work is not None:
            shutil.rmtree(work)
        info = _classification_info(scan, bands, names, by_split, split_info, assignment,
                                    images_dir)
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return info
