"""Band composition: band rasters (single- or multi-band) -> one tiled, compressed
multi-band GeoTIFF.

Why strict: bands delivered as separate files (CBERS-4A WPM B1..B4, Landsat B2..B5)
or as co-registered products of two sensors (Sentinel-2 int16 + Sentinel-1 float32)
are only stackable pixel for pixel when they share CRS, transform and size. A silent
mismatch shifts one band against the others and poisons every label; so a mismatch is
an error naming the file and the field, unless the user asks to reproject every band
onto a reference grid (``resample_to``, through a windowed WarpedVRT). Mixed dtypes
are refused too unless the user names an output dtype (``dtype``) that holds every
input exactly; each input's nodata then becomes nodata of the stacked scene.

Memory: the output is written by windows one row of 256-px tiles high and at most
``CHUNK_COLS`` wide, reading the same window from each input, so memory does not grow
with the scene. The file is written under a temporary name and renamed at the end: a
failure (corrupt input half way through, Ctrl-C) leaves nothing behind.

Opening, reading and grid comparison come from :mod:`satseg_jax.raster.io`.
"""

from __future__ import annotations

import math
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from satseg_jax.errors import SatsegError
from satseg_jax.io_utils import atomic_path, refuse_overwriting_inputs
from satseg_jax.raster.io import (
    BLOCK,
    block_windows,
    gdal_env,
    grid_mismatch,
    open_raster,
    read_window,
    valid_pixels,
)

RESAMPLING = ("nearest", "bilinear", "cubic", "average")
# --dtype choices: the GeoTIFF sample types the rest of the project reads.
DTYPES = ("uint8", "uint16", "int16", "uint32", "int32", "float32", "float64")


def _nodata_key(v: float | None):
    if v is None:
        return None
    return "nan" if math.isnan(v) else float(v)


def _fits(value: float, dtype: np.dtype) -> bool:
    """True when ``value`` is exactly a value of ``dtype`` (NaN only for floats)."""
    if math.isnan(value):
        return dtype.kind == "f"
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return float(value).is_integer() and info.min <= value <= info.max
    with np.errstate(over="ignore"):
        return float(dtype.type(value)) == value


def _band_dtype(path: Path, name: str) -> np.dtype:
    try:
        return np.dtype(name)
    except TypeError:
        raise SatsegError(f"{path}: sample type {name} is not supported by compose; convert "
                          f"it to one of {', '.join(DTYPES)}") from None


def _default_names(bands: list[Path], srcs: list) -> list[str]:
    """The input band's description, else the file stem (1-band input) or
    ``<stem>_b<i>`` (multi-band input); a repeated name is an error (configs select bands
    by name, so two bands called "B1" would make one of them unreachable)."""
    names, origin = [], {}
    for path, ds in zip(bands, srcs):
        for i, desc in enumerate(ds.descriptions, start=1):
            name = desc or (path.stem if ds.count == 1 else f"{path.stem}_b{i}")
            if name in origin:
                raise SatsegError(f"{path}: band name {name!r} (its description or file "
                                  f"stem) is already used by {origin[name]}; give unique "
                                  "names with --names")
            origin[name] = path
            names.append(name)
    return names


def _output_dtype(bands: list[Path], srcs: list, dtype: str | None) -> np.dtype:
    """The stacked scene's dtype: the inputs' common dtype, or ``dtype`` when every input
    band converts to it exactly (numpy's 'safe' casting: int16 -> float32 yes, float32 ->
    int16 or int32 -> float32 no), so promotion never rounds or clips a value."""
    in_dtypes = [(path, _band_dtype(path, d)) for path, ds in zip(bands, srcs)
                 for d in ds.dtypes]
    widest = np.result_type(*(d for _, d in in_dtypes)).name
    suggest = widest if widest in DTYPES else "float64"
    if dtype is None:
        first_path, first = in_dtypes[0]
        for path, dt in in_dtypes:
            if dt != first:
                raise SatsegError(f"{path}: dtype {dt.name} differs from {first.name} of "
                                  f"{first_path}; convert the bands to one dtype or pass "
                                  f"--dtype {suggest} to promote them")
        return first
    out = np.dtype(dtype)
    for path, dt in in_dtypes:
        if not np.can_cast(dt, out, "safe"):
            raise SatsegError(f"{path}: dtype {dt.name} cannot be stored as --dtype {out.name} "
                              f"without rounding or clipping values; pass --dtype {suggest} "
                              "(or another dtype that holds every input)")
    return out


def _output_nodata(bands: list[Path], nodatas: list[float | None], dtype: np.dtype,
                   nodata: float | None) -> float | None:
    """Nodata of the stacked scene.

    ``nodata`` (the user's --nodata) wins; it must be a value of ``dtype``. Else the
    inputs' common nodata is kept when ``dtype`` can hold it: it cannot collide with data,
    because after compose writes it into every band of each nodata pixel, a pixel whose
    bands are all that value has all bands of some input equal to it, i.e. that input
    was nodata there already (inputs without nodata never force a pixel to nodata).
    Inputs with different nodata values (or a common one that ``dtype`` cannot hold):
    NaN for float output, which no integer input can produce and which float inputs
    only hold where they are nodata; for integer output there is no value that is safe
    for every input, so the user must pick one (--nodata) or choose a float --dtype.
    None when no input declares nodata (as before: nothing to carry).
    """
    if nodata is not None:
        if not _fits(nodata, dtype):
            raise SatsegError(f"--nodata {nodata}: not a value of the output dtype "
                              f"{dtype.name}; choose one it can hold")
        return nodata
    declared = [(p, v) for p, v in zip(bands, nodatas) if v is not None]
    if not declared:
        return None
    keys = {_nodata_key(v) for _, v in declared}
    common = declared[0][1]
    if len(keys) == 1 and _fits(common, dtype):
        return common
    if dtype.kind == "f":
        return math.nan
    if len(keys) == 1:
        raise SatsegError(f"{declared[0][0]}: nodata {common} is not a value of the output "
                          f"dtype {dtype.name}; pass --nodata VALUE")
    odd, odd_value = next((p, v) for p, v in declared if _nodata_key(v) != _nodata_key(common))
    raise SatsegError(f"{odd}: nodata {odd_value} differs from {common} of "
                      f"{declared[0][0]}; set one nodata value on every input (gdal_edit.py "
                      "-a_nodata VALUE), pass --nodata VALUE (a value no valid pixel has in "
                      "every band) or a float --dtype (nodata NaN)")


def _nodata_groups(srcs: list, nodatas: list[float | None]) -> list[tuple[list[int], float | None]]:
    """(output band indices, nodata) of the units whose nodata is judged together.

    A multi-band input is one product (one sensor, one acquisition): it is nodata where
    ``valid_pixels`` says so on its own bands (all equal its nodata, or any NaN).
    Single-band inputs sharing a nodata value are usually the bands of one product
    delivered as separate files (Landsat B2..B5, CBERS B1..B4): they are judged together,
    as the stacked scene always was, so a dark-water pixel that is 0 in one band only
    stays data.
    """
    groups, single, pos = [], {}, 0
    for ds, nd in zip(srcs, nodatas):
        idx = list(range(pos, pos + ds.count))
        pos += ds.count
        if ds.count == 1:
            single.setdefault(_nodata_key(nd), ([], nd))[0].extend(idx)
        else:
            groups.append((idx, nd))
    return groups + list(single.values())


def _check_options(bands: list[Path], out: Path, resampling: str, dtype: str | None):
    """Refuse bad options before any file is opened; return the rasterio Resampling."""
    from rasterio.enums import Resampling

    if not bands:
        raise SatsegError("compose: give at least one band file with --bands")
    if resampling not in RESAMPLING:
        raise SatsegError(f"--resampling {resampling!r}: expected one of {', '.join(RESAMPLING)}")
    if dtype is not None and dtype not in DTYPES:
        raise SatsegError(f"--dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    if any(out.resolve() == b.resolve() for b in bands):
        raise SatsegError(f"{out}: the output is one of the input bands; choose another --out")
    return Resampling[resampling]


def _band_names(bands: list[Path], srcs: list, names: list[str] | None, total: int
                ) -> list[str]:
    """The user's ``names`` (one per output band, unique) or ``_default_names``."""
    if not names:
        return _default_names(bands, srcs)
    names = list(names)
    if len(names) != total:
        raise SatsegError(f"--names has {len(names)} names for {total} bands "
                          f"({len(bands)} files); give one name per band")
    if len(set(names)) != len(names):
        raise SatsegError(f"--names: band names must be unique, got {names}")
    return names


def _input_nodatas(bands: list[Path], srcs: list) -> list[float | None]:
    """Each input's one nodata value (an input whose bands disagree is refused)."""
    nodatas = []
    for path, ds in zip(bands, srcs):
        if len({_nodata_key(v) for v in ds.nodatavals}) > 1:
            raise SatsegError(f"{path}: its bands have different nodata values "
                              f"{ds.nodatavals}; set one (gdal_edit.py -a_nodata VALUE)")
        nodatas.append(ds.nodata)
    return nodatas


def _reproject_inputs(stack: ExitStack, bands: list[Path], srcs: list, resample_to: Path,
                      method) -> tuple[list, dict]:
    """Inputs off the reference grid wrapped in a WarpedVRT onto it; (inputs, grid)."""
    from rasterio.vrt import WarpedVRT

    ref = stack.enter_context(open_raster(Path(resample_to)))
    grid = {"crs": ref.crs, "transform": ref.transform, "width": ref.width,
            "height": ref.height}
    if ref.crs is None:
        raise SatsegError(f"{resample_to}: reference raster has no crs; pick a "
                          "georeferenced --resample-to")
    for path, ds in zip(bands, srcs):
        if grid_mismatch(ref, ds) and ds.crs is None:
            raise SatsegError(f"{path}: has no crs, so it cannot be reprojected onto "
                              f"{resample_to}; georeference it first")
    warped = [stack.enter_context(WarpedVRT(ds, resampling=method, **grid))
              if grid_mismatch(ref, ds) else ds for ds in srcs]
    return warped, grid


def _check_aligned(bands: list[Path], srcs: list) -> dict:
    """Every input on the first one's grid (else SatsegError); that grid."""
    first = srcs[0]
    for path, ds in zip(bands[1:], srcs[1:]):
        problem = grid_mismatch(first, ds)
        if problem:
            raise SatsegError(f"{path}: {problem} of {bands[0]}; align the bands "
                              "or pass --resample-to REFERENCE.tif")
    return {"crs": first.crs, "transform": first.transform, "width": first.width,
            "height": first.height}


def _scene_profile(grid: dict, count: int, dtype: np.dtype, nodata: float | None) -> dict:
    """The stacked scene's GeoTIFF profile: tiled, deflate with the dtype's predictor."""
    return {
        "driver": "GTiff", "height": grid["height"], "width": grid["width"], "count": count,
        "dtype": dtype.name, "crs": grid["crs"], "transform": grid["transform"],
        "nodata": nodata, "tiled": True, "blockxsize": BLOCK, "blockysize": BLOCK,
        "compress": "deflate", "predictor": 3 if dtype.kind == "f" else 2,
        "interleave": "pixel", "BIGTIFF": "IF_SAFER",
    }


def _read_stacked(bands: list[Path], srcs: list, window, count: int, dtype: np.dtype,
                  groups: list | None, out_nodata: float | None,
                  any_number: np.ndarray) -> np.ndarray:
    """One window of every input stacked in order; with ``groups``, every pixel that is
    nodata in one unit (see ``_nodata_groups``) set to ``out_nodata`` in all bands.
    ``any_number[b]`` becomes True once band ``b`` of the inputs has a non-NaN pixel."""
    chunk = np.empty((count, int(window.height), int(window.width)), dtype)
    pos = 0
    for path, ds in zip(bands, srcs):
        # dtype: exact, since _output_dtype only allows safe casts.
        chunk[pos:pos + ds.count] = read_window(ds, window, path, out_dtype=dtype.name)
        pos += ds.count
    if np.issubdtype(dtype, np.floating):
        any_number |= ~np.isnan(chunk).all(axis=(1, 2))
    else:
        any_number[:] = True
    if groups is not None:
        invalid = np.zeros(chunk.shape[1:], bool)
        for idx, nd in groups:
            invalid |= ~valid_pixels(chunk[idx], nd)
        chunk[:, invalid] = out_nodata
    return chunk


def compose_bands(bands: list[Path], out: Path, names: list[str] | None = None,
                  resample_to: Path | None = None, resampling: str = "bilinear",
                  progress: bool = True, dtype: str | None = None,
                  nodata: float | None = None, strict: bool = False,
                  notes: list[str] | None = None) -> Path:
    """Stack the bands of every input raster, in order, into ``out``; return ``out``.

    Inputs may have one band or many (every band is kept, in order). Band descriptions
    are ``names`` (one per output band) or the defaults of ``_default_names``. Without
    ``resample_to`` every input must match the first one's CRS, transform (up to
    ``grid_mismatch``'s tolerance) and size, else SatsegError naming the file and the
    field; with it, every input whose grid differs from the reference raster's is
    reprojected onto it (``resampling``). All bands must share one dtype unless
    ``dtype`` names one that holds every input exactly (``_output_dtype``).

    Nodata: where an input is nodata (``_nodata_groups``), the stacked pixel is written
    as the output nodata (``_output_nodata``) in every band, so ``valid_pixels`` on the
    stacked scene finds exactly the union of the inputs' nodata pixels and ``patches``
    turns them into the ignore label 255. When all inputs are judged as one unit with
    the output's nodata value (the classic same-dtype band stack) the pixels are copied
    unchanged.

    A band that is NaN in every pixel is refused with ``strict`` (nothing is written),
    else reported by a line appended to ``notes`` (see ``_all_nan_bands``).
    """
    import rasterio
    from tqdm import tqdm

    bands = [Path(b) for b in bands]
    out = Path(out)
    refuse_overwriting_inputs({"out": out}, {"bands": bands, "resample_to": resample_to})
    method = _check_options(bands, out, resampling, dtype)
    with ExitStack() as stack:
        stack.enter_context(gdal_env())
        srcs = [stack.enter_context(open_raster(b)) for b in bands]
        total = sum(ds.count for ds in srcs)
        names = _band_names(bands, srcs, names, total)
        nodatas = _input_nodatas(bands, srcs)
        if resample_to is not None:
            warped, grid = _reproject_inputs(stack, bands, srcs, resample_to, method)
            out_dtype = _output_dtype(bands, srcs, dtype)
            srcs = warped
        else:
            grid = _check_aligned(bands, srcs)
            out_dtype = _output_dtype(bands, srcs, dtype)
        out_nodata = _output_nodata(bands, nodatas, out_dtype, nodata)
        groups = _nodata_groups(srcs, nodatas)
        # One unit already marked with the output's value: rewriting would be a no-op.
        rewrite = out_nodata is not None and not (
            len(groups) == 1 and _nodata_key(groups[0][1]) == _nodata_key(out_nodata))
        profile = _scene_profile(grid, total, out_dtype, out_nodata)
        windows = block_windows(grid["height"], grid["width"])
        any_number = np.zeros(total, bool)
        with atomic_path(out) as tmp:
            with rasterio.open(tmp, "w", **profile) as dst:
                for i, n in enumerate(names, start=1):
                    dst.set_band_description(i, n)
                for w in tqdm(windows, desc=f"compose {out.name}", unit="win",
                              disable=not progress, leave=False):
                    dst.write(_read_stacked(bands, srcs, w, total, out_dtype,
                                            groups if rewrite else None, out_nodata,
                                            any_number), window=w)
            _read_back(tmp)
            _all_nan_bands(out, names, any_number, strict, notes)
    return out


def _read_back(path: Path) -> None:
    """Open the written scene and read its last pixel: GDAL can report a failed write
    (a full disk) only as a log line at close, leaving an empty or truncated file."""
    import errno

    import rasterio
    from rasterio.windows import Window

    try:
        with rasterio.open(path) as ds:
            ds.read(1, window=Window(ds.width - 1, ds.height - 1, 1, 1))
    except rasterio.errors.RasterioError as e:
        raise OSError(errno.EIO, f"write failed: it cannot be read back ({e})",
                      str(path)) from e


def _all_nan_bands(out: Path, names: list[str], any_number: np.ndarray, strict: bool,
                   notes: list[str] | None) -> None:
    """A band with no number at all (every pixel NaN) makes every pixel of the scene
    nodata: ``patches`` would then keep no patch. Refuse it (``strict``) or note it."""
    empty = [n for n, seen in zip(names, any_number) if not seen]
    if not empty:
        return
    what = f"band{'s' if len(empty) > 1 else ''} {', '.join(empty)}"
    if strict:
        raise SatsegError(f"{out}: {what} of the inputs is NaN in every pixel (--strict); "
                          "check the input files, or drop the band from --bands")
    if notes is not None:
        notes.append(f"{out}: {what} is NaN in every pixel, so every pixel of the scene is "
                     "nodata; check the input files (--strict refuses this)")
