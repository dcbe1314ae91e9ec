"""Whole-scene prediction (georeference, nodata, seams, memory-bounded strips) and areas."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from satseg_jax.area import area_table, format_area_table
from satseg_jax.cli import main
from satseg_jax.tiled_scene import blend_window
from tests.workers.tiny_config import tiny_config


def _train_tiny(image, labels, classes, tmp, steps=16):
    from satseg_jax.datasets.build import build_dataset
    from satseg_jax.raster.patches import make_patches
    from satseg_jax.train import train_and_evaluate

    make_patches(image, tmp / "patches", classes, size=32, labels=labels, progress=False)
    build_dataset(tmp / "patches", tmp / "data", split=(0.6, 0.2, 0.2), split_by="random",
                  progress=False)
    cfg = tiny_config(tmp / "data", **{"train.num_steps": steps, "train.eval_every": steps,
                                        "train.checkpoint_every": steps})
    train_and_evaluate(cfg, tmp / "run")
    return tmp / "run"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from satseg_jax.raster.compose import compose_bands
    from satseg_jax.raster.sample import write_sample_scene

    root = tmp_path_factory.mktemp("pred")
    s = write_sample_scene(root / "sample", size=160, seed=5)
    scene = compose_bands([s[b] for b in ("blue", "green", "red", "nir")], root / "scene.tif",
                          progress=False)
    run = _train_tiny(scene, s["labels"], s["classes"], root, steps=40)
    return root, s, scene, run


def test_predicted_map_is_georeferenced_like_the_scene(trained, tmp_path, capsys):
    root, s, scene, run = trained
    out = tmp_path / "map.tif"
    assert main(["predict", "--workdir", str(run), "--image", str(scene), "--out", str(out),
                 "--tile", "64", "--overlap", "16", "--checkpoint", "latest",
                 "--probabilities", str(tmp_path / "p.tif")]) == 0
    with rasterio.open(scene) as a, rasterio.open(out) as m, \
            rasterio.open(s["labels"]) as lab, rasterio.open(tmp_path / "p.tif") as p:
        assert (m.crs, m.transform, m.shape) == (a.crs, a.transform, a.shape)
        pred, truth = m.read(1), lab.read(1)
        nodata = (a.read() == 0).all(axis=0)
        assert (pred[nodata] == 255).all() and (pred[~nodata] != 255).all()
        assert m.colormap(1)[0][:3] == (31, 120, 180)  # water's colour from classes.json
        assert m.profile["tiled"]  # COG layout (overviews only appear above 512 px)
        assert p.count == 6 and p.dtypes[0] == "uint8"
        probs = p.read().astype(int).sum(axis=0)[~nodata]
        assert np.abs(probs - 255).max() <= 6  # uint8-rounded probabilities sum to ~1
    assert set(np.unique(pred[truth != 255])) <= set(range(6))
    png = tmp_path / "preview.png"
    assert main(["plot", "--image", str(scene), "--map", str(out), "--classes",
                 str(s["classes"]), "--out", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_gaussian_blending_leaves_no_seams(trained, tmp_path):
    root, s, scene, run = trained
    out = tmp_path / "map.tif"
    from satseg_jax.predict import predict_scene

    predict_scene(run, scene, out, checkpoint="latest", tile=64, overlap=32, blend="gaussian",
                  progress=False)
    none = tmp_path / "none.tif"
    predict_scene(run, scene, none, checkpoint="latest", tile=64, overlap=32, blend="none",
                  progress=False)
    with rasterio.open(out) as m, rasterio.open(s["labels"]) as lab:
        pred, truth = m.read(1), lab.read(1)
    # Tile starts every 32 px: compare disagreement with the truth on border lines vs the rest.
    border = np.zeros(pred.shape, bool)
    for c in range(32, pred.shape[1], 32):
        border[:, c - 1:c + 1] = True
        border[c - 1:c + 1, :] = True
    ok = truth != 255
    wrong = (pred != truth) & ok
    rate_border = wrong[border & ok].mean()
    rate_inner = wrong[~border & ok].mean()
    assert rate_border <= rate_inner + 0.02, (rate_border, rate_inner)
    w = blend_window(64, "gaussian")
    assert w[32, 32] > 0.9 and w[0, 0] < w[32, 0] < w[32, 32]


def test_refuses_a_scene_with_other_bands(trained, tmp_path, capsys):
    root, s, scene, run = trained
    three = tmp_path / "three.tif"
    from satseg_jax.raster.compose import compose_bands

    compose_bands([s["blue"], s["green"], s["red"]], three, progress=False)
    assert main(["predict", "--workdir", str(run), "--image", str(three), "--out",
                 str(tmp_path / "m.tif"), "--checkpoint", "latest"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "3 bands" in err and "4" in err
    assert not (tmp_path / "m.tif").exists()


def test_real_landsat_map_keeps_georeference_and_nodata(shared_rasterio, tmp_path):
    from satseg_jax.predict import predict_scene

    src = shared_rasterio / "RGB.byte.tif"
    with rasterio.open(src) as ds:
        data, profile = ds.read(), ds.profile
    labels = tmp_path / "labels.tif"
    with rasterio.open(labels, "w", **{**profile, "count": 1, "nodata": None}) as dst:
        dst.write((data[0] > 60).astype("uint8"), 1)
    classes = tmp_path / "classes.json"
    classes.write_text(json.dumps([{"id": 0, "name": "dark"}, {"id": 1, "name": "bright"}]))
    run = _train_tiny(src, labels, classes, tmp_path, steps=4)
    out = tmp_path / "map.tif"
    predict_scene(run, src, out, checkpoint="latest", tile=128, overlap=32, progress=False)
    with rasterio.open(src) as a, rasterio.open(out) as m:
        assert (m.crs, m.transform, m.shape) == (a.crs, a.transform, a.shape)
        nodata = (a.read() == 0).all(axis=0)
        assert (m.read(1)[nodata] == 255).all()


# ----------------------------------------------------------------------------- area


def _map(path, data, transform, crs):
    with rasterio.open(path, "w", driver="GTiff", height=data.shape[0], width=data.shape[1],
                       count=1, dtype="uint8", crs=crs, transform=transform, nodata=255) as d:
        d.write(data, 1)
    return path


def test_area_exact_in_a_projected_crs_and_per_region_totals(tmp_path, capsys):
    data = np.zeros((100, 200), np.uint8)
    data[:, 50:] = 1
    data[:10] = 2
    data[-5:, -5:] = 255
    t = from_origin(500000, 8000000, 10, 10)  # 100 m² pixels
    m = _map(tmp_path / "m.tif", data, t, "EPSG:32723")
    tab = area_table(m, ["a", "b", "c"])
    counts = [int((data == k).sum()) for k in range(3)]
    np.testing.assert_allclose(tab["rows"]["scene"], [c * 100 / 1e6 for c in counts])
    # Two regions splitting the scene left/right: their totals add up to the scene's.
    x0, x1, y0, y1 = 500000, 502000, 7999000, 8000000
    regions = {"type": "FeatureCollection",
               "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32723"}},
               "features": [
                   {"type": "Feature", "properties": {"name": "west"}, "geometry": {
                       "type": "Polygon", "coordinates": [[[x0, y0], [x0 + 700, y0],
                                                           [x0 + 700, y1], [x0, y1], [x0, y0]]]}},
                   {"type": "Feature", "properties": {"name": "east"}, "geometry": {
                       "type": "Polygon", "coordinates": [[[x0 + 700, y0], [x1, y0], [x1, y1],
                                                           [x0 + 700, y1], [x0 + 700, y0]]]}}]}
    (tmp_path / "r.geojson").write_text(json.dumps(regions))
    assert main(["area", "--map", str(m), "--by", str(tmp_path / "r.geojson"),
                 "--region-field", "name", "--out", str(tmp_path / "a.csv")]) == 0
    printed = capsys.readouterr().out
    assert "west" in printed and "total" in printed
    tab2 = area_table(m, ["a", "b", "c"], regions=tmp_path / "r.geojson", region_field="name")
    total = np.sum([v for v in tab2["rows"].values()], axis=0)
    np.testing.assert_allclose(total, tab["rows"]["scene"], rtol=1e-12)
    # West: columns 0..69; class 1 there is columns 50..69 below row 10 (90 rows x 20).
    assert tab2["rows"]["west"][1] == pytest.approx(90 * 20 * 100 / 1e6)
    assert (tmp_path / "a.csv").read_text().startswith("region,")
    assert "km²" in format_area_table(tab)


def test_geographic_areas_are_ellipsoidal(tmp_path):
    pyproj = pytest.importorskip("pyproj", reason="pyproj (test extra) computes the reference")
    data = np.zeros((40, 50), np.uint8)
    t = from_origin(-50.0, -10.0, 0.01, 0.01)  # 0.01° pixels near 10° S
    m = _map(tmp_path / "g.tif", data, t, "EPSG:4326")
    km2 = area_table(m, ["x"])["rows"]["scene"][0]
    geod = pyproj.Geod(ellps="WGS84")
    lons = [-50.0, -49.5, -49.5, -50.0]
    lats = [-10.0, -10.0, -10.4, -10.4]
    ref = abs(geod.polygon_area_perimeter(lons, lats)[0]) / 1e6
    assert math.isclose(km2, ref, rel_tol=1e-3), (km2, ref)


def test_cross_resolution_evaluation_resamples_to_the_training_gsd(trained, tmp_path, capsys):
    """A run trained on 8 m patches evaluated on a 4 m dataset at the training pixel size."""
    from satseg_jax.datasets.build import build_dataset
    from satseg_jax.raster.compose import compose_bands
    from satseg_jax.raster.patches import make_patches
    from satseg_jax.raster.sample import write_sample_scene

    root, s, scene, run = trained
    fine = write_sample_scene(tmp_path / "fine", size=128, seed=7, pixel_size=4.0)
    fscene = compose_bands([fine[b] for b in ("blue", "green", "red", "nir")],
                           tmp_path / "fine.tif", progress=False)
    make_patches(fscene, tmp_path / "fp", fine["classes"], size=32, labels=fine["labels"],
                 progress=False)
    build_dataset(tmp_path / "fp", tmp_path / "fd", split=(0.5, 0.25, 0.25),
                  split_by="random", progress=False)
    assert main(["evaluate", "--workdir", str(run), "--checkpoint", "latest", "--split",
                 "test", "--data", str(tmp_path / "fd"), "--resample-to-train-gsd"]) == 0
    out = capsys.readouterr().out
    assert "to 16 px" in out
    m = json.loads((run / "metrics_test.json").read_text())
    assert m["resampled_to"] == 16 and m["data_dir"] == str(tmp_path / "fd")
    info = json.loads((tmp_path / "fd" / "satseg_dataset.json").read_text())
    assert np.asarray(m["confusion_matrix"]).sum() <= info["num_examples"]["test"] * 16 * 16


def test_evaluate_draws_overlays_of_real_patches(trained, monkeypatch, capsys):
    """--overlays N: N patches spread over the split, truth read back from the mask files,
    prediction identical to the saved prediction GeoTIFF, one figure row per patch."""
    from satseg_jax import plots

    root, s, scene, run = trained
    drawn = {}
    real = plots.patch_overlays_png

    def capture(samples, *args, **kwargs):
        drawn["samples"] = samples
        return real(samples, *args, **kwargs)

    monkeypatch.setattr(plots, "patch_overlays_png", capture)
    assert main(["evaluate", "--workdir", str(run), "--checkpoint", "latest", "--split",
                 "test", "--save_predictions", "--overlays", "3"]) == 0
    png = run / "overlays_test.png"
    printed = capsys.readouterr().out  # every file written is named
    for name in ("metrics_test.json", "confusion_test.png", "overlays_test.png"):
        assert f"wrote {run / name}\n" in printed
    assert f"wrote {run / 'predictions_test'}/" in printed
    samples = drawn["samples"]
    n_test = json.loads((root / "data" / "satseg_dataset.json").read_text())[
        "num_examples"]["test"]
    assert len(samples) == min(3, n_test) and len({x["patch_id"] for x in samples}) == 3
    for x in samples:
        with rasterio.open(root / "patches" / "masks" / f"{x['patch_id']}.tif") as mk:
            np.testing.assert_array_equal(x["truth"], mk.read(1))
        with rasterio.open(run / "predictions_test" / f"{x['patch_id']}.tif") as pr:
            np.testing.assert_array_equal(x["pred"], pr.read(1))
        assert x["image"].shape == (32, 32, 4)
    from PIL import Image

    with Image.open(png) as im:  # 3 rows of 2.6 in + legend, 100 dpi
        assert im.size == (1000, 860)


def test_overlays_need_samples_and_leave_nothing_behind(tmp_path):
    with pytest.raises(ValueError, match="no samples"):
        from satseg_jax.plots import patch_overlays_png

        patch_overlays_png([], ["a"], [(0, 0, 0)], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_valid_conv_unet_maps_do_not_depend_on_the_tiling(trained, tmp_path):
    """``unet_original`` (valid convolutions) predicts each output pixel from the input
    context read around its tile (strip reads, padded past the scene edge with nodata).
    A pixel's logits then depend only on its context, not on which tile computed it: with
    tile starts aligned to the pooling grid, two different tilings give the same map."""
    from satseg_jax.predict import predict_scene
    from satseg_jax.train import train_and_evaluate

    root, s, scene, _ = trained
    cfg = tiny_config(root / "data", **{"model.name": "unet_original", "model.depth": 1,
                                         "train.num_steps": 6, "train.eval_every": 6,
                                         "train.checkpoint_every": 6})
    del cfg.model["norm"], cfg.model["dropout"], cfg.model["upsample"]
    train_and_evaluate(cfg, tmp_path / "run")
    maps = []
    for tile, overlap in ((32, 8), (48, 16)):
        out = tmp_path / f"map_{tile}.tif"
        predict_scene(tmp_path / "run", scene, out, checkpoint="latest", tile=tile,
                      overlap=overlap, blend="none", batch=4, progress=False)
        with rasterio.open(out) as m, rasterio.open(scene) as src:
            assert (m.crs, m.transform, m.shape) == (src.crs, src.transform, src.shape)
            maps.append(m.read(1))
    assert np.array_equal(maps[0], maps[1])
    assert (maps[0] != 255).mean() > 0.5


def test_area_refuses_class_ids_that_classes_json_does_not_declare(tmp_path, capsys):
    """A map predicted with other classes (ids 7, 9 here; classes.json declares 0-2) is
    one error listing the ids and their pixel counts, and no CSV is written; without
    --classes the ids are columns class_7, class_9."""
    data = np.zeros((20, 30), np.uint8)
    data[:2, :5] = 7
    data[-1, -3:] = 9
    data[5, 5] = 255  # nodata: never an undeclared class
    m = _map(tmp_path / "m.tif", data, from_origin(500000, 8000000, 10, 10), "EPSG:32723")
    classes = tmp_path / "classes.json"
    classes.write_text(json.dumps([{"id": i, "name": n, "colour": c} for i, (n, c) in
                                   enumerate([("a", "#ff0000"), ("b", "#00ff00"),
                                              ("c", "#0000ff")])]))
    before = sorted(p.name for p in tmp_path.iterdir())
    capsys.readouterr()
    assert main(["area", "--map", str(m), "--classes", str(classes),
                 "--out", str(tmp_path / "a.csv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("satseg: error: "), err
    assert (f"{m}: holds class ids that --classes does not declare (it has 3 classes, ids "
            "0-2): 7 (10 px), 9 (3 px); pass the classes.json") in err[0], err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert area_table(m)["classes"][7] == "class_7"


# ----------------------------------------------------------------------------- real disks


@pytest.mark.parametrize("case", ["read_only", "full"])
def test_predict_on_a_real_read_only_or_full_disk(trained, tmpfs, capsys, case):
    """A real read-only mount, and a tmpfs with 8 KiB left (GDAL fails only in a log line
    at close or in the COG copy, and left a broken map behind with exit 0): one line
    naming the map and the cause, exit 2, nothing left, the scene unchanged."""
    import hashlib

    from tests.conftest import fill_disk

    root, s, scene, run = trained
    disk = tmpfs("disk", "ro,size=1m" if case == "read_only" else "size=256k")
    kept = [] if case == "read_only" else [fill_disk(disk, leave=8 << 10).name]
    out = disk / "map.tif"
    before = hashlib.sha256(scene.read_bytes()).hexdigest()
    capsys.readouterr()
    assert main(["predict", "--workdir", str(run), "--image", str(scene), "--out", str(out),
                 "--tile", "64", "--overlap", "16", "--checkpoint", "latest"]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    print(line)
    if case == "read_only":
        assert line == (f"satseg: error: {out}: cannot write it: the file system is read-only "
                        f"({disk}); nothing was left behind. Choose an output in a folder "
                        "you can write to")
    else:
        assert line.startswith(f"satseg: error: {out}: disk full while writing it ("), line
        assert line.endswith(f"Free space on the disk of {disk} (or choose an output on "
                             "another disk) and run the command again"), line
    assert sorted(p.name for p in disk.iterdir()) == kept
    assert hashlib.sha256(scene.read_bytes()).hexdigest() == before


def test_evaluate_prediction_temporaries_removed_on_failure_and_swept(trained, monkeypatch):
    """evaluate --save-predictions writes each patch as ``.ID.tif.XXXXXXXX.tmp`` and renames
    it: a write interrupted (Ctrl-C inside GDAL's write) leaves no temporary behind, and
    the next run removes those a killed run left (nothing else)."""
    import shutil

    import rasterio.io

    from satseg_jax.evaluate import evaluate_workdir

    root, s, scene, run = trained
    pred = run / "predictions_test"
    shutil.rmtree(pred, ignore_errors=True)
    real = rasterio.io.DatasetWriter.write

    def interrupted(self, *a, **k):
        real(self, *a, **k)
        raise KeyboardInterrupt

    monkeypatch.setattr(rasterio.io.DatasetWriter, "write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        evaluate_workdir(run, split="test", checkpoint="latest", save_predictions=True)
    assert list(pred.iterdir()) == []
    monkeypatch.setattr(rasterio.io.DatasetWriter, "write", real)
    killed = pred / ".sample__r0_c0.tif.ab12cd34.tmp"
    killed.write_bytes(b"half")
    (pred / "notes.tif.tmp").write_text("not ours")
    evaluate_workdir(run, split="test", checkpoint="latest", save_predictions=True)
    names = sorted(p.name for p in pred.iterdir())
    assert names[0] == "notes.tif.tmp" and not killed.exists()
    n_test = json.loads((root / "data" / "satseg_dataset.json").read_text())["num_examples"]
    assert len(names) - 1 == n_test["test"]
    assert all(n.endswith(".tif") and not n.startswith(".") for n in names[1:])
