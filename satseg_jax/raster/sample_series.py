"""``satseg sample --series N``: a generated time series of scenes to try monthly mapping
offline (README "Mapping a region every month").

What it writes into ``OUT``:

- ``scenes/S2_YYYYMMDD_<tile>.tif``: N four-band scenes (blue, green, red, nir; uint16,
  nodata 0, the bands the quickstart run was trained on), each a sample scene of its own
  seed, alternating between two UTM zones (EPSG:32722 and EPSG:32723, either side of
  45° W), spread over ``months`` consecutive months of 2024. Within a zone the scenes sit
  on one pixel grid at three tile positions that overlap by 40 %, so the mosaic and the
  area tables have overlaps to resolve, within a month and across months;
- ``regions.geojson``: two regions in EPSG:4326 (property ``NAME``: ``west``, ``east``),
  each over part of one zone's scenes;
- ``classes.json``: the sample classes.

The dates are in the file names: ``--date-pattern 'S2_YYYYMMDD_*'``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from satseg_jax.errors import SatsegError
from satseg_jax.io_utils import atomic_dir

ZONES = ("EPSG:32722", "EPSG:32723")
ORIGIN = (500000.0, 8250000.0)  # upper-left of each zone's first tile position, metres
TILE_SHIFT = 0.6  # tile positions overlap by 1 - 0.6 = 40 %


def _position(k: int, size: int, pixel_size: float) -> tuple[float, float]:
    """Upper-left corner of a zone's k-th scene: three positions, one grid."""
    step = round(size * TILE_SHIFT) * pixel_size
    return ORIGIN[0] + (k % 3) * step, ORIGIN[1] - (k % 2) * step


def _regions(scenes: list[tuple[str, tuple[float, float, float, float]]]) -> dict:
    """west: the northern 3/4 of zone 22's scenes; east: the western 2/3 of zone 23's."""
    from rasterio.warp import transform_bounds

    feats = []
    for name, zone, (fx0, fy0, fx1, fy1) in (("west", ZONES[0], (0.0, 0.25, 1.0, 1.0)),
                                              ("east", ZONES[1], (0.0, 0.0, 0.66, 1.0))):
        bounds = [b for z, b in scenes if z == zone]
        left, bottom = min(b[0] for b in bounds), min(b[1] for b in bounds)
        right, top = max(b[2] for b in bounds), max(b[3] for b in bounds)
        w, h = right - left, top - bottom
        box = (left + fx0 * w, bottom + fy0 * h, left + fx1 * w, bottom + fy1 * h)
        x0, y0, x1, y1 = transform_bounds(zone, "EPSG:4326", *box, densify_pts=21)
        ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
        feats.append({"type": "Feature", "properties": {"NAME": name},
                      "geometry": {"type": "Polygon", "coordinates": [ring]}})
    return {"type": "FeatureCollection", "features": feats}


def write_scene_series(out_dir: str | Path, count: int = 12, size: int = 256, seed: int = 0,
                       pixel_size: float = 8.0, months: int = 3,
                       overwrite: bool = False) -> dict[str, Path]:
    """Write the series into ``out_dir``; return ``{"scenes", "regions", "classes"}``."""
    import rasterio
    from rasterio.transform import from_origin

    from satseg_jax.raster.compose import compose_bands
    from satseg_jax.raster.sample import BANDS, write_sample_scene

    if count < 2 or not 1 <= months <= 12 or months > count:
        raise SatsegError(f"--series {count} over {months} month(s): needs at least 2 scenes "
                          "and 1-12 months, no more months than scenes")
    out_dir = Path(out_dir)
    placed = []
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        (tmp / "scenes").mkdir()
        for i in range(count):
            zone, k = ZONES[i % 2], i // 2
            month = 1 + i * months // count
            name = f"S2_2024{month:02d}{1 + (7 * i) % 27:02d}_t{i % 2}{k % 3}{i:02d}.tif"
            parts = write_sample_scene(tmp / f".part{i}", size=size, seed=seed + i,
                                       pixel_size=pixel_size)
            scene = compose_bands([parts[b] for b in BANDS], tmp / "scenes" / name,
                                  progress=False)
            x, y = _position(k, size, pixel_size)
            with rasterio.open(scene, "r+") as dst:
                dst.crs = zone
                dst.transform = from_origin(x, y, pixel_size, pixel_size)
                placed.append((zone, tuple(dst.bounds)))
            if i == 0:
                shutil.copy(parts["classes"], tmp / "classes.json")
            shutil.rmtree(tmp / f".part{i}")
        (tmp / "regions.geojson").write_text(json.dumps(_regions(placed), indent=1) + "\n")
    return {"scenes": out_dir / "scenes", "regions": out_dir / "regions.geojson",
            "classes": out_dir / "classes.json"}
