"""Cut a scene into image + mask patches by windowed reads, keeping georeferencing.

Output folder (read by ``satseg build``)::

    OUT/images/<patch_id>.tif   C bands, source dtype, the window's own transform
    OUT/masks/<patch_id>.tif    uint8 class ids, 255 = ignore (nodata, unlabelled)
    OUT/index.csv               patch_id,row,col,height,width,left,bottom,right,top,
                                valid_fraction,count_<class>...,count_ignore
    OUT/classes.json            the classes used (normalised)
    OUT/patches.json            scene grid, bands, dtype, nodata, parameters, counts

``patch_id`` is ``r{row:06d}_c{col:06d}`` (pixel offsets of the window in the scene).
Masks are GeoTIFF, never JPEG: labels must survive bit for bit.

Only one window of the scene (and of the labels) is in memory at a time; vector labels
are rasterized per window on the scene grid from the features whose bounds meet it.
The whole folder is written under a temporary name and renamed at the end, so a failure
leaves nothing behind.
"""

from __future__ import annotations

import csv
import json
import math
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from satseg_jax.classes import IGNORE_LABEL, ClassSet, load_classes
from satseg_jax.errors import SatsegError
from satseg_jax.io_utils import atomic_dir
from satseg_jax.raster.compose import _grid_mismatch, open_raster, read_window
from satseg_jax.raster.windows import Win, patch_windows


def patch_id(row: int, col: int) -> str:
    return f"r{row:06d}_c{col:06d}"


def valid_pixels(image: np.ndarray, nodata: float | None) -> np.ndarray:
    """(H, W) True where the pixel has data: not NaN in any band, not nodata in all bands."""
    valid = np.ones(image.shape[1:], dtype=bool)
    if np.issubdtype(image.dtype, np.floating):
        valid &= ~np.isnan(image).any(axis=0) & np.isfinite(image).all(axis=0)
    if nodata is not None and not (isinstance(nodata, float) and math.isnan(nodata)):
        valid &= ~(image == np.asarray(nodata, dtype=image.dtype)).all(axis=0)
    return valid


# ----------------------------------------------------------------------------- vectors


def _vector_crs(collection: dict, path: Path):
    from rasterio.crs import CRS

    name = (collection.get("crs") or {}).get("properties", {}).get("name")
    if not name:
        return CRS.from_epsg(4326)  # RFC 7946: GeoJSON without "crs" is WGS 84
    try:
        return CRS.from_user_input(name.replace("urn:ogc:def:crs:", "").replace("::", ":"))
    except Exception:
        try:
            return CRS.from_user_input(name)
        except Exception:
            raise SatsegError(f"{path}: cannot understand its crs {name!r}") from None


def load_vector_labels(path: Path, class_field: str, classes: ClassSet, scene_crs
                       ) -> list[tuple[dict, int, tuple[float, float, float, float]]]:
    """(geometry in the scene CRS, class id or 255, bounds) for every feature.

    GeoJSON is read directly; other formats (Shapefile, GeoPackage) need pyogrio.
    """
    from rasterio import features
    from rasterio.warp import transform_geom

    path = Path(path)
    if not path.exists():
        raise SatsegError(f"{path}: vector label file not found")
    if path.suffix.lower() in (".geojson", ".json"):
        try:
            collection = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise SatsegError(f"{path}: not valid GeoJSON ({e})") from None
        feats = collection.get("features")
        if not isinstance(feats, list):
            raise SatsegError(f"{path}: not a GeoJSON FeatureCollection")
        src_crs = _vector_crs(collection, path)
    else:
        try:
            import pyogrio
        except ImportError:
            raise SatsegError(f"{path}: reading {path.suffix} files needs pyogrio "
                              "(pip install pyogrio), or convert the file to GeoJSON") from None
        meta, _, geoms, field_data = pyogrio.read_ogr(path, encoding=None)
        import shapely

        fields = list(meta["fields"])
        feats = [{"geometry": shapely.geometry.mapping(shapely.from_wkb(g)) if g is not None
                  else None, "properties": {f: field_data[i][j] for i, f in enumerate(fields)}}
                 for j, g in enumerate(geoms)]
        from rasterio.crs import CRS

        src_crs = CRS.from_user_input(meta["crs"]) if meta.get("crs") else CRS.from_epsg(4326)
    if feats and class_field not in (feats[0].get("properties") or {}):
        available = sorted((feats[0].get("properties") or {}).keys())
        raise SatsegError(f"{path}: no attribute {class_field!r}; available: {available}. "
                          "Pass --class-field NAME")
    values = np.array([
        (f.get("properties") or {}).get(class_field) for f in feats
    ], dtype=object)
    try:
        values = values.astype(np.int64)
    except (TypeError, ValueError):
        raise SatsegError(f"{path}: attribute {class_field!r} must hold integer class values "
                          "(as classes.json 'value'/'id')") from None
    ids = classes.value_to_id(values, what=f"{path} attribute {class_field!r}")
    reproject = scene_crs is not None and src_crs != scene_crs
    out = []
    for f, cid in zip(feats, ids.tolist()):
        geom = f.get("geometry")
        if not geom:
            continue
        if reproject:
            geom = transform_geom(src_crs, scene_crs, geom)
        out.append((geom, int(cid), features.bounds(geom)))
    return out


# ----------------------------------------------------------------------------- main


def make_patches(image: Path, out_dir: Path, classes_path: Path, size: int = 256,
                 stride: int | None = None, min_valid: float = 0.5, edge: str = "drop",
                 labels: Path | None = None, vector: Path | None = None,
                 class_field: str = "class", overwrite: bool = False,
                 progress: bool = True) -> dict:
    """Write image/mask patch GeoTIFFs, index.csv and patches.json; return a summary."""
    import rasterio
    from rasterio import features
    from rasterio.windows import Window
    from rasterio.windows import bounds as window_bounds
    from rasterio.windows import transform as window_transform
    from tqdm import tqdm

    image, out_dir = Path(image), Path(out_dir)
    if (labels is None) == (vector is None):
        raise SatsegError("patches: give exactly one of --labels RASTER or --vector FILE")
    if not 0.0 <= min_valid <= 1.0:
        raise SatsegError(f"--min-valid {min_valid} must be between 0 and 1")
    stride = stride or size
    classes = load_classes(classes_path)
    with ExitStack() as stack:
        src = stack.enter_context(open_raster(image))
        nodata = src.nodata
        band_names = [d or f"band{i + 1}" for i, d in enumerate(src.descriptions)]
        lab = None
        shapes = None
        label_nodata = None
        if labels is not None:
            lab = stack.enter_context(open_raster(Path(labels)))
            problem = _grid_mismatch(src, lab)
            if problem:
                raise SatsegError(f"{labels}: label raster {problem} of {image}; rasterize or "
                                  "warp the labels onto the scene grid")
            if lab.count != 1:
                raise SatsegError(f"{labels}: label raster must have one band, has {lab.count}")
            label_nodata = lab.nodata
        else:
            shapes = load_vector_labels(Path(vector), class_field, classes, src.crs)
        wins = patch_windows(src.height, src.width, size, stride, edge)
        if not wins:
            raise SatsegError(f"{image}: scene {src.width}x{src.height} is smaller than one "
                              f"{size}-px patch; use a smaller --size or --edge pad")
        img_profile = {"driver": "GTiff", "height": size, "width": size, "count": src.count,
                       "dtype": src.dtypes[0], "crs": src.crs, "nodata": nodata,
                       "compress": "deflate"}
        mask_profile = {"driver": "GTiff", "height": size, "width": size, "count": 1,
                        "dtype": "uint8", "crs": src.crs, "nodata": IGNORE_LABEL,
                        "compress": "deflate"}
        rows: list[dict] = []
        with atomic_dir(out_dir, overwrite=overwrite) as tmp:
            (tmp / "images").mkdir()
            (tmp / "masks").mkdir()
            for w in tqdm(wins, desc=f"patches {image.name}", unit="patch",
                          disable=not progress):
                rw = Window(w.col, w.row, size, size)
                fill = nodata if nodata is not None else 0
                if (w.height, w.width) == (size, size):
                    img = read_window(src, rw, image)
                else:
                    img = read_window(src, rw, image, boundless=True, fill_value=fill)
                valid = valid_pixels(img, nodata)
                if (w.height, w.width) != (size, size):
                    valid[w.height:, :] = False
                    valid[:, w.width:] = False
                frac = float(valid.mean())
                if frac < min_valid or frac == 0.0:
                    continue
                t = window_transform(rw, src.transform)
                mask = _mask_for(w, rw, t, size, lab, labels, label_nodata, shapes, classes,
                                 features)
                mask[~valid] = IGNORE_LABEL
                pid = patch_id(w.row, w.col)
                with rasterio.open(tmp / "images" / f"{pid}.tif", "w", transform=t,
                                   **img_profile) as dst:
                    dst.write(img)
                    dst.descriptions = tuple(band_names)
                with rasterio.open(tmp / "masks" / f"{pid}.tif", "w", transform=t,
                                   **mask_profile) as dst:
                    dst.write(mask, 1)
                counts = np.bincount(mask.ravel(), minlength=256)
                left, bottom, right, top = window_bounds(rw, src.transform)
                row = {"patch_id": pid, "row": w.row, "col": w.col, "height": size,
                       "width": size, "left": left, "bottom": bottom, "right": right,
                       "top": top, "valid_fraction": round(frac, 6)}
                row.update({f"count_{n}": int(counts[i]) for i, n in enumerate(classes.names)})
                row["count_ignore"] = int(counts[IGNORE_LABEL])
                rows.append(row)
            if not rows:
                raise SatsegError(
                    f"{image}: no patch has a valid (non-nodata) fraction >= {min_valid} "
                    f"({len(wins)} windows checked); is the scene all nodata? Lower --min-valid "
                    "or check the file's nodata value"
                )
            fields = list(rows[0].keys())
            with open(tmp / "index.csv", "w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=fields)
                writer.writeheader()
                writer.writerows(rows)
            classes.save(tmp / "classes.json")
            summary = {
                "format_version": 1, "image": str(image.absolute()), "bands": band_names,
                "dtype": src.dtypes[0],
                "nodata": None if nodata is None or (isinstance(nodata, float)
                                                     and math.isnan(nodata)) else nodata,
                "crs": src.crs.to_wkt() if src.crs else None,
                "scene_transform": list(src.transform)[:6], "scene_height": src.height,
                "scene_width": src.width, "size": size, "stride": stride, "edge": edge,
                "min_valid": min_valid, "num_windows": len(wins), "num_patches": len(rows),
                "label_source": str(Path(labels or vector).absolute()),
            }
            (tmp / "patches.json").write_text(json.dumps(summary, indent=2) + "\n")
    return {"out": str(out_dir), "num_windows": len(wins), "num_patches": len(rows),
            "skipped_low_valid": len(wins) - len(rows), "bands": band_names,
            "class_pixel_counts": {n: sum(r[f"count_{n}"] for r in rows)
                                   for n in classes.names},
            "ignored_pixels": sum(r["count_ignore"] for r in rows)}


def _mask_for(w: Win, rw, t, size: int, lab, labels_path, label_nodata, shapes,
              classes: ClassSet, features) -> np.ndarray:
    """The uint8 class-id mask of one window, from a label raster or vector shapes."""
    if lab is not None:
        raw = read_window(lab, rw, Path(labels_path), 1, boundless=True,
                          fill_value=label_nodata if label_nodata is not None else 0)
        ignore = np.zeros(raw.shape, dtype=bool)
        if label_nodata is not None and label_nodata not in [c.value for c in classes.classes]:
            ignore = raw == label_nodata
            raw = np.where(ignore, classes.classes[0].value, raw)
        mask = classes.value_to_id(raw, what=str(labels_path))
        mask[ignore] = IGNORE_LABEL
        return mask
    left, top = t.c, t.f
    right, bottom = left + t.a * size, top + t.e * size
    x0, x1 = min(left, right), max(left, right)
    y0, y1 = min(top, bottom), max(top, bottom)
    hits = [(g, cid) for g, cid, (bx0, by0, bx1, by1) in shapes
            if bx0 <= x1 and bx1 >= x0 and by0 <= y1 and by1 >= y0]
    if not hits:
        return np.full((size, size), IGNORE_LABEL, dtype=np.uint8)
    return features.rasterize(hits, out_shape=(size, size), transform=t, fill=IGNORE_LABEL,
                              dtype="uint8")
