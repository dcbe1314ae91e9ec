"""``satseg area --maps MAPDIR --by regions.geojson --period month``: km² of one class per
region and period over many scene maps, in the shape of INPE's burned-area tables (rows:
year and month; columns: regions, total; a total row).

Why this shape:

- **Each scene is tallied on its own grid**, in its own CRS: UTM zones stay exact
  (projected pixel areas) and geographic maps keep their ellipsoidal row areas
  (:func:`satseg_jax.area.row_pixel_areas_m2`); the region polygons are reprojected into
  each scene's CRS and rasterised by pixel centre.
- **A pixel is counted once per period** where scenes of that period overlap, by the
  mosaic's rule (:mod:`satseg_jax.mapping.mosaic`): a scene's pixel is counted unless a
  later scene of the same period (later date, or same date and later id) has data at that
  pixel's centre. The later scenes' data masks are resampled onto the scene's strip with
  nearest neighbour (GDAL samples at the destination pixel centres), in any CRS, so
  overlaps across UTM zones are resolved too. Nodata (255) is never counted.
- **Memory is bounded by a strip** of one scene (plus the same strip of each overlapping
  later scene), whatever the number or size of the scenes.
- Failed scenes (``scenes/<id>.failed.json``) are listed with the table, never silently
  absent from it.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from satseg_jax.classes import IGNORE_LABEL
from satseg_jax.errors import SatsegError
from satseg_jax.io_utils import atomic_path
from satseg_jax.mapping.mosaic import drawing_order
from satseg_jax.mapping.scenes import PERIODS, period_key


def _choose_class(classes: list[dict], name: str | None) -> dict:
    if name is None:
        if len(classes) == 2:
            return classes[1]
        raise SatsegError("--class: the maps have classes "
                          f"{', '.join(c['name'] for c in classes)}; name the one to tally")
    for c in classes:
        if c["name"] == name or str(c["id"]) == name:
            return c
    raise SatsegError(f"--class {name!r}: not a class of the maps "
                      f"({', '.join(c['name'] for c in classes)})")


def _check_dates(records: list[dict], period: str) -> None:
    if period == "none":
        return
    missing = [r["id"] for r in records if not r.get("date")]
    if missing:
        raise SatsegError(f"--period {period}: {len(missing)} scene(s) have no date (first: "
                          f"{missing[0]}); give --dates CSV (id,date), --date-pattern, or map "
                          "from a download manifest (--items)")


def _later_overlapping(rec: dict, later: list[dict]):
    """The later scenes whose bounds meet ``rec``'s (in ``rec``'s CRS)."""
    from rasterio.crs import CRS
    from rasterio.warp import transform_bounds

    crs = CRS.from_wkt(rec["crs"])
    l0, b0, r0, t0 = rec["bounds"]
    out = []
    for o in later:
        ob = o["bounds"] if o["crs"] == rec["crs"] else transform_bounds(
            CRS.from_wkt(o["crs"]), crs, *o["bounds"])
        if ob[0] < r0 and ob[2] > l0 and ob[1] < t0 and ob[3] > b0:
            out.append(o)
    return out


def _covered(strip_shape, transform, crs, others: list, mapdir: Path) -> np.ndarray:
    """True where a later scene has data at the strip's pixel centres."""
    import rasterio
    from rasterio.warp import Resampling, reproject

    covered = np.zeros(strip_shape, bool)
    for o in others:
        dst = np.full(strip_shape, IGNORE_LABEL, np.uint8)
        with rasterio.open(mapdir / o["map"]) as src:
            reproject(rasterio.band(src, 1), dst, src_nodata=IGNORE_LABEL,
                      dst_transform=transform, dst_crs=crs, dst_nodata=IGNORE_LABEL,
                      resampling=Resampling.nearest)
        covered |= dst != IGNORE_LABEL
    return covered


def _tally_scene(mapdir: Path, rec: dict, later: list[dict], regions, class_id: int,
                 strip: int) -> np.ndarray:
    """km² of ``class_id`` per region in one scene, pixels covered later left out."""
    import rasterio
    from rasterio import features
    from rasterio.windows import Window
    from rasterio.windows import transform as window_transform

    from satseg_jax.area import row_pixel_areas_m2
    from satseg_jax.raster.io import read_window

    others = _later_overlapping(rec, later)
    out = np.zeros(len(regions))
    path = mapdir / rec["map"]
    with rasterio.open(path) as src:
        for r0 in range(0, src.height, strip):
            h = min(strip, src.height - r0)
            win = Window(0, r0, src.width, h)
            cls = read_window(src, win, path, 1)
            hit = cls == class_id
            if not hit.any():
                continue
            t = window_transform(win, src.transform)
            if others:
                hit &= ~_covered(cls.shape, t, src.crs, others, mapdir)
            zone = features.rasterize([(g, i) for i, (_, g) in enumerate(regions)],
                                      out_shape=cls.shape, transform=t, fill=-1,
                                      dtype="int32")
            areas = row_pixel_areas_m2(src.transform, src.crs, np.arange(r0, r0 + h))
            w = np.broadcast_to(areas[:, None], cls.shape)
            sel = hit & (zone >= 0)
            out += np.bincount(zone[sel], weights=w[sel], minlength=len(regions)) / 1e6
    return out


def period_area_table(mapdir: str | Path, regions: str | Path, region_field: str | None,
                      period: str = "month", class_name: str | None = None,
                      dates: dict[str, str | None] | None = None, strip: int = 512,
                      progress: bool = False) -> dict:
    """The table: ``{"class", "period", "regions", "rows": {period: [km² per region]},
    "scenes": ids counted, "failed": [...], "units": "km2"}``.

    ``dates`` overrides the markers' dates by scene id (from ``--dates`` or
    ``--date-pattern``).
    """
    from tqdm import tqdm

    from satseg_jax.area import load_region_shapes
    from satseg_jax.mapping.scene_maps import done_records, failed_records, read_card

    if period not in PERIODS:
        raise SatsegError(f"--period {period!r}: expected month, year or none")
    mapdir = Path(mapdir)
    card = read_card(mapdir)
    cls = _choose_class(card["classes"], class_name)
    records = [dict(r, date=(dates or {}).get(r["id"], r.get("date")))
               for r in done_records(mapdir)]
    if not records:
        raise SatsegError(f"{mapdir}: holds no finished scene map; run satseg map first")
    plain = [r["id"] for r in records if not r.get("crs")]
    if plain:
        raise SatsegError(f"{mapdir}: scene {plain[0]} has no CRS, so region polygons cannot "
                          "be placed on it; map georeferenced scenes")
    _check_dates(records, period)
    shapes: dict[str, list] = {}
    names: list[str] | None = None
    rows: dict[str, np.ndarray] = {}
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(period_key(r.get("date"), period), []).append(r)
    bar = tqdm(total=len(records), desc="area", unit="scene", disable=not progress)
    for key in sorted(groups):
        order = drawing_order(groups[key])
        total = None
        for i, rec in enumerate(order):
            if rec["crs"] not in shapes:
                from rasterio.crs import CRS

                shapes[rec["crs"]] = load_region_shapes(Path(regions), region_field,
                                                        CRS.from_wkt(rec["crs"]))
            regs = shapes[rec["crs"]]
            names = names or [n for n, _ in regs]
            km2 = _tally_scene(mapdir, rec, order[i + 1:], regs, int(cls["id"]), strip)
            total = km2 if total is None else total + km2
            bar.update()
        rows[key] = total
    bar.close()
    return {"class": cls["name"], "period": period, "regions": names,
            "rows": {k: v.tolist() for k, v in rows.items()},
            "scenes": [r["id"] for r in records], "failed": failed_records(mapdir),
            "mapdir": str(mapdir), "units": "km2"}


def _row_label(key: str, period: str) -> list[str]:
    if period == "month":
        return [key[:4], key[5:7]]
    return [key]


def table_lines(table: dict) -> tuple[list[str], list[list[str]]]:
    """(header, rows) with the total column and the total row, areas to 3 decimals."""
    period = table["period"]
    head = {"month": ["year", "month"], "year": ["year"], "none": ["period"]}[period]
    header = head + list(table["regions"]) + ["total"]
    body, col = [], np.zeros(len(table["regions"]))
    for key, vals in table["rows"].items():
        v = np.asarray(vals)
        col += v
        body.append(_row_label(key, period) + [f"{x:.3f}" for x in v] + [f"{v.sum():.3f}"])
    label = ["total"] + [""] * (len(head) - 1)
    body.append(label + [f"{x:.3f}" for x in col] + [f"{col.sum():.3f}"])
    return header, body


def format_markdown(table: dict) -> str:
    header, body = table_lines(table)
    lines = [f"km² of **{table['class']}** per region and {table['period']} "
             f"({len(table['scenes'])} scene(s); a pixel is counted once per period)", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    if table["failed"]:
        lines += ["", f"Not counted: {len(table['failed'])} scene(s) failed to map:"]
        lines += [f"- {f['id']}: {f.get('error', '')}" for f in table["failed"]]
    return "\n".join(lines) + "\n"


def write_table(table: dict, out: str | Path) -> list[Path]:
    """``OUT.csv``, ``OUT.md`` and ``OUT.json`` (the table with its scenes and failures)."""
    out = Path(out)
    stem = out.with_suffix("") if out.suffix.lower() in (".csv", ".md", ".json") else out
    paths = [stem.with_suffix(".csv"), stem.with_suffix(".md"), stem.with_suffix(".json")]
    header, body = table_lines(table)
    with atomic_path(paths[0]) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([f"{h}_km2" if h in table["regions"] or h == "total" else h
                    for h in header])
        w.writerows(body)
    with atomic_path(paths[1]) as tmp:
        tmp.write_text(format_markdown(table))
    with atomic_path(paths[2]) as tmp:
        tmp.write_text(json.dumps(table, indent=2) + "\n")
    return paths
