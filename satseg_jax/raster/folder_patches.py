"""``satseg patches --images DIR --masks DIR``: tile a labelled dataset of image files.

Each source image is tiled exactly like a scene (same ``size``/``stride``/``edge``/
``min_valid`` rules, through :class:`satseg_jax.raster.patches.Tiler`), so the output is
an ordinary patches folder that ``satseg build`` reads. Differences from scene input:

- patch ids are ``<source key>__r{row}_c{col}`` (keys from
  :mod:`satseg_jax.raster.pairing`, '/' → '__'), and index.csv gains ``source`` (the
  key) and ``source_image`` (the file) so splits can keep a source together;
- ``row``/``col`` are offsets inside the source image;
- sources may be plain PNG/JPEG without georeferencing: their patches are written
  without a CRS, patches.json records ``"crs": null`` (or the CRS when every source
  shares one) and each source's own CRS under ``"sources"``;
- masks may be index, RGB or palette masks (:mod:`satseg_jax.raster.masks`).

Every pair is checked (sizes, grids, band counts, dtypes, nodata, mask kind) before a
patch is written, and the folder is written under a temporary name, so any error leaves
nothing behind.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from satseg_jax.classes import load_classes
from satseg_jax.errors import SatsegError
from satseg_jax.io_utils import atomic_dir, refuse_overwriting_inputs
from satseg_jax.raster.io import (
    COLOUR_NAMES,
    colour_band_names,
    gdal_env,
    grid_mismatch,
    open_raster,
)
from satseg_jax.raster.masks import MaskReader, quiet_georeference
from satseg_jax.raster.pairing import Pair, find_pairs, safe_id
from satseg_jax.raster.patches import (
    FORMAT_VERSION,
    PatchWriter,
    Tiler,
    check_tiling,
    fill_value,
    json_nodata,
    patch_profile,
    throughput,
    write_threads,
)
from satseg_jax.raster.row_cache import RowCachedDataset
from satseg_jax.raster.windows import patch_windows


def common_band_names(heads: list[dict]) -> list[str]:
    """One band naming for every image of a folder set: the descriptions when all
    images agree, else the colour interpretations when those agree, else band1..N.

    Why: GeoTIFF tiles cut by a GIS often carry per-tile descriptions (the Amazon set's
    ``tile1_Amazon_1110.tiff-003-001``); taking the first image's would name the
    dataset's bands after one tile, and a model trained on them would refuse every
    other image of the same set.
    """
    for key in ("bands", "colour_bands"):
        names = [h[key] for h in heads]
        if names[0] and all(n == names[0] for n in names):
            return list(names[0])
    return [f"band{i + 1}" for i in range(heads[0]["count"])]


def band_names_of(ds) -> list[str]:
    """Band descriptions, else the colour interpretation of RGB(A)/grey images, else
    band1..N: JPEG/PNG tiles have no descriptions but do say which band is red."""
    names = []
    for i, d in enumerate(ds.descriptions):
        ci = ds.colorinterp[i].name if i < len(ds.colorinterp) else ""
        names.append(d or (ci if ci in COLOUR_NAMES else f"band{i + 1}"))
    if len(set(names)) != len(names):
        names = [f"band{i + 1}" for i in range(ds.count)]
    return names


def _check_size(pair: Pair, img, mask, crop_masks: bool) -> str | None:
    """Refuse a mask of another size than its image, except a larger one with
    ``crop_masks``: return the line reporting its crop then (None when sizes agree).

    Why crop only on request: a mask a few pixels larger than its image (one Amazon
    mask is 515 px wide for a 512-px image) is an export slip whose top-left part fits
    the image, but a mask of another resolution would crop into nonsense; the user
    looks and decides, and every crop is reported by file.
    """
    if (img.width, img.height) == (mask.width, mask.height):
        return None
    larger = mask.width >= img.width and mask.height >= img.height
    if larger and crop_masks:
        return (f"cropped mask {pair.mask} from {mask.width}x{mask.height} to "
                f"{img.width}x{img.height} px (its image's size; top-left part kept)")
    fix = ("pass --crop-masks to keep its top-left part (image-sized), or fix the mask"
           if larger else "image and mask of a pair must have the same size")
    raise SatsegError(f"{pair.mask} is {mask.width}x{mask.height} px but its image "
                      f"{pair.image} is {img.width}x{img.height} px; {fix}")


def _check_pair(pair: Pair, img, mask, crop_masks: bool = False) -> dict:
    """Header checks of one pair on its own; returns its header summary (``cropped``:
    the crop report line of a larger mask, else None)."""
    head = {"count": img.count, "dtypes": tuple(img.dtypes), "nodata": json_nodata(
        img.nodata, img.dtypes[0]), "bands": band_names_of(img),
        "colour_bands": colour_band_names(img)}
    if len(set(img.dtypes)) > 1:
        raise SatsegError(f"{pair.image}: bands have different dtypes {img.dtypes}; convert "
                          "the image to one dtype")
    head["cropped"] = _check_size(pair, img, mask, crop_masks)
    mask = RowCachedDataset(mask, (img.height, img.width))  # the part that is used
    if img.crs is not None and mask.crs is not None:
        problem = grid_mismatch(img, mask)
        if problem:
            raise SatsegError(f"{pair.mask}: mask {problem} of its image {pair.image}; "
                              "warp the mask onto the image grid")
    head["image"] = str(pair.image)
    return head


def _compare_to_ref(pair: Pair, head: dict, ref: dict) -> None:
    """Every image of a set must have the first one's band count, dtype and nodata."""
    for key, what in (("count", "band count"), ("dtypes", "dtype"), ("nodata", "nodata")):
        if head[key] != ref[key]:
            raise SatsegError(
                f"{pair.image}: {what} {head[key]} differs from {ref[key]} of "
                f"{ref['image']}; every image of a dataset needs the same {what} (convert "
                "the odd ones, or tile them separately)")


@contextmanager
def _in_order(fn, items: list, threads: int) -> Iterator[Iterator]:
    """An iterator of ``fn(item)`` for every item, run on ``threads`` threads and
    yielded in item order; leaving the block waits for the threads (files not yet
    started are cancelled), so nothing is written after an error.

    Why threads: a folder set is thousands of small files, and most of each file's time
    is GDAL (open, decode, DEFLATE), which releases the GIL, so files overlap on the
    cores. In order, so the output and the first error reported are those of a serial
    run.
    """
    if threads <= 1:
        yield map(fn, items)
        return
    pool = ThreadPoolExecutor(threads, thread_name_prefix="folder-patches")
    try:
        yield pool.map(fn, items)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _check_pairs(pairs: list[Pair], classes, mask_mode: str, colour_tolerance: int | None,
                 progress: bool, crop_masks: bool = False, threads: int = 1
                 ) -> tuple[list[dict], Counter]:
    """Every pair's header checked against the first before any patch is written: the
    headers (size, crs, bands...) and how many masks are of each kind."""
    from tqdm import tqdm

    def header(p: Pair) -> dict:
        with open_raster(p.image) as img, open_raster(p.mask) as mask:
            head = _check_pair(p, img, mask, crop_masks)
            head.update(mask_kind=MaskReader(mask, p.mask, classes, mask_mode,
                                             colour_tolerance).kind,
                        width=img.width, height=img.height,
                        crs=img.crs.to_wkt() if img.crs else None)
        return head

    heads: list[dict] = []
    kinds: Counter = Counter()
    with _in_order(header, pairs, threads) as results:
        for p, head in tqdm(zip(pairs, results), total=len(pairs), desc="checking pairs",
                            unit="pair", disable=not progress, leave=False):
            if heads:
                _compare_to_ref(p, head, heads[0])
            kinds[head["mask_kind"]] += 1
            heads.append(head)
    heads[0]["bands"] = common_band_names(heads)
    return heads, kinds


@dataclass
class _Tiled:
    """What tiling the sources gave: one summary per source, windows, bytes read."""

    sources: list[dict] = field(default_factory=list)
    n_windows: int = 0
    in_bytes: int = 0
    too_small: list[str] = field(default_factory=list)


def _tile_one(tiler: Tiler, p: Pair, head: dict, ref: dict, mask_mode: str,
              colour_tolerance: int | None, stride: int, edge: str) -> tuple[Tiler, dict, int]:
    """Tile one source into a Tiler of its own that writes on the calling thread: (its
    tiler holding the index rows and class totals, the source's summary, windows)."""
    size, dtype = tiler.size, ref["dtypes"][0]
    own = Tiler(tiler.tmp, PatchWriter(1), tiler.classes, size, tiler.min_valid,
                tiler.scene_label, tiler.purity)
    with open_raster(p.image) as src_file, open_raster(p.mask) as mask_file:
        # every file decoded once, top to bottom (see raster.row_cache)
        src = RowCachedDataset(src_file)
        mask = RowCachedDataset(mask_file, (src.height, src.width))
        reader = MaskReader(mask, p.mask, tiler.classes, mask_mode, colour_tolerance)
        wins = patch_windows(src.height, src.width, size, stride, edge)
        profile = patch_profile(src, size, src.count, dtype, src.nodata)
        kept = own.tile(
            src, p.image, wins, lambda w, valid: reader.read(w, size, valid),
            profile, fill_value(ref["nodata"], dtype), ref["bands"], progress=False,
            id_prefix=safe_id(p.key) + "__",
            extra_fields={"source": p.key, "source_image": str(p.image)})
    source = {"key": p.key, "image": str(p.image), "mask": str(p.mask),
              "width": head["width"], "height": head["height"], "crs": head["crs"],
              "mask_kind": reader.kind, "patches": kept}
    return own, source, len(wins)


def _tile_pairs(tiler: Tiler, pairs: list[Pair], heads: list[dict], mask_mode: str,
                colour_tolerance: int | None, stride: int, edge: str,
                progress: bool, threads: int = 1) -> _Tiled:
    """Tile each source like a scene, with its mask read per window, ``threads`` files
    at a time; rows and totals are gathered into ``tiler`` in source order."""
    from tqdm import tqdm

    ref = heads[0]
    itemsize = np.dtype(ref["dtypes"][0]).itemsize
    done = _Tiled()

    def one(i: int) -> tuple[Tiler, dict, int]:
        return _tile_one(tiler, pairs[i], heads[i], ref, mask_mode, colour_tolerance,
                         stride, edge)

    with _in_order(one, list(range(len(pairs))), threads) as results:
        for head, (own, source, n_wins) in tqdm(zip(heads, results), total=len(pairs),
                                                desc="patches", unit="image",
                                                disable=not progress):
            tiler.rows.extend(own.rows)
            tiler.totals += own.totals
            done.n_windows += n_wins
            done.in_bytes += head["width"] * head["height"] * head["count"] * itemsize
            if not n_wins:
                done.too_small.append(source["image"])
            done.sources.append(source)
    return done


def _folder_info(done: _Tiled, ref: dict, *, images, masks, pair: str | None, size: int,
                 stride: int, edge: str, min_valid: float, num_patches: int, kinds: Counter,
                 colour_tolerance: int | None, scene_label: bool, purity: float,
                 skipped: list[str]) -> dict:
    """patches.json of a folder set: the scene fields are null (there is no one scene),
    the CRS is the sources' common one, and every source is listed with its counts."""
    crss = {s["crs"] for s in done.sources}
    return {
        "format_version": FORMAT_VERSION,
        "input": "folders",
        "image": None,
        "images": str(images),
        "masks": str(masks),
        "pair": pair,
        "bands": ref["bands"],
        "dtype": ref["dtypes"][0],
        "nodata": ref["nodata"],
        "crs": crss.pop() if len(crss) == 1 else None,
        "georeferenced": all(s["crs"] for s in done.sources),
        "scene_transform": None,
        "scene_height": None,
        "scene_width": None,
        "size": size,
        "stride": stride,
        "edge": edge,
        "min_valid": min_valid,
        "num_windows": done.n_windows,
        "num_patches": num_patches,
        "num_sources": len(done.sources),
        "label_source": str(masks),
        "label_type": "mask_folder",
        "mask_kinds": dict(kinds),
        "colour_tolerance": colour_tolerance,
        "class_field": None,
        "task": "classification" if scene_label else "segmentation",
        "purity": purity if scene_label else None,
        "skipped_unpaired": skipped,
        "smaller_than_size": done.too_small,
        "sources": done.sources,
    }


def make_folder_patches(images: str | Path, masks: str | Path, out_dir: Path,
                        classes_path: Path, pair: str | None = None,
                        skip_unpaired: bool = False, colour_tolerance: int | None = None,
                        mask_mode: str = "auto", size: int = 256, stride: int | None = None,
                        min_valid: float = 0.5, edge: str = "drop", overwrite: bool = False,
                        progress: bool = True, scene_label: bool = False, purity: float = 0.9,
                        threads: int | None = None, crop_masks: bool = False) -> dict:
    """Tile every image/mask pair under ``images``/``masks`` into one patches folder.

    ``pair``: ``'{stem}_sat.jpg:{stem}_mask.png'`` when images and masks are named
    differently. ``skip_unpaired``: leave files without a partner out (reported) instead
    of failing. ``colour_tolerance``: accept lossy (JPEG) masks, mapping each pixel to
    the nearest declared colour/value within that distance. ``mask_mode``: see
    :class:`MaskReader`. ``crop_masks``: a mask larger than its image is cropped to the
    image (top-left part) and reported in ``cropped_masks``, instead of refused. The
    other options mean what they mean for a scene
    (:func:`satseg_jax.raster.patches.make_patches`). Returns a JSON-able summary.
    """
    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    refuse_overwriting_inputs({"out_dir": out_dir}, {"images": images, "masks": masks,
                              "classes_path": classes_path}, folders=("out_dir",))
    stride = check_tiling(size, stride, min_valid, edge)
    if colour_tolerance is not None and not 0 <= int(colour_tolerance) <= 255:
        raise SatsegError(f"--colour-tolerance {colour_tolerance}: must be 0..255")
    classes = load_classes(classes_path)
    pairing = find_pairs(images, masks, pair)
    skipped = pairing.check_complete(skip_unpaired)
    threads = write_threads(threads)

    with gdal_env(), quiet_georeference():
        heads, kinds = _check_pairs(pairing.pairs, classes, mask_mode, colour_tolerance,
                                    progress, crop_masks, threads)
        ref = heads[0]
        with atomic_dir(out_dir, overwrite=overwrite) as tmp:
            # files are written by the threads that tile them (see _in_order); this
            # tiler only gathers their index rows and class totals
            tiler = Tiler(tmp, PatchWriter(1), classes, size, min_valid, scene_label, purity)
            done = _tile_pairs(tiler, pairing.pairs, heads, mask_mode, colour_tolerance,
                               stride, edge, progress, threads)
            if not tiler.rows:
                raise SatsegError(
                    f"{images}: no patch was kept from {len(pairing.pairs)} image(s) "
                    f"({done.n_windows} windows; {len(done.too_small)} image(s) smaller "
                    f"than --size {size}); use a smaller --size, --edge pad, or a lower "
                    "--min-valid")
            info = _folder_info(done, ref, images=images, masks=masks, pair=pair, size=size,
                                stride=stride, edge=edge, min_valid=min_valid,
                                num_patches=len(tiler.rows), kinds=kinds,
                                colour_tolerance=colour_tolerance, scene_label=scene_label,
                                purity=purity, skipped=skipped)
            cropped = [h["cropped"] for h in heads if h["cropped"]]
            if cropped:  # only then: patches.json of every other import stays as it was
                info["cropped_masks"] = cropped
            tiler.finish(masks, info, extra=("source", "source_image"))
    return {
        "out": str(out_dir),
        "num_sources": len(done.sources),
        "num_windows": done.n_windows,
        "num_patches": len(tiler.rows),
        "skipped_low_valid": done.n_windows - len(tiler.rows),
        "skipped_unpaired": skipped,
        "cropped_masks": cropped,
        "smaller_than_size": done.too_small,
        "bands": ref["bands"],
        "georeferenced": info["georeferenced"],
        "mask_kinds": dict(kinds),
        **tiler.pixel_counts(),
        **throughput(t_start, done.in_bytes),
    }
