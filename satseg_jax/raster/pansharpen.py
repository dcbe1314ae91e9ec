"""Pan-sharpening: fuse coarse multispectral bands with a fine panchromatic band.

CBERS-4A WPM delivers 8 m multispectral bands and a 2 m panchromatic band; INPE's
studies fuse them before classification. Each multispectral band is resampled onto the
PAN grid (bilinear, through a WarpedVRT, by windows) and fused per window:

- ``brovey``:   F_i = MS_i · P / I,          I = mean_i(MS_i)
- ``weighted``: F_i = MS_i · P / I_w,        I_w = Σ w_i MS_i / Σ w_i (w from ``weights``)
- ``ihs``:      F_i = MS_i + (P − I)         (fast additive IHS)

P is first matched to the intensity's mean and standard deviation (estimated on a
decimated read of both), so the fused bands keep the multispectral radiometry. Output:
one multi-band GeoTIFF on PAN's grid, written by windows (memory independent of size).
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import numpy as np

from satseg_jax.errors import SatsegError
from satseg_jax.io_utils import atomic_path, refuse_overwriting_inputs
from satseg_jax.raster.io import open_raster, read_window

METHODS = ("brovey", "weighted", "ihs")
BLOCK = 512


def _intensity(ms: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return np.tensordot(weights / weights.sum(), ms, axes=1)


def fuse(ms: np.ndarray, pan: np.ndarray, method: str, weights: np.ndarray) -> np.ndarray:
    """Fuse (C, H, W) multispectral (already on the PAN grid) with (H, W) matched PAN."""
    if method == "ihs":
        return ms + (pan - _intensity(ms, np.ones(len(ms))))[None]
    w = weights if method == "weighted" else np.ones(len(ms))
    inten = _intensity(ms, w)
    return ms * (pan / np.where(inten > 0, inten, 1.0))[None]


def pansharpen(bands: list[Path], pan: Path, out: Path, method: str = "brovey",
               names: list[str] | None = None, weights: list[float] | None = None,
               progress: bool = True) -> Path:
    """Write the fused bands of ``bands`` on ``pan``'s grid to ``out``."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT
    from rasterio.windows import Window
    from tqdm import tqdm

    if method not in METHODS:
        raise SatsegError(f"--method {method!r}: expected one of {METHODS}")
    bands = [Path(b) for b in bands]
    refuse_overwriting_inputs({"out": out}, {"bands": bands, "pan": pan})
    names = list(names) if names else [b.stem for b in bands]
    w = np.asarray(weights if weights else [1.0] * len(bands), np.float64)
    if len(w) != len(bands) or (w <= 0).any():
        raise SatsegError(f"weights {list(w)}: give one positive weight per band")
    with ExitStack() as stack:
        p = stack.enter_context(open_raster(pan))
        if p.count != 1:
            raise SatsegError(f"{pan}: the panchromatic file must have one band, has {p.count}")
        grid = {"crs": p.crs, "transform": p.transform, "width": p.width, "height": p.height}
        srcs = []
        for b in bands:
            ds = stack.enter_context(open_raster(b))
            if ds.count != 1:
                raise SatsegError(f"{b}: has {ds.count} bands; pass single-band files")
            if ds.crs != p.crs:
                raise SatsegError(f"{b}: crs {ds.crs} differs from {pan}'s {p.crs}")
            srcs.append(stack.enter_context(WarpedVRT(ds, resampling=Resampling.bilinear,
                                                      **grid)))
        dtype = srcs[0].dtypes[0]
        nodata = srcs[0].nodata
        # Global statistics from a decimated read: PAN matched to the MS intensity.
        small = (max(1, p.height // 8), max(1, p.width // 8))
        pan_s = p.read(1, out_shape=small, resampling=Resampling.average).astype(np.float64)
        ms_s = np.stack([s.read(1, out_shape=small, resampling=Resampling.average)
                         for s in srcs]).astype(np.float64)
        ok = (pan_s != (p.nodata if p.nodata is not None else np.nan))
        if nodata is not None:
            ok &= ~(ms_s == nodata).all(axis=0)
        inten_s = _intensity(ms_s, w if method == "weighted" else np.ones(len(srcs)))
        if not ok.any():
            raise SatsegError(f"{pan}: no pixel where PAN and the bands both have data")
        mp, sp = pan_s[ok].mean(), pan_s[ok].std() or 1.0
        mi, si = inten_s[ok].mean(), inten_s[ok].std()
        info = np.iinfo(dtype) if np.issubdtype(np.dtype(dtype), np.integer) else None
        profile = {"driver": "GTiff", "count": len(srcs), "dtype": dtype, "nodata": nodata,
                   "tiled": True, "blockxsize": 256, "blockysize": 256, "compress": "deflate",
                   "BIGTIFF": "IF_SAFER", **grid}
        wins = [Window(c, r, min(BLOCK, p.width - c), min(BLOCK, p.height - r))
                for r in range(0, p.height, BLOCK) for c in range(0, p.width, BLOCK)]
        with atomic_path(Path(out)) as tmp, rasterio.open(tmp, "w", **profile) as dst:
            for i, n in enumerate(names, start=1):
                dst.set_band_description(i, n)
            for win in tqdm(wins, desc=f"pansharpen ({method})", unit="block",
                            disable=not progress, leave=False):
                pw = read_window(p, win, pan, 1).astype(np.float64)
                ms = np.stack([read_window(s, win, b, 1) for s, b in zip(srcs, bands)]
                              ).astype(np.float64)
                pm = (pw - mp) / sp * si + mi
                f = fuse(ms, pm, method, w)
                invalid = (ms == nodata).all(axis=0) if nodata is not None else \
                    np.zeros(pw.shape, bool)
                if p.nodata is not None:
                    invalid |= pw == p.nodata
                if info is not None:
                    f = np.clip(np.rint(f), max(info.min, 1 if nodata == 0 else info.min),
                                info.max)
                f = f.astype(dtype)
                if nodata is not None:
                    f[:, invalid] = nodata
                dst.write(f, window=win)
    return Path(out)
