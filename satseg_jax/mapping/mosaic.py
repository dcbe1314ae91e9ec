"""``MAPDIR/mosaic.vrt`` over every finished scene map, and ``--cog``: the same as one
Cloud-Optimised GeoTIFF.

The overlap rule is **latest date first**: sources are listed oldest first (ties by scene
id), and in a GDAL VRT a later source is drawn over an earlier one wherever it has data
(its nodata, 255, is transparent), as ``gdalbuildvrt`` does with ``-srcnodata``. A scene
without a date counts as older than every dated one. The area tables of
:mod:`satseg_jax.mapping.period_area` count each pixel with the same rule.

``gdalbuildvrt`` semantics otherwise: the union of the sources' extents; the average of
their pixel sizes; one CRS. Scenes in another CRS than the mosaic's (the most common one
among the scenes, or ``crs``) are first warped into it with nearest-neighbour resampling
(a class id is never averaged), onto the pixel grid of the scenes already in that CRS,
into ``MAPDIR/mosaic_parts/``, once per version of the scene map (the part's name
carries the map's hash). The VRT is written by hand (XML: no
GDAL Python bindings needed) and opened with rasterio before it replaces the previous one.

Several processes finish at different times: the VRT is rebuilt under an exclusive lock
on ``MAPDIR/.mosaic.lock``, so the last process to finish, which sees every marker, writes
the last one.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
from collections import Counter
from pathlib import Path
from xml.sax.saxutils import escape

from satseg_jax.classes import IGNORE_LABEL, parse_colour
from satseg_jax.errors import SatsegError
from satseg_jax.io_utils import atomic_path

VRT_NAME = "mosaic.vrt"
PARTS_DIR = "mosaic_parts"


def drawing_order(records: list[dict]) -> list[dict]:
    """Oldest first (undated before dated), then by id: the last one drawn wins."""
    return sorted(records, key=lambda r: (r.get("date") or "", r["id"]))


@contextlib.contextmanager
def mosaic_lock(mapdir: Path):
    with open(Path(mapdir) / ".mosaic.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _target_crs(records: list[dict], crs: str | None):
    from rasterio.crs import CRS

    if crs:
        try:
            return CRS.from_user_input(crs)
        except Exception:
            raise SatsegError(f"--mosaic-crs {crs!r}: not a CRS (e.g. EPSG:32722)") from None
    georef = [r for r in records if r.get("crs")]
    if not georef:
        raise SatsegError("no scene map has a CRS: plain images cannot be mosaicked")
    counts = Counter(r["crs"] for r in georef)
    best = max(counts.values())
    # The most common CRS; ties go to the CRS of the first scene by id (deterministic).
    first = next(r["crs"] for r in sorted(georef, key=lambda r: r["id"]) if counts[r["crs"]]
                 == best)
    return CRS.from_wkt(first)


def _part(mapdir: Path, rec: dict, crs, grid: tuple[float, float, float, float]) -> Path:
    """The scene map warped into ``crs`` (nearest) on the mosaic's pixel grid ``grid``
    (x origin, y origin, x size, y size), made once per map version."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.warp import Resampling, reproject, transform_bounds

    x0, y0, rx, ry = grid
    part = Path(mapdir) / PARTS_DIR / f"{rec['id']}.{rec['sha256'][:12]}.tif"
    if part.exists():
        return part
    with rasterio.open(Path(mapdir) / rec["map"]) as src:
        left, bottom, right, top = transform_bounds(src.crs, crs, *src.bounds, densify_pts=21)
        c0, c1 = math.floor((left - x0) / rx), math.ceil((right - x0) / rx)
        r0, r1 = math.floor((y0 - top) / ry), math.ceil((y0 - bottom) / ry)
        profile = {"driver": "GTiff", "width": c1 - c0, "height": r1 - r0, "count": 1,
                   "dtype": "uint8", "crs": crs, "nodata": IGNORE_LABEL,
                   "transform": from_origin(x0 + c0 * rx, y0 - r0 * ry, rx, ry),
                   "tiled": True, "compress": "deflate"}
        with atomic_path(part) as tmp, rasterio.open(tmp, "w", **profile) as dst:
            reproject(rasterio.band(src, 1), rasterio.band(dst, 1), src_nodata=IGNORE_LABEL,
                      dst_nodata=IGNORE_LABEL, resampling=Resampling.nearest)
    return part


def _sources(mapdir: Path, records: list[dict], crs) -> list[dict]:
    """(file, grid) of each record in the mosaic's CRS, in drawing order. The pixel grid
    is that of the maps already in ``crs`` (their average pixel size, the first one's
    origin); maps in other CRSs are warped onto it, so every source is pixel-aligned."""
    import rasterio
    from rasterio.crs import CRS

    georef = [r for r in drawing_order(records) if r.get("crs")]
    native = [r for r in georef if CRS.from_wkt(r["crs"]) == crs]
    grid = None
    if native:
        ts = [r["transform"] for r in native]
        grid = (ts[0][2], ts[0][5], sum(abs(t[0]) for t in ts) / len(ts),
                sum(abs(t[4]) for t in ts) / len(ts))
    out = []
    for rec in georef:
        path = Path(mapdir) / rec["map"]
        if CRS.from_wkt(rec["crs"]) != crs:
            if grid is None:  # --mosaic-crs that no scene is in: the first scene's size
                t = rec["transform"]
                grid = (0.0, 0.0, abs(t[0]), abs(t[4]))
            path = _part(mapdir, rec, crs, grid)
        with rasterio.open(path) as src:
            out.append({"path": path, "width": src.width, "height": src.height,
                        "bounds": src.bounds, "res": src.res})
    return out


def _colour_table(classes: list[dict]) -> str:
    entries = {int(c["id"]): parse_colour(c["colour"], "map.json") for c in classes}
    rows = []
    for i in range(256):
        r, g, b = entries.get(i, (255, 255, 255))
        rows.append(f'<Entry c1="{r}" c2="{g}" c3="{b}" c4="{0 if i == IGNORE_LABEL else 255}"/>')
    return "<ColorTable>" + "".join(rows) + "</ColorTable>"


def vrt_xml(mapdir: Path, sources: list[dict], crs, classes: list[dict]) -> str:
    """The VRT document: the sources' union at their average pixel size (one size when
    they are aligned, as :func:`_sources` makes them)."""
    xs = [s["res"][0] for s in sources]
    ys = [s["res"][1] for s in sources]
    rx, ry = sum(xs) / len(xs), sum(ys) / len(ys)
    left = min(s["bounds"].left for s in sources)
    top = max(s["bounds"].top for s in sources)
    right = max(s["bounds"].right for s in sources)
    bottom = min(s["bounds"].bottom for s in sources)
    width = max(1, math.ceil(round((right - left) / rx, 6)))
    height = max(1, math.ceil(round((top - bottom) / ry, 6)))
    parts = [f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">',
             f"<SRS>{escape(crs.to_wkt())}</SRS>",
             f"<GeoTransform>{left!r}, {rx!r}, 0.0, {top!r}, 0.0, {-ry!r}</GeoTransform>",
             '<VRTRasterBand dataType="Byte" band="1">',
             f"<NoDataValue>{IGNORE_LABEL}</NoDataValue>",
             "<ColorInterp>Palette</ColorInterp>", _colour_table(classes)]
    for s in sources:
        rel = s["path"].relative_to(mapdir).as_posix()
        b = s["bounds"]
        parts.append(
            "<ComplexSource>"
            f'<SourceFilename relativeToVRT="1">{escape(rel)}</SourceFilename>'
            "<SourceBand>1</SourceBand>"
            f'<SrcRect xOff="0" yOff="0" xSize="{s["width"]}" ySize="{s["height"]}"/>'
            f'<DstRect xOff="{(b.left - left) / rx!r}" yOff="{(top - b.top) / ry!r}" '
            f'xSize="{(b.right - b.left) / rx!r}" ySize="{(b.top - b.bottom) / ry!r}"/>'
            f"<NODATA>{IGNORE_LABEL}</NODATA>"
            "</ComplexSource>")
    parts += ["</VRTRasterBand>", "</VRTDataset>"]
    return "\n".join(parts) + "\n"


def build_vrt(mapdir: str | Path, records: list[dict], classes: list[dict],
              crs: str | None = None) -> Path | None:
    """Write ``MAPDIR/mosaic.vrt`` over ``records`` (done markers); None when there is no
    georeferenced scene map to mosaic."""
    import rasterio

    mapdir = Path(mapdir)
    if not any(r.get("crs") for r in records):
        return None
    target = _target_crs(records, crs)
    with mosaic_lock(mapdir):
        sources = _sources(mapdir, records, target)
        out = mapdir / VRT_NAME
        with atomic_path(out) as tmp:  # beside the VRT: its relative paths hold
            tmp.write_text(vrt_xml(mapdir, sources, target, classes))
            with rasterio.open(tmp) as check:  # GDAL knows a VRT by its content
                check.read(1, window=((0, 1), (0, 1)))
    return out


def write_cog(vrt: str | Path, out: str | Path, strip: int = 1024) -> Path:
    """The mosaic as one COG with overviews, read and written by strips of rows."""
    import rasterio
    from rasterio.windows import Window

    from satseg_jax.raster.map_files import to_cog

    out = Path(out)
    with rasterio.open(vrt) as src, atomic_path(out) as tmp:
        profile = {"driver": "GTiff", "width": src.width, "height": src.height, "count": 1,
                   "dtype": "uint8", "crs": src.crs, "transform": src.transform,
                   "nodata": IGNORE_LABEL, "tiled": True, "blockxsize": 512,
                   "blockysize": 512, "compress": "deflate", "BIGTIFF": "IF_SAFER"}
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write_colormap(1, src.colormap(1))
            for r0 in range(0, src.height, strip):
                win = Window(0, r0, src.width, min(strip, src.height - r0))
                dst.write(src.read(1, window=win), 1, window=win)
        to_cog(tmp)
    return out
