"""Which scenes ``satseg map`` maps, their ids and dates, and each process's share
(satseg_jax/mapping/scenes.py), and the generated series of ``satseg sample --series``."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
import rasterio

from satseg_jax.errors import SatsegError
from satseg_jax.mapping.scenes import (
    Scene,
    list_scenes,
    period_key,
    process_share,
    share_of,
    with_dates,
)


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_shares_are_disjoint_cover_everything_and_ignore_listing_order():
    scenes = [Scene(f"s{i:02d}", Path(f"s{i:02d}.tif")) for i in range(11)]
    shares = [share_of(list(reversed(scenes)), i, 3) for i in range(3)]
    ids = [s.id for share in shares for s in share]
    assert sorted(ids) == [s.id for s in scenes] and len(set(ids)) == 11
    assert [len(s) for s in shares] == [4, 4, 3]
    assert shares == [share_of(scenes, i, 3) for i in range(3)]


@pytest.mark.parametrize("env, expected", [
    ({}, (0, 1)),
    ({"SATSEG_PROCESS_ID": "1", "SATSEG_NUM_PROCESSES": "2"}, (1, 2)),
    ({"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "5",
      "SLURM_ARRAY_TASK_COUNT": "4"}, (2, 4)),
    ({"SLURM_PROCID": "3", "SLURM_NTASKS": "8"}, (3, 8)),
    ({"TPU_WORKER_ID": "1", "TPU_WORKER_HOSTNAMES": "a,b,c,d"}, (1, 4)),
])
def test_process_share_reads_the_launch_environment(env, expected):
    assert process_share(env) == expected


def test_explicit_shares_win_and_bad_ones_are_one_line():
    assert process_share({"SLURM_PROCID": "3", "SLURM_NTASKS": "8"}, 0, 2) == (0, 2)
    for index, count in ((2, 2), (-1, 2), (0, 0)):
        with pytest.raises(SatsegError, match="--process-index"):
            process_share({}, index, count)
    with pytest.raises(SatsegError, match="whole number"):
        process_share({"SATSEG_NUM_PROCESSES": "2", "SATSEG_PROCESS_ID": ""})


def test_dates_from_a_csv_win_over_the_file_name(tmp_path):
    for name in ("S2_20240305_a.tif", "S2_20240417_b.tif", "undated.tif"):
        _touch(tmp_path / "scenes" / name)
    scenes = list_scenes(str(tmp_path / "scenes"))
    (tmp_path / "dates.csv").write_text("id,date\nS2_20240417_b,2024-05-01\n")
    dated = {s.id: s.date for s in with_dates(scenes, tmp_path / "dates.csv",
                                              "S2_YYYYMMDD_*")}
    assert dated == {"S2_20240305_a": dt.date(2024, 3, 5), "S2_20240417_b": dt.date(2024, 5, 1),
                     "undated": None}
    assert period_key("2024-03-05", "month") == "2024-03"
    assert period_key("2024-03-05", "year") == "2024"
    with pytest.raises(SatsegError, match="YYYY and MM"):
        with_dates(scenes, date_pattern="S2_*")


def test_a_scene_list_file_and_a_download_manifest(tmp_path):
    a = _touch(tmp_path / "x" / "a.tif")
    (tmp_path / "scenes.txt").write_text(f"# two scenes\nx/a.tif\n{a}\n")
    with pytest.raises(SatsegError, match="names 2 files"):
        list_scenes(str(tmp_path / "scenes.txt"))
    (tmp_path / "scenes.txt").write_text("x/a.tif\nx/missing.tif\n")
    with pytest.raises(SatsegError, match=r"scenes.txt:2: x/missing.tif: no such file"):
        list_scenes(str(tmp_path / "scenes.txt"))
    _touch(tmp_path / "dl" / "item1" / "visual.tif")
    _touch(tmp_path / "dl" / "item1" / "red.tif")
    files = [{"item": "item1", "asset": a, "path": f"item1/{a}.tif",
              "datetime": "2024-02-09T13:00:00Z"} for a in ("visual", "red")]
    (tmp_path / "dl" / "manifest.json").write_text(json.dumps({"version": 1, "files": files}))
    with pytest.raises(SatsegError, match="--asset KEY"):
        list_scenes(items=tmp_path / "dl" / "manifest.json")
    (scene,) = list_scenes(items=tmp_path / "dl" / "manifest.json", asset="visual")
    assert (scene.id, scene.date, scene.path.name) == ("item1", dt.date(2024, 2, 9), "visual.tif")


def test_the_generated_series_has_dates_two_zones_and_overlaps(tmp_path):
    from satseg_jax.raster.sample_series import write_scene_series

    out = write_scene_series(tmp_path / "series", count=6, size=64, months=2)
    scenes = with_dates(list_scenes(str(out["scenes"])), date_pattern="S2_YYYYMMDD_*")
    assert len(scenes) == 6 and {period_key(s.date.isoformat(), "month")
                                 for s in scenes} == {"2024-01", "2024-02"}
    grids = {}
    for s in scenes:
        with rasterio.open(s.path) as src:
            assert src.count == 4 and src.descriptions == ("blue", "green", "red", "nir")
            grids.setdefault(src.crs.to_string(), []).append(src.bounds)
    assert sorted(grids) == ["EPSG:32722", "EPSG:32723"]
    a, b = grids["EPSG:32722"][:2]
    assert a.left < b.right and b.left < a.right and a.bottom < b.top  # they overlap
    regions = json.loads(out["regions"].read_text())
    assert [f["properties"]["NAME"] for f in regions["features"]] == ["west", "east"]
