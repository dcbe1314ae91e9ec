"""Cut a scene into image + mask patches by windowed reads, keeping georeferencing.

Output folder (a contract: ``satseg build`` / ``satseg_jax.datasets`` read it)::

    OUT/images/<patch_id>.tif   C bands, source dtype, the window's own transform, crs,
                                nodata and band descriptions; deflate
    OUT/masks/<patch_id>.tif    1 band uint8 class ids, 255 = ignore, nodata=255
    OUT/index.csv               patch_id,row,col,height,width,left,bottom,right,top,
                                valid_fraction,count_<class>...,count_ignore
    OUT/classes.json            the classes used (normalised)
    OUT/patches.json            scene grid, bands, dtype, nodata, parameters, counts

``patch_id`` is ``r{row:06d}_c{col:06d}`` (pixel offsets of the window in the scene);
``height``/``width`` in index.csv are the patch's (always ``size``: partial windows at
the edge are padded with nodata and ignore 255 when ``edge='pad'``). Masks are GeoTIFF,
never JPEG: labels must survive bit for bit.

Why windowed: scenes are far larger than memory. Only one window of the scene (and of
the label raster) is in memory at a time; vector labels are loaded once (they are
small) and rasterized per window on the window's own transform from the features whose
bounds meet it, so a vector mask is pixel-identical to rasterizing the whole layer on
the scene grid. The whole folder is written under a temporary name and renamed at the
end, so a failure (corrupt pixels, an undeclared label value, an all-nodata scene)
leaves nothing behind.
"""

from __future__ import annotations

import csv
import json
import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from satseg_jax.classes import IGNORE_LABEL, ClassSet, load_classes
from satseg_jax.errors import SatsegError
from satseg_jax.io_utils import atomic_dir, refuse_overwriting_inputs
from satseg_jax.raster.io import (
    gdal_env,
    grid_mismatch,
    is_nan,
    open_raster,
    read_window,
    valid_pixels,
)
from satseg_jax.raster.vectors import load_vector_labels
from satseg_jax.raster.windows import EDGES, Win, patch_windows, to_rasterio

FORMAT_VERSION = 1


def patch_id(row: int, col: int) -> str:
    """The id of the patch whose upper-left pixel is (row, col) in the scene."""
    return f"r{row:06d}_c{col:06d}"


# ----------------------------------------------------------------------------- main


def _read_padded(ds, win: Win, size: int, path: Path, fill, indexes=None) -> np.ndarray:
    """Read ``win`` (clipped to the scene) and pad it to ``size×size`` with ``fill``."""
    data = read_window(ds, to_rasterio(win), path, indexes)
    if (win.height, win.width) == (size, size):
        return data
    out = np.full((*data.shape[:-2], size, size), fill, dtype=data.dtype)
    out[..., :win.height, :win.width] = data
    return out


def patch_profile(ds, size: int, count: int, dtype: str, nodata) -> dict:
    """A lean GeoTIFF profile for one patch: GDAL's default strips and plain deflate.

    Measured on 256-px uint16 patches: strips write faster than one 256-px tile, and a
    predictor or zstd cost more time than they save space on noisy imagery.
    """
    profile = {"driver": "GTiff", "height": size, "width": size, "count": count,
               "dtype": dtype, "crs": ds.crs, "nodata": nodata, "compress": "deflate"}
    if count > 1:
        profile["interleave"] = "pixel"
    return profile



def default_write_threads() -> int:
    """Threads that write patch files: every core, at most 4 (past that the main
    thread's reads are the bottleneck)."""
    return max(1, min(4, os.cpu_count() or 1))


class PatchWriter:
    """Writes patch GeoTIFFs on a few threads while the main thread reads on.

    Why: DEFLATE-encoding each patch is most of ``satseg patches``' time, and GDAL
    releases the GIL while it encodes, so the writes of several patches overlap on
    several cores. Reads stay on the main thread (a GDAL dataset handle must not be
    shared between threads); every write opens its own file. At most ``2 × threads``
    patches wait in memory, so memory stays bounded whatever the scene size. The first
    failure of a write is raised in the main thread; on any error the writer waits for
    the writes under way before the caller removes the half-written output folder.
    """

    def __init__(self, threads: int) -> None:
        self.limit = 2 * threads
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="patch-write") \
            if threads > 1 else None
        self.pending: deque[Future] = deque()

    def write(self, path: Path, array: np.ndarray, profile: dict, transform,
              descriptions: tuple[str, ...] | None = None) -> None:
        if self.pool is None:
            _write_patch(path, array, profile, transform, descriptions)
            return
        self.pending.append(self.pool.submit(_write_patch, path, array, profile, transform,
                                             descriptions))
        while len(self.pending) >= self.limit:
            self.pending.popleft().result()

    def __enter__(self) -> PatchWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.pool is None:
            return
        try:
            if exc_type is None:
                while self.pending:
                    self.pending.popleft().result()
        finally:
            for f in self.pending:
                f.cancel()
            self.pool.shutdown(wait=True)


def _write_patch(path: Path, array: np.ndarray, profile: dict, transform,
                 descriptions: tuple[str, ...] | None) -> None:
    import rasterio

    with rasterio.open(path, "w", transform=transform, **profile) as dst:
        dst.write(array if array.ndim == 3 else array[None])
        if descriptions:
            dst.descriptions = descriptions


def check_tiling(size: int, stride: int | None, min_valid: float, edge: str) -> int:
    """Validate the tiling options shared by scene and folder input; return the stride."""
    if not isinstance(min_valid, (int, float)) or not 0.0 <= min_valid <= 1.0:
        raise SatsegError(f"--min-valid {min_valid}: must be between 0 and 1")
    if edge not in EDGES:
        raise SatsegError(f"--edge {edge!r}: expected one of {', '.join(EDGES)}")
    stride = size if stride is None else stride
    if not isinstance(size, int) or size <= 0 or not isinstance(stride, int) or stride <= 0:
        raise SatsegError(f"--size {size} and --stride {stride}: must be positive integers")
    return stride


def fill_value(nodata, dtype: str):
    """What pads a partial edge window: nodata when the dtype can hold it, else 0."""
    if nodata is not None and not (is_nan(nodata) and np.dtype(dtype).kind != "f"):
        return nodata
    return 0


class Tiler:
    """The window loop shared by scene and folder input: read, filter, label, write.

    Why one loop: a folder of source images must be tiled exactly like a scene (same
    size, stride, edge policy, nodata filter, mask rules), so both paths feed their
    windows through this class; it accumulates the index.csv rows and class pixel
    totals over every source it tiles.
    """

    def __init__(self, tmp: Path, writer: PatchWriter, classes: ClassSet, size: int,
                 min_valid: float, scene_label: bool, purity: float) -> None:
        self.tmp, self.writer, self.classes = tmp, writer, classes
        self.size, self.min_valid = size, min_valid
        self.scene_label, self.purity = scene_label, purity
        self.rows: list[dict] = []
        self.totals = np.zeros(256, np.int64)
        if scene_label:
            for n in classes.names:
                (tmp / n).mkdir(exist_ok=True)
        else:
            (tmp / "images").mkdir(exist_ok=True)
            (tmp / "masks").mkdir(exist_ok=True)

    def tile(self, src, image: Path, wins: list[Win], label_mask, img_profile: dict,
             img_fill, band_names: list[str], progress: bool = True, id_prefix: str = "",
             extra_fields: dict | None = None) -> int:
        """Tile one source; ``label_mask(win, valid) -> (size, size) uint8``. Returns the
        number of patches kept."""
        from rasterio.windows import bounds as window_bounds
        from tqdm import tqdm

        from satseg_jax.raster.windows import window_transform

        size, classes = self.size, self.classes
        mask_profile = {**img_profile, "count": 1, "dtype": "uint8", "nodata": IGNORE_LABEL}
        mask_profile.pop("interleave", None)
        nodata = img_profile["nodata"]
        kept = 0
        for w in tqdm(wins, desc=f"patches {image.name}", unit="win",
                      disable=not progress, leave=False):
            img = _read_padded(src, w, size, image, img_fill)
            valid = valid_pixels(img, nodata)
            if (w.height, w.width) != (size, size):
                valid[w.height:, :] = False
                valid[:, w.width:] = False
            frac = float(valid.mean())
            if frac == 0.0 or frac < self.min_valid:
                continue
            t = window_transform(w, src.transform)
            mask = label_mask(w, valid)
            pid = id_prefix + patch_id(w.row, w.col)
            counts = np.bincount(mask.ravel(), minlength=256)
            extra = dict(extra_fields or {})
            if self.scene_label:
                k = classes.num_classes
                labelled = int(counts[:k].sum())
                if labelled == 0:
                    continue
                major = int(np.argmax(counts[:k]))
                share = counts[major] / labelled
                if share < self.purity:
                    continue
                image_path = self.tmp / classes.names[major] / f"{pid}.tif"
                extra.update({"class": classes.names[major], "purity": round(float(share), 6)})
            else:
                image_path = self.tmp / "images" / f"{pid}.tif"
            self.writer.write(image_path, img, img_profile, t, tuple(band_names))
            if not self.scene_label:
                self.writer.write(self.tmp / "masks" / f"{pid}.tif", mask, mask_profile, t)
            self.totals += counts
            left, bottom, right, top = window_bounds(to_rasterio(w, size), src.transform)
            row = {"patch_id": pid, "row": w.row, "col": w.col, "height": size,
                   "width": size, "left": left, "bottom": bottom, "right": right,
                   "top": top, "valid_fraction": round(frac, 6)}
            row.update({f"count_{n}": int(counts[i]) for i, n in enumerate(classes.names)})
            row["count_ignore"] = int(counts[IGNORE_LABEL])
            row.update(extra)
            self.rows.append(row)
            kept += 1
        return kept

    def index_fields(self, extra: tuple[str, ...] = ()) -> list[str]:
        return ["patch_id", "row", "col", "height", "width", "left", "bottom", "right",
                "top", "valid_fraction", *(f"count_{n}" for n in self.classes.names),
                "count_ignore", *extra,
                *(("class", "purity") if self.scene_label else ())]

    def write_index(self, extra: tuple[str, ...] = ()) -> None:
        with open(self.tmp / "index.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.index_fields(extra))
            writer.writeheader()
            writer.writerows(self.rows)

    def check_ids(self, label_source) -> None:
        n_bad = int(self.totals[self.classes.num_classes:IGNORE_LABEL].sum())
        if n_bad:  # cannot happen through value_to_id; guards the contract
            raise SatsegError(f"{label_source}: produced class ids outside 0..K-1")


    def finish(self, label_source, info: dict, extra: tuple[str, ...] = ()) -> None:
        """Write what completes a patches folder besides the patch files: index.csv,
        classes.json and ``info`` as patches.json (after checking the class ids)."""
        self.check_ids(label_source)
        self.write_index(extra)
        self.classes.save(self.tmp / "classes.json")
        (self.tmp / "patches.json").write_text(json.dumps(info, indent=2) + "\n")

    def pixel_counts(self) -> dict:
        """The summary's class pixel totals over every kept patch, and the ignored ones."""
        return {"class_pixel_counts": {n: int(self.totals[i])
                                       for i, n in enumerate(self.classes.names)},
                "ignored_pixels": int(self.totals[IGNORE_LABEL])}


def write_threads(threads: int | None) -> int:
    """``--threads`` checked (1 or more), or :func:`default_write_threads` for None."""
    threads = default_write_threads() if threads is None else int(threads)
    if threads < 1:
        raise SatsegError(f"--threads {threads}: must be 1 or more")
    return threads


def throughput(t_start: float, in_bytes: int) -> dict:
    """The summary's timing: seconds since ``t_start`` and input MB read per second."""
    seconds = time.perf_counter() - t_start
    return {"seconds": round(seconds, 3),
            "input_mb_per_s": round(in_bytes / 1e6 / max(seconds, 1e-9), 1)}


class LabelRaster:
    """A label raster on the scene grid, read per window into class-id masks.

    Why checked on open: a label raster on another grid, with several bands or float
    values would give silently wrong masks, so each is an error naming the file.
    """

    def __init__(self, ds, path: Path, scene, image: Path, classes: ClassSet, size: int):
        if ds.count != 1:
            raise SatsegError(f"{path}: band count is {ds.count}; a label raster "
                              "has one band of class values")
        problem = grid_mismatch(scene, ds)
        if problem:
            raise SatsegError(f"{path}: label raster {problem} of {image}; "
                              "rasterize or warp the labels onto the scene grid")
        if not np.issubdtype(np.dtype(ds.dtypes[0]), np.integer):
            raise SatsegError(f"{path}: dtype {ds.dtypes[0]}; label rasters must "
                              "hold integer class values")
        declared = {c.value for c in classes.classes}
        nodata = ds.nodata
        if nodata is not None and (is_nan(nodata) or nodata in declared):
            # A declared class wins over the file's nodata tag: classes.json is explicit.
            nodata = None
        self.ds, self.path, self.classes, self.size, self.nodata = ds, path, classes, size, nodata

    def mask(self, w: Win, valid: np.ndarray) -> np.ndarray:
        """(size, size) class ids of window ``w``; 255 where invalid or label nodata."""
        size = self.size
        raw = _read_padded(self.ds, w, size, self.path, 0, 1)
        valid_lab = valid & (raw != self.nodata) if self.nodata is not None else valid
        mask = np.full((size, size), IGNORE_LABEL, np.uint8)
        mask[valid_lab] = self.classes.value_to_id(
            raw[valid_lab], what=f"{self.path} (window row {w.row}, col {w.col})")
        return mask


def _vector_mask_fn(vec, src, size: int):
    """``label_mask(w, valid)`` for vector labels: the rasterized window, 255 off-data."""
    def label_mask(w: Win, valid: np.ndarray) -> np.ndarray:
        mask = vec.window_mask(w, size, src.transform, src.width)
        mask[~valid] = IGNORE_LABEL
        return mask
    return label_mask


def _scene_dtype(src, image: Path) -> str:
    """The scene's one dtype (a scene whose bands differ must be re-composed)."""
    if len(set(src.dtypes)) > 1:
        raise SatsegError(f"{image}: bands have different dtypes {src.dtypes}; "
                          "re-compose the scene with one dtype")
    return src.dtypes[0]


def _no_patch_error(image: Path, scene_label: bool, purity: float, min_valid: float,
                    n_windows: int, nodata) -> SatsegError:
    """Why a scene gave no patch, and what to change."""
    if scene_label:
        return SatsegError(f"{image}: no patch reaches --purity {purity} with valid "
                           f"fraction >= {min_valid}; lower --purity or --size")
    return SatsegError(
        f"{image}: no patch has valid fraction >= min_valid {min_valid} "
        f"({n_windows} windows checked, nodata={nodata}); is the scene all "
        "nodata? Check the file's nodata value or lower --min-valid")


def _scene_info(src, image: Path, band_names: list[str], dtype: str, *, size: int,
                stride: int, edge: str, min_valid: float, num_windows: int, num_patches: int,
                label_source: Path, vector: bool, class_field: str, scene_label: bool,
                purity: float) -> dict:
    """patches.json of a scene: its grid, bands and nodata, the tiling parameters and
    the label source, so ``satseg build`` and ``inspect`` know what the patches hold."""
    return {
        "format_version": FORMAT_VERSION,
        "image": str(image.absolute()),
        "bands": band_names,
        "dtype": dtype,
        "nodata": json_nodata(src.nodata, dtype),
        "crs": src.crs.to_wkt() if src.crs else None,
        "scene_transform": list(src.transform)[:6],
        "scene_height": src.height,
        "scene_width": src.width,
        "size": size,
        "stride": stride,
        "edge": edge,
        "min_valid": min_valid,
        "num_windows": num_windows,
        "num_patches": num_patches,
        "label_source": str(label_source.absolute()),
        "label_type": "vector" if vector else "raster",
        "class_field": class_field if vector else None,
        "task": "classification" if scene_label else "segmentation",
        "purity": purity if scene_label else None,
    }


def make_patches(image: Path, out_dir: Path, classes_path: Path, size: int = 256,
                 stride: int | None = None, min_valid: float = 0.5, edge: str = "drop",
                 labels: Path | None = None, vector: Path | None = None,
                 class_field: str = "class", overwrite: bool = False,
                 progress: bool = True, scene_label: bool = False,
                 purity: float = 0.9, threads: int | None = None) -> dict:
    """Write image/mask patch GeoTIFFs, index.csv, classes.json and patches.json.

    With ``scene_label`` the output is a classification set instead: each patch is
    labelled with the majority class of its labelled pixels, kept only when that class
    covers at least ``purity`` of them, and written to ``OUT/<class name>/<id>.tif``
    (the layout ``satseg build --classification`` reads); no masks are written.

    Give exactly one label source: ``labels`` (a raster on the scene's grid) or
    ``vector`` (polygons; GeoJSON read directly, other formats through fiona/pyogrio).
    Patches whose valid (non-nodata) fraction is below ``min_valid`` are skipped.
    ``threads`` write the patch files (default :func:`default_write_threads`); the files
    are the same for any number. Returns a JSON-able summary (counts, per-class pixel
    totals, throughput).
    """
    t_start = time.perf_counter()
    image, out_dir = Path(image), Path(out_dir)
    refuse_overwriting_inputs({"out_dir": out_dir}, {"image": image, "labels": labels,
                              "vector": vector, "classes_path": classes_path},
                              folders=("out_dir",))
    if (labels is None) == (vector is None):
        raise SatsegError("patches: give exactly one of --labels RASTER or --vector FILE")
    stride = check_tiling(size, stride, min_valid, edge)
    classes = load_classes(classes_path)
    label_source = Path(labels if labels is not None else vector)

    with ExitStack() as stack:
        stack.enter_context(gdal_env())
        src = stack.enter_context(open_raster(image))
        nodata = src.nodata
        dtype = _scene_dtype(src, image)
        band_names = [d or f"band{i + 1}" for i, d in enumerate(src.descriptions)]
        vec = None
        if labels is not None:
            label_mask = LabelRaster(stack.enter_context(open_raster(label_source)),
                                     label_source, src, image, classes, size).mask
        else:
            vec = load_vector_labels(label_source, class_field, classes, src.crs)
            label_mask = _vector_mask_fn(vec, src, size)
        wins = patch_windows(src.height, src.width, size, stride, edge)
        if not wins:
            raise SatsegError(f"{image}: scene {src.width}x{src.height} is smaller than one "
                              f"{size}-px patch; use a smaller --size or --edge pad")
        img_profile = patch_profile(src, size, src.count, dtype, nodata)
        threads = write_threads(threads)
        with atomic_dir(out_dir, overwrite=overwrite) as tmp, PatchWriter(threads) as patch_writer:
            tiler = Tiler(tmp, patch_writer, classes, size, min_valid, scene_label, purity)
            tiler.tile(src, image, wins, label_mask, img_profile, fill_value(nodata, dtype),
                       band_names, progress=progress)
            if not tiler.rows:
                raise _no_patch_error(image, scene_label, purity, min_valid, len(wins), nodata)
            tiler.finish(label_source, _scene_info(
                src, image, band_names, dtype, size=size, stride=stride, edge=edge,
                min_valid=min_valid, num_windows=len(wins), num_patches=len(tiler.rows),
                label_source=label_source, vector=vec is not None, class_field=class_field,
                scene_label=scene_label, purity=purity))
        scene_bytes = src.width * src.height * src.count * np.dtype(dtype).itemsize
    return {
        "out": str(out_dir),
        "num_windows": len(wins),
        "num_patches": len(tiler.rows),
        "skipped_low_valid": len(wins) - len(tiler.rows),
        "bands": band_names,
        **tiler.pixel_counts(),
        "repaired_geometries": vec.repaired if vec is not None else 0,
        **throughput(t_start, scene_bytes),
    }


def json_nodata(nodata, dtype: str):
    """nodata as JSON: null for none/NaN, an int for integer dtypes."""
    if nodata is None or is_nan(nodata):
        return None
    if np.dtype(dtype).kind in "iu" and float(nodata).is_integer():
        return int(nodata)
    return float(nodata)
