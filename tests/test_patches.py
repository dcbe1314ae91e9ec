"""patches: the output contract, georeferencing, nodata, vector labels, bad inputs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window
from rasterio.windows import transform as rio_window_transform

from satseg_jax.cli import main
from satseg_jax.errors import SatsegError
from satseg_jax.raster.compose import compose_bands
from satseg_jax.raster.io import valid_pixels
from satseg_jax.raster.patches import make_patches
from satseg_jax.raster.sample import write_sample_scene
from tests.helpers.printed import summary_lines

PATCHES_KEYS = {"format_version", "image", "bands", "dtype", "nodata", "crs",
                "scene_transform", "scene_height", "scene_width", "size", "stride", "edge",
                "min_valid", "num_windows", "num_patches", "label_source"}


def _classes(path: Path, names: list[str], **extra) -> Path:
    entries = [{"id": i, "name": n} for i, n in enumerate(names)]
    entries += extra.get("more", [])
    path.write_text(json.dumps(entries))
    return path


def _labels_like(path: Path, ref: Path, data: np.ndarray, nodata=None) -> Path:
    with rasterio.open(ref) as src:
        profile = {"driver": "GTiff", "height": src.height, "width": src.width, "count": 1,
                   "dtype": data.dtype.name, "crs": src.crs, "transform": src.transform,
                   "nodata": nodata, "compress": "deflate"}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)
    return path


@pytest.fixture(scope="module")
def rgb(shared_rasterio, tmp_path_factory):
    """RGB.byte.tif + a label raster on its grid (class = red band // 64) + classes.json."""
    d = tmp_path_factory.mktemp("rgb_labels")
    image = shared_rasterio / "RGB.byte.tif"
    with rasterio.open(image) as src:
        labels = (src.read(1) // 64).astype(np.uint8)
    return image, _labels_like(d / "labels.tif", image, labels), _classes(
        d / "classes.json", ["c0", "c1", "c2", "c3"])


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    d = tmp_path_factory.mktemp("sample_scene")
    s = write_sample_scene(d / "s", size=192, seed=5)
    scene = compose_bands([s[b] for b in ("blue", "green", "red", "nir")], d / "scene.tif",
                          progress=False)
    return s, scene


def _index(out: Path) -> list[dict]:
    with open(out / "index.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_rgb_byte_contract(rgb, tmp_path):
    image, labels, classes = rgb
    out = tmp_path / "p"
    summary = make_patches(image, out, classes, size=128, stride=128, edge="drop",
                           labels=labels, progress=False)
    info = json.loads((out / "patches.json").read_text())
    assert PATCHES_KEYS <= set(info)
    assert info["num_windows"] == 30  # 6 x 5 full windows before nodata filtering
    assert info["num_patches"] == summary["num_patches"] == len(_index(out))
    assert 0 < info["num_patches"] <= 30
    assert (info["format_version"], info["dtype"], info["nodata"], info["size"]) == (
        1, "uint8", 0, 128)
    assert (info["scene_width"], info["scene_height"]) == (791, 718)
    assert info["image"] == str(image.absolute())
    assert info["label_source"] == str(labels.absolute())
    assert json.loads((out / "classes.json").read_text())[0]["name"] == "c0"
    with open(out / "index.csv") as fh:
        header = fh.readline().strip()
    assert header == ("patch_id,row,col,height,width,left,bottom,right,top,valid_fraction,"
                      "count_c0,count_c1,count_c2,count_c3,count_ignore")
    with rasterio.open(image) as scene, rasterio.open(labels) as lab:
        assert rasterio.crs.CRS.from_wkt(info["crs"]) == scene.crs
        assert info["scene_transform"] == list(scene.transform)[:6]
        for row in _index(out):
            r, c = int(row["row"]), int(row["col"])
            assert row["patch_id"] == f"r{r:06d}_c{c:06d}"
            win = Window(c, r, 128, 128)
            with rasterio.open(out / "images" / f"{row['patch_id']}.tif") as p:
                assert p.transform == rio_window_transform(win, scene.transform)
                assert p.crs == scene.crs and p.nodata == 0 and p.count == 3
                img = p.read()
                assert np.array_equal(img, scene.read(window=win))
            with rasterio.open(out / "masks" / f"{row['patch_id']}.tif") as m:
                assert m.transform == p.transform and m.nodata == 255
                assert m.dtypes[0] == "uint8"
                mask = m.read(1)
            valid = (img != 0).any(axis=0)
            expect = np.where(valid, lab.read(1, window=win), 255)
            assert np.array_equal(mask, expect)
            assert float(row["valid_fraction"]) == pytest.approx(valid.mean(), abs=1e-6)
            assert float(row["valid_fraction"]) >= 0.5
            counts = [int(row[f"count_c{i}"]) for i in range(4)] + [int(row["count_ignore"])]
            assert sum(counts) == 128 * 128 and counts[-1] == (mask == 255).sum()
            left, bottom, right, top = (float(row[k]) for k in ("left", "bottom", "right", "top"))
            assert (left, top) == pytest.approx(p.transform * (0, 0))
            assert (right, bottom) == pytest.approx(p.transform * (128, 128))


def test_edge_pad_and_min_valid(rgb, tmp_path):
    image, labels, classes = rgb
    out = tmp_path / "pad"
    make_patches(image, out, classes, size=128, edge="pad", min_valid=0.0, labels=labels,
                 progress=False)
    info = json.loads((out / "patches.json").read_text())
    assert info["num_windows"] == 42 and info["edge"] == "pad"
    ids = {r["patch_id"] for r in _index(out)}
    right = next(i for i in sorted(ids) if i.endswith("c000768"))  # 23 cols inside
    bottom = next(i for i in sorted(ids) if i.startswith("r000640"))  # 78 rows inside
    for pid, inside in ((right, (slice(None), slice(23, None))),
                        (bottom, (slice(78, None), slice(None)))):
        with rasterio.open(out / "images" / f"{pid}.tif") as p:
            img = p.read()
        with rasterio.open(out / "masks" / f"{pid}.tif") as m:
            mask = m.read(1)
        assert img.shape == (3, 128, 128) and mask.shape == (128, 128)
        assert (img[(slice(None), *inside)] == 0).all() and (mask[inside] == 255).all()
        assert (mask != 255).any()
    strict = make_patches(image, tmp_path / "strict", classes, size=128, min_valid=0.99,
                          labels=labels, progress=False)
    assert strict["num_patches"] < info["num_patches"]


def test_vector_labels_equal_raster_labels(sample, tmp_path):
    s, scene = sample
    a = make_patches(scene, tmp_path / "r", s["classes"], size=64, labels=s["labels"],
                     progress=False)
    b = make_patches(scene, tmp_path / "v", s["classes"], size=64, vector=s["vector"],
                     progress=False)
    assert a["num_patches"] == b["num_patches"] > 0
    assert a["class_pixel_counts"] == b["class_pixel_counts"]
    for f in sorted((tmp_path / "r" / "masks").glob("*.tif")):
        with rasterio.open(f) as x, rasterio.open(tmp_path / "v" / "masks" / f.name) as y:
            assert np.array_equal(x.read(1), y.read(1)), f.name
    info = json.loads((tmp_path / "v" / "patches.json").read_text())
    assert info["label_source"] == str(s["vector"].absolute())


def test_vector_in_other_crs_is_reprojected(sample, tmp_path):
    from rasterio.warp import transform_geom

    s, scene = sample
    gj = json.loads(s["vector"].read_text())
    for f in gj["features"]:
        f["geometry"] = transform_geom("EPSG:32723", "EPSG:4326", f["geometry"],
                                       precision=9)
        f["properties"] = {"kind": "x", "class": f["properties"]["class"]}
    del gj["crs"]  # RFC 7946: plain GeoJSON is WGS 84
    wgs = tmp_path / "labels_wgs84.geojson"
    wgs.write_text(json.dumps(gj))
    make_patches(scene, tmp_path / "r", s["classes"], size=64, labels=s["labels"],
                 progress=False)
    make_patches(scene, tmp_path / "v", s["classes"], size=64, vector=wgs, progress=False)
    same = total = 0
    for f in (tmp_path / "r" / "masks").glob("*.tif"):
        with rasterio.open(f) as x, rasterio.open(tmp_path / "v" / "masks" / f.name) as y:
            same += int((x.read(1) == y.read(1)).sum())
            total += 64 * 64
    assert same / total > 0.995


def test_vector_errors(sample, tmp_path):
    s, scene = sample
    with pytest.raises(SatsegError, match=r"no attribute 'label'.*available: \['class'\]"):
        make_patches(scene, tmp_path / "o", s["classes"], vector=s["vector"], size=64,
                     class_field="label", progress=False)
    few = _classes(tmp_path / "few.json", ["water", "forest"])
    with pytest.raises(SatsegError, match=r"labels.geojson attribute 'class': values not "
                                          r"declared in .*few.json"):
        make_patches(scene, tmp_path / "o", few, vector=s["vector"], size=64, progress=False)
    shp = tmp_path / "labels.shp"
    shp.write_bytes(b"")
    try:
        import fiona  # noqa: F401
    except ImportError:
        try:
            import pyogrio  # noqa: F401
        except ImportError:
            with pytest.raises(SatsegError, match="needs fiona or pyogrio"):
                make_patches(scene, tmp_path / "o", s["classes"], vector=shp, size=64,
                             progress=False)
    assert not (tmp_path / "o").exists()


def test_undeclared_label_value_leaves_nothing(sample, tmp_path):
    s, scene = sample
    with rasterio.open(s["labels"]) as ds:
        present = np.unique(ds.read(1))
    assert 5 in present
    names = ["water", "forest", "savanna", "cropland", "bare_urban"]  # no value 5
    few = _classes(tmp_path / "few.json", names)
    out = tmp_path / "out"
    with pytest.raises(SatsegError) as e:
        make_patches(scene, out, few, size=64, labels=s["labels"], progress=False)
    assert "labels.tif" in str(e.value) and "5 (" in str(e.value)
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["few.json"]
    # Declaring it as ignore is enough.
    ign = _classes(tmp_path / "ign.json", names, more=[{"name": "burn", "value": 5,
                                                        "ignore": True}])
    summary = make_patches(scene, out, ign, size=64, labels=s["labels"], progress=False)
    assert summary["num_patches"] > 0


def test_label_grid_mismatch(sample, tmp_path):
    s, scene = sample
    small = _labels_like(tmp_path / "l.tif", s["labels"], np.zeros((192, 192), np.uint8))
    with rasterio.open(small, "r+") as ds:
        ds.transform = ds.transform * ds.transform.translation(1, 0)
    with pytest.raises(SatsegError, match=r"l.tif: label raster transform"):
        make_patches(scene, tmp_path / "o", s["classes"], size=64, labels=small,
                     progress=False)
    assert not (tmp_path / "o").exists()


def test_corrupt_scene_leaves_nothing(shared_rasterio, tmp_path):
    image = shared_rasterio / "corrupt.tif"
    labels = _labels_like(tmp_path / "l.tif", image, np.zeros((1024, 1024), np.uint8))
    classes = _classes(tmp_path / "c.json", ["x"])
    with pytest.raises(SatsegError) as e:
        make_patches(image, tmp_path / "out", classes, size=256, labels=labels,
                     progress=False)
    assert str(image) in str(e.value) and "corrupt" in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.json", "l.tif"]


def test_all_nodata_scene_leaves_nothing(shared_rasterio, tmp_path):
    image = shared_rasterio / "all-nodata.tif"
    with rasterio.open(image) as ds:
        labels = _labels_like(tmp_path / "l.tif", image, np.zeros((ds.height, ds.width),
                                                                  np.uint8))
    classes = _classes(tmp_path / "c.json", ["x"])
    with pytest.raises(SatsegError) as e:
        make_patches(image, tmp_path / "out", classes, size=64, labels=labels,
                     progress=False)
    assert str(image) in str(e.value) and "no patch has valid fraction" in str(e.value)
    assert not (tmp_path / "out").exists()


def test_existing_output_and_overwrite(rgb, tmp_path):
    image, labels, classes = rgb
    out = tmp_path / "p"
    make_patches(image, out, classes, size=256, labels=labels, progress=False)
    with pytest.raises(SatsegError, match="already exists"):
        make_patches(image, out, classes, size=128, labels=labels, progress=False)
    make_patches(image, out, classes, size=128, labels=labels, overwrite=True, progress=False)
    assert json.loads((out / "patches.json").read_text())["size"] == 128


def test_valid_pixels_rules():
    img = np.array([[[0, 5, 0]], [[0, 0, 7]]], np.uint16)  # (2 bands, 1, 3)
    assert valid_pixels(img, 0).tolist() == [[False, True, True]]  # all bands must be nodata
    assert valid_pixels(img, None).all()
    f = np.array([[[np.nan, 1.0, 2.0]], [[1.0, 1.0, -9999.0]]], np.float32)
    assert valid_pixels(f, float("nan")).tolist() == [[False, True, True]]
    assert valid_pixels(f, -9999.0).tolist() == [[False, True, True]]


def test_cli_patches(rgb, tmp_path, capsys):
    image, labels, classes = rgb
    out = tmp_path / "p"
    args = ["patches", "--image", str(image), "--labels", str(labels), "--classes",
            str(classes), "--size", "128", "--out", str(out)]
    assert main(args) == 0
    text = capsys.readouterr().out  # readable lines; the JSON stays in patches.json
    assert "of 30 windows" in summary_lines(text)["patches"]
    assert json.loads((out / "patches.json").read_text())["num_windows"] == 30
    assert f"wrote {out}" in text
    assert main(args) == 2  # exists
    err = capsys.readouterr().err.strip()
    assert err.startswith("satseg: error:") and "\n" not in err and str(out) in err
    missing = tmp_path / "nope.tif"
    assert main(["patches", "--image", str(missing), "--labels", str(labels), "--classes",
                 str(classes), "--out", str(tmp_path / "q")]) == 2
    err = capsys.readouterr().err.strip()
    assert str(missing) in err and "\n" not in err and not (tmp_path / "q").exists()


def test_threaded_writes_give_the_same_files_and_failures_leave_nothing(sample, tmp_path,
                                                                        monkeypatch):
    """Patch files are written on several threads (DEFLATE encoding releases the GIL):
    the output is byte-identical to a one-thread run, and a write that fails on a worker
    thread reaches the caller and leaves no output folder behind."""
    from satseg_jax.raster import patches as patches_mod

    s, scene = sample
    kwargs = dict(image=scene, classes_path=s["classes"], size=32, stride=32, min_valid=0.5,
                  labels=s["labels"], progress=False)
    make_patches(out_dir=tmp_path / "one", threads=1, **kwargs)
    make_patches(out_dir=tmp_path / "three", threads=3, **kwargs)
    one = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*.tif"))
    three = sorted(p.relative_to(tmp_path / "three")
                   for p in (tmp_path / "three").rglob("*.tif"))
    assert one == three and len(one) > 20
    for rel in one:
        assert (tmp_path / "one" / rel).read_bytes() == (tmp_path / "three" / rel).read_bytes()
    assert (tmp_path / "one" / "index.csv").read_text() == \
        (tmp_path / "three" / "index.csv").read_text()

    calls = []
    real = patches_mod._write_patch

    def failing(path, *args):
        calls.append(path)
        if len(calls) == 7:
            raise OSError(f"{path}: No space left on device")
        real(path, *args)

    monkeypatch.setattr(patches_mod, "_write_patch", failing)
    with pytest.raises(OSError, match="No space left"):
        make_patches(out_dir=tmp_path / "failed", threads=3, **kwargs)
    assert not (tmp_path / "failed").exists()
    assert not list(tmp_path.glob("failed*"))
    with pytest.raises(SatsegError, match="--threads 0"):
        make_patches(out_dir=tmp_path / "zero", threads=0, **kwargs)
    assert not (tmp_path / "zero").exists()


def test_stride_larger_than_size_warns_of_the_gaps(tmp_path, capsys):
    """--stride > --size leaves strips of the scene in no patch: one warning line on
    stderr (the patches are still written); --stride <= --size prints none."""
    from satseg_jax.raster.sample import write_sample_scene

    s = write_sample_scene(tmp_path / "s", size=64, seed=0)
    scene = compose_bands([s[b] for b in ("blue", "green", "red", "nir")],
                          tmp_path / "scene.tif", progress=False)
    argv = ["patches", "--image", str(scene), "--labels", str(s["labels"]), "--classes",
            str(s["classes"]), "--size", "16"]
    capsys.readouterr()
    assert main([*argv, "--stride", "24", "--out", str(tmp_path / "gaps")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["satseg: warning: --stride 24 is larger than --size 16: the 8-px strips "
                   "between patches are in no patch; use --stride 16 or less to cover the "
                   "whole scene"], err
    assert (tmp_path / "gaps" / "index.csv").exists()
    assert main([*argv, "--stride", "16", "--out", str(tmp_path / "full")]) == 0
    assert "warning" not in capsys.readouterr().err
