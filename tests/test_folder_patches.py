"""``satseg patches --images/--masks``: labelled folder datasets (issue 11, items 1-2).

Generated like the published sets: non-georeferenced JPEG images of mixed sizes,
colour-coded masks (RGB and palette PNG) with an ignore colour, region folders reusing
file names. Every error case checks exit 2, one line naming the file, and no output.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from satseg_jax.cli import main
from satseg_jax.raster.pairing import find_pairs
from tests.helpers.labelled_folders import (
    colour_folder_set,
    image_for,
    truth_labels,
    write_classes,
    write_image,
    write_raw_palette_png,
    write_rgb_mask,
)
from tests.helpers.printed import summary_lines


def _patches(root: Path, *extra: str, images: str | None = None, masks: str | None = None,
             out: str = "patches") -> int:
    return main(["patches", "--images", images or str(root / "images"),
                 "--masks", masks or str(root / "masks"), "--classes",
                 str(root / "classes.json"), "--size", "32", "--out", str(root / out),
                 *extra])


def _fails(capsys, rc: int, out: Path, *needles: str) -> str:
    err = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()
    assert rc == 2, err
    line = err[-1]  # tqdm bars may precede the one error line
    assert line.startswith("satseg: error:") and "\n" not in line, err
    for n in needles:
        assert n in line, (n, line)
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith("." + out.name)]
    return line


pytestmark = pytest.mark.filterwarnings(
    "ignore::rasterio.errors.NotGeoreferencedWarning")


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read()


@pytest.fixture(scope="module")
def colour_set(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("colour_set")
    return root, colour_folder_set(root)


def test_jpeg_images_with_rgb_and_palette_masks(colour_set, capsys):
    root, truth = colour_set
    assert _patches(root, "--out", str(root / "p1")) == 0
    printed = summary_lines(capsys.readouterr().out)  # readable lines, not JSON
    out = root / "p1"
    meta = json.loads((out / "patches.json").read_text())
    summary = {**meta, "ignored_pixels": int(printed["ignored pixels"].split()[0])}
    assert printed["source images"] == "12 (without CRS; masks: colours 12)"
    assert printed["bands"] == "red, green, blue"
    assert summary["num_sources"] == 12 and summary["mask_kinds"] == {"colours": 12}
    assert summary["georeferenced"] is False and summary["bands"] == ["red", "green", "blue"]
    assert meta["crs"] is None and meta["num_sources"] == 12
    rows = list(csv.DictReader(open(out / "index.csv")))
    assert {r["source"] for r in rows} == set(truth)
    assert len(rows) == summary["num_patches"] == len(list((out / "masks").iterdir()))
    for r in rows:
        mask = _read(out / "masks" / f"{r['patch_id']}.tif")[0]
        assert set(np.unique(mask)) <= {0, 1, 2, 255}
        row, col = int(r["row"]), int(r["col"])
        want = truth[r["source"]][row:row + 32, col:col + 32]
        np.testing.assert_array_equal(mask, want)  # palette and RGB decode exactly
        with rasterio.open(out / "images" / f"{r['patch_id']}.tif") as ds:
            assert ds.crs is None and ds.count == 3 and ds.dtypes[0] == "uint8"
        assert r["source_image"].endswith(f"{r['source']}.jpg")
    # the ignore colour became 255, and mixed sizes were tiled with the same rules
    assert summary["ignored_pixels"] > 0
    assert sum(s["patches"] for s in meta["sources"]) == len(rows)
    sizes = {(s["width"], s["height"]) for s in meta["sources"]}
    assert len(sizes) > 3


def test_regions_reusing_file_names_pair_within_their_region(tmp_path, capsys):
    rng = np.random.default_rng(1)
    for region, cls in (("region_a", 0), ("region_b", 2)):
        for name in ("0001", "0002"):
            lab = np.full((32, 32), cls, np.uint8)
            write_image(tmp_path / region / "images" / f"{name}.jpg", image_for(rng, lab))
            write_rgb_mask(tmp_path / region / "masks" / f"{name}.png", lab)
    write_classes(tmp_path / "classes.json")
    rc = _patches(tmp_path, images=str(tmp_path / "region_*" / "images"),
                  masks=str(tmp_path / "region_*" / "masks"))
    assert rc == 0, capsys.readouterr().err
    rows = list(csv.DictReader(open(tmp_path / "patches" / "index.csv")))
    assert sorted(r["source"] for r in rows) == [
        "region_a/images/0001", "region_a/images/0002",
        "region_b/images/0001", "region_b/images/0002"]
    for r in rows:
        mask = _read(tmp_path / "patches" / "masks" / f"{r['patch_id']}.tif")[0]
        want = 0 if r["source"].startswith("region_a") else 2
        assert (mask == want).all(), r["source"]
        assert f"/{r['source'].split('/')[0]}/" in r["source_image"]


def test_pair_pattern_in_one_folder_and_ambiguous_stems(tmp_path):
    d = tmp_path / "dg"
    for stem in ("1", "2"):
        lab = np.zeros((8, 8), np.uint8)
        write_image(d / f"{stem}_sat.jpg", image_for(np.random.default_rng(0), lab))
        write_rgb_mask(d / f"{stem}_mask.png", lab)
    p = find_pairs(d, d, "{stem}_sat.jpg:{stem}_mask.png")
    assert [(x.image.name, x.mask.name, x.key) for x in p.pairs] == [
        ("1_sat.jpg", "1_mask.png", "1"), ("2_sat.jpg", "2_mask.png", "2")]
    # same stem in two image sub-folders but one mask: refuse rather than guess
    amb = tmp_path / "amb"
    for sub in ("a", "b"):
        write_image(amb / "images" / sub / "x.jpg", np.zeros((3, 8, 8), np.uint8))
    write_rgb_mask(amb / "masks" / "x.png", np.zeros((8, 8), np.uint8))
    from satseg_jax.errors import SatsegError

    with pytest.raises(SatsegError, match="ambiguous"):
        find_pairs(amb / "images", amb / "masks")


def test_undeclared_colour_is_named_with_its_pixel_count(colour_set, tmp_path, capsys):
    root, _ = colour_set
    bad = tmp_path / "bad"
    shutil.copytree(root, bad, ignore=shutil.ignore_patterns("p1", "patches"))
    with rasterio.open(bad / "masks" / "img_04.png") as ds:
        rgb = ds.read()
    rgb[:, :3, :5] = np.array([255, 0, 255], np.uint8)[:, None, None]  # 15 px magenta
    write_image(bad / "masks" / "img_04.png", rgb, "PNG")
    rc = _patches(bad)
    _fails(capsys, rc, bad / "patches", "img_04.png", "#ff00ff (15 px)", "classes.json")


def test_size_mismatch_names_both_files(colour_set, tmp_path, capsys):
    root, _ = colour_set
    bad = tmp_path / "bad"
    shutil.copytree(root, bad, ignore=shutil.ignore_patterns("p1", "patches"))
    write_rgb_mask(bad / "masks" / "img_02.png", np.zeros((40, 40), np.uint8))
    rc = _patches(bad)
    _fails(capsys, rc, bad / "patches", "img_02.jpg", "img_02.png", "same size")


def test_jpeg_mask_refused_unless_tolerance(tmp_path, capsys):
    rng = np.random.default_rng(2)
    lab = truth_labels(rng, 64, 64)
    lab[lab == 255] = 0
    write_image(tmp_path / "images" / "a.jpg", image_for(rng, lab))
    write_rgb_mask(tmp_path / "masks" / "a.jpg", lab, driver="JPEG")
    write_classes(tmp_path / "classes.json")
    rc = _patches(tmp_path)
    _fails(capsys, rc, tmp_path / "patches", "a.jpg", "lossy", "--colour-tolerance")
    # too tight: colours mixed at class borders stay an error, listed with their counts
    rc = _patches(tmp_path, "--colour-tolerance", "20")
    _fails(capsys, rc, tmp_path / "patches", "a.jpg", "within --colour-tolerance 20")
    assert _patches(tmp_path, "--colour-tolerance", "255") == 0  # always the nearest
    capsys.readouterr()
    masks = [_read(p)[0] for p in sorted((tmp_path / "patches" / "masks").iterdir())]
    agree = np.mean(np.concatenate([m.ravel() for m in masks]) ==
                    np.concatenate([lab[r:r + 32, c:c + 32].ravel()
                                    for r in (0, 32) for c in (0, 32)]))
    assert agree > 0.9  # chroma subsampling smears borders; nearest declared colour wins


def test_unpaired_image_fails_or_is_skipped(colour_set, tmp_path, capsys):
    root, _ = colour_set
    bad = tmp_path / "bad"
    shutil.copytree(root, bad, ignore=shutil.ignore_patterns("p1", "patches"))
    (bad / "masks" / "img_05.png").unlink()
    rc = _patches(bad)
    _fails(capsys, rc, bad / "patches", "img_05.jpg", "--skip-unpaired")
    assert _patches(bad, "--skip-unpaired") == 0
    out = capsys.readouterr().out
    assert "skipped image without mask:" in out and "img_05.jpg" in out
    meta = json.loads((bad / "patches" / "patches.json").read_text())
    assert meta["num_sources"] == 11 and len(meta["skipped_unpaired"]) == 1


def _georef_pair(root: Path, mask_transform) -> None:
    lab = np.ones((32, 32), np.uint8)
    img = image_for(np.random.default_rng(3), lab)
    t = from_origin(500000.0, 7500000.0, 10.0, 10.0)
    for path, data, transform in ((root / "images" / "a.tif", img, t),
                                  (root / "masks" / "a.tif", lab[None] * 7, mask_transform)):
        path.parent.mkdir(parents=True, exist_ok=True)
        with rasterio.open(path, "w", driver="GTiff", width=32, height=32,
                           count=data.shape[0], dtype="uint8", crs="EPSG:32723",
                           transform=transform) as dst:
            dst.write(data)
    (root / "classes.json").write_text(json.dumps(
        [{"id": 0, "name": "a", "value": 3}, {"id": 1, "name": "b", "value": 7}]))


def test_georeferenced_pair_grid_tolerance(tmp_path, capsys):
    ok = tmp_path / "ok"
    # the transforms of real datasets differ in the last digits: 14th significant digit
    _georef_pair(ok, from_origin(500000.0 + 5e-9, 7500000.0 - 7e-8, 10.0, 10.0))
    assert _patches(ok) == 0
    capsys.readouterr()
    meta = json.loads((ok / "patches" / "patches.json").read_text())
    assert meta["georeferenced"] and "32723" in meta["crs"]
    with rasterio.open(next((ok / "patches" / "masks").iterdir())) as ds:
        assert ds.crs.to_epsg() == 32723 and (ds.read(1) == 1).all()
    shifted = tmp_path / "shifted"
    _georef_pair(shifted, from_origin(500005.0, 7500000.0, 10.0, 10.0))  # half a pixel
    rc = _patches(shifted)
    _fails(capsys, rc, shifted / "patches", "a.tif", "transform")


def test_mask_edge_cases_are_never_decoded_by_guesswork(tmp_path, capsys):
    """Review findings: palette indices outside the colour table, transparent RGBA
    pixels, a tolerance on a lossless mask, and pairing across sub-folder trees."""
    lab = np.zeros((32, 32), np.uint8)
    img = image_for(np.random.default_rng(4), lab)
    # (a) a palette defining indices 0..3 only; 20 px use index 10
    d = tmp_path / "pal"
    write_image(d / "images" / "a.jpg", img)
    idx = np.zeros((32, 32), np.uint8)
    idx[:2, :10] = 10
    write_raw_palette_png(d / "masks" / "a.png", idx,
                          [(255, 0, 0), (0, 255, 0), (0, 0, 255), (0, 0, 0)])
    write_classes(d / "classes.json")
    rc = _patches(d)
    _fails(capsys, rc, d / "patches", "palette index 10 (not in the colour table) (20 px)")
    # (b) RGBA: fully transparent pixels are unlabelled, whatever their RGB
    d = tmp_path / "rgba"
    write_image(d / "images" / "a.jpg", img)
    rgba = np.zeros((4, 32, 32), np.uint8)
    rgba[0], rgba[3] = 255, 255  # opaque red = road
    rgba[:, :4, :] = 0  # transparent black rows
    rgba[1, 4:6, :] = 200  # transparent? no: opaque (200 green + red) -> undeclared
    rgba[3, 4:6, :] = 0  # ... made transparent, so never decoded
    write_image(d / "masks" / "a.png", rgba, "PNG")
    write_classes(d / "classes.json")
    assert _patches(d) == 0
    capsys.readouterr()
    mask = _read(next((d / "patches" / "masks").iterdir()))[0]
    assert (mask[:6] == 255).all() and (mask[6:] == 0).all()
    # (c) --colour-tolerance does not snap colours of a lossless (PNG) mask
    d = tmp_path / "tol"
    write_image(d / "images" / "a.jpg", img)
    rgb = np.zeros((3, 32, 32), np.uint8)
    rgb[0] = 255
    rgb[0, 0, 0] = 250
    write_image(d / "masks" / "a.png", rgb, "PNG")
    write_classes(d / "classes.json")
    rc = _patches(d, "--colour-tolerance", "10")
    _fails(capsys, rc, d / "patches", "#fa0000 (1 px)")
    # (d) same stems in two different sub-folder trees never pair by name alone
    d = tmp_path / "cross"
    for f in ("images/a/1.jpg", "images/b/2.jpg", "masks/b/1.png", "masks/a/2.png"):
        (d / f).parent.mkdir(parents=True, exist_ok=True)
        (d / f).touch()
    p = find_pairs(d / "images", d / "masks")
    assert not p.pairs and len(p.unpaired_images) == 2 and len(p.unpaired_masks) == 2
