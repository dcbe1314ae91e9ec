"""Per-class area (km²) of a class map, optionally per region polygon.

Projected CRS: every pixel has the same area |a·e − b·d| (the transform's determinant).
Geographic CRS (degrees): a pixel row between latitudes φ1 and φ2 spanning Δλ covers
(a² Δλ / 2)·(q(φ2) − q(φ1)) on the ellipsoid (Snyder 1987, authalic q), so areas are
true ellipsoidal areas, not degrees². Reads the map by row strips: any map size.

No CRS (a map predicted from a plain JPEG/PNG): its pixels have no ground size, so the
table holds pixel counts (``units`` "pixels") and says so, instead of reporting a pixel
as 1 m² from the identity transform; region polygons cannot be placed on such a map.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from satseg_jax.classes import IGNORE_LABEL
from satseg_jax.errors import SatsegError

WGS84_A = 6378137.0
WGS84_F = 1 / 298.257223563
NO_CRS_NOTE = "no CRS: areas in km² unavailable, pixel counts only"


def _q(phi: np.ndarray, e: float) -> np.ndarray:
    s = np.sin(phi)
    return (1 - e * e) * (s / (1 - (e * s) ** 2) - np.log((1 - e * s) / (1 + e * s)) / (2 * e))


def row_pixel_areas_m2(transform, crs, rows: np.ndarray) -> np.ndarray:
    """Area in m² of one pixel in each of ``rows`` (same for every column of a row)."""
    det = abs(transform.a * transform.e - transform.b * transform.d)
    if crs is None or not crs.is_geographic:
        if crs is not None and crs.linear_units_factor[1] != 1.0:
            det *= crs.linear_units_factor[1] ** 2  # e.g. US feet -> m
        return np.full(len(rows), det)
    if transform.b or transform.d:
        raise SatsegError("rotated geographic grids are not supported for area; warp the map "
                          "to a north-up grid")
    # The WGS 84 ellipsoid (other datums differ by well under 0.01 % in area).
    a = WGS84_A
    e = math.sqrt(WGS84_F * (2 - WGS84_F))
    lat1 = np.radians(transform.f + transform.e * rows)
    lat2 = np.radians(transform.f + transform.e * (rows + 1))
    dlon = math.radians(abs(transform.a))
    return np.abs(a * a * dlon / 2 * (_q(lat2, e) - _q(lat1, e)))


def area_table(map_path: str | Path, class_names: list[str] | None = None,
               regions: str | Path | None = None, region_field: str | None = None,
               strip: int = 512) -> dict:
    """{'classes': names, 'rows': {region: [value per class]}, 'pixels': {...}, 'units'}.

    ``units`` is "km2" (rows in km²) for a map with a CRS and "pixels" (rows are the
    pixel counts) for one without, whose pixels have no known ground size.
    """
    import warnings

    import rasterio
    from rasterio import features
    from rasterio.errors import NotGeoreferencedWarning
    from rasterio.windows import Window

    from satseg_jax.raster.io import open_raster, read_window

    map_path = Path(map_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # a plain map is expected
        src = open_raster(map_path)
    with src:
        if src.count != 1 or src.dtypes[0] not in ("uint8", "uint16", "int16", "int32"):
            raise SatsegError(f"{map_path}: expected a one-band integer class map")
        georeferenced = src.crs is not None
        if regions is not None and not georeferenced:
            raise SatsegError(f"{map_path}: has no CRS, so the polygons of {regions} cannot "
                              "be placed on it; drop --by for pixel counts per class, or "
                              "predict on a georeferenced scene")
        k = len(class_names) if class_names else None
        shapes = None
        if regions is not None:
            shapes = load_region_shapes(Path(regions), region_field, src.crs)
        names_r = ["scene"] if shapes is None else [n for n, _ in shapes]
        km2: dict[str, np.ndarray] = {}
        px: dict[str, np.ndarray] = {}
        seen = None
        for r0 in range(0, src.height, strip):
            h = min(strip, src.height - r0)
            win = Window(0, r0, src.width, h)
            cls = read_window(src, win, map_path, 1).astype(np.int64)
            valid = cls != (src.nodata if src.nodata is not None else IGNORE_LABEL)
            seen = _add(seen, _class_counts(cls[valid], map_path))
            kk = int(cls[valid].max()) + 1 if valid.any() else 1
            k = max(k or 0, kk)
            areas = (row_pixel_areas_m2(src.transform, src.crs, np.arange(r0, r0 + h))
                     if georeferenced else np.full(h, 1e6))  # no CRS: rows count pixels
            if shapes is None:
                zone = np.zeros(cls.shape, np.int64)
            else:
                t = rasterio.windows.transform(win, src.transform)
                zone = features.rasterize(
                    [(g, i) for i, (_, g) in enumerate(shapes)], out_shape=cls.shape,
                    transform=t, fill=-1, dtype="int32").astype(np.int64)
            ok = valid & (zone >= 0)
            for zi, zname in enumerate(names_r):
                sel = ok & (zone == zi)
                if not sel.any():
                    continue
                wts = np.broadcast_to(areas[:, None], cls.shape)[sel]
                a = np.bincount(cls[sel], weights=wts, minlength=k) / 1e6
                c = np.bincount(cls[sel], minlength=k)
                km2[zname] = _add(km2.get(zname), a)
                px[zname] = _add(px.get(zname), c)
    if class_names:
        _refuse_undeclared(map_path, len(class_names), seen)
    names = list(class_names or [])
    names += [f"class_{i}" for i in range(len(names), k or 0)]
    rows = {z: _pad(km2.get(z), len(names)).tolist() for z in names_r}
    pixels = {z: _pad(px.get(z), len(names)).astype(int).tolist() for z in names_r}
    return {"classes": names, "rows": rows, "pixels": pixels, "map": str(map_path),
            "regions": str(regions) if regions is not None else None,
            "units": "km2" if georeferenced else "pixels"}


def _class_counts(values: np.ndarray, map_path: Path) -> np.ndarray:
    """Pixels per class id of a strip's valid pixels; a negative id is no class."""
    if values.size and values.min() < 0:
        raise SatsegError(f"{map_path}: holds negative values ({int(values.min())}), which "
                          "are no class ids; is it a class map from satseg predict?")
    return np.bincount(values)


def _refuse_undeclared(map_path: Path, num_classes: int, seen: np.ndarray | None) -> None:
    """A map holding ids that classes.json does not declare was predicted with other
    classes: its areas would be put under the wrong names (or none)."""
    if seen is None or len(seen) <= num_classes:
        return
    extra = [(i, int(n)) for i, n in enumerate(seen) if i >= num_classes and n]
    if extra:
        ids = ", ".join(f"{i} ({n} px)" for i, n in extra)
        raise SatsegError(
            f"{map_path}: holds class ids that --classes does not declare (it has "
            f"{num_classes} classes, ids 0-{num_classes - 1}): {ids}; pass the classes.json "
            "of the run that predicted the map")


def load_region_shapes(path: Path, field: str | None, crs) -> list[tuple[str, dict]]:
    """[(region name, geometry in ``crs``)] from a GeoJSON/Shapefile of region polygons."""
    from rasterio.warp import transform_geom

    from satseg_jax.raster.vectors import read_features

    if not path.exists():
        raise SatsegError(f"{path}: regions file not found")
    feats, src_crs = read_features(path)
    if not feats:
        raise SatsegError(f"{path}: no region polygons")
    props = feats[0].get("properties") or {}
    if field is None or field not in props:
        raise SatsegError(f"{path}: pass --region-field, one of {sorted(props)}")
    out: dict[str, list] = {}
    for f in feats:
        g = f.get("geometry")
        if not g:
            continue
        if crs is not None and src_crs != crs:
            g = transform_geom(src_crs, crs, g)
        out.setdefault(str((f.get("properties") or {}).get(field)), []).append(g)
    # One geometry collection per region name (a region may have several polygons).
    return [(name, {"type": "GeometryCollection", "geometries": gs}) for name, gs in out.items()]


def _add(a, b):
    if a is None:
        return b.astype(np.float64)
    n = max(len(a), len(b))
    return _pad(a, n) + _pad(b, n)


def _pad(a, n: int) -> np.ndarray:
    out = np.zeros(n)
    if a is not None:
        out[:len(a)] = a[:n]
    return out


def format_area_table(table: dict) -> str:
    """Rows = regions, columns = classes, with totals (km²), like INPE's burned-area tables.

    A table of a map without a CRS holds pixel counts: printed as integers, headed by
    the note that km² are unavailable."""
    names = table["classes"]
    km2 = table.get("units", "km2") == "km2"
    fmt = ".3f" if km2 else ".0f"
    w = max(8, *(len(r) for r in table["rows"]), 5)
    cw = max(10, *(len(n) for n in names))
    head = f"{'region':<{w}}" + "".join(f"{n:>{cw + 1}}" for n in names) + f"{'total':>{cw + 1}}"
    lines = ([] if km2 else [NO_CRS_NOTE]) + [head, "-" * len(head)]
    col_tot = np.zeros(len(names))
    for region, vals in table["rows"].items():
        v = np.asarray(vals)
        col_tot += v
        lines.append(f"{region:<{w}}" + "".join(f"{x:>{cw + 1}{fmt}}" for x in v)
                     + f"{v.sum():>{cw + 1}{fmt}}")
    if len(table["rows"]) > 1:
        lines.append("-" * len(head))
        lines.append(f"{'total':<{w}}" + "".join(f"{x:>{cw + 1}{fmt}}" for x in col_tot)
                     + f"{col_tot.sum():>{cw + 1}{fmt}}")
    lines.append("(km²)" if km2 else "(pixels)")
    return "\n".join(lines)


def write_area_csv(table: dict, out: str | Path) -> None:
    """``table`` (from :func:`area_table`) as CSV; refuses an ``out`` that is the map or
    the regions file the table was computed from."""
    from satseg_jax.io_utils import atomic_path, refuse_overwriting_inputs

    refuse_overwriting_inputs({"out": out}, {"map": table.get("map"),
                                             "regions": table.get("regions")})
    unit = "km2" if table.get("units", "km2") == "km2" else "pixels"
    with atomic_path(Path(out)) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["region", *[f"{n}_{unit}" for n in table["classes"]], f"total_{unit}"])
        for region, vals in table["rows"].items():
            fmt = ".6f" if unit == "km2" else ".0f"
            w.writerow([region, *[f"{x:{fmt}}" for x in vals], f"{sum(vals):{fmt}}"])
