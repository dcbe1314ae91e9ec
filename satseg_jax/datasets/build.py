"""``satseg build``: a patches folder -> tfds dataset + ``satseg_dataset.json``.

``DATA/satseg_dataset.json`` is what the rest of the project reads about a dataset:
bands, classes, per-band mean/std of the **train** split (valid pixels only), class
pixel counts per split, example counts, class weights and the split assignment. The
TFRecords live in ``DATA/satseg_patches/1.0.0`` (``builder_dir``).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np

from satseg_jax.classes import IGNORE_LABEL, load_classes
from satseg_jax.datasets.splits import SPLITS, assign_splits
from satseg_jax.datasets.statistics import BandStats, inverse_frequency_weights
from satseg_jax.errors import SatsegError
from satseg_jax.io_utils import atomic_dir

FORMAT_VERSION = 1
INFO_FILE = "satseg_dataset.json"


def _read_patches_folder(patches_dir: Path) -> tuple[dict, list[dict]]:
    if not patches_dir.is_dir():
        raise SatsegError(f"{patches_dir}: patches folder not found; run satseg patches first")
    missing = [n for n in ("patches.json", "index.csv", "classes.json")
               if not (patches_dir / n).exists()]
    if missing:
        hint = ("contains no patches" if not any(patches_dir.iterdir())
                else f"lacks {', '.join(missing)}")
        raise SatsegError(f"{patches_dir}: {hint}; run satseg patches first (it writes "
                          "images/, masks/, index.csv, patches.json, classes.json)")
    layout = json.loads((patches_dir / "patches.json").read_text())
    if layout.get("format_version") != 1:
        raise SatsegError(f"{patches_dir}/patches.json: format_version "
                          f"{layout.get('format_version')!r} is not supported; re-run satseg "
                          "patches with this version")
    with open(patches_dir / "index.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise SatsegError(f"{patches_dir}/index.csv lists no patches; run satseg patches with a "
                          "lower --min-valid or on another scene")
    return layout, rows


def build_dataset(patches_dir: Path, out_dir: Path, split=(0.7, 0.15, 0.15), seed: int = 0,
                  split_by: str = "block", block_size: int | None = None,
                  overwrite: bool = False, progress: bool = True) -> dict:
    """Write the tfds dataset and satseg_dataset.json into ``out_dir``; return the info."""
    from tqdm import tqdm

    from satseg_jax.input_pipeline import import_tf

    import_tf()
    import tensorflow_datasets as tfds

    from satseg_jax.datasets.patches import NAME, SatsegPatches, read_patch

    patches_dir, out_dir = Path(patches_dir), Path(out_dir)
    layout, rows = _read_patches_folder(patches_dir)
    classes = load_classes(patches_dir / "classes.json")
    ids = [r["patch_id"] for r in rows]
    assignment, split_info = assign_splits(
        ids, [int(r["row"]) for r in rows], [int(r["col"]) for r in rows], split, seed=seed,
        method=split_by, stride=int(layout["stride"]), block_size=block_size)

    # Statistics first (train only), reading each patch once; this also checks files.
    k = classes.num_classes
    stats = BandStats(len(layout["bands"]))
    counts = {s: np.zeros(k, np.int64) for s in SPLITS}
    ignored = dict.fromkeys(SPLITS, 0)
    n_examples = dict.fromkeys(SPLITS, 0)
    from satseg_jax.raster.patches import valid_pixels

    for pid in tqdm(ids, desc="statistics", unit="patch", disable=not progress):
        s = assignment[pid]
        ex = read_patch(patches_dir, pid)
        n_examples[s] += 1
        c = np.bincount(ex["mask"].ravel(), minlength=256)
        if c[k:IGNORE_LABEL].any():
            bad = np.flatnonzero(c[k:IGNORE_LABEL]) + k
            raise SatsegError(f"{patches_dir}/masks/{pid}.tif holds class ids {bad.tolist()} "
                              f"not in classes.json (0..{k - 1}, 255); re-run satseg patches")
        counts[s] += c[:k]
        ignored[s] += int(c[IGNORE_LABEL])
        if s == "train":
            image = np.moveaxis(ex["image"], -1, 0)
            stats.update(image, valid_pixels(image, layout.get("nodata")))
    if stats.n.min() == 0:
        raise SatsegError(f"{patches_dir}: the train split has no valid pixel to compute band "
                          "statistics from")

    if not progress:
        tfds.disable_progress_bar()
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        builder = SatsegPatches(
            data_dir=str(tmp),
            layout={"size": layout["size"], "bands": layout["bands"], "dtype": layout["dtype"]},
            assignment=assignment,
        )
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(
                manual_dir=str(patches_dir), try_download_gcs=False),
            file_format="tfrecord",
        )
        info = {
            "format_version": FORMAT_VERSION, "task": "segmentation", "tfds_name": NAME,
            "tfds_version": str(SatsegPatches.VERSION),
            "builder_dir": f"{NAME}/{SatsegPatches.VERSION}",
            "bands": list(layout["bands"]), "num_bands": len(layout["bands"]),
            "image_dtype": layout["dtype"], "patch_size": int(layout["size"]),
            "nodata": layout.get("nodata"), "crs": layout.get("crs"),
            "classes": classes.to_json(), "class_names": classes.names, "num_classes": k,
            "ignore_label": IGNORE_LABEL,
            "mean": stats.mean.tolist(), "std": stats.std.tolist(), "stats_split": "train",
            "class_pixel_counts": {s: counts[s].tolist() for s in SPLITS},
            "ignored_pixel_counts": ignored,
            "num_examples": n_examples,
            "class_weights": inverse_frequency_weights(counts["train"]).tolist(),
            "split": split_info,
            "assignment": assignment,
            "source_patches": str(patches_dir.absolute()),
        }
        import shutil

        shutil.rmtree(tmp / "downloads", ignore_errors=True)  # tfds's empty download cache
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return info


def load_dataset_info(data_dir: str | Path) -> dict:
    """Read and check ``DATA/satseg_dataset.json``."""
    path = Path(data_dir) / INFO_FILE
    if not path.exists():
        raise SatsegError(f"{path}: not found; is {data_dir} a dataset written by satseg build?")
    try:
        info = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise SatsegError(f"{path}: not valid JSON ({e}); rebuild with satseg build") from None
    if info.get("format_version") != FORMAT_VERSION:
        raise SatsegError(f"{path}: dataset dir from an incompatible version (format_version "
                          f"{info.get('format_version')!r}, expected {FORMAT_VERSION}); rebuild "
                          "it with satseg build")
    return info


def builder_for(data_dir: str | Path):
    """The tfds builder of a built dataset (read back from its directory)."""
    import tensorflow_datasets as tfds

    info = load_dataset_info(data_dir)
    return tfds.builder_from_directory(str(Path(data_dir) / info["builder_dir"]))


def format_summary(info: dict) -> str:
    """A readable multi-line summary of a built dataset."""
    if info.get("task") == "classification":
        names = info["class_names"]
        lines = [f"dataset: {info['tfds_name']} {info['tfds_version']} (classification, "
                 f"{info['split']['method']} split)",
                 f"images: {info['patch_size']} px, {info['num_bands']} bands "
                 f"({info['image_dtype']})",
                 "examples: " + ", ".join(f"{s} {n}" for s, n in info["num_examples"].items())]
        for i, n in enumerate(names):
            lines.append(f"  {n:<16}" + "  ".join(
                f"{s} {info['class_example_counts'][s][i]:>5}" for s in SPLITS))
        return "\n".join(lines)
    lines = [f"dataset: {info['tfds_name']} {info['tfds_version']} "
             f"({info['split']['method']} split"
             + (f", block {info['split'].get('block_size')} patches" if
                info['split']['method'] == 'block' else "") + ")",
             f"patches: {info['patch_size']} px, bands {', '.join(info['bands'])} "
             f"({info['image_dtype']})",
             "examples: " + ", ".join(f"{s} {n}" for s, n in info["num_examples"].items()),
             "band mean/std (train): " + ", ".join(
                 f"{b} {m:.1f}/{s:.1f}" for b, m, s in zip(info["bands"], info["mean"],
                                                        info["std"])),
             "class pixel share per split:"]
    width = max(len(n) for n in info["class_names"])
    lines.append(f"  {'class':<{width}}  " + "  ".join(f"{s:>10}" for s in SPLITS))
    totals = {s: max(1, sum(info["class_pixel_counts"][s])) for s in SPLITS}
    for i, name in enumerate(info["class_names"]):
        cells = "  ".join(f"{100 * info['class_pixel_counts'][s][i] / totals[s]:9.1f}%"
                          for s in SPLITS)
        lines.append(f"  {name:<{width}}  {cells}")
    lines.append("  " + " " * width + "  " + "  ".join(
        f"{'ignored ' + str(info['ignored_pixel_counts'][s]):>10}" for s in SPLITS))
    if any(math.isnan(x) for x in info["mean"]):
        lines.append("warning: NaN band statistics")
    return "\n".join(lines)


def build_classification_dataset(images_dir: Path, out_dir: Path, split=(0.7, 0.15, 0.15),
                                 seed: int = 0, split_by: str = "random",
                                 block_size: int | None = None, overwrite: bool = False,
                                 progress: bool = True) -> dict:
    """Class-folder images -> tfds ``satseg_scenes`` dataset + satseg_dataset.json.

    ``split_by='block'`` needs example names holding ``r<row>_c<col>`` (as written by
    ``satseg patches --scene-label``); the block split then keeps neighbours together.
    """
    from tqdm import tqdm

    from satseg_jax.input_pipeline import import_tf

    import_tf()
    import tensorflow_datasets as tfds

    from satseg_jax.datasets import scenes

    images_dir, out_dir = Path(images_dir), Path(out_dir)
    if not images_dir.is_dir():
        raise SatsegError(f"{images_dir}: folder not found; expected DIR/<class>/<image>")
    names = scenes.class_names_for(images_dir)
    items = scenes.list_images(images_dir, names)
    if not items:
        raise SatsegError(f"{images_dir}: contains no images ({', '.join(scenes.IMAGE_SUFFIXES)})"
                          " in its class sub-folders")
    ids = [eid for eid, _, _ in items]
    rc = [scenes.rowcol(eid) for eid in ids]
    if split_by == "block" and any(x is None for x in rc):
        raise SatsegError(f"{images_dir}: --split-by block needs names with r<row>_c<col> "
                          "(from satseg patches --scene-label); use --split-by random")
    rows = [x[0] if x else 0 for x in rc]
    cols = [x[1] if x else 0 for x in rc]
    stride = min((abs(a - b) for a in set(rows) for b in set(rows) if a != b), default=1)
    assignment, split_info = assign_splits(ids, rows, cols, split, seed=seed, method=split_by,
                                           stride=stride, block_size=block_size)
    first = scenes.read_image(items[0][2])
    shape, dtype = first.shape, first.dtype
    stats = BandStats(shape[-1])
    counts = {s: np.zeros(len(names), np.int64) for s in SPLITS}
    from satseg_jax.raster.patches import valid_pixels

    nodata = _nodata_of(items[0][2])
    for eid, cid, path in tqdm(items, desc="statistics", unit="image", disable=not progress):
        img = scenes.read_image(path)
        if img.shape != shape or img.dtype != dtype:
            raise SatsegError(f"{path}: {img.shape} {img.dtype} differs from {items[0][2]}'s "
                              f"{shape} {dtype}; all images must share size, bands and dtype")
        s = assignment[eid]
        counts[s][cid] += 1
        if s == "train":
            chw = np.moveaxis(img, -1, 0)
            stats.update(chw, valid_pixels(chw, nodata))
    by_split = {s: [it for it in items if assignment[it[0]] == s] for s in SPLITS}
    bands = _band_names(items[0][2], shape[-1])
    if not progress:
        tfds.disable_progress_bar()
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        builder = scenes.SatsegScenes(
            data_dir=str(tmp), examples={s: v for s, v in by_split.items() if v},
            layout={"size": shape[0], "bands": bands, "dtype": str(dtype), "classes": names})
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(try_download_gcs=False),
            file_format="tfrecord")
        import shutil

        shutil.rmtree(tmp / "downloads", ignore_errors=True)
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
            "source_patches": str(images_dir.absolute()),
        }
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return info


def _band_names(path: Path, count: int) -> list[str]:
    """Band descriptions of a GeoTIFF (as compose writes them), else band1..bandN."""
    import warnings

    import rasterio

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rasterio.open(path) as src:
            desc = list(src.descriptions)
    return [d or f"band{i + 1}" for i, d in enumerate(desc[:count])]


def _nodata_of(path: Path):
    import warnings

    import rasterio

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rasterio.open(path) as src:
            nd = src.nodata
    return None if nd is None or (isinstance(nd, float) and math.isnan(nd)) else nd
