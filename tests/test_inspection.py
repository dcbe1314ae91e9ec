"""satseg inspect: scenes, image/mask folders (JPEG, RGB and palette PNG), globs of region
folders, patches folders, built datasets, and the errors for paths holding nothing."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import from_origin

from satseg_jax.cli import main
from satseg_jax.inspection import format_inspection, inspect_path

RED, GREEN, BLACK, MAGENTA = (255, 0, 0), (0, 255, 0), (0, 0, 0), (255, 0, 255)
CLASSES = [{"id": 0, "name": "road", "colour": "#ff0000"},
           {"id": 1, "name": "grass", "colour": [0, 255, 0]},
           {"name": "unlabelled", "colour": "#000000", "ignore": True}]


def _run(capsys, *argv: str) -> dict:
    assert main(["inspect", *map(str, argv), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _write(path: Path, data: np.ndarray, driver: str, **kw) -> Path:
    data = data if data.ndim == 3 else data[None]
    path.parent.mkdir(parents=True, exist_ok=True)
    colormap = kw.pop("colormap", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # plain PNG/JPEG on purpose
        with rasterio.open(path, "w", driver=driver, width=data.shape[2],
                           height=data.shape[1], count=data.shape[0], dtype=data.dtype.name,
                           **kw) as dst:
            dst.write(data)
            if colormap:
                dst.write_colormap(1, colormap)
    return path


def _rgb_mask(h: int, w: int, colours: list[tuple]) -> np.ndarray:
    """Vertical stripes of ``colours`` as a (3, h, w) uint8 mask."""
    idx = (np.arange(w) * len(colours) // w)[None, :].repeat(h, 0)
    return np.moveaxis(np.array(colours, np.uint8)[idx], -1, 0)


# ----------------------------------------------------------------------------- scene


def test_scene_geotiff(tmp_path, capsys):
    rng = np.random.default_rng(0)
    data = rng.integers(100, 1000, size=(3, 60, 80)).astype(np.uint16)
    data[:, :15, :] = 0  # a nodata strip: a quarter of the rows
    data[1, 30, 40] = 5000
    path = _write(tmp_path / "scene.tif", data, "GTiff", crs="EPSG:32633", nodata=0,
                  transform=from_origin(500_000, 4_000_000, 10, 10), tiled=True,
                  blockxsize=16, blockysize=16, compress="deflate")
    with rasterio.open(path, "r+") as ds:
        ds.descriptions = ("blue", "green", "red")
    r = _run(capsys, path)
    assert r["kind"] == "raster"
    assert (r["width"], r["height"], r["count"]) == (80, 60, 3)
    assert r["dtypes"] == ["uint16"] * 3 and r["band_names"] == ["blue", "green", "red"]
    assert r["crs"] == "EPSG:32633" and r["nodata"] == 0 and r["pixel_size"] == [10, 10]
    assert r["layout"]["tiled"] and r["layout"]["compression"] == "deflate"
    assert r["layout"]["block"] == [16, 16]
    assert not r["sample"]["decimated"]
    valid = data[:, 15:]
    for b, band in zip(r["bands"], valid):
        assert (b["min"], b["max"]) == (band.min(), band.max())
        assert b["mean"] == pytest.approx(band.mean(), abs=1e-3)
        assert b["nodata_fraction"] == pytest.approx(0.25)
    assert r["mask"] is None  # 3 bands of uint16: an image, not a mask
    assert main(["inspect", str(path)]) == 0
    text = capsys.readouterr().out
    assert "crs: EPSG:32633" in text and "80 x 60 px, 3 band(s) of uint16" in text
    assert "green" in text and "25.0%" in text


def test_large_label_raster_is_sampled_decimated(tmp_path):
    """A one-band label raster: values listed; a bound smaller than the raster decimates."""
    lab = np.zeros((300, 400), np.uint8)
    lab[:, 200:] = 1
    lab[:150, :100] = 255
    path = _write(tmp_path / "labels.tif", lab, "GTiff", crs="EPSG:4326", nodata=255,
                  transform=from_origin(10, 50, 0.001, 0.001))
    classes = tmp_path / "classes.json"
    classes.write_text(json.dumps([{"id": 0, "name": "a"}, {"id": 1, "name": "b"}]))
    full = inspect_path(path, classes=classes)
    m = full["mask"]
    assert {e["value"]: e["pixels"] for e in m["values"]} == {0: 300 * 200 - 150 * 100,
                                                              1: 300 * 200}
    assert m["nodata_pixels"] == 150 * 100 and m["undeclared"] == []
    assert {e["value"]: e["class"] for e in m["values"]} == {0: "a", 1: "b"}
    small = inspect_path(path, scene_side=40)
    assert small["sample"] == {"width": 40, "height": 30, "decimated": True}
    assert small["mask"]["pixels_counted"] + small["mask"]["nodata_pixels"] == 40 * 30


# ----------------------------------------------------------------------------- folders


@pytest.fixture
def jpeg_folder(tmp_path) -> tuple[Path, dict]:
    """6 non-georeferenced JPEGs of 3 sizes; masks for 5 of them (3 RGB, 2 palette PNG)."""
    rng = np.random.default_rng(1)
    sizes = [(40, 30), (40, 30), (40, 30), (64, 48), (64, 48), (50, 50)]  # (w, h)
    expect: dict = {}
    for i, (w, h) in enumerate(sizes):
        img = rng.integers(0, 255, size=(3, h, w)).astype(np.uint8)
        _write(tmp_path / "images" / f"tile_{i}.jpg", img, "JPEG")
        if i == 5:
            continue  # the unpaired image
        if i < 3:
            mask = _rgb_mask(h, w, [RED, GREEN, BLACK])
            _write(tmp_path / "masks" / f"tile_{i}.png", mask, "PNG")
            for col in (RED, GREEN, BLACK):
                hit = (np.moveaxis(mask, 0, -1) == col).all(-1).sum()
                key = "#{:02x}{:02x}{:02x}".format(*col)
                expect[key] = expect.get(key, 0) + int(hit)
        else:
            pal = np.zeros((h, w), np.uint8)
            pal[:, w // 2:] = 1
            _write(tmp_path / "masks" / f"tile_{i}.png", pal, "PNG",
                   colormap={0: (*RED, 255), 1: (*GREEN, 255)})
            expect["#ff0000"] += int((pal == 0).sum())
            expect["#00ff00"] += int((pal == 1).sum())
    (tmp_path / "classes.json").write_text(json.dumps(CLASSES))
    return tmp_path, expect


def test_folder_of_jpegs_with_rgb_and_palette_masks(jpeg_folder, capsys):
    root, expect = jpeg_folder
    r = _run(capsys, root / "images", "--masks", root / "masks", "--classes",
             root / "classes.json")
    assert r["kind"] == "folder"
    im = r["images"]
    assert im["files"] == 6 and im["headers_read"] == 6 and not im["stopped"]
    assert im["suffixes"] == {".jpg": 6}
    assert im["sizes"] == [{"width": 40, "height": 30, "files": 3},
                           {"width": 64, "height": 48, "files": 2},
                           {"width": 50, "height": 50, "files": 1}]
    assert im["width_range"] == [40, 64] and im["height_range"] == [30, 50]
    assert im["bands"] == [{"count": 3, "dtype": "uint8", "files": 6}]
    assert im["crs"] == [{"crs": "none", "files": 6}]
    assert im["nodata"] == [{"nodata": None, "files": 6}]
    assert r["masks"]["files"] == 5 and r["masks"]["palette_files"] == 2
    pr = r["pairing"]
    assert (pr["pairs"], pr["unpaired_images"], pr["unpaired_masks"]) == (5, 1, 0)
    assert pr["unpaired_images_first"] == [str(root / "images" / "tile_5.jpg")]
    assert r["size_mismatches"]["count"] == 0
    mv = r["mask_values"]
    assert mv["kinds"] == {"rgb": 3, "palette": 2} and not mv["sampled"]
    assert {e["colour"]: e["pixels"] for e in mv["colours"]} == expect
    by = {e["colour"]: e for e in mv["colours"]}
    assert by["#ff0000"]["files"] == 5 and by["#000000"]["files"] == 3
    assert by["#ff0000"]["palette_values"] == [0] and by["#000000"]["class"] == "ignore"
    assert by["#00ff00"]["class"] == "grass" and mv["undeclared"] == []
    assert main(["inspect", str(root / "images"), "--masks", str(root / "masks")]) == 0
    text = capsys.readouterr().out
    assert "pairs: 5; images without mask: 1" in text and "tile_5.jpg" in text
    assert "crs: none (6)" in text and "40x30 (3)" in text and "#00ff00" in text


def test_undeclared_colour_size_mismatch_and_max_files(jpeg_folder, capsys):
    root, _ = jpeg_folder
    bad = _rgb_mask(30, 40, [RED, MAGENTA])
    _write(root / "masks" / "tile_0.png", bad, "PNG")
    _write(root / "masks" / "tile_5.png", _rgb_mask(10, 10, [RED]), "PNG")  # 50x50 image
    r = _run(capsys, root / "images", "--masks", root / "masks", "--classes",
             root / "classes.json", "--max-files", "3")
    assert r["pairing"]["pairs"] == 6 and r["pairing"]["unpaired_images"] == 0
    assert r["mask_values"]["undeclared"] == [{"colour": "#ff00ff", "pixels": 30 * 20}]
    assert r["images"]["stopped"] and r["images"]["headers_read"] == 3
    assert any("--max-files 3" in w for w in r["warnings"])
    full = inspect_path(root / "images", masks=str(root / "masks"))
    assert full["size_mismatches"]["count"] == 1
    assert full["size_mismatches"]["first"][0]["mask_size"] == [10, 10]
    text = format_inspection(inspect_path(root / "images", masks=str(root / "masks"),
                                          classes=root / "classes.json"))
    assert "NOT declared in classes.json" in text and "#ff00ff (600 px)" in text
    assert "image/mask size differs: 1 pair(s)" in text


def test_glob_of_region_folders_and_pattern(tmp_path, capsys):
    for region in ("rural", "urban"):
        for i in range(3):
            _write(tmp_path / region / "images" / f"{i}.png",
                   np.full((3, 8, 8), i, np.uint8), "PNG")
            if not (region == "urban" and i == 2):
                _write(tmp_path / region / "masks" / f"{i}.png",
                       np.full((8, 8), i, np.uint8), "PNG")
    r = _run(capsys, tmp_path / "*" / "images", "--masks", tmp_path / "*" / "masks")
    assert r["images"]["files"] == 6 and r["masks"]["files"] == 5
    assert r["pairing"]["pairs"] == 5
    assert r["pairing"]["unpaired_images_first"] == [str(tmp_path / "urban/images/2.png")]
    mv = r["mask_values"]
    assert mv["kinds"] == {"index": 5}
    assert {e["value"]: e["pixels"] for e in mv["values"]} == {0: 128, 1: 128, 2: 64}
    # images and masks in one folder, told apart by a pattern (DeepGlobe style)
    for i in range(2):
        _write(tmp_path / "flat" / f"{i}_sat.jpg", np.zeros((3, 8, 8), np.uint8), "JPEG")
        _write(tmp_path / "flat" / f"{i}_mask.png", np.zeros((8, 8), np.uint8), "PNG")
    r = _run(capsys, tmp_path / "flat", "--pair", "{stem}_sat.jpg:{stem}_mask.png")
    assert r["pairing"]["pairs"] == 2 and r["images"]["suffixes"] == {".jpg": 2}
    assert not any("lossy" in w for w in r["warnings"])  # PNG masks; JPEG masks warn
    _write(tmp_path / "jpg" / "images" / "0.jpg", np.zeros((3, 8, 8), np.uint8), "JPEG")
    _write(tmp_path / "jpg" / "masks" / "0.jpg", np.zeros((3, 8, 8), np.uint8), "JPEG")
    r = _run(capsys, tmp_path / "jpg" / "images", "--masks", tmp_path / "jpg" / "masks")
    assert r["pairing"]["pairs"] == 1 and any("lossy" in w for w in r["warnings"])
    assert main(["inspect", str(tmp_path / "flat"), "--pair", "{stem}_a.jpg:{stem}_b.png"]) == 2
    assert "matches --pair" in capsys.readouterr().err


# ----------------------------------------------------------------------------- satseg outputs


@pytest.fixture(scope="module")
def patches_dir(tmp_path_factory) -> Path:
    from satseg_jax.raster.compose import compose_bands
    from satseg_jax.raster.patches import make_patches
    from satseg_jax.raster.sample import write_sample_scene

    d = tmp_path_factory.mktemp("inspect_sample")
    s = write_sample_scene(d / "s", size=96, seed=2)
    scene = compose_bands([s[b] for b in ("blue", "green", "red", "nir")], d / "scene.tif",
                          progress=False)
    make_patches(image=scene, out_dir=d / "patches", classes_path=s["classes"], size=32,
                 labels=s["labels"], progress=False)
    return d / "patches"


def test_patches_folder(patches_dir, capsys):
    with open(patches_dir / "index.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    r = _run(capsys, patches_dir)
    assert r["kind"] == "patches" and r["patches"] == len(rows)
    assert r["size"] == 32 and r["bands"] == ["blue", "green", "red", "nir"]
    assert r["dtype"] == "uint16" and r["crs"].startswith("EPSG:") and r["sources"] is None
    for c in r["classes"]:
        assert c["pixels"] == sum(int(x[f"count_{c['name']}"]) for x in rows)
    assert r["ignored_pixels"] == sum(int(x["count_ignore"]) for x in rows)
    assert main(["inspect", str(patches_dir)]) == 0
    assert "class pixels (from index.csv)" in capsys.readouterr().out


def test_built_dataset(patches_dir, tmp_path, capsys):
    from satseg_jax.datasets.build import build_dataset

    info = build_dataset(patches_dir=patches_dir, out_dir=tmp_path / "data",
                         split=(0.5, 0.25, 0.25), seed=0, split_by="random", progress=False)
    r = _run(capsys, tmp_path / "data")
    assert r["kind"] == "dataset" and r["num_examples"] == info["num_examples"]
    assert r["class_pixel_counts"] == info["class_pixel_counts"]
    assert r["patch_size"] == 32 and r["crs"].startswith("EPSG:")
    assert main(["inspect", str(tmp_path / "data")]) == 0
    text = capsys.readouterr().out
    assert "examples: train" in text and "crs: EPSG:" in text


# ----------------------------------------------------------------------------- errors


def test_missing_empty_and_unreadable_paths(tmp_path, capsys):
    missing = tmp_path / "nope"
    assert main(["inspect", str(missing)]) == 2
    err = capsys.readouterr().err.strip()
    assert str(missing) in err and "not found" in err and len(err.splitlines()) == 1
    (tmp_path / "empty").mkdir()
    assert main(["inspect", str(tmp_path / "empty")]) == 2
    assert "no raster files" in capsys.readouterr().err
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.npy").write_bytes(b"x")
    assert main(["inspect", str(tmp_path / "notes")]) == 2
    assert "only 1 .npy file(s)" in capsys.readouterr().err
    (tmp_path / "bad.tif").write_text("not a raster")
    assert main(["inspect", str(tmp_path / "bad.tif")]) == 2
    err = capsys.readouterr().err
    assert "bad.tif" in err and "cannot be read as a raster" in err
    assert main(["inspect", str(tmp_path / "zz*" / "images")]) == 2
    assert "matches no folder" in capsys.readouterr().err
