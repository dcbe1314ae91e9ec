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

import contextlib
import json
import math
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from satseg_jax.classes import IGNORE_LABEL
from satseg_jax.datasets.folder import read_patches_folder
from satseg_jax.datasets.splits import (
    SPLITS,
    assign_from_split_file,
    assign_splits,
    check_fractions,
    split_counts,
)
from satseg_jax.datasets.statistics import (
    BandStats,
    DatasetStats,
    inverse_frequency_weights,
    valid_pixels,
)
from satseg_jax.errors import SatsegError
from satseg_jax.io_utils import atomic_dir

FORMAT_VERSION = 1
INFO_FILE = "satseg_dataset.json"


@contextlib.contextmanager
def _tfds_progress(tfds, enable: bool) -> Iterator[None]:
    """Set tfds's own progress bars for the duration of a build, then restore them.

    Ours (one per split, with totals) replace tfds's, which do not know the totals.
    """
    from tensorflow_datasets.core.utils import tqdm_utils

    was = getattr(tqdm_utils, "_active", True)
    tfds.display_progress_bar(enable)
    try:
        yield
    finally:
        tfds.display_progress_bar(was)


def _check_out_dir(patches_dir: Path, out_dir: Path) -> None:
    src, out = patches_dir.resolve(), out_dir.resolve()
    if out == src or src.is_relative_to(out):
        raise SatsegError(f"--out {out_dir}: is or contains the patches folder {patches_dir}; "
                          "choose another output folder")


def _prepare(builder, tfds, tmp: Path, manual_dir: Path | None,
             beam: dict | None = None) -> None:
    """Run tfds's generation into ``tmp`` without network access, then tidy up.

    ``beam``: DownloadConfig's ``beam_runner``/``beam_options`` (see :func:`_beam_config`);
    a SatsegError raised on a Beam worker comes back as the same one-line SatsegError.
    """
    config = {"manual_dir": str(manual_dir)} if manual_dir is not None else {}
    errors = contextlib.nullcontext()
    if beam:
        from satseg_jax.datasets.beam_pipeline import user_errors

        errors = user_errors()
    with errors:
        builder.download_and_prepare(
            download_dir=str(tmp / ".downloads"),
            download_config=tfds.download.DownloadConfig(
                **config, try_download_gcs=False, **(beam or {})),
            file_format="tfrecord",
        )
    shutil.rmtree(tmp / ".downloads", ignore_errors=True)  # tfds's (empty) download cache


def _beam_config(runner: str | None, options: str | None) -> dict | None:
    """Checked DownloadConfig settings for a Beam build, or None for a plain build.

    Checked before anything is read or written, so a misspelt runner or a missing Beam
    install is a one-line error that leaves no output behind.
    """
    if runner is None:
        if options:
            raise SatsegError("--beam-options needs --beam-runner (e.g. --beam-runner "
                              "DirectRunner); without a runner the build does not use Beam")
        return None
    from satseg_jax.datasets.tfenv import import_beam

    import_beam()  # a SatsegError naming the install command when Beam is missing
    from satseg_jax.datasets.beam_pipeline import download_config_kwargs

    return download_config_kwargs(runner, options)


def _beam_work_dir(tmp: Path) -> Path:
    """Where a Beam build's index rows and statistics files go: inside the temporary
    output folder, so the workers see it when they see the output, and a failed build
    removes it with the rest."""
    work = tmp / ".beam"
    work.mkdir()
    return work


DEFAULT_SPLIT = (0.7, 0.15, 0.15)


def _check_split_file_alone(split_file, split, split_by, block_size) -> None:
    """A split file fixes every patch's split, so fractions/method/block size given with
    it would be silently ignored: refuse them instead."""
    given = [flag for flag, v in (("--split", split), ("--split-by", split_by),
                                  ("--block-size", block_size)) if v is not None]
    if split_file is not None and given:
        raise SatsegError(f"--split-file {split_file}: the file fixes the splits; drop "
                          f"{', '.join(given)} (they apply only without --split-file)")


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
    _check_split_file_alone(split_file, split, split_by, block_size)
    fractions = check_fractions(DEFAULT_SPLIT if split is None else split)
    beam = _beam_config(beam_runner, beam_options)
    patches_dir, out_dir = Path(patches_dir), Path(out_dir)
    folder = read_patches_folder(patches_dir)
    _check_out_dir(patches_dir, out_dir)
    index_path = str(patches_dir / "index.csv")
    if split_file is not None:
        assignment, split_info = assign_from_split_file(
            folder.index_rows(), split_file, folder.sources, index_path=index_path)
    else:
        assignment, split_info = assign_splits(
            folder.index_rows(), fractions, seed=seed, method=split_by or "block",
            block_size=block_size, stride=folder.stride, index_path=index_path)

    from satseg_jax.datasets.tfenv import import_tfds

    tfds = import_tfds()
    from satseg_jax.datasets.patches import NAME, VERSION, PatchLayout, SatsegPatches

    classes = folder.classes
    stats = DatasetStats(len(folder.bands), classes.num_classes, folder.nodata)

    def on_example(split_name: str, ex: dict) -> None:
        stats.add(split_name, ex["image"], ex["mask"],
                  where=str(folder.mask_path(ex["patch_id"])))

    layout = PatchLayout(size=folder.size, bands=tuple(folder.bands), dtype=folder.dtype,
                         nodata=folder.nodata)
    with _tfds_progress(tfds, False), atomic_dir(out_dir, overwrite=overwrite) as tmp:
        if beam is None:
            builder = SatsegPatches(data_dir=str(tmp), layout=layout, assignment=assignment,
                                    on_example=on_example, progress=progress)
            _prepare(builder, tfds, tmp, patches_dir)
        else:
            from satseg_jax.datasets.beam_pipeline import read_stats

            work = _beam_work_dir(tmp)
            builder = SatsegPatches(data_dir=str(tmp), layout=layout, assignment=assignment,
                                    beam_work_dir=work, progress=progress)
            _prepare(builder, tfds, tmp, patches_dir, beam)
            read_stats(work, into=stats)
            shutil.rmtree(work)
        mean, std = stats.band_summary()
        written = {s: (builder.info.splits[s].num_examples if s in builder.info.splits else 0)
                   for s in SPLITS}
        if written != split_counts(assignment) or written != stats.examples:
            raise RuntimeError(f"tfds wrote {written} examples, expected "
                               f"{split_counts(assignment)} (seen {stats.examples})")
        info = {
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
            "stats_split": "train",
            "stats_valid_pixels": int(stats.bands.n[0]),
            "class_pixel_counts": {s: stats.class_counts[s].tolist() for s in SPLITS},
            "ignored_pixel_counts": dict(stats.ignored),
            "num_examples": written,
            "class_weights": inverse_frequency_weights(stats.class_counts["train"]).tolist(),
            "class_weights_method": "inverse_frequency_train_mean1_absent0",
            "split": split_info,
            "assignment": assignment,
            "source_patches": str(patches_dir.resolve()),
        }
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
    if not n.get("validation"):
        # Training evaluates config.data.eval_split ("validation" in the shipped configs).
        lines.append("note: the validation split is empty, and training evaluates it by "
                     "default: rebuild with validation images, or train with "
                     "--config.data.eval_split=test (checkpoints are then chosen on test)")
    lines.append(f"band statistics ({info.get('stats_split', 'train')} split, valid pixels):")
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
    weights = info.get("class_weights") or [math.nan] * len(names)
    for i, name in enumerate(names):
        row = "  ".join(f"{cells[s][i]:>{width[s]}}" for s in SPLITS)
        lines.append(f"  {name:<{cw}}  {row}  {weights[i]:7.3f}")
    if info.get("task") != "classification":
        ign = info["ignored_pixel_counts"]
        lines.append(f"  {'ignored':<{cw}}  "
                     + "  ".join(f"{ign[s]:>{width[s]}}" for s in SPLITS))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- classification


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
    from tqdm import tqdm

    if split_by == "source":
        raise SatsegError("--split-by source needs a patches folder of several source images "
                          "(satseg patches --images/--masks); with --classification use "
                          "--split-by random or block")
    fractions = check_fractions(split)
    beam = _beam_config(beam_runner, beam_options)
    images_dir, out_dir = Path(images_dir), Path(out_dir)
    if not images_dir.is_dir():
        raise SatsegError(f"{images_dir}: folder not found; expected DIR/<class>/<image>")
    _check_out_dir(images_dir, out_dir)

    from satseg_jax.datasets import scenes
    from satseg_jax.datasets.tfenv import import_tfds

    tfds = import_tfds()
    names = scenes.class_names_for(images_dir)
    items = scenes.list_images(images_dir, names)
    if not items:
        raise SatsegError(f"{images_dir}: contains no images ({', '.join(scenes.IMAGE_SUFFIXES)})"
                          " in its class sub-folders")
    rc = [scenes.rowcol(eid) for eid, _, _ in items]
    if split_by == "block" and any(x is None for x in rc):
        raise SatsegError(f"{images_dir}: --split-by block needs names with r<row>_c<col> "
                          "(from satseg patches --scene-label); use --split-by random")
    index_rows = [{"patch_id": eid, "row": x[0] if x else 0, "col": x[1] if x else 0}
                  for (eid, _, _), x in zip(items, rc)]
    assignment, split_info = assign_splits(index_rows, fractions, seed=seed, method=split_by,
                                           block_size=block_size)
    first = scenes.read_image(items[0][2])
    shape, dtype = first.shape, first.dtype
    nodata = scenes.nodata_of(items[0][2])
    stats = BandStats(shape[-1])
    counts = {s: np.zeros(len(names), np.int64) for s in SPLITS}
    for eid, cid, path in tqdm(items, desc="statistics", unit="image", disable=not progress):
        img = scenes.read_image(path)
        if img.shape != shape or img.dtype != dtype:
            raise SatsegError(f"{path}: {img.shape} {img.dtype} differs from {items[0][2]}'s "
                              f"{shape} {dtype}; all images must share size, bands and dtype")
        s = assignment[eid]
        counts[s][cid] += 1
        if s == "train":
            stats.update(img, valid_pixels(img, nodata))
    if stats.n.min() == 0:
        raise SatsegError(f"{images_dir}: the train split has no valid pixel to compute band "
                          "statistics from")
    by_split = {s: [it for it in items if assignment[it[0]] == s] for s in SPLITS}
    bands = scenes.band_names(items[0][2], shape[-1])
    with _tfds_progress(tfds, progress), atomic_dir(out_dir, overwrite=overwrite) as tmp:
        work = _beam_work_dir(tmp) if beam is not None else None
        builder = scenes.SatsegScenes(
            data_dir=str(tmp), examples={s: v for s, v in by_split.items() if v},
            layout={"size": shape[0], "bands": bands, "dtype": str(dtype), "classes": names},
            beam_work_dir=work)
        _prepare(builder, tfds, tmp, None, beam)
        if work is not None:
            shutil.rmtree(work)
        info = {
            "format_version": FORMAT_VERSION, "task": "classification",
            "tfds_name": scenes.NAME, "tfds_version": str(scenes.SatsegScenes.VERSION),
            "builder_dir": f"{scenes.NAME}/{scenes.SatsegScenes.VERSION}",
            "bands": bands, "num_bands": len(bands), "image_dtype": str(dtype),
            "patch_size": int(shape[0]), "nodata": nodata, "crs": None,
            "classes": [{"id": i, "name": n} for i, n in enumerate(names)],
            "class_names": names, "num_classes": len(names), "ignore_label": IGNORE_LABEL,
            "mean": stats.mean.tolist(), "std": stats.std.tolist(), "stats_split": "train",
            "class_pixel_counts": {s: counts[s].tolist() for s in SPLITS},
            "class_example_counts": {s: counts[s].tolist() for s in SPLITS},
            "ignored_pixel_counts": dict.fromkeys(SPLITS, 0),
            "num_examples": {s: len(v) for s, v in by_split.items()},
            "class_weights": inverse_frequency_weights(counts["train"]).tolist(),
            "split": split_info, "assignment": assignment,
            "source_patches": str(images_dir.resolve()),
        }
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return info
