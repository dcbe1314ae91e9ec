"""Vector labels: polygons read from GeoJSON (or through fiona/pyogrio), checked,
mapped to class ids and rasterized per patch window on the scene grid.

Why apart from the patch cutter: reading, checking and reprojecting label polygons is
its own concern (``area.py`` reads region polygons the same way), and ``patches`` only
needs :func:`load_vector_labels` and :meth:`VectorLabels.window_mask`.

Why windowed: vector labels are loaded once (they are small) and rasterized per window
on the window's own transform from the features whose bounds meet it, so a vector mask
is pixel-identical to rasterizing the whole layer on the scene grid.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from satseg_jax.classes import IGNORE_LABEL, ClassSet
from satseg_jax.errors import SatsegError
from satseg_jax.raster.windows import Win


class VectorLabels:
    """Label polygons in the scene CRS with their class ids, queried by window bounds."""

    def __init__(self, geoms: list[dict], ids: np.ndarray):
        from rasterio import features

        self.geoms = geoms
        self.ids = ids.astype(np.uint8)
        self.repaired = 0  # geometries repaired while loading (open rings closed)
        b = np.array([features.bounds(g) for g in geoms], dtype=np.float64).reshape(-1, 4)
        self.x0, self.y0, self.x1, self.y1 = b.T
        self._strip_key: tuple | None = None
        self._strip: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.geoms)

    def mask(self, transform, height: int, width: int | None = None) -> np.ndarray:
        """(height, width) uint8 class ids (255 where no polygon) on the grid ``transform``.

        Only the features whose bounds meet the area are passed to GDAL; pixels are
        burnt where their centre falls inside a polygon, so any sub-grid of the scene
        grid gives exactly the pixels of rasterizing the whole layer at once.
        """
        from rasterio import features

        width = height if width is None else width
        xs = (transform.c, transform.c + transform.a * width)
        ys = (transform.f, transform.f + transform.e * height)
        hit = np.flatnonzero((self.x0 <= max(xs)) & (self.x1 >= min(xs))
                             & (self.y0 <= max(ys)) & (self.y1 >= min(ys)))
        if hit.size == 0:
            return np.full((height, width), IGNORE_LABEL, dtype=np.uint8)
        return features.rasterize(
            ((self.geoms[i], int(self.ids[i])) for i in hit), out_shape=(height, width),
            transform=transform, fill=IGNORE_LABEL, dtype="uint8")

    def window_mask(self, win: Win, size: int, scene_transform, scene_width: int
                    ) -> np.ndarray:
        """The (size, size) mask of the patch at ``win``, cut from a strip of rows.

        Why strips: GDAL converts and scans every polygon passed to it, and the large
        natural regions meet many windows; rasterizing one strip per row of windows
        (windows come row-major) instead of one call per window cut vector patching
        from 31 s to a few seconds on a 4096² scene. Memory: ``size × (width + size)``
        bytes, independent of the scene height.
        """
        from affine import Affine

        key = (win.row, size)
        if self._strip_key != key:
            t = scene_transform * Affine.translation(0, win.row)
            self._strip = self.mask(t, size, scene_width + size)  # + size: padded edges
            self._strip_key = key
        return self._strip[:, win.col:win.col + size].copy()


def _geojson_crs(collection: dict, path: Path):
    """CRS of a GeoJSON: its legacy ``crs`` member, else WGS 84 (RFC 7946)."""
    from rasterio.crs import CRS

    crs = collection.get("crs")
    if not crs:
        return CRS.from_epsg(4326)
    name = (crs.get("properties") or {}).get("name") if isinstance(crs, dict) else None
    if not isinstance(name, str):
        raise SatsegError(f"{path}: cannot understand its \"crs\" member {crs!r}; use "
                          "{\"type\": \"name\", \"properties\": {\"name\": \"EPSG:XXXX\"}}")
    if name.upper().endswith("CRS84"):
        return CRS.from_epsg(4326)
    for candidate in (name, name.replace("urn:ogc:def:crs:", "").replace("::", ":")):
        try:
            return CRS.from_user_input(candidate)
        except Exception:  # noqa: BLE001 - any parse failure: try the next spelling
            continue
    raise SatsegError(f"{path}: cannot understand its crs {name!r}; use e.g. "
                      "\"urn:ogc:def:crs:EPSG::32723\"")


def read_features(path: Path) -> tuple[list[dict], object]:
    """([{"geometry": ..., "properties": ...}], crs) from GeoJSON, or via fiona/pyogrio."""
    from rasterio.crs import CRS

    if path.suffix.lower() in (".geojson", ".json"):
        try:
            collection = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise SatsegError(f"{path}: not valid GeoJSON ({e})") from None
        if isinstance(collection, dict) and collection.get("type") == "Feature":
            collection = {"type": "FeatureCollection", "features": [collection]}
        feats = collection.get("features") if isinstance(collection, dict) else None
        if not isinstance(feats, list):
            raise SatsegError(f"{path}: not a GeoJSON FeatureCollection (no \"features\" list)")
        return feats, _geojson_crs(collection, path)
    try:
        import fiona
    except ImportError:
        fiona = None
    if fiona is not None:
        try:
            with fiona.open(path) as src:
                crs = CRS.from_user_input(src.crs_wkt) if src.crs_wkt else CRS.from_epsg(4326)
                feats = [{"geometry": dict(f["geometry"]) if f["geometry"] else None,
                          "properties": dict(f["properties"])} for f in src]
        except Exception as e:  # noqa: BLE001 - fiona raises many types for bad files
            raise SatsegError(f"{path}: cannot be read as a vector file ({e})") from None
        return feats, crs
    try:
        import pyogrio
        import shapely
    except ImportError:
        raise SatsegError(
            f"{path}: reading {path.suffix or 'this'} vector files needs fiona or pyogrio "
            "(pip install pyogrio shapely), or convert it to GeoJSON "
            "(ogr2ogr -f GeoJSON labels.geojson INPUT)") from None
    try:
        meta, _, geoms, field_data = pyogrio.raw.read(path)
    except Exception as e:  # noqa: BLE001 - pyogrio raises many types for bad files
        raise SatsegError(f"{path}: cannot be read as a vector file ({e})") from None
    fields = list(meta["fields"])
    feats = [{"geometry": shapely.geometry.mapping(shapely.from_wkb(g)) if g is not None
              else None,
              "properties": {f: _plain(field_data[i][j]) for i, f in enumerate(fields)}}
             for j, g in enumerate(geoms)]
    crs = CRS.from_user_input(meta["crs"]) if meta.get("crs") else CRS.from_epsg(4326)
    return feats, crs


def _plain(v):
    return v.item() if isinstance(v, np.generic) else v


def _class_lookup(classes: ClassSet) -> dict:
    """Attribute value -> class id (255 for ignore values); names match too."""
    lookup: dict = {}
    for c in classes.classes:
        lookup[c.value] = c.id
        lookup[c.name] = c.id
    for v in classes.ignore_values:
        lookup[v] = IGNORE_LABEL
    return lookup


def _normalise_value(v):
    """Integer-like attribute values (3, 3.0, "3") -> int; other strings stay strings."""
    if isinstance(v, bool) or v is None:
        return v
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, str):
        s = v.strip()
        try:
            return int(s)
        except ValueError:
            return s
    return v


_POLYGONAL = ("Polygon", "MultiPolygon", "GeometryCollection")


def _is_number(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _check_ring(ring, where: str) -> tuple[list, bool]:
    """(the ring, closed if it was not; whether it was closed here) or SatsegError text.

    GeoJSON rings must be closed (last position = first); an open ring is closed here
    (an unambiguous repair); fewer than 3 distinct corners, non-numeric or non-finite
    coordinates are reported, since GDAL would silently burn nothing or crash on them.
    """
    if not isinstance(ring, (list, tuple)):
        raise ValueError(f"{where} is {type(ring).__name__}, expected a list of positions")
    for i, pos in enumerate(ring):
        if (not isinstance(pos, (list, tuple)) or len(pos) < 2
                or not all(_is_number(c) for c in pos)):
            raise ValueError(f"{where} position {i} is {pos!r}, expected [x, y] numbers")
        if not all(math.isfinite(c) for c in pos):
            raise ValueError(f"{where} position {i} {list(pos)} is not finite")
    ring = [list(p) for p in ring]
    repaired = bool(ring) and ring[0][:2] != ring[-1][:2]
    if repaired:
        ring.append(list(ring[0]))
    if len({tuple(p[:2]) for p in ring}) < 3:
        raise ValueError(f"{where} has {len(ring)} position(s) and fewer than 3 distinct "
                         "corners; a polygon ring needs at least 4 positions, the last equal "
                         "to the first")
    return ring, repaired


def check_geometry(geom) -> tuple[dict | None, bool]:
    """(a rasterizable polygonal geometry or None when empty, whether it was repaired).

    Raises ValueError saying what is wrong. Why checked here: GDAL's rasterizer crashes
    the process on malformed coordinates, burns nothing for NaN ones and burns lines and
    points as thin strokes, all without an error. Self-intersecting rings (a "bowtie")
    are kept: they are rasterized by the even-odd rule, which gives the same pixels as
    ``shapely.make_valid`` (the bowtie becomes its two triangles).
    """
    if not isinstance(geom, dict) or geom.get("type") not in _POLYGONAL:
        kind = geom.get("type") if isinstance(geom, dict) else type(geom).__name__
        raise ValueError(f"geometry type {kind!r}; label features must be "
                         f"{', '.join(_POLYGONAL)}")
    if geom["type"] == "GeometryCollection":
        parts = geom.get("geometries")
        if not isinstance(parts, list):
            raise ValueError("GeometryCollection without a \"geometries\" list")
        out, repaired = [], False
        for i, g in enumerate(parts):
            try:
                g2, r = check_geometry(g)
            except ValueError as e:
                raise ValueError(f"member {i}: {e}") from None
            repaired |= r
            if g2 is not None:
                out.append(g2)
        return ({"type": "GeometryCollection", "geometries": out} if out else None), repaired
    coords = geom.get("coordinates")
    if not isinstance(coords, (list, tuple)):
        raise ValueError(f"{geom['type']} coordinates are {type(coords).__name__}, "
                         "expected nested lists of positions")
    polys = [coords] if geom["type"] == "Polygon" else coords
    out_polys, repaired = [], False
    for j, poly in enumerate(polys):
        if not isinstance(poly, (list, tuple)):
            raise ValueError(f"polygon {j} is {type(poly).__name__}, expected a list of rings")
        rings = []
        for k, ring in enumerate(poly):
            name = f"polygon {j} ring {k}" if geom["type"] == "MultiPolygon" else f"ring {k}"
            ring, r = _check_ring(ring, name)
            repaired |= r
            rings.append(ring)
        if rings:
            out_polys.append(rings)
    if not out_polys:
        return None, repaired  # empty geometry: nothing to burn, like a null geometry
    if geom["type"] == "Polygon":
        return {"type": "Polygon", "coordinates": out_polys[0]}, repaired
    return {"type": "MultiPolygon", "coordinates": out_polys}, repaired


def load_vector_labels(path: Path, class_field: str, classes: ClassSet, scene_crs
                       ) -> VectorLabels:
    """Read label polygons, map ``class_field`` through ``classes``, reproject to the scene.

    The attribute may hold the class ``value`` (as classes.json) or the class name.
    Features with a value not declared in classes.json are an error listing the values
    and how many features carry them: labels are never silently dropped or remapped.
    Geometries are checked by :func:`check_geometry`: a malformed one is an error naming
    the feature's index; open rings are closed (counted in ``.repaired``).
    """
    from rasterio.warp import transform_geom

    path = Path(path)
    if not path.exists():
        raise SatsegError(f"{path}: vector label file not found")
    feats, src_crs = read_features(path)
    if not feats:
        raise SatsegError(f"{path}: has no features; nothing to rasterize")
    lookup = _class_lookup(classes)
    geoms: list[dict] = []
    ids: list[int] = []
    bad: dict = {}
    repaired = 0
    for n, f in enumerate(feats):
        props = (f.get("properties") or {}) if isinstance(f, dict) else {}
        if class_field not in props:
            available = sorted({k for g in feats[:100] if isinstance(g, dict)
                                for k in (g.get("properties") or {})})
            raise SatsegError(f"{path}: feature {n} has no attribute {class_field!r}; "
                              f"available: {available}. Pass --class-field NAME")
        value = _normalise_value(props[class_field])
        try:
            cid = lookup.get(value)
        except TypeError:  # unhashable (list/dict attribute)
            cid = None
        if cid is None:
            bad[repr(value)] = bad.get(repr(value), 0) + 1
            continue
        geom = f.get("geometry")
        if not geom:
            continue
        try:
            geom, was_repaired = check_geometry(geom)
        except ValueError as e:
            raise SatsegError(
                f"{path}: feature {n} ({class_field}={props[class_field]!r}) has an invalid "
                f"geometry: {e}. Fix or remove that feature (QGIS: Fix Geometries; "
                "ogr2ogr -makevalid)") from None
        if geom is None:
            continue
        repaired += was_repaired
        geoms.append(geom)
        ids.append(cid)
    if bad:
        listing = ", ".join(f"{v} ({n} features)" for v, n in sorted(bad.items()))
        raise SatsegError(f"{path} attribute {class_field!r}: values not declared in "
                          f"{classes.source}: {listing}. Add them to {classes.source} (as a "
                          "class \"value\" or with \"ignore\": true)")
    if scene_crs is not None and src_crs != scene_crs:
        try:
            geoms = [transform_geom(src_crs, scene_crs, g) for g in geoms]
        except Exception as e:  # noqa: BLE001 - PROJ errors come in several types
            raise SatsegError(f"{path}: cannot reproject from {src_crs} to the scene crs "
                              f"{scene_crs} ({e})") from None
    labels = VectorLabels(geoms, np.array(ids, dtype=np.int64))
    labels.repaired = repaired
    return labels
