"""``satseg map`` -> ``mosaic.vrt`` -> ``satseg area --maps --period`` (issue 32): the
table against an independent per-pixel count, resume after SIGKILL, two processes, a
corrupt scene.

Twelve 40-px scenes cut from the tiny sample scene, re-georeferenced on 10 m grids in two
UTM zones (EPSG:32722, 32723), two per zone and month over three months, overlapping
within and across months; two regions, one per zone, given in one GeoJSON (EPSG:32722).
The independent count paints each zone's scenes of a month on one canvas, oldest first,
and counts the canvas inside each region's pixel rectangle: no reprojection, no per-scene
logic.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from rasterio.warp import transform as warp_transform
from rasterio.windows import Window

from satseg_jax.cli import main
from tests.workers.tiny_config import two_step_run

REPO = Path(__file__).resolve().parents[1]
ZONES = ("EPSG:32722", "EPSG:32723")
X0, Y0, PX, SIZE = 500000.0, 8000000.0, 10.0, 40
TILING = ["--checkpoint", "latest", "--tile", "32", "--overlap", "8", "--batch", "4"]
# Per zone: (id suffix, month, day, row offset, col offset) on the zone's canvas grid.
LAYOUT = [("a", 1, 5, 0, 0), ("b", 1, 20, 20, 10), ("c", 2, 3, 5, 3), ("d", 2, 28, 25, 30),
          ("e", 3, 15, 10, 6), ("f", 3, 15, 30, 20)]  # e and f: same day, id decides
# Region pixel rectangles on each zone's canvas: (name, zone, row0, row1, col0, col1).
REGIONS = [("west", 0, 5, 45, 10, 50), ("east", 1, 0, 38, 4, 60)]


@pytest.fixture(scope="module")
def run(tiny_dataset, tmp_path_factory):
    return two_step_run(tiny_dataset, tmp_path_factory.mktemp("map") / "run")


def _write_scene(src, out: Path, r0: int, c0: int, crs: str, row: int, col: int) -> None:
    data = src.read(window=Window(c0, r0, SIZE, SIZE))
    profile = {"driver": "GTiff", "width": SIZE, "height": SIZE, "count": src.count,
               "dtype": data.dtype, "nodata": src.nodata, "crs": crs,
               "transform": from_origin(X0 + col * PX, Y0 - row * PX, PX, PX)}
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(data)
        for i, d in enumerate(src.descriptions, 1):
            dst.set_band_description(i, d)


@pytest.fixture(scope="module")
def scenes(tiny_dataset, tmp_path_factory) -> Path:
    """scenes/S2_2024MMDD_<zone><id>.tif: 12 scenes (the sample's nodata border in some)."""
    root = tmp_path_factory.mktemp("scenes")
    with rasterio.open(tiny_dataset.parent / "scene.tif") as src:
        for z, crs in enumerate(ZONES):
            for k, (sid, month, day, row, col) in enumerate(LAYOUT):
                r0, c0 = (0, 0) if (z + k) % 4 == 0 else (37 * k % 150, 23 * (k + z) % 150)
                _write_scene(src, root / f"S2_2024{month:02d}{day:02d}_z{z}{sid}.tif",
                             r0, c0, crs, row, col)
    return root


@pytest.fixture(scope="module")
def regions(tmp_path_factory) -> Path:
    """Both rectangles as polygons in EPSG:32722 (the east one's corners moved there
    from 32723: reprojecting them back gives the same corners). Edges a quarter pixel
    past pixel edges, so no pixel centre lies on one."""
    feats = []
    for name, z, r0, r1, c0, c1 in REGIONS:
        xs = [X0 + c0 * PX + 2.5, X0 + c1 * PX + 2.5]
        ys = [Y0 - r0 * PX - 2.5, Y0 - r1 * PX - 2.5]
        ring = [(xs[0], ys[0]), (xs[1], ys[0]), (xs[1], ys[1]), (xs[0], ys[1]), (xs[0], ys[0])]
        if ZONES[z] != ZONES[0]:
            x, y = warp_transform(ZONES[z], ZONES[0], [p[0] for p in ring], [p[1] for p in ring])
            ring = list(zip(x, y))
        feats.append({"type": "Feature", "properties": {"NAME": name},
                      "geometry": {"type": "Polygon", "coordinates": [ring]}})
    path = tmp_path_factory.mktemp("regions") / "regions.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": feats, "crs": {
        "type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32722"}}}))
    return path


def _map(run, scenes, out: Path, *extra: str) -> int:
    return main(["map", "--workdir", str(run), "--scenes", str(scenes), "--out", str(out),
                 "--date-pattern", "S2_YYYYMMDD_*", *TILING, *extra])


@pytest.fixture(scope="module")
def mapped(run, scenes, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mapped") / "mapdir"
    assert _map(run, scenes, out, "--cog") == 0
    return out


def _paint(mapdir: Path, zone: int, month: int | None, canvas=None) -> np.ndarray:
    """Zone ``zone``'s scenes of ``month`` (None: all) on one canvas, oldest first."""
    canvas = np.full((80, 80), 255, np.uint8) if canvas is None else canvas
    for sid, m, day, row, col in sorted(LAYOUT, key=lambda s: (s[1], s[2], s[0])):
        if month is not None and m != month:
            continue
        with rasterio.open(mapdir / "scenes" / f"S2_2024{m:02d}{day:02d}_z{zone}{sid}.tif") \
                as src:
            cls = src.read(1)
        view = canvas[row:row + SIZE, col:col + SIZE]
        view[cls != 255] = cls[cls != 255]
    return canvas


def _independent_count(mapdir: Path, class_id: int) -> dict[str, list[float]]:
    """{YYYY-MM: [km² per region]} from one canvas per zone and month."""
    return {f"2024-{month:02d}": [
        float((_paint(mapdir, z, month)[r0:r1, c0:c1] == class_id).sum()) * PX * PX / 1e6
        for _, z, r0, r1, c0, c1 in REGIONS] for month in (1, 2, 3)}


def _count_twice(mapdir: Path, class_id: int) -> float:
    """km² with every scene counted on its own: overlaps twice (what must not happen)."""
    n = 0
    for _, z, r0, r1, c0, c1 in REGIONS:
        for sid, m, day, row, col in LAYOUT:
            one = np.full((80, 80), 255, np.uint8)
            with rasterio.open(mapdir / "scenes" / f"S2_2024{m:02d}{day:02d}_z{z}{sid}.tif") \
                    as src:
                one[row:row + SIZE, col:col + SIZE] = src.read(1)
            n += int((one[r0:r1, c0:c1] == class_id).sum())
    return n * PX * PX / 1e6


def test_month_by_region_table_equals_an_independent_count(mapped, regions, tmp_path, capsys):
    card = json.loads((mapped / "map.json").read_text())
    assert len(list((mapped / "scenes").glob("*.json"))) == 12
    nonzero = counted_twice = 0
    for c in card["classes"]:
        out = tmp_path / f"area_{c['name']}"
        rc = main(["area", "--maps", str(mapped), "--by", str(regions), "--region-field",
                   "NAME", "--period", "month", "--class", c["name"], "--out", str(out)])
        assert rc == 0
        table = json.loads(out.with_suffix(".json").read_text())
        assert table["regions"] == ["west", "east"]
        truth = _independent_count(mapped, int(c["id"]))
        assert list(table["rows"]) == list(truth)
        for month, cells in truth.items():
            np.testing.assert_allclose(table["rows"][month], cells, rtol=0, atol=1e-9)
        nonzero += sum(v > 0 for cells in truth.values() for v in cells)
        twice = _count_twice(mapped, int(c["id"]))
        counted_twice += twice > sum(map(sum, truth.values())) + 1e-9
        lines = out.with_suffix(".csv").read_text().splitlines()
        assert lines[0] == "year,month,west_km2,east_km2,total_km2"
        total = [float(x) for x in lines[-1].split(",")[2:]]
        col = np.sum(list(truth.values()), axis=0)
        np.testing.assert_allclose(total, [*col, col.sum()], atol=1e-3)
    assert nonzero >= 3  # the model's maps give the table something to count
    assert counted_twice  # the overlaps matter: summing scenes would give other cells
    printed = capsys.readouterr().out
    assert "| year | month | west | east | total |" in printed


def test_mosaic_draws_the_latest_scene_on_top(mapped):
    with rasterio.open(mapped / "mosaic.vrt") as vrt, rasterio.open(mapped / "mosaic.tif") as cog:
        assert vrt.crs.to_string() == "EPSG:32722"
        mosaic = vrt.read(1)
        np.testing.assert_array_equal(cog.read(1), mosaic)
        # where zone 22's canvas origin lies in the mosaic (zone 23 is warped east of it)
        col0 = round((X0 - vrt.transform.c) / PX)
        row0 = round((vrt.transform.f - Y0) / PX)
    canvas = _paint(mapped, 0, None)
    np.testing.assert_array_equal(mosaic[row0:row0 + 80, col0:col0 + 80], canvas)


def _maps(mapdir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((mapdir / "scenes").glob("*.tif"))}


def _satseg(*args: str) -> subprocess.Popen:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.Popen([sys.executable, "-m", "satseg_jax.cli", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _map_args(run, scenes, out: Path, *extra: str) -> list[str]:
    return ["map", "--workdir", str(run), "--scenes", str(scenes), "--out", str(out),
            "--date-pattern", "S2_YYYYMMDD_*", *TILING, *extra]


def test_a_rerun_after_sigkill_maps_only_what_is_missing(run, scenes, mapped, tmp_path):
    out = tmp_path / "mapdir"
    proc = _satseg(*_map_args(run, scenes, out))
    deadline = time.monotonic() + 120
    while not any(p for p in (out / "scenes").glob("*.json") if ".failed" not in p.name):
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = {p.name: p.stat().st_mtime_ns for p in (out / "scenes").glob("*.tif")
            if p.with_suffix(".json").exists()}
    assert 0 < len(done) < 12
    assert main(_map_args(run, scenes, out)) == 0
    for name, mtime in done.items():  # not predicted again
        assert (out / "scenes" / name).stat().st_mtime_ns == mtime
    assert _maps(out) == _maps(mapped)  # byte for byte an uninterrupted run's maps
    assert not [p for p in (out / "scenes").iterdir() if p.name.startswith(".")]
    assert (out / "mosaic.vrt").read_text() == (mapped / "mosaic.vrt").read_text()
    # A source that changed since it was mapped is mapped again; the others are not.
    changed = sorted(scenes.glob("*.tif"))[3]
    marker = out / "scenes" / f"{changed.stem}.json"
    before = {p.name: p.stat().st_mtime_ns for p in (out / "scenes").glob("*.json")}
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))
    try:
        assert main(_map_args(run, scenes, out)) == 0
    finally:
        os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns - 10**9))
    after = {p.name: p.stat().st_mtime_ns for p in (out / "scenes").glob("*.json")}
    assert [n for n in after if after[n] != before[n]] == [marker.name]


def test_two_processes_split_the_scenes_and_give_the_same_mosaic(run, scenes, mapped,
                                                                 tmp_path):
    out = tmp_path / "mapdir"
    procs = [_satseg(*_map_args(run, scenes, out, "--process-index", str(i),
                                "--process-count", "2")) for i in (0, 1)]
    logs = [p.communicate()[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    by_process: dict[int, set[str]] = {0: set(), 1: set()}
    for p in (out / "scenes").glob("*.json"):
        rec = json.loads(p.read_text())
        assert rec["process"][1] == 2
        by_process[rec["process"][0]].add(rec["id"])
    assert not by_process[0] & by_process[1]
    assert len(by_process[0]) == len(by_process[1]) == 6
    assert _maps(out) == _maps(mapped)
    assert (out / "mosaic.vrt").read_text() == (mapped / "mosaic.vrt").read_text()


def test_a_corrupt_scene_is_reported_the_others_mapped_and_the_table_lists_it(
        run, scenes, regions, tmp_path, capsys):
    folder = tmp_path / "scenes"
    folder.mkdir()
    good = sorted(scenes.glob("*.tif"))[:2]
    for p in good:
        (folder / p.name).write_bytes(p.read_bytes())
    data = good[0].read_bytes()
    (folder / "S2_20240102_broken.tif").write_bytes(data[: len(data) // 2])
    out = tmp_path / "mapdir"
    assert _map(run, folder, out) == 1  # one failed scene
    err = capsys.readouterr().err
    assert "scene S2_20240102_broken" in err
    assert len(list((out / "scenes").glob("*.tif"))) == 2
    failed = json.loads((out / "scenes" / "S2_20240102_broken.failed.json").read_text())
    assert "corrupt" in failed["error"] or "cannot be read" in failed["error"]
    table_out = tmp_path / "table"
    rc = main(["area", "--maps", str(out), "--by", str(regions), "--region-field", "NAME",
               "--class", "0", "--out", str(table_out)])
    assert rc == 1
    table = json.loads(table_out.with_suffix(".json").read_text())
    assert sorted(table["scenes"]) == sorted(p.stem for p in good)
    assert [f["id"] for f in table["failed"]] == ["S2_20240102_broken"]
    assert "S2_20240102_broken" in table_out.with_suffix(".md").read_text()


def test_a_rerun_with_other_settings_is_refused_before_anything_changes(run, scenes, mapped,
                                                                        capsys):
    before = _maps(mapped)
    card = (mapped / "map.json").read_text()
    assert main(["map", "--workdir", str(run), "--scenes", str(scenes), "--out", str(mapped),
                 "--checkpoint", "latest", "--tile", "16", "--overlap", "8"]) == 2
    err = capsys.readouterr().err
    assert "was mapped with tile=32" in err and "new --out" in err
    assert _maps(mapped) == before and (mapped / "map.json").read_text() == card
