"""Generated STAC items whose assets are real Cloud-Optimised GeoTIFFs (for StacServer).

Why generated: the tests need byte-exact files to compare downloads against, with
known footprints, dates and cloud covers so each search filter can exclude exactly
one item, and COG structure (tiles + overviews) so windowed reads over HTTP fetch only
a few tiles. Contents are smooth seeded fields (compress well: files stay small).
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np

COLLECTION = "CBERS4A_WFI_L4_DN"
BANDS = {"B13": "blue", "B14": "green", "B15": "red", "B16": "nir"}
EPSG = 32723  # UTM 23S, central Brazil
PIXEL = 60.0  # metres
DATES = ["2023-03-10T13:20:05Z", "2023-08-20T13:21:40Z", "2023-11-02T13:19:12Z",
         "2024-01-15T13:22:30Z"]
CLOUDS = [5.0, 40.0, 15.0, 70.0]
EXTENSIONS = [
    "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
    "https://stac-extensions.github.io/file/v2.1.0/schema.json",
    "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
]


def multihash_sha256(path: Path) -> str:
    """``file:checksum`` value: multihash of sha256 (0x12, length 0x20, digest) as hex."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return "1220" + h.hexdigest()


def _smooth(rng: np.random.Generator, height: int, width: int, lo: float, hi: float):
    """A smooth random field (bilinear upsampling of a coarse grid) plus a little noise."""
    g = rng.uniform(lo, hi, size=(9, 9))
    ys, xs = np.linspace(0, 8, height), np.linspace(0, 8, width)
    rows = np.stack([np.interp(xs, np.arange(9), r) for r in g])  # 9 x width
    field = np.stack([np.interp(ys, np.arange(9), c) for c in rows.T], axis=1)  # h x w
    return field + rng.normal(0, (hi - lo) * 0.002, size=(height, width))


def write_cog(path: Path, width: int, height: int, count: int, dtype: str, crs,
              transform, seed: int) -> Path:
    """Write a tiled (256 px) Cloud-Optimised GeoTIFF with internal overviews."""
    import rasterio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    info = np.iinfo(dtype) if np.issubdtype(np.dtype(dtype), np.integer) else None
    lo, hi = (0.0, float(min(info.max, 10000))) if info else (0.0, 1.0)
    data = np.stack([_smooth(rng, height, width, lo + (hi - lo) * 0.1, hi * 0.6)
                     for _ in range(count)])
    if info:
        data = np.clip(np.rint(data), info.min, info.max)
    data = data.astype(dtype)
    profile = dict(driver="COG", width=width, height=height, count=count, dtype=dtype,
                   crs=crs, transform=transform, blocksize=256, compress="deflate",
                   predictor=2 if info else 3, overview_resampling="average",
                   BIGTIFF="NO")
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def _write_png(path: Path, seed: int, size: int = 64) -> Path:
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    rng = np.random.default_rng(seed)
    img = rng.integers(0, 255, size=(3, size, size), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", driver="PNG", width=size, height=size, count=3,
                           dtype="uint8") as dst:
            dst.write(img)
    for extra in path.parent.glob(path.name + ".aux.xml"):
        extra.unlink()
    return path


def make_items(root: Path, n: int = 2, size: int = 1024,
               collection: str = COLLECTION) -> list[dict]:
    """Write ``root/files/<item id>/{B13..B16}.tif`` + ``thumbnail.png`` for ``n`` items
    and return their STAC Item dicts (hrefs relative to ``root``: ``files/<id>/B13.tif``).

    Item i: footprints far apart (no bbox overlaps another), date ``DATES[i]``, cloud
    cover ``CLOUDS[i]`` (item 0: 5 %, item 1: 40 %), EPSG:32723, 60 m pixels.
    """
    from rasterio.crs import CRS
    from rasterio.transform import from_origin
    from rasterio.warp import transform_bounds

    root = Path(root)
    crs = CRS.from_epsg(EPSG)
    items = []
    for i in range(n):
        date = DATES[i % len(DATES)]
        iid = f"CBERS4A_WFI_{date[:10].replace('-', '')}_{200 + i:03d}_{130 + i:03d}_L4"
        ulx, uly = 400000.0 + i * 200000.0, 8300000.0 - i * 200000.0
        transform = from_origin(ulx, uly, PIXEL, PIXEL)
        bounds = (ulx, uly - size * PIXEL, ulx + size * PIXEL, uly)
        w, s, e, nn = transform_bounds(crs, "EPSG:4326", *bounds, densify_pts=21)
        assets = {}
        for b, (key, common) in enumerate(BANDS.items()):
            f = write_cog(root / "files" / iid / f"{key}.tif", size, size, 1, "uint16",
                          crs, transform, seed=1000 * i + b)
            assets[key] = {
                "href": f"files/{iid}/{key}.tif",
                "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                "title": f"{key} ({common})", "roles": ["data"],
                "eo:bands": [{"name": key, "common_name": common}],
                "file:size": f.stat().st_size, "file:checksum": multihash_sha256(f),
                "proj:shape": [size, size], "proj:transform": list(transform)[:6],
            }
        t = _write_png(root / "files" / iid / "thumbnail.png", seed=5000 + i)
        assets["thumbnail"] = {"href": f"files/{iid}/thumbnail.png", "type": "image/png",
                               "title": "thumbnail", "roles": ["thumbnail"],
                               "file:size": t.stat().st_size,
                               "file:checksum": multihash_sha256(t)}
        items.append({
            "type": "Feature", "stac_version": "1.0.0", "stac_extensions": EXTENSIONS,
            "id": iid, "collection": collection,
            "bbox": [w, s, e, nn],
            "geometry": {"type": "Polygon",
                         "coordinates": [[[w, s], [e, s], [e, nn], [w, nn], [w, s]]]},
            "properties": {"datetime": date, "eo:cloud_cover": CLOUDS[i % len(CLOUDS)],
                           "proj:epsg": EPSG, "platform": "CBERS-4A",
                           "instruments": ["WFI"], "gsd": PIXEL},
            "assets": assets, "links": [],
        })
    return items
