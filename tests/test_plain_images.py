"""Plain images without a CRS (issue 11, item 6): ``satseg predict`` writes a palette PNG
of the same size, areas are pixel counts, ``satseg evaluate --data`` takes a dataset
built from non-georeferenced images.

Cheap by design: one 2-step run on the session's ``tiny_dataset``, small images.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import rasterio
from rasterio.errors import NotGeoreferencedWarning

from satseg_jax.area import NO_CRS_NOTE, area_table
from satseg_jax.cli import main
from tests.workers.tiny_config import two_step_run


@pytest.fixture(scope="module")
def run(tiny_dataset, tmp_path_factory):
    return two_step_run(tiny_dataset, tmp_path_factory.mktemp("plain") / "run")


def _read(path, window=None):
    with rasterio.open(path) as src:
        return src.read(window=window), list(src.descriptions), src.nodata


def _write_plain(path, data, driver="GTiff", descriptions=None, nodata=None):
    """A raster without CRS or geotransform (what a JPEG/PNG tile set delivers)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", driver=driver, width=data.shape[2],
                           height=data.shape[1], count=data.shape[0], dtype=data.dtype,
                           nodata=nodata) as dst:
            dst.write(data)
            for i, d in enumerate(descriptions or [], 1):
                dst.set_band_description(i, d)
    return path


def _classes(tiny_dataset):
    info = json.loads((tiny_dataset / "satseg_dataset.json").read_text())
    return [c for c in info["classes"] if not c.get("ignore")]


def test_plain_png_gives_a_palette_png_of_the_same_size(run, tiny_dataset, tmp_path, capsys):
    from PIL import Image

    from satseg_jax.predict import predict_scene

    # 8-bit RGBA PNG (the run has 4 bands) of an odd size, with a nodata corner (every
    # band 0, the run's nodata) and no zero elsewhere.
    scene, _, _ = _read(tiny_dataset.parent / "scene.tif", ((10, 60), (5, 75)))
    scaled = np.clip(scene.astype(np.float64) * 254 / scene.max() + 1, 1, 255)
    data = np.round(scaled).astype(np.uint8)
    data[:, :6, :9] = 0
    png_in = _write_plain(tmp_path / "tile.png", data, driver="PNG")
    out = tmp_path / "map.png"
    assert main(["predict", "--workdir", str(run), "--image", str(png_in), "--out", str(out),
                 "--checkpoint", "latest", "--tile", "32", "--overlap", "8"]) == 0
    io = capsys.readouterr()
    assert NO_CRS_NOTE in io.out and "class pixels:" in io.out
    assert "uint8" in io.err and "uint16" in io.err  # the dtype differs from training's

    classes = _classes(tiny_dataset)
    with Image.open(out) as im:
        assert (im.mode, im.size) == ("P", (70, 50))
        pred = np.asarray(im)
        palette = np.asarray(im.getpalette()).reshape(-1, 3)
        assert im.info.get("transparency") == 255
    assert set(np.unique(pred)) <= set(range(len(classes))) | {255}
    assert (pred[:6, :9] == 255).all() and (pred[6:] != 255).all()
    from satseg_jax.classes import parse_colour

    want = [parse_colour(c["colour"], "test") for c in sorted(classes, key=lambda c: c["id"])]
    assert [tuple(p) for p in palette[:len(want)]] == want
    assert tuple(palette[255]) == (255, 255, 255)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map.png", "tile.png"]  # no sidecar

    # The same values as a uint16 TIFF without CRS, --out .tif: a GeoTIFF without CRS,
    # and the same map (normalisation does not depend on the input dtype).
    tif_in = _write_plain(tmp_path / "tile16.tif", data.astype(np.uint16))
    r = predict_scene(run, tif_in, tmp_path / "map.tif", checkpoint="latest", tile=32,
                      overlap=8, progress=False)
    assert (r["crs"], r["pixel_area_m2"], r["format"], r["notes"]) == (None, None, "COG", [])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(tmp_path / "map.tif") as m:
            assert (m.crs, m.shape) == (None, (50, 70))
            np.testing.assert_array_equal(m.read(1), pred)

    # Areas: pixel counts, said so, never km² from the identity transform.
    table = area_table(out, [c["name"] for c in classes])
    assert table["units"] == "pixels"
    counts = np.bincount(pred[pred != 255].ravel(), minlength=len(classes))
    assert table["rows"]["scene"] == counts.tolist()
    assert main(["area", "--map", str(out), "--out", str(tmp_path / "a.csv")]) == 0
    assert NO_CRS_NOTE in capsys.readouterr().out
    assert "total_pixels" in (tmp_path / "a.csv").read_text()


def test_a_png_map_of_a_georeferenced_scene_is_refused(run, tiny_dataset, tmp_path, capsys):
    """A PNG cannot keep the scene's CRS: refused from the header, before the model
    restore, leaving nothing; so are a JPEG map and PNG probabilities."""
    scene = tiny_dataset.parent / "scene.tif"
    for out, extra, says in (
            ("m.png", [], "cannot keep its CRS"),
            ("m.jpg", [], "JPEG"),
            ("m.tif", ["--probabilities", str(tmp_path / "p.png")], "GeoTIFF")):
        assert main(["predict", "--workdir", str(run), "--image", str(scene), "--out",
                     str(tmp_path / out), *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and says in err[0], err
    assert list(tmp_path.iterdir()) == []


def test_evaluate_on_a_dataset_built_without_a_crs(run, tiny_dataset, tmp_path, capsys):
    from satseg_jax.datasets.build import build_dataset
    from satseg_jax.raster.patches import make_patches

    # The run's scene and labels with their CRS and transform removed, then the usual
    # patches -> build: a separately built dataset of plain images.
    root = tiny_dataset.parent
    win = ((0, 96), (0, 96))
    image, names, nodata = _read(root / "scene.tif", win)
    labels, _, label_nodata = _read(root / "sample" / "labels.tif", win)
    _write_plain(tmp_path / "plain.tif", image, descriptions=names, nodata=nodata)
    _write_plain(tmp_path / "plain_labels.tif", labels, nodata=label_nodata)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        make_patches(tmp_path / "plain.tif", tmp_path / "patches",
                     root / "sample" / "classes.json", size=32,
                     labels=tmp_path / "plain_labels.tif", progress=False)
    data = tmp_path / "data"
    build_dataset(tmp_path / "patches", data, split=(0.34, 0.33, 0.33), split_by="random",
                  progress=False)
    info = json.loads((data / "satseg_dataset.json").read_text())
    assert info["crs"] is None and info["num_examples"]["test"] > 0

    # Resampling to the training pixel size needs a ground pixel size: a clear refusal.
    metrics = run / "metrics_test.json"
    before = metrics.read_text() if metrics.exists() else None
    assert main(["evaluate", "--workdir", str(run), "--checkpoint", "latest", "--data",
                 str(data), "--resample-to-train-gsd"]) == 2
    err = capsys.readouterr().err
    assert "no CRS" in err and str(data) in err
    assert (metrics.read_text() if metrics.exists() else None) == before

    assert main(["evaluate", "--workdir", str(run), "--checkpoint", "latest", "--data",
                 str(data), "--save_predictions"]) == 0
    m = json.loads(metrics.read_text())
    assert m["data_dir"] == str(data)
    assert np.asarray(m["confusion_matrix"]).sum() == sum(info["class_pixel_counts"]["test"])
    preds = sorted((run / "predictions_test").glob("*.tif"))
    assert len(preds) == info["num_examples"]["test"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        for p in preds:
            with rasterio.open(p) as pr, \
                    rasterio.open(tmp_path / "patches" / "masks" / p.name) as truth:
                assert pr.crs is None and pr.shape == truth.shape
                assert pr.transform == truth.transform
