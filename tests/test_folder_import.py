"""Importing real labelled folder sets as they come (issue 30, items 1 and 7): region
folder globs with ``--pair``, masks a few pixels larger than their image, and the fast
folder import (each file decoded once, table lookups, files on threads) writing the very
bytes the window-by-window reads wrote."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import rasterio

from satseg_jax.cli import main
from satseg_jax.raster import folder_patches, masks
from satseg_jax.raster.folder_patches import make_folder_patches
from satseg_jax.raster.pairing import find_pairs
from tests.conftest import SHARED_DATA
from tests.helpers.labelled_folders import (
    image_for,
    truth_labels,
    write_classes,
    write_image,
    write_palette_mask,
    write_rgb_mask,
)


def _digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_fast_import_writes_the_bytes_of_window_by_window_reads(tmp_path, monkeypatch):
    """JPEG images (decoded only from the top) with RGB and palette masks, overlapping
    padded windows: the row buffer, the colour table and 2 threads give the files that
    direct window reads, per-window np.unique decoding and one thread give."""
    rng = np.random.default_rng(7)
    for i, (h, w) in enumerate([(90, 70), (64, 100), (50, 50)]):
        lab = truth_labels(rng, h, w)
        write_image(tmp_path / "images" / f"t{i}.jpg", image_for(rng, lab))
        (write_rgb_mask if i % 2 else write_palette_mask)(tmp_path / "masks" / f"t{i}.png",
                                                          lab)
    write_classes(tmp_path / "classes.json")
    args = dict(images=tmp_path / "images", masks=tmp_path / "masks",
                classes_path=tmp_path / "classes.json", size=32, stride=24, edge="pad",
                min_valid=0.3, progress=False)
    fast = make_folder_patches(out_dir=tmp_path / "fast", threads=2, **args)
    with monkeypatch.context() as m:  # the reads and decoding of before the speed-up
        m.setattr(folder_patches, "RowCachedDataset", lambda ds, shape=None: ds)
        m.setattr(masks, "colour_tables", lambda classes: None)
        slow = make_folder_patches(out_dir=tmp_path / "slow", threads=1, **args)
    assert fast["num_patches"] == slow["num_patches"] > 12
    a, b = _digests(tmp_path / "fast"), _digests(tmp_path / "slow")
    assert len(a) == 2 * fast["num_patches"] + 3 and a == b


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")  # pairing looks at names only


def test_region_globs_pair_by_the_text_each_wildcard_matched(tmp_path):
    """``kampala/*chips`` with ``kampala/*binarymasks``: ``chips`` pairs with
    ``binarymasks`` ('' matched) and ``val-chips`` with ``val-binarymasks`` ('val-')."""
    for folder, stem in (("chips", "a"), ("val-chips", "b")):
        _touch(tmp_path / folder / f"OAM-{stem}.tif")
        mask_folder = folder.replace("chips", "binarymasks")
        _touch(tmp_path / mask_folder / f"OAM-{stem}.mask.tif")
    pairing = find_pairs(str(tmp_path / "*chips"), str(tmp_path / "*binarymasks"),
                         "{stem}.tif:{stem}.mask.tif")
    assert [(p.key, p.mask.parent.name) for p in pairing.pairs] == [
        ("chips/OAM-a", "binarymasks"), ("val-chips/OAM-b", "val-binarymasks")]
    assert not pairing.unpaired_images and not pairing.unpaired_masks
    # '?' and '[...]' capture their text too; a region without its partner is unpaired
    _touch(tmp_path / "xtra-chips" / "OAM-c.tif")
    pairing = find_pairs(str(tmp_path / "*chips"), str(tmp_path / "*binarymasks"),
                         "{stem}.tif:{stem}.mask.tif")
    assert [p.name for p in pairing.unpaired_images] == ["OAM-c.tif"]
    pairing = find_pairs(str(tmp_path / "[v]al-chips"), str(tmp_path / "[v]al-binarymasks"),
                         "{stem}.tif:{stem}.mask.tif")
    assert [p.key for p in pairing.pairs] == ["OAM-b"]


def test_larger_mask_refused_then_cropped_with_crop_masks(tmp_path, capsys):
    rng = np.random.default_rng(3)
    lab = truth_labels(rng, 40, 43)
    write_image(tmp_path / "images" / "a.png", image_for(rng, lab[:, :40]), "PNG")
    write_rgb_mask(tmp_path / "masks" / "a.png", lab)  # 3 px wider than its image
    write_classes(tmp_path / "classes.json")
    cmd = ["patches", "--images", str(tmp_path / "images"), "--masks",
           str(tmp_path / "masks"), "--classes", str(tmp_path / "classes.json"), "--size",
           "40", "--out", str(tmp_path / "out")]
    assert main(cmd) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "masks/a.png is 43x40 px" in err and "--crop-masks" in err
    assert not (tmp_path / "out").exists()
    assert main([*cmd, "--crop-masks"]) == 0
    out = capsys.readouterr().out
    assert "cropped mask" in out and "a.png from 43x40 to 40x40 px" in out
    (mask_file,) = (tmp_path / "out" / "masks").iterdir()
    with rasterio.open(mask_file) as m:
        got = m.read(1)
    assert np.array_equal(got, lab[:, :40])


@pytest.mark.parametrize("images, masks_, pair, n", [
    ("oam_buildings_fair/kampala/*chips", "oam_buildings_fair/kampala/*binarymasks",
     "{stem}.tif:{stem}.mask.tif", 147),
    ("amazon_forest_s2_rgb/dataset/*/images", "amazon_forest_s2_rgb/dataset/*/masks", None, 45),
    ("oam_buildings_fair/philippines/data", "oam_buildings_fair/philippines/labels", None, 84),
])
def test_real_sets_pair_as_they_come(images, masks_, pair, n):
    """Each shared set pairs completely with one --images/--masks (and --pair)."""
    if not (SHARED_DATA / images.split("/")[0]).is_dir():
        pytest.skip(f"real sample data not found at {SHARED_DATA}")
    pairing = find_pairs(str(SHARED_DATA / images), str(SHARED_DATA / masks_), pair)
    assert len(pairing.pairs) == n
    assert not pairing.unpaired_images and not pairing.unpaired_masks


def test_predict_accepts_the_images_of_a_set_named_by_colour(tmp_path):
    """The Amazon tiles carry per-tile band descriptions (tile1_Amazon_1052...), so the
    folder import names their bands by colour (red, green, blue); predict and evaluate
    --images must accept every image of the set under that naming (they refused them
    all), and still refuse bands in another order."""
    from dataclasses import replace

    from satseg_jax.errors import SatsegError
    from satseg_jax.raster.io import open_raster
    from satseg_jax.runs import RunCard
    from satseg_jax.tiled_scene import check_scene

    d = SHARED_DATA / "amazon_forest_s2_rgb" / "dataset"
    if not d.is_dir():
        pytest.skip(f"real sample data not found at {d} (set SATSEG_SHARED_DATA to its parent)")
    classes = tmp_path / "classes.json"
    classes.write_text('[{"id": 0, "name": "forest", "value": 1}, '
                       '{"id": 1, "name": "non-forest", "value": 2}]')
    make_folder_patches(d / "training" / "images", d / "training" / "masks", tmp_path / "p",
                        classes, mask_mode="index", crop_masks=True, progress=False)
    import json

    bands = tuple(json.loads((tmp_path / "p" / "patches.json").read_text())["bands"])
    assert bands == ("red", "green", "blue")
    card = RunCard(task="segmentation", model="unet", bands=bands, image_dtype="uint8",
                   nodata=None, mean=(0.0,) * 3, std=(1.0,) * 3, patch_size=256,
                   input_size=256, classes=(), pixel_size=None)
    images = sorted((d / "validation" / "images").glob("*.tiff"))
    assert len(images) == 15
    for image in images:
        with open_raster(image) as src:
            assert all(src.descriptions) and src.descriptions[0] != "red"
            check_scene(src, card, image)
            with pytest.raises(SatsegError, match="differ from the run's"):
                check_scene(src, replace(card, bands=("blue", "green", "red")), image)
