"""compose: exact round trip on a real scene, strict grid checks, resampling, atomicity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from satseg_jax.cli import main
from satseg_jax.errors import SatsegError
from satseg_jax.raster.compose import block_windows, compose_bands


def _write(path: Path, data: np.ndarray, **profile) -> Path:
    base = {"driver": "GTiff", "count": 1, "height": data.shape[0], "width": data.shape[1],
            "dtype": data.dtype.name, "crs": "EPSG:32723",
            "transform": Affine(10, 0, 500000, 0, -10, 8000000), "nodata": 0}
    base.update(profile)
    with rasterio.open(path, "w", **base) as dst:
        dst.write(data, 1)
    return path


@pytest.fixture(scope="module")
def rgb_bands(shared_rasterio, tmp_path_factory):
    """RGB.byte.tif split into three single-band GeoTIFFs (written in tmp, never the repo)."""
    d = tmp_path_factory.mktemp("rgb")
    src_path = shared_rasterio / "RGB.byte.tif"
    paths = []
    with rasterio.open(src_path) as src:
        profile = src.profile | {"count": 1}
        for i, name in enumerate(("red", "green", "blue"), start=1):
            p = d / f"{name}.tif"
            with rasterio.open(p, "w", **profile) as dst:
                dst.write(src.read(i), 1)
            paths.append(p)
    return src_path, paths


def _no_leftovers(folder: Path, keep: set[str]) -> None:
    assert {p.name for p in folder.iterdir()} == keep


def test_round_trip_reproduces_rgb_byte_exactly(rgb_bands, tmp_path):
    src_path, paths = rgb_bands
    out = compose_bands(paths, tmp_path / "rgb.tif", progress=False)
    assert out == tmp_path / "rgb.tif"
    with rasterio.open(src_path) as a, rasterio.open(out) as b:
        assert np.array_equal(a.read(), b.read())
        assert b.crs == a.crs and b.transform == a.transform
        assert (b.count, b.dtypes[0], b.nodata) == (3, "uint8", a.nodata)
        assert b.descriptions == ("red", "green", "blue")  # default: file stems
        assert b.block_shapes[0] == (256, 256) and b.compression.name.lower() == "deflate"
    _no_leftovers(tmp_path, {"rgb.tif"})


def test_band_names(rgb_bands, tmp_path):
    _, paths = rgb_bands
    out = compose_bands(paths, tmp_path / "x.tif", names=["B3", "B2", "B1"], progress=False)
    with rasterio.open(out) as ds:
        assert ds.descriptions == ("B3", "B2", "B1")
    with pytest.raises(SatsegError, match="--names has 2 names for 3"):
        compose_bands(paths, tmp_path / "y.tif", names=["a", "b"], progress=False)


@pytest.fixture()
def grid(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(1, 4000, (300, 260), dtype=np.uint16)
    return tmp_path, data, _write(tmp_path / "b1.tif", data)


@pytest.mark.parametrize("field,kwargs", [
    ("crs", {"crs": "EPSG:32722"}),
    ("transform", {"transform": Affine(10, 0, 500005, 0, -10, 8000000)}),
    ("size", {}),
    ("dtype", {}),
])
def test_mismatch_names_file_and_field(grid, field, kwargs):
    d, data, b1 = grid
    other = data
    if field == "size":
        other = data[:-1]
    elif field == "dtype":
        other = data.astype(np.int32)
    b2 = _write(d / "b2.tif", other, **kwargs)
    with pytest.raises(SatsegError) as e:
        compose_bands([b1, b2], d / "out.tif", progress=False)
    assert str(b2) in str(e.value) and field in str(e.value)
    _no_leftovers(d, {"b1.tif", "b2.tif"})


def test_multiband_input_refused(shared_rasterio, tmp_path):
    rgb = shared_rasterio / "RGB.byte.tif"
    with pytest.raises(SatsegError, match="band count is 3"):
        compose_bands([rgb], tmp_path / "out.tif", progress=False)
    assert not list(tmp_path.iterdir())


def test_nodata_conflict_refused(grid):
    d, data, b1 = grid
    b2 = _write(d / "b2.tif", data, nodata=65535)
    with pytest.raises(SatsegError, match="nodata"):
        compose_bands([b1, b2], d / "out.tif", progress=False)


def test_corrupt_pixels_leave_nothing(grid):
    """A truncated band (header fine, later tiles missing) fails mid-stream; the partial
    output is removed."""
    d, data, b1 = grid
    big = np.random.default_rng(1).integers(1, 4000, (600, 600), dtype=np.uint16)
    bad = _write(d / "bad.tif", big, tiled=True, blockxsize=256, blockysize=256,
                 compress="deflate")
    with rasterio.open(bad) as ds:
        assert ds.block_shapes[0] == (256, 256)
    raw = bad.read_bytes()
    bad.write_bytes(raw[:len(raw) // 2])  # as an interrupted download
    good = _write(d / "good.tif", big)
    with pytest.raises(SatsegError) as e:
        compose_bands([good, bad], d / "out.tif", progress=False)
    assert str(bad) in str(e.value) and "corrupt" in str(e.value)
    _no_leftovers(d, {"b1.tif", "bad.tif", "good.tif"})


def test_not_a_raster_and_missing(tmp_path):
    junk = tmp_path / "junk.tif"
    junk.write_bytes(b"not a tiff at all")
    with pytest.raises(SatsegError, match="junk.tif: cannot be read as a raster"):
        compose_bands([junk], tmp_path / "out.tif", progress=False)
    with pytest.raises(SatsegError, match="missing.tif: file not found"):
        compose_bands([tmp_path / "missing.tif"], tmp_path / "out.tif", progress=False)
    _no_leftovers(tmp_path, {"junk.tif"})


def test_resample_to_reference_grid(grid):
    d, data, b1 = grid
    # A band at half the resolution (20 m) over the same area.
    coarse = data.reshape(150, 2, 130, 2).mean(axis=(1, 3)).astype(np.uint16)
    b2 = _write(d / "b2_20m.tif", coarse, transform=Affine(20, 0, 500000, 0, -20, 8000000))
    with pytest.raises(SatsegError, match="size"):
        compose_bands([b1, b2], d / "out.tif", progress=False)
    out = compose_bands([b1, b2], d / "out.tif", resample_to=b1, resampling="nearest",
                        progress=False)
    with rasterio.open(out) as ds, rasterio.open(b1) as ref:
        assert (ds.width, ds.height, ds.transform, ds.crs) == (
            ref.width, ref.height, ref.transform, ref.crs)
        a, b = ds.read(1), ds.read(2)
    assert np.array_equal(a, data)  # a band already on the grid is copied exactly
    assert np.array_equal(b, np.repeat(np.repeat(coarse, 2, 0), 2, 1))


def test_block_windows_tile_the_grid_once():
    cover = np.zeros((700, 5000), np.int32)
    for w in block_windows(700, 5000):
        assert w.row_off % 256 == 0 and w.col_off % 256 == 0
        cover[w.row_off:w.row_off + w.height, w.col_off:w.col_off + w.width] += 1
    assert (cover == 1).all()


def test_cli_compose(rgb_bands, tmp_path, capsys):
    _, paths = rgb_bands
    out = tmp_path / "scene.tif"
    assert main(["compose", "--bands", *map(str, paths), "--out", str(out),
                 "--names", "r,g,b"]) == 0
    assert "wrote" in capsys.readouterr().out
    with rasterio.open(out) as ds:
        assert ds.descriptions == ("r", "g", "b")
    bad = _write(tmp_path / "odd.tif", np.ones((10, 10), np.uint8))
    assert main(["compose", "--bands", str(paths[0]), str(bad), "--out",
                 str(tmp_path / "o2.tif")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("satseg: error:") and "\n" not in err
    assert str(bad) in err and "crs" in err
    assert not (tmp_path / "o2.tif").exists()
