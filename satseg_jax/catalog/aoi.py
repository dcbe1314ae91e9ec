"""Areas of interest: a GeoJSON file (or a W,S,E,N box) as WGS84 bounds.

Why bounds only: STAC searches take a bbox or a geometry, and a windowed read needs the
rectangle of pixels covering the area anyway; the exact outline matters later (masking,
per-region areas with ``satseg area --by``), not for choosing what to fetch.
"""

from __future__ import annotations

import json
from pathlib import Path

from satseg_jax.errors import SatsegError


def parse_bbox(text: str) -> tuple[float, float, float, float]:
    """``"W,S,E,N"`` in degrees -> a checked tuple."""
    try:
        w, s, e, n = (float(x) for x in str(text).split(","))
    except ValueError:
        raise SatsegError(f"--bbox {text!r}: expected W,S,E,N as four numbers in degrees, "
                          "e.g. -47.9,-15.9,-47.7,-15.7") from None
    check_bbox((w, s, e, n), f"--bbox {text}")
    return (w, s, e, n)


def check_bbox(b: tuple[float, float, float, float], where: str) -> None:
    w, s, e, n = b
    if not (-180 <= w <= 180 and -180 <= e <= 180 and -90 <= s <= 90 and -90 <= n <= 90):
        raise SatsegError(f"{where}: outside -180..180 / -90..90; give longitude/latitude "
                          "degrees (WGS84)")
    if w >= e or s >= n:
        raise SatsegError(f"{where}: west must be < east and south < north (W,S,E,N)")


def _coords(geom: dict, where: str):
    if not isinstance(geom, dict) or "type" not in geom:
        raise SatsegError(f"{where}: a feature without a geometry")
    if geom["type"] == "GeometryCollection":
        for g in geom.get("geometries", []):
            yield from _coords(g, where)
        return

    def walk(c):
        if isinstance(c, (list, tuple)) and c and isinstance(c[0], (int, float)):
            yield float(c[0]), float(c[1])
        elif isinstance(c, (list, tuple)):
            for x in c:
                yield from walk(x)

    yield from walk(geom.get("coordinates", []))


def geometry_bounds(geoms: list[dict], where: str) -> tuple[float, float, float, float]:
    """(W, S, E, N) over GeoJSON geometries of any type (collections included)."""
    pts = [p for g in geoms for p in _coords(g, where)]
    if not pts:
        raise SatsegError(f"{where}: no coordinates; give a GeoJSON polygon in WGS84")
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    return (min(xs), min(ys), max(xs), max(ys))


def read_aoi(path: str | Path) -> tuple[tuple[float, float, float, float], dict]:
    """(W, S, E, N) bounds and the union geometry (GeoJSON dict) of an AOI GeoJSON file.

    GeoJSON coordinates are WGS84 longitude/latitude (RFC 7946); a file whose ``crs``
    member names another CRS is refused rather than misread.
    """
    path = Path(path)
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        raise SatsegError(f"{path}: AOI file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SatsegError(f"{path}: not GeoJSON ({e}); give a GeoJSON polygon in WGS84") \
            from None
    crs = ((obj.get("crs") or {}).get("properties") or {}).get("name", "")
    if crs and not any(t in crs for t in ("4326", "CRS84")):
        raise SatsegError(f"{path}: crs {crs}; AOI files must be WGS84 longitude/latitude "
                          "(reproject it, e.g. ogr2ogr -t_srs EPSG:4326)")
    if obj.get("type") == "FeatureCollection":
        geoms = [f.get("geometry") for f in obj.get("features", [])]
    elif obj.get("type") == "Feature":
        geoms = [obj.get("geometry")]
    else:
        geoms = [obj]
    bounds = geometry_bounds(geoms, str(path))
    check_bbox(bounds, str(path))
    union = geoms[0] if len(geoms) == 1 else {"type": "GeometryCollection",
                                               "geometries": geoms}
    return bounds, union
