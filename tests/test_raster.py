"""Sample scene, compose, windows and patches — on generated data and the real Landsat subset."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from satseg_jax.cli import main
from satseg_jax.raster.compose import compose_bands
from satseg_jax.raster.patches import make_patches
from satseg_jax.raster.sample import write_sample_scene
from satseg_jax.raster.windows import covering_windows, patch_windows


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    return write_sample_scene(tmp_path_factory.mktemp("s") / "sample", size=128, seed=1)


def _split_bands(src_path: Path, out: Path) -> list[Path]:
    """Write each band of a multi-band raster as its own single-band GeoTIFF."""
    paths = []
    with rasterio.open(src_path) as src:
        profile = {**src.profile, "count": 1}
        for i in range(1, src.count + 1):
            p = out / f"band{i}.tif"
            with rasterio.open(p, "w", **profile) as dst:
                dst.write(src.read(i), 1)
            paths.append(p)
    return paths


def _assert_one_line_error(capsys, argv, *needles):
    assert main(argv) == 2
    # tqdm bars may precede it; the error itself is the last line, and one line.
    err = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert err.startswith("satseg: error:"), err
    for n in needles:
        assert n in err, err
    return err


# ----------------------------------------------------------------------------- sample


def test_sample_scene_is_deterministic_and_plausible(tmp_path, sample):
    again = write_sample_scene(tmp_path / "again", size=128, seed=1)
    for key in ("blue", "nir", "labels"):
        with rasterio.open(sample[key]) as a, rasterio.open(again[key]) as b:
            np.testing.assert_array_equal(a.read(), b.read())
            assert a.crs.to_epsg() == 32723 and a.res == (8.0, 8.0)
    with rasterio.open(sample["labels"]) as ds:
        labels = ds.read(1)
    with rasterio.open(sample["nir"]) as n, rasterio.open(sample["red"]) as r:
        nir, red = n.read(1).astype(float), r.read(1).astype(float)
    assert (labels == 255).any() and ((nir == 0) == (labels == 255)).all()  # nodata border
    present = set(np.unique(labels)) - {255}
    assert len(present) >= 5
    # Water is dark in NIR, forest bright in NIR and dark in red.
    assert nir[labels == 0].mean() < 0.3 * nir[labels == 1].mean()
    assert red[labels == 1].mean() < red[labels == 2].mean()
    classes = json.loads(sample["classes"].read_text())
    assert [c["name"] for c in classes][:2] == ["water", "forest"]


# ----------------------------------------------------------------------------- windows


def test_window_counts():
    assert len(patch_windows(718, 791, 128, 128, "drop")) == 30  # 5 rows x 6 cols
    assert len(patch_windows(718, 791, 128, 128, "pad")) == 42
    assert len(patch_windows(718, 791, 128, 64, "drop")) == 10 * 11  # (718-128)//64+1 rows
    wins = covering_windows(300, 500, 128, 32)
    covered = np.zeros((300, 500), int)
    for w in wins:
        covered[w.row:w.row + w.height, w.col:w.col + w.width] += 1
        assert w.row + w.height <= 300 and w.col + w.width <= 500
    assert covered.min() >= 1


# ----------------------------------------------------------------------------- compose


def test_compose_real_landsat_bands_reproduces_the_original(shared_rasterio, tmp_path):
    src = shared_rasterio / "RGB.byte.tif"
    bands = _split_bands(src, tmp_path)
    out = compose_bands(bands, tmp_path / "scene.tif", names=["red", "green", "blue"])
    with rasterio.open(src) as a, rasterio.open(out) as b:
        np.testing.assert_array_equal(a.read(), b.read())
        assert a.crs == b.crs and a.transform == b.transform and b.nodata == a.nodata
        assert b.descriptions == ("red", "green", "blue")
        assert b.profile["tiled"] and b.profile["compress"] == "deflate"


def test_compose_refuses_mismatched_grids(shared_rasterio, sample, tmp_path, capsys):
    out = tmp_path / "x.tif"
    # CRS: a geographic band against the UTM sample.
    one = _split_bands(shared_rasterio / "red.tif", tmp_path)[0]
    _assert_one_line_error(capsys, ["compose", "--bands", str(sample["blue"]), str(one),
                                    "--out", str(out)], str(one), "crs")
    # size
    with rasterio.open(sample["blue"]) as ds:
        profile, data = ds.profile, ds.read(1)
    small = tmp_path / "small.tif"
    with rasterio.open(small, "w", **{**profile, "width": 64, "height": 64}) as dst:
        dst.write(data[:64, :64], 1)
    _assert_one_line_error(capsys, ["compose", "--bands", str(sample["blue"]), str(small),
                                    "--out", str(out)], str(small), "size")
    # dtype
    f32 = tmp_path / "f32.tif"
    with rasterio.open(f32, "w", **{**profile, "dtype": "float32", "predictor": 1}) as dst:
        dst.write(data.astype("float32"), 1)
    _assert_one_line_error(capsys, ["compose", "--bands", str(sample["blue"]), str(f32),
                                    "--out", str(out)], str(f32), "dtype")
    assert not out.exists() and not list(tmp_path.glob(".x.tif*"))
    # ... unless asked to resample onto a reference grid.
    assert main(["compose", "--bands", str(sample["blue"]), str(small), "--resample-to",
                 str(sample["blue"]), "--out", str(out)]) == 0
    with rasterio.open(out) as ds:
        assert ds.shape == (128, 128) and ds.count == 2


def test_corrupt_tiff_is_a_clear_error_and_leaves_nothing(shared_rasterio, sample, tmp_path,
                                                          capsys):
    out = tmp_path / "scene.tif"
    corrupt = shared_rasterio / "corrupt.tif"
    _assert_one_line_error(capsys, ["compose", "--bands", str(corrupt), "--out", str(out)],
                           str(corrupt))
    assert not out.exists() and list(tmp_path.iterdir()) == []
    _assert_one_line_error(capsys, ["patches", "--image", str(corrupt), "--labels",
                                    str(sample["labels"]), "--classes", str(sample["classes"]),
                                    "--size", "32", "--out", str(tmp_path / "p")], str(corrupt))
    assert not (tmp_path / "p").exists() and list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- patches


def _write_labels_like(src: Path, out: Path, values: np.ndarray, nodata=None) -> Path:
    with rasterio.open(src) as ds:
        profile = {**ds.profile, "count": 1, "dtype": "uint8", "nodata": nodata}
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(values.astype("uint8"), 1)
    return out


def test_patches_on_real_landsat(shared_rasterio, tmp_path):
    src = shared_rasterio / "RGB.byte.tif"
    with rasterio.open(src) as ds:
        scene_t = ds.transform
        data = ds.read()
    labels = _write_labels_like(src, tmp_path / "labels.tif", (data[0] > 100).astype(np.uint8))
    classes = tmp_path / "classes.json"
    classes.write_text(json.dumps([{"id": 0, "name": "dark"}, {"id": 1, "name": "bright"}]))
    out = tmp_path / "patches"
    summary = make_patches(src, out, classes, size=128, stride=128, edge="drop",
                           min_valid=0.5, labels=labels, progress=False)
    meta = json.loads((out / "patches.json").read_text())
    assert meta["num_windows"] == summary["num_windows"] == 30
    rows = list(csv.DictReader(open(out / "index.csv")))
    assert 0 < len(rows) < 30  # the rotated nodata border removes some windows
    r = rows[len(rows) // 2]
    row, col = int(r["row"]), int(r["col"])
    with rasterio.open(out / "images" / f"{r['patch_id']}.tif") as p, \
            rasterio.open(out / "masks" / f"{r['patch_id']}.tif") as m:
        assert p.transform == window_transform(Window(col, row, 128, 128), scene_t)
        assert m.transform == p.transform and p.crs == m.crs
        np.testing.assert_array_equal(p.read(), data[:, row:row + 128, col:col + 128])
        mask = m.read(1)
        assert m.dtypes[0] == "uint8"
    nodata = (data[:, row:row + 128, col:col + 128] == 0).all(axis=0)
    assert (mask[nodata] == 255).all() and (mask[~nodata] != 255).all()
    assert float(r["valid_fraction"]) == pytest.approx(1 - nodata.mean(), abs=1e-6)
    assert int(r["count_ignore"]) == int(nodata.sum())


def test_vector_labels_equal_the_label_raster(sample, tmp_path):
    scene = compose_bands([sample[b] for b in ("blue", "green", "red", "nir")],
                          tmp_path / "scene.tif", progress=False)
    a = make_patches(scene, tmp_path / "a", sample["classes"], size=32, labels=sample["labels"],
                     progress=False)
    b = make_patches(scene, tmp_path / "b", sample["classes"], size=32, vector=sample["vector"],
                     class_field="class", progress=False)
    assert a["num_patches"] == b["num_patches"] > 0
    for f in sorted((tmp_path / "a" / "masks").iterdir()):
        with rasterio.open(f) as x, rasterio.open(tmp_path / "b" / "masks" / f.name) as y:
            np.testing.assert_array_equal(x.read(), y.read())


def test_patches_errors_leave_nothing(shared_rasterio, sample, tmp_path, capsys):
    scene = compose_bands([sample[b] for b in ("blue", "green", "red", "nir")],
                          tmp_path / "scene.tif", progress=False)
    out = tmp_path / "p"
    # A label value that classes.json does not declare.
    with rasterio.open(sample["labels"]) as ds:
        lab = ds.read(1)
    lab[10:12, 50:60] = 9
    bad = _write_labels_like(sample["labels"], tmp_path / "bad.tif", lab, nodata=255)
    err = _assert_one_line_error(capsys, ["patches", "--image", str(scene), "--labels", str(bad),
                                          "--classes", str(sample["classes"]), "--size", "32",
                                          "--out", str(out)], str(bad), "9 (20 px)")
    assert "classes.json" in err
    # A wrong attribute name for vector labels.
    _assert_one_line_error(capsys, ["patches", "--image", str(scene), "--vector",
                                    str(sample["vector"]), "--class-field", "klass",
                                    "--classes", str(sample["classes"]), "--size", "32",
                                    "--out", str(out)], "klass", "available: ['class']")
    # An all-nodata scene.
    nod = shared_rasterio / "all-nodata.tif"
    with rasterio.open(nod) as ds:
        lab2 = _write_labels_like(nod, tmp_path / "l2.tif", np.zeros(ds.shape, np.uint8))
    _assert_one_line_error(capsys, ["patches", "--image", str(nod), "--labels", str(lab2),
                                    "--classes", str(sample["classes"]), "--size", "32",
                                    "--out", str(out)], str(nod), "all nodata")
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".p")]


def test_edge_pad_pads_with_nodata_and_ignore(sample, tmp_path):
    scene = compose_bands([sample[b] for b in ("blue", "green", "red", "nir")],
                          tmp_path / "scene.tif", progress=False)
    s = make_patches(scene, tmp_path / "p", sample["classes"], size=48, stride=48, edge="pad",
                     min_valid=0.0001, labels=sample["labels"], progress=False)
    assert s["num_windows"] == 9
    with rasterio.open(tmp_path / "p" / "masks" / "r000096_c000096.tif") as m, \
            rasterio.open(tmp_path / "p" / "images" / "r000096_c000096.tif") as im:
        assert m.shape == (48, 48)
        assert (m.read(1)[32:, :] == 255).all() and (im.read()[:, 32:, :] == 0).all()
