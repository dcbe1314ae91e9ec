"""``satseg inspect`` of one raster: header, layout, sampled band statistics, mask values.

Pixels are read decimated (at most ``scene_side`` px on the long side), so a scene of
many gigabytes is inspected in seconds.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from satseg_jax.classes import ClassSet
from satseg_jax.errors import SatsegError
from satseg_jax.inspection.common import (
    MAX_MASK_VALUES,
    SCENE_SIDE,
    crs_short,
    is_georeferenced,
    is_int_dtype,
    json_number,
    open_quiet,
    read_decimated,
)
from satseg_jax.inspection.mask_tally import MaskTally
from satseg_jax.raster.masks import palette_lut


def inspect_raster(path: str | Path, as_mask: bool = False, classes: ClassSet | None = None,
                   scene_side: int = SCENE_SIDE) -> dict:
    """One raster: header, layout, sampled band statistics and, when it looks like a mask
    (one integer band with a colour table or few values; RGB uint8 with ``as_mask``),
    its distinct values or colours with pixel counts."""
    path = Path(path)
    with open_quiet(path) as ds:
        if ds.count == 0:
            raise SatsegError(f"{path}: the raster has no bands")
        geo = is_georeferenced(ds)
        profile = ds.profile
        try:
            overviews = ds.overviews(1)
        except Exception:  # noqa: BLE001 - some drivers cannot say; not worth failing for
            overviews = []
        comp = ds.compression
        report = {
            "kind": "raster",
            "path": str(path),
            "driver": ds.driver,
            "width": ds.width,
            "height": ds.height,
            "count": ds.count,
            "dtypes": list(ds.dtypes),
            "band_names": list(ds.descriptions),
            "crs": crs_short(ds.crs),
            "georeferenced": geo,
            "transform": [float(x) for x in list(ds.transform)[:6]] if geo else None,
            "pixel_size": [float(ds.res[0]), float(ds.res[1])] if geo else None,
            "nodata": json_number(ds.nodata),
            "layout": {
                "block": list(ds.block_shapes[0]) if ds.block_shapes else None,
                "tiled": bool(profile.get("tiled", False)),
                "compression": comp.value.lower() if comp is not None else None,
                "overviews": list(overviews),
                "interleave": ds.interleaving.value.lower() if ds.interleaving else None,
            },
            "colour_interpretation": [c.name for c in ds.colorinterp],
            "palette": palette_lut(ds) is not None,
        }
        data, decimated = read_decimated(ds, scene_side)
        report["sample"] = {"width": int(data.shape[2]), "height": int(data.shape[1]),
                            "decimated": decimated}
        report["bands"] = _band_stats(ds, data)
        mask = None
        is_int = is_int_dtype(ds.dtypes[0])
        if (ds.count == 1 and is_int) or (as_mask and ds.count in (3, 4)
                                         and ds.dtypes[0] == "uint8"):
            tally = MaskTally(classes)
            raw = data[:3] if ds.count > 1 else data[:1]
            tally.add(ds, path, scene_side, raw=raw, decimated=decimated)
            if as_mask or report["palette"] or tally.distinct() <= MAX_MASK_VALUES:
                mask = tally.report(classes)
        report["mask"] = mask
    return report


def _band_stats(ds, data: np.ndarray) -> list[dict]:
    """Per band min/max/mean of the valid sampled pixels and the nodata fraction (pixels
    equal to the band's nodata, or NaN)."""
    out = []
    names = ds.descriptions
    for i in range(data.shape[0]):
        a = data[i]
        valid = np.ones(a.shape, bool)
        if a.dtype.kind == "f":
            valid &= np.isfinite(a)
        nd = ds.nodatavals[i] if i < len(ds.nodatavals) else None
        if nd is not None and not math.isnan(nd):
            valid &= a != np.asarray(nd).astype(a.dtype)
        n = int(valid.sum())
        vals = a[valid]
        out.append({
            "band": i + 1,
            "name": names[i] if i < len(names) else None,
            "dtype": ds.dtypes[i],
            "min": json_number(vals.min()) if n else None,
            "max": json_number(vals.max()) if n else None,
            "mean": round(float(vals.mean(dtype=np.float64)), 4) if n else None,
            "nodata_fraction": round(1.0 - n / max(a.size, 1), 6),
        })
    return out
