"""satseg build: tfds dataset from patches, splits, train-only statistics, errors."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import rasterio

from satseg_jax.cli import main
from satseg_jax.datasets.build import build_dataset, builder_for, load_dataset_info
from satseg_jax.datasets.splits import assign_splits, block_keys
from satseg_jax.errors import SatsegError
from satseg_jax.raster.compose import compose_bands
from satseg_jax.raster.patches import make_patches, valid_pixels
from satseg_jax.raster.sample import write_sample_scene


@pytest.fixture(scope="module")
def patches(tmp_path_factory):
    root = tmp_path_factory.mktemp("b")
    s = write_sample_scene(root / "sample", size=192, seed=2)
    scene = compose_bands([s[b] for b in ("blue", "green", "red", "nir")], root / "scene.tif",
                          progress=False)
    make_patches(scene, root / "patches", s["classes"], size=32, stride=32,
                 labels=s["labels"], progress=False)
    return root / "patches"


def test_build_loads_with_tfds_and_matches_the_patches(patches, tmp_path, capsys):
    import tensorflow_datasets as tfds

    out = tmp_path / "data"
    assert main(["build", "--patches", str(patches), "--out", str(out), "--split",
                 "0.6,0.2,0.2", "--split-by", "block", "--block-size", "2"]) == 0
    assert "examples: train" in capsys.readouterr().out
    info = load_dataset_info(out)
    rows = list(csv.DictReader(open(patches / "index.csv")))
    assert sum(info["num_examples"].values()) == len(rows)
    builder = tfds.builder_from_directory(str(out / info["builder_dir"]))
    total = 0
    train_pixels = []
    for split, n in info["num_examples"].items():
        ds = builder.as_dataset(split=split)
        examples = list(tfds.as_numpy(ds))
        assert len(examples) == n == builder.info.splits[split].num_examples
        total += n
        for ex in examples[:3]:
            pid = ex["patch_id"].decode()
            assert info["assignment"][pid] == split
            with rasterio.open(patches / "images" / f"{pid}.tif") as im, \
                    rasterio.open(patches / "masks" / f"{pid}.tif") as m:
                np.testing.assert_array_equal(ex["image"], np.moveaxis(im.read(), 0, -1))
                np.testing.assert_array_equal(ex["mask"], m.read(1))
                assert ex["image"].dtype == np.uint16
                np.testing.assert_array_equal(ex["transform"], list(im.transform)[:6])
        if split == "train":
            for ex in examples:
                img = np.moveaxis(ex["image"], -1, 0)
                v = valid_pixels(img, 0)
                train_pixels.append(img[:, v].astype(np.float64))
    assert total == len(rows)
    # Band statistics: train split only, valid pixels only.
    x = np.concatenate(train_pixels, axis=1)
    np.testing.assert_allclose(info["mean"], x.mean(axis=1), rtol=1e-9)
    np.testing.assert_allclose(info["std"], x.std(axis=1), rtol=1e-9)
    # The same dataset also loads with tfds.load by name.
    import satseg_jax.datasets.patches  # noqa: F401  (registers the builder)

    ds = tfds.load("satseg_patches", data_dir=str(out), split="test", download=False)
    assert sum(1 for _ in ds) == info["num_examples"]["test"]
    # Class pixel counts add up to the index.
    names = info["class_names"]
    for i, name in enumerate(names):
        assert sum(info["class_pixel_counts"][s][i] for s in info["num_examples"]) == \
            sum(int(r[f"count_{name}"]) for r in rows)
    assert builder_for(out).info.name == "satseg_patches"


def test_block_split_keeps_blocks_together_and_random_split_fractions():
    ids = [f"r{r:06d}_c{c:06d}" for r in range(0, 640, 32) for c in range(0, 640, 32)]
    rows = [int(i[1:7]) for i in ids]
    cols = [int(i[9:]) for i in ids]
    a, info = assign_splits(ids, rows, cols, (0.7, 0.15, 0.15), seed=0, method="block",
                            stride=32, block_size=4)
    keys = block_keys(rows, cols, 32, 4)
    split_of_block: dict = {}
    for pid, k in zip(ids, keys):
        assert split_of_block.setdefault(k, a[pid]) == a[pid]
    counts = {s: list(a.values()).count(s) for s in ("train", "validation", "test")}
    assert all(counts.values()) and info["num_blocks"] == 25
    r, _ = assign_splits(ids, rows, cols, (0.7, 0.15, 0.15), seed=0, method="random")
    rc = {s: list(r.values()).count(s) for s in ("train", "validation", "test")}
    assert rc == {"train": 280, "validation": 60, "test": 60}
    assert assign_splits(ids, rows, cols, (0.7, 0.15, 0.15), seed=0, method="random")[0] == r


def test_statistics_use_the_train_split_only(patches, tmp_path):
    info = build_dataset(patches, tmp_path / "d", split=(0.5, 0.25, 0.25), seed=1,
                         split_by="random", progress=False)
    # Statistics over all patches differ: the held-out patches are not in the mean.
    allpix = []
    for f in sorted((patches / "images").iterdir()):
        with rasterio.open(f) as ds:
            img = ds.read()
        allpix.append(img[:, valid_pixels(img, 0)].astype(np.float64))
    all_mean = np.concatenate(allpix, axis=1).mean(axis=1)
    assert not np.allclose(info["mean"], all_mean, rtol=1e-6)


def test_build_errors_leave_nothing(tmp_path, patches, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "data"
    assert main(["build", "--patches", str(empty), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "contains no patches" in err and str(empty) in err
    assert not out.exists()
    with pytest.raises(SatsegError, match="sum to 1"):
        build_dataset(patches, out, split=(0.5, 0.5, 0.5), progress=False)
    assert not out.exists()
    broken = tmp_path / "broken"
    import shutil

    shutil.copytree(patches, broken)
    victim = sorted((broken / "images").iterdir())[0]
    victim.unlink()
    with pytest.raises(SatsegError, match="missing"):
        build_dataset(broken, out, progress=False)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".data")]
    # A dataset dir from an incompatible version is refused.
    build_dataset(patches, out, progress=False)
    info = json.loads((out / "satseg_dataset.json").read_text())
    info["format_version"] = 99
    (out / "satseg_dataset.json").write_text(json.dumps(info))
    with pytest.raises(SatsegError, match="incompatible version"):
        load_dataset_info(out)
