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
import math
import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from satseg_jax.classes import IGNORE_LABEL, ClassSet, load_classes
from satseg_jax.errors import SatsegError
from satseg_jax.io_utils import atomic_dir
from satseg_jax.raster.compose import gdal_env, grid_mismatch, open_raster, read_window
from satseg_jax.raster.windows import EDGES, Win, patch_windows, to_rasterio

FORMAT_VERSION = 1


def patch_id(row: int, col: int) -> str:
    """The id of the patch whose upper-left pixel is (row, col) in the scene."""
    return f"r{row:06d}_c{col:06d}"


def _is_nan(v) -> bool:
    return isinstance(v, float) and math.isnan(v)


def valid_pixels(image: np.ndarray, nodata: float | None) -> np.ndarray:
    """(H, W) True where the pixel has data.

    A pixel is nodata when *all* its bands equal ``nodata`` (a dark water pixel may be
    0 in one band and still be data), or when any band is NaN/inf (float scenes).
    """
    valid = np.ones(image.shape[1:], dtype=bool)
    if np.issubdtype(image.dtype, np.floating):
        valid &= np.isfinite(image).all(axis=0)
    if nodata is not None and not _is_nan(nodata):
        if np.issubdtype(image.dtype, np.integer):
            info = np.iinfo(image.dtype)
            if not (info.min <= nodata <= info.max and float(nodata).is_integer()):
                return valid  # nodata not representable: no pixel can equal it
        valid &= ~(image == np.asarray(nodata, dtype=image.dtype)).all(axis=0)
    return valid


# ----------------------------------------------------------------------------- vectors


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


def _read_features(path: Path) -> tuple[list[dict], object]:
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
    feats, src_crs = _read_features(path)
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
    if nodata is not None and not (_is_nan(nodata) and np.dtype(dtype).kind != "f"):
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
    if (labels is None) == (vector is None):
        raise SatsegError("patches: give exactly one of --labels RASTER or --vector FILE")
    stride = check_tiling(size, stride, min_valid, edge)
    classes = load_classes(classes_path)
    label_source = Path(labels if labels is not None else vector)

    with ExitStack() as stack:
        stack.enter_context(gdal_env())
        src = stack.enter_context(open_raster(image))
        nodata = src.nodata
        if len(set(src.dtypes)) > 1:
            raise SatsegError(f"{image}: bands have different dtypes {src.dtypes}; "
                              "re-compose the scene with one dtype")
        dtype = src.dtypes[0]
        band_names = [d or f"band{i + 1}" for i, d in enumerate(src.descriptions)]
        lab = None
        vec = None
        label_nodata = None
        if labels is not None:
            lab = stack.enter_context(open_raster(label_source))
            if lab.count != 1:
                raise SatsegError(f"{label_source}: band count is {lab.count}; a label raster "
                                  "has one band of class values")
            problem = grid_mismatch(src, lab)
            if problem:
                raise SatsegError(f"{label_source}: label raster {problem} of {image}; "
                                  "rasterize or warp the labels onto the scene grid")
            if not np.issubdtype(np.dtype(lab.dtypes[0]), np.integer):
                raise SatsegError(f"{label_source}: dtype {lab.dtypes[0]}; label rasters must "
                                  "hold integer class values")
            declared = {c.value for c in classes.classes}
            label_nodata = lab.nodata
            if label_nodata is not None and (_is_nan(label_nodata) or label_nodata in declared):
                # A declared class wins over the file's nodata tag: classes.json is explicit.
                label_nodata = None
        else:
            vec = load_vector_labels(label_source, class_field, classes, src.crs)
        wins = patch_windows(src.height, src.width, size, stride, edge)
        if not wins:
            raise SatsegError(f"{image}: scene {src.width}x{src.height} is smaller than one "
                              f"{size}-px patch; use a smaller --size or --edge pad")
        img_profile = patch_profile(src, size, src.count, dtype, nodata)

        def label_mask(w: Win, valid: np.ndarray) -> np.ndarray:
            if lab is not None:
                raw = _read_padded(lab, w, size, label_source, 0, 1)
                valid_lab = valid & (raw != label_nodata) if label_nodata is not None else valid
                mask = np.full((size, size), IGNORE_LABEL, np.uint8)
                mask[valid_lab] = classes.value_to_id(
                    raw[valid_lab], what=f"{label_source} (window row {w.row}, col {w.col})")
                return mask
            mask = vec.window_mask(w, size, src.transform, src.width)
            mask[~valid] = IGNORE_LABEL
            return mask

        img_fill = fill_value(nodata, dtype)
        names = classes.names
        threads = default_write_threads() if threads is None else int(threads)
        if threads < 1:
            raise SatsegError(f"--threads {threads}: must be 1 or more")
        with atomic_dir(out_dir, overwrite=overwrite) as tmp, PatchWriter(threads) as patch_writer:
            tiler = Tiler(tmp, patch_writer, classes, size, min_valid, scene_label, purity)
            tiler.tile(src, image, wins, label_mask, img_profile, img_fill, band_names,
                       progress=progress)
            rows, totals = tiler.rows, tiler.totals
            if not rows and scene_label:
                raise SatsegError(f"{image}: no patch reaches --purity {purity} with valid "
                                  f"fraction >= {min_valid}; lower --purity or --size")
            if not rows:
                raise SatsegError(
                    f"{image}: no patch has valid fraction >= min_valid {min_valid} "
                    f"({len(wins)} windows checked, nodata={nodata}); is the scene all "
                    "nodata? Check the file's nodata value or lower --min-valid")
            tiler.check_ids(label_source)
            tiler.write_index()
            classes.save(tmp / "classes.json")
            info = {
                "format_version": FORMAT_VERSION,
                "image": str(image.absolute()),
                "bands": band_names,
                "dtype": dtype,
                "nodata": json_nodata(nodata, dtype),
                "crs": src.crs.to_wkt() if src.crs else None,
                "scene_transform": list(src.transform)[:6],
                "scene_height": src.height,
                "scene_width": src.width,
                "size": size,
                "stride": stride,
                "edge": edge,
                "min_valid": min_valid,
                "num_windows": len(wins),
                "num_patches": len(rows),
                "label_source": str(label_source.absolute()),
                "label_type": "raster" if lab is not None else "vector",
                "class_field": class_field if vec is not None else None,
                "task": "classification" if scene_label else "segmentation",
                "purity": purity if scene_label else None,
            }
            (tmp / "patches.json").write_text(json.dumps(info, indent=2) + "\n")
        scene_bytes = src.width * src.height * src.count * np.dtype(dtype).itemsize
    seconds = time.perf_counter() - t_start
    return {
        "out": str(out_dir),
        "num_windows": len(wins),
        "num_patches": len(rows),
        "skipped_low_valid": len(wins) - len(rows),
        "bands": band_names,
        "class_pixel_counts": {n: int(totals[i]) for i, n in enumerate(names)},
        "ignored_pixels": int(totals[IGNORE_LABEL]),
        "repaired_geometries": vec.repaired if vec is not None else 0,
        "seconds": round(seconds, 3),
        "input_mb_per_s": round(scene_bytes / 1e6 / max(seconds, 1e-9), 1),
    }


def json_nodata(nodata, dtype: str):
    """nodata as JSON: null for none/NaN, an int for integer dtypes."""
    if nodata is None or _is_nan(nodata):
        return None
    if np.dtype(dtype).kind in "iu" and float(nodata).is_integer():
        return int(nodata)
    return float(nodata)
