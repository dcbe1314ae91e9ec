"""compose: exact round trip on a real scene, strict grid checks, resampling, atomicity."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import rasterio
from affine import Affine

from satseg_jax.cli import main
from satseg_jax.errors import SatsegError
from satseg_jax.raster.compose import compose_bands
from satseg_jax.raster.io import block_windows, grid_mismatch, valid_pixels


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


def test_multiband_input_stacked_in_order(shared_rasterio, rgb_bands, tmp_path):
    """A multi-band input keeps all its bands, in order, after the bands before it. (The
    single band is written without nodata: with nodata 0 its own zeros would, rightly,
    become nodata of the whole stack.)"""
    rgb = shared_rasterio / "RGB.byte.tif"
    _, paths = rgb_bands
    with rasterio.open(paths[2]) as src:
        blue = _write(tmp_path / "blue.tif", src.read(1), crs=src.crs,
                      transform=src.transform, nodata=None)
    out = compose_bands([blue, rgb], tmp_path / "out.tif", progress=False)
    with rasterio.open(rgb) as a, rasterio.open(out) as b:
        assert np.array_equal(b.read(), np.concatenate([a.read([3]), a.read()]))
        assert b.descriptions == ("blue", "RGB.byte_b1", "RGB.byte_b2", "RGB.byte_b3")
        assert b.nodata == a.nodata
    _no_leftovers(tmp_path, {"blue.tif", "out.tif"})


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


# ----------------------------------------------------------------- multi-sensor stacks

GRID = Affine(10, 0, 500000, 0, -10, 8000000)


def _write_bands(path: Path, data: np.ndarray, nodata, descriptions=None) -> Path:
    """A (bands, H, W) GeoTIFF on GRID."""
    with rasterio.open(path, "w", driver="GTiff", count=data.shape[0], height=data.shape[1],
                       width=data.shape[2], dtype=data.dtype.name, crs="EPSG:32723",
                       transform=GRID, nodata=nodata) as dst:
        dst.write(data)
        for i, d in enumerate(descriptions or [], start=1):
            dst.set_band_description(i, d)
    return path


@pytest.fixture()
def two_sensors(tmp_path):
    """A 12-band int16 raster (nodata 0, named B1..B12) and a 2-band float32 raster (NaN
    nodata, unnamed) on one 48x40 grid, with overlapping and separate nodata areas."""
    rng = np.random.default_rng(3)
    s2 = rng.integers(1, 3000, (12, 48, 40), dtype=np.int16)
    s2[:, :6] = 0  # nodata strip
    s2[:, 20:24, 30:] = 0  # nodata block
    s2[4, 30:34, :10] = 0  # one dark band only: still data
    s1 = rng.normal(-12, 3, (2, 48, 40)).astype(np.float32)
    s1[:, :, :3] = np.nan  # nodata edge, overlapping the s2 strip
    s1[1, 40:, 10:20] = np.nan  # NaN in one band: nodata
    return (_write_bands(tmp_path / "s2.tif", s2, 0, [f"B{i}" for i in range(1, 13)]),
            _write_bands(tmp_path / "s1.tif", s1, float("nan")), s2, s1)


def test_two_sensor_stack_with_dtype(two_sensors, tmp_path, capsys):
    p2, p1, s2, s1 = two_sensors
    out = tmp_path / "stack.tif"
    assert main(["compose", "--bands", str(p2), str(p1), "--out", str(out),
                 "--dtype", "float32"]) == 0
    assert "wrote" in capsys.readouterr().out
    with rasterio.open(out) as ds:
        assert (ds.count, ds.dtypes[0]) == (14, "float32") and np.isnan(ds.nodata)
        assert ds.descriptions == (*[f"B{i}" for i in range(1, 13)], "s1_b1", "s1_b2")
        stack, nodata = ds.read(), ds.nodata
    nod_in = ~valid_pixels(s2, 0) | ~valid_pixels(s1, float("nan"))
    nod_out = ~valid_pixels(stack, nodata)
    assert nod_in.any() and (~nod_in).any()
    assert np.array_equal(nod_out, nod_in)  # exactly the union of both inputs' nodata
    assert np.isnan(stack[:, nod_out]).all()  # in every band
    ok = ~nod_out
    assert np.array_equal(stack[:12, ok], s2[:, ok].astype(np.float32))
    assert np.array_equal(stack[12:, ok], s1[:, ok])
    assert ok[30:34, 3:10].all()  # 0 in one band only is data, as in valid_pixels
    _no_leftovers(tmp_path, {"s2.tif", "s1.tif", "stack.tif"})


def test_mixed_dtypes_without_dtype_refused(two_sensors, tmp_path, capsys):
    p2, p1, _, _ = two_sensors
    assert main(["compose", "--bands", str(p2), str(p1), "--out",
                 str(tmp_path / "stack.tif")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("satseg: error:") and "\n" not in err
    assert str(p1) in err and "--dtype float32" in err
    _no_leftovers(tmp_path, {"s2.tif", "s1.tif"})


@pytest.mark.parametrize("dtype", ["int16", "int32", "uint16"])
def test_unsafe_dtype_refused(two_sensors, tmp_path, dtype):
    """float32 -> any integer type would round values; int16 -> uint16 would wrap."""
    p2, p1, _, _ = two_sensors
    with pytest.raises(SatsegError, match=f"cannot be stored as --dtype {dtype}") as e:
        compose_bands([p2, p1], tmp_path / "stack.tif", dtype=dtype, progress=False)
    assert (str(p2) if dtype == "uint16" else str(p1)) in str(e.value)
    _no_leftovers(tmp_path, {"s2.tif", "s1.tif"})


def test_integer_nodata_conflict_needs_nodata(tmp_path):
    """Integer inputs with different nodata: refused without --nodata; with it, the
    union of their nodata pixels is written with the chosen value."""
    a = np.full((1, 16, 16), 7, np.uint16)
    a[0, :4] = 0
    b = np.full((1, 16, 16), 9, np.uint16)
    b[0, :, :2] = 65535
    pa = _write_bands(tmp_path / "a.tif", a, 0)
    pb = _write_bands(tmp_path / "b.tif", b, 65535)
    with pytest.raises(SatsegError, match="--nodata"):
        compose_bands([pa, pb], tmp_path / "o.tif", progress=False)
    out = compose_bands([pa, pb], tmp_path / "o.tif", nodata=65535, progress=False)
    with rasterio.open(out) as ds:
        stack, nodata = ds.read(), ds.nodata
    assert nodata == 65535
    expected = ~valid_pixels(a, 0) | ~valid_pixels(b, 65535)
    assert np.array_equal(~valid_pixels(stack, nodata), expected)


@pytest.mark.parametrize("transform,ok", [
    (GRID, True),
    # 14th significant digit of the origin and of the pixel size: round-off, accepted
    (Affine(10.000000000001, 0, 500000.00000001, 0, -10, 7999999.9999999), True),
    (Affine(10, 0, 500005, 0, -10, 8000000), False),  # half a pixel
    (Affine(10, 0, 500000, 0, -10, 8000000.001), False),  # 1e-4 pixel
    (Affine(10.0001, 0, 500000, 0, -10, 8000000), False),  # pixel size off by 1e-5
    (Affine(10, 0.001, 500000, 0, -10, 8000000), False),  # rotation
])
def test_grid_tolerance(transform, ok):
    """grid_mismatch accepts transforms within 1e-6 of a pixel and says how far off
    the others are, in pixels; it takes any objects with crs/width/height/transform."""
    ref = SimpleNamespace(crs="EPSG:32723", width=64, height=64, transform=GRID)
    ds = SimpleNamespace(crs="EPSG:32723", width=64, height=64, transform=transform)
    problem = grid_mismatch(ref, ds)
    if ok:
        assert problem is None
    else:
        assert problem.startswith("transform") and "differs from" in problem
        assert "pixels" in problem
    if transform.c == 500005:
        assert "by up to 0.5 pixels" in problem


def test_grid_tolerance_on_files(tmp_path):
    """Round-off in the 14th digit composes; half a pixel is refused naming the file."""
    data = np.arange(1, 64 * 64 + 1, dtype=np.uint16).reshape(64, 64)
    a = _write(tmp_path / "a.tif", data)
    b = _write(tmp_path / "b.tif", data,
               transform=Affine(10.000000000001, 0, 500000.00000001, 0, -10, 8000000))
    half = _write(tmp_path / "half.tif", data, transform=Affine(10, 0, 500000, 0, -10, 8000005))
    out = compose_bands([a, b], tmp_path / "ok.tif", progress=False)
    with rasterio.open(out) as ds:
        assert ds.count == 2 and ds.transform == GRID
    with pytest.raises(SatsegError, match="by up to 0.5 pixels") as e:
        compose_bands([a, half], tmp_path / "bad.tif", progress=False)
    assert str(half) in str(e.value)
    _no_leftovers(tmp_path, {"a.tif", "b.tif", "half.tif", "ok.tif"})


def _float_band(path: Path, ref: Path, fill: float) -> Path:
    with rasterio.open(ref) as src:
        prof = {**src.profile, "dtype": "float32", "nodata": None, "count": 1}
        data = np.full((1, src.height, src.width), fill, np.float32)
    with rasterio.open(path, "w", **prof) as dst:
        dst.write(data)
    return path


def test_an_all_nan_band_is_a_warning_or_refused_with_strict(tmp_path, capsys):
    """A band that is NaN everywhere would make every pixel of the scene nodata: compose
    warns on one stderr line (and writes the scene), --strict refuses it leaving nothing."""
    from satseg_jax.raster.sample import write_sample_scene

    s = write_sample_scene(tmp_path / "s", size=64, seed=0)
    good = _float_band(tmp_path / "good.tif", s["red"], 0.5)
    empty = _float_band(tmp_path / "empty.tif", s["red"], np.nan)
    out = tmp_path / "scene.tif"
    argv = ["compose", "--bands", str(good), str(empty), "--out", str(out)]
    capsys.readouterr()
    assert main(argv) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"satseg: warning: {out}: band empty is NaN in every pixel, so every "
                   "pixel of the scene is nodata; check the input files (--strict refuses "
                   "this)"], err
    assert out.exists()
    out.unlink()
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(argv + ["--strict"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"satseg: error: {out}: band empty of the inputs is NaN in every pixel "
                   "(--strict); check the input files, or drop the band from --bands"], err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no scene, no .tmp
    assert main(["compose", "--bands", str(good), "--out", str(out), "--strict"]) == 0
    assert capsys.readouterr().err == ""
