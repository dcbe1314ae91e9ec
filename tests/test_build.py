"""satseg build: tfds dataset from a patches folder, splits, train-only statistics, errors.

Patches folders are written here with rasterio (tests/helpers/patch_folders.py), not by
satseg_jax.raster, so these tests pin the folder contract rather than one producer.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import rasterio

from satseg_jax.cli import main
from satseg_jax.datasets.build import (
    INFO_FILE,
    build_dataset,
    builder_for,
    format_summary,
    load_dataset_info,
)
from satseg_jax.datasets.splits import (
    SPLITS,
    assign_splits,
    block_keys,
    check_fractions,
    default_block_size,
)
from satseg_jax.datasets.statistics import BandStats, inverse_frequency_weights
from satseg_jax.errors import SatsegError
from satseg_jax.raster.io import valid_pixels
from tests.helpers.patch_folders import DEFAULT_CLASSES, write_patches_folder

FOUR_CLASSES = [*DEFAULT_CLASSES, {"id": 3, "name": "cloud", "colour": "#ffffff"},
                {"name": "unlabelled", "value": 9, "ignore": True}]


# Builds and loads must never reach the network (tfds GCS lookups included).
pytestmark = pytest.mark.usefixtures("no_network")


@pytest.fixture(scope="module")
def patches(tmp_path_factory):
    """36 uint16 patches of 16 px on a 6x6 grid; class 'cloud' never occurs."""
    return write_patches_folder(tmp_path_factory.mktemp("p") / "patches", size=16,
                                grid=(6, 6), classes=FOUR_CLASSES, mask_classes=3, seed=1)


@pytest.fixture(scope="module")
def built(patches, tmp_path_factory):
    out = tmp_path_factory.mktemp("d") / "data"
    info = build_dataset(patches, out, split=(0.6, 0.2, 0.2), seed=3, split_by="block",
                         block_size=2, progress=False)
    return out, info


def _index(patches) -> list[dict]:
    with open(patches / "index.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _read_tif(path):
    with rasterio.open(path) as ds:
        return ds.read(), ds.transform, ds.crs


def _examples(out, split):
    import tensorflow_datasets as tfds

    return list(tfds.as_numpy(builder_for(out).as_dataset(split=split, shuffle_files=False)))


def _train_pixels(patches, assignment, nodata=0, splits=("train",)) -> np.ndarray:
    """(N, C) float64 valid pixels of the patches of ``splits``, from the GeoTIFFs."""
    pix = []
    for pid, s in sorted(assignment.items()):
        if s in splits:
            img = np.moveaxis(_read_tif(patches / "images" / f"{pid}.tif")[0], 0, -1)
            pix.append(img[valid_pixels(img, nodata, channels_last=True)].astype(np.float64))
    return np.concatenate(pix)


# ----------------------------------------------------------------------------- the dataset


def test_built_dataset_loads_with_builder_from_directory(built, patches):
    import tensorflow_datasets as tfds

    out, info = built
    assert load_dataset_info(out) == info
    rows = _index(patches)
    assert sorted(info["assignment"]) == sorted(r["patch_id"] for r in rows)
    builder = tfds.builder_from_directory(str(out / info["builder_dir"]))
    assert builder.info.name == "satseg_patches" and str(builder.info.version) == "1.0.0"
    feats = builder.info.features
    assert feats["image"].shape == (16, 16, 4) and feats["image"].np_dtype == np.uint16
    assert feats["mask"].shape == (16, 16) and feats["mask"].np_dtype == np.uint8
    assert feats["transform"].np_dtype == np.float64
    total = 0
    for split in SPLITS:
        expected = sum(1 for s in info["assignment"].values() if s == split)
        assert expected > 0
        assert info["num_examples"][split] == expected
        assert builder.info.splits[split].num_examples == expected
        assert sum(1 for _ in builder.as_dataset(split=split)) == expected
        total += expected
    assert total == len(rows)
    assert {f.name for f in out.iterdir()} == {INFO_FILE, "satseg_patches"}
    for key in ("format_version", "tfds_name", "tfds_version", "builder_dir", "bands",
                "num_bands", "image_dtype", "patch_size", "nodata", "crs", "classes",
                "class_names", "num_classes", "ignore_label", "mean", "std", "stats_split",
                "class_pixel_counts", "ignored_pixel_counts", "num_examples", "class_weights",
                "split", "assignment", "source_patches"):
        assert key in info, key
    assert info["split"] == {"method": "block", "fractions": [0.6, 0.2, 0.2], "seed": 3,
                             "block_size": 2, "num_blocks": 9, "stride": 16}
    assert info["bands"] == ["blue", "green", "red", "nir"] and info["image_dtype"] == "uint16"
    assert info["class_names"] == ["water", "forest", "urban", "cloud"]


def test_examples_equal_the_patch_geotiffs_bit_for_bit(built, patches):
    out, info = built
    seen = set()
    for split in SPLITS:
        for ex in _examples(out, split):
            pid = ex["patch_id"].decode()
            seen.add(pid)
            assert info["assignment"][pid] == split
            image, transform, crs = _read_tif(patches / "images" / f"{pid}.tif")
            mask = _read_tif(patches / "masks" / f"{pid}.tif")[0][0]
            assert ex["image"].dtype == np.uint16 and ex["mask"].dtype == np.uint8
            np.testing.assert_array_equal(ex["image"], np.moveaxis(image, 0, -1))
            np.testing.assert_array_equal(ex["mask"], mask)
            np.testing.assert_array_equal(ex["transform"], np.array(transform[:6]))
            assert ex["crs"].decode() == crs.to_wkt()
            assert (ex["row"], ex["col"]) == (int(pid[1:7]), int(pid[9:]))
    assert seen == set(info["assignment"])


def test_float_images_keep_their_bits_and_stats_skip_nan(tmp_path):
    """float32 with NaN nodata, an origin float32 cannot hold: both come back exactly."""
    p = write_patches_folder(tmp_path / "p", size=16, grid=(3, 4), dtype="float32",
                             nodata=None, origin=(612_345.123456789, 7_654_321.987654321),
                             pixel_size=0.3, seed=4)
    info = build_dataset(p, tmp_path / "d", split=(0.5, 0.25, 0.25), split_by="random",
                         seed=1, progress=False)
    assert info["image_dtype"] == "float32" and info["nodata"] is None
    n_nan = 0
    for split in SPLITS:
        for ex in _examples(tmp_path / "d", split):
            pid = ex["patch_id"].decode()
            image, transform, _ = _read_tif(p / "images" / f"{pid}.tif")
            want = np.moveaxis(image, 0, -1)
            np.testing.assert_array_equal(ex["image"].view(np.uint32), want.view(np.uint32))
            assert ex["transform"].tobytes() == np.array(transform[:6], np.float64).tobytes()
            n_nan += int(np.isnan(ex["image"]).any())
    assert n_nan > 0  # the case is really exercised
    x = _train_pixels(p, info["assignment"], nodata=None)
    assert np.isfinite(x).all()
    np.testing.assert_allclose(info["mean"], x.mean(axis=0), rtol=1e-10)
    np.testing.assert_allclose(info["std"], x.std(axis=0), rtol=1e-10)


def test_tfds_load_by_name_works_with_and_without_the_registered_builder(built):
    import tensorflow_datasets as tfds

    import satseg_jax.datasets.segmentation_builder as patches_mod  # registers satseg_patches

    out, info = built
    assert "satseg_patches" in tfds.list_builders()
    ds = tfds.load("satseg_patches", data_dir=str(out), split="test")  # download=True: no-op
    assert sum(1 for _ in ds) == info["num_examples"]["test"]
    ds, ds_info = tfds.load("satseg_patches", data_dir=str(out), split="train",
                            download=False, with_info=True, as_supervised=True)
    image, mask = next(iter(tfds.as_numpy(ds)))
    assert image.shape == (16, 16, 4) and mask.shape == (16, 16)
    assert ds_info.splits["train"].num_examples == info["num_examples"]["train"]
    # Reading from files only (what tfds does when the code is not importable).
    files_builder = tfds.builder("satseg_patches:1.0.0", data_dir=str(out))
    assert files_builder.info.splits["validation"].num_examples == \
        info["num_examples"]["validation"]
    # The class needs either a layout (to build) or a built dataset (to read).
    with pytest.raises(SatsegError, match="no built dataset"):
        patches_mod.SatsegPatches(data_dir=str(out.parent / "nothing-here"))


def test_statistics_come_from_train_valid_pixels_only(built, patches):
    out, info = built
    assert info["stats_split"] == "train"
    x = _train_pixels(patches, info["assignment"])
    assert info["stats_valid_pixels"] == x.shape[0]
    np.testing.assert_allclose(info["mean"], x.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(info["std"], x.std(axis=0), rtol=1e-10)
    # Pixel levels grow with row/col, so held-out blocks shift the all-split statistics.
    everything = _train_pixels(patches, info["assignment"], splits=SPLITS)
    assert everything.shape[0] > x.shape[0]
    assert not np.allclose(info["mean"], everything.mean(axis=0), rtol=1e-3)
    # Nodata pixels (all bands 0) are excluded: including them would pull the mean down.
    first = np.moveaxis(_read_tif(patches / "images" / "r000000_c000000.tif")[0], 0, -1)
    assert (~valid_pixels(first, 0, channels_last=True)).sum() == 16


def test_band_stats_streaming_matches_numpy():
    rng = np.random.default_rng(0)
    stats = BandStats(3)
    chunks = [rng.normal(1e4, 3.0, size=(rng.integers(1, 200), 3)) for _ in range(30)]
    for c in chunks:
        stats.update(c)
    allx = np.concatenate(chunks)
    np.testing.assert_allclose(stats.mean, allx.mean(axis=0), rtol=1e-13)
    np.testing.assert_allclose(stats.std, allx.std(axis=0), rtol=1e-9)


def test_class_counts_per_split_and_weights(built, patches):
    out, info = built
    counts = {s: np.zeros(4, np.int64) for s in SPLITS}
    ignored = dict.fromkeys(SPLITS, 0)
    for pid, s in info["assignment"].items():
        m = _read_tif(patches / "masks" / f"{pid}.tif")[0][0]
        counts[s] += np.bincount(m[m != 255], minlength=4)
        ignored[s] += int((m == 255).sum())
    assert info["class_pixel_counts"] == {s: counts[s].tolist() for s in SPLITS}
    assert info["ignored_pixel_counts"] == ignored
    rows = _index(patches)
    for i, name in enumerate(info["class_names"]):
        assert sum(info["class_pixel_counts"][s][i] for s in SPLITS) == \
            sum(int(r[f"count_{name}"]) for r in rows)
    assert sum(ignored.values()) == sum(int(r["count_ignore"]) for r in rows)
    # Inverse frequency over train, mean 1 over present classes, 0 for absent 'cloud'.
    w = np.array(info["class_weights"])
    train = counts["train"].astype(float)
    assert w[3] == 0.0 and train[3] == 0
    np.testing.assert_allclose(w[:3], (1 / train[:3]) / (1 / train[:3]).mean())
    assert w[:3].mean() == pytest.approx(1.0)
    np.testing.assert_array_equal(inverse_frequency_weights([0, 0]), [0.0, 0.0])


def test_rebuild_is_deterministic(patches, built, tmp_path):
    out, info = built
    again = build_dataset(patches, tmp_path / "again", split=(0.6, 0.2, 0.2), seed=3,
                          split_by="block", block_size=2, progress=False)
    assert again["assignment"] == info["assignment"]
    for f in sorted((out / info["builder_dir"]).glob("*.tfrecord*")):
        assert f.read_bytes() == (tmp_path / "again" / info["builder_dir"] / f.name).read_bytes()
    other = build_dataset(patches, tmp_path / "other", split=(0.6, 0.2, 0.2), seed=4,
                          split_by="block", block_size=2, progress=False)
    assert other["assignment"] != info["assignment"]


# ----------------------------------------------------------------------------- splits


def _grid(n: int = 20, stride: int = 32, skip=lambda r, c: False) -> list[dict]:
    return [{"patch_id": f"r{r:06d}_c{c:06d}", "row": str(r), "col": str(c)}
            for r in range(0, n * stride, stride) for c in range(0, n * stride, stride)
            if not skip(r, c)]


def test_block_split_never_shares_a_block_between_splits():
    # Irregular: some positions skipped (as min_valid does), so blocks differ in size.
    rows = _grid(skip=lambda r, c: (r * 7 + c * 3) % 11 == 0)
    for seed in range(5):
        a, info = assign_splits(rows, (0.7, 0.15, 0.15), seed=seed, method="block",
                                block_size=4, stride=32)
        assert info["num_blocks"] == 25 and info["block_size"] == 4
        keys = block_keys([int(r["row"]) for r in rows], [int(r["col"]) for r in rows], 32, 4)
        split_of_block: dict = {}
        for r, k in zip(rows, keys):
            assert split_of_block.setdefault(k, a[r["patch_id"]]) == a[r["patch_id"]]
        n = len(rows)
        counts = {s: list(a.values()).count(s) for s in SPLITS}
        for s, f in zip(SPLITS, (0.7, 0.15, 0.15)):
            assert counts[s] > 0
            assert abs(counts[s] - f * n) <= 16  # within one block of the target


def test_random_split_fractions_determinism_and_order_independence():
    rows = _grid()
    a, info = assign_splits(rows, (0.7, 0.15, 0.15), seed=0, method="random")
    assert {s: list(a.values()).count(s) for s in SPLITS} == \
        {"train": 280, "validation": 60, "test": 60}
    assert info["method"] == "random" and info["block_size"] is None
    assert assign_splits(list(reversed(rows)), (0.7, 0.15, 0.15), seed=0, method="random")[0] == a
    assert assign_splits(rows, (0.7, 0.15, 0.15), seed=1, method="random")[0] != a
    b1 = assign_splits(rows, (0.7, 0.15, 0.15), seed=2, method="block", stride=32)[0]
    assert assign_splits(rows[::-1], (0.7, 0.15, 0.15), seed=2, method="block")[0] == b1


def test_split_edge_cases():
    rows = _grid(n=20)
    # Default block size: about 20 blocks (stride inferred from the offsets).
    _, info = assign_splits(rows, (0.7, 0.15, 0.15), method="block")
    assert info["stride"] == 32 and 16 <= info["num_blocks"] <= 25
    assert default_block_size([0, 608], [0, 608], 32) == 4
    # Three big blocks for three splits: each split still gets one.
    three = _grid(n=6, skip=lambda r, c: c >= 64)  # 6 rows x 2 cols
    a, info = assign_splits(three, (0.8, 0.1, 0.1), method="block", block_size=2, stride=32)
    assert info["num_blocks"] == 3 and set(a.values()) == set(SPLITS)
    # A zero fraction gets nothing.
    a, _ = assign_splits(rows, (0.8, 0.2, 0.0), method="block", block_size=4)
    assert "test" not in set(a.values())
    with pytest.raises(SatsegError, match="spatial block"):
        assign_splits(rows, (0.7, 0.15, 0.15), method="block", block_size=20)
    with pytest.raises(SatsegError, match="only 2 patch"):
        assign_splits(rows[:2], (0.7, 0.15, 0.15), method="random")
    with pytest.raises(SatsegError, match="--split-by"):
        assign_splits(rows, (0.7, 0.15, 0.15), method="diagonal")
    for bad in ((0.5, 0.5, 0.5), (-0.1, 0.6, 0.5), (0.7, 0.3), (0.0, 0.0, 0.0)):
        with pytest.raises(SatsegError, match="--split"):
            check_fractions(bad)
    assert check_fractions((0, 0, 1)) == (0.0, 0.0, 1.0)  # a test-only dataset
    a, _ = assign_splits(rows, (0.0, 0.0, 1.0))
    assert set(a.values()) == {"test"} and len(a) == len(rows)


# ----------------------------------------------------------------------------- errors


def _leftovers(parent):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(".data"))


def _broken(patches, tmp_path, name):
    dst = tmp_path / name
    shutil.copytree(patches, dst)
    return dst


def test_errors_name_the_problem_and_leave_no_out_dir(patches, tmp_path):
    out = tmp_path / "data"
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [(empty, "contains no patches.*run satseg patches first"),
             (tmp_path / "absent", "not found; run satseg patches first")]
    for name in ("index.csv", "patches.json", "classes.json"):
        d = _broken(patches, tmp_path, f"no-{name}")
        (d / name).unlink()
        cases.append((d, f"{name} not found"))
    d = _broken(patches, tmp_path, "no-image")
    (d / "images" / "r000016_c000032.tif").unlink()
    cases.append((d, r"missing \(images/r000016_c000032.tif\)"))
    d = _broken(patches, tmp_path, "no-mask")
    (d / "masks" / "r000000_c000000.tif").unlink()
    cases.append((d, r"masks/r000000_c000000.tif"))
    d = _broken(patches, tmp_path, "old-version")
    meta = json.loads((d / "patches.json").read_text())
    (d / "patches.json").write_text(json.dumps({**meta, "format_version": 7}))
    cases.append((d, "format_version 7 is not supported"))
    d = _broken(patches, tmp_path, "no-rows")
    (d / "index.csv").write_text((patches / "index.csv").read_text().splitlines()[0] + "\n")
    cases.append((d, "contains no patches"))
    # Found only while writing records: the temporary output must go too.
    d = _broken(patches, tmp_path, "corrupt")
    (d / "images" / "r000048_c000048.tif").write_bytes(b"II*\x00 not a tiff")
    cases.append((d, "r000048_c000048.tif: cannot be read"))
    d = _broken(patches, tmp_path, "bad-class")
    with rasterio.open(d / "masks" / "r000080_c000080.tif", "r+") as ds:
        m = ds.read(1)
        m[0, 0] = 7
        ds.write(m, 1)
    cases.append((d, r"r000080_c000080.tif: holds class id\(s\) \[7\]"))
    d = _broken(patches, tmp_path, "wrong-bands")
    meta = json.loads((d / "patches.json").read_text())
    (d / "patches.json").write_text(json.dumps({**meta, "bands": ["a", "b", "c"]}))
    cases.append((d, "patches.json says 3 band"))
    for folder, pattern in cases:
        with pytest.raises(SatsegError, match=pattern):
            build_dataset(folder, out, progress=False)
        assert not out.exists(), folder
        assert _leftovers(tmp_path) == [], folder
    with pytest.raises(SatsegError, match="sum to 1"):
        build_dataset(patches, out, split=(0.5, 0.5, 0.5), progress=False)
    with pytest.raises(SatsegError,
                       match="is or contains patches_dir .*choose an out_dir folder outside it"):
        build_dataset(patches, patches.parent, overwrite=True, progress=False)
    assert not out.exists()


def test_existing_out_dir_needs_overwrite(patches, tmp_path):
    out = tmp_path / "data"
    build_dataset(patches, out, split_by="random", progress=False)
    with pytest.raises(SatsegError, match="--overwrite"):
        build_dataset(patches, out, progress=False)
    info = build_dataset(patches, out, split=(0.8, 0.2, 0.0), overwrite=True, progress=False)
    assert info["num_examples"]["test"] == 0 and load_dataset_info(out) == info
    assert "test" not in builder_for(out).info.splits


def test_incompatible_dataset_dir_is_refused(built, tmp_path):
    out, _ = built
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    info = json.loads((copy / INFO_FILE).read_text())
    (copy / INFO_FILE).write_text(json.dumps({**info, "format_version": 99}))
    msg = "dataset dir from an incompatible version: rebuild with satseg build"
    with pytest.raises(SatsegError, match=msg):
        load_dataset_info(copy)
    with pytest.raises(SatsegError, match="not found"):
        load_dataset_info(tmp_path / "nothing")


# ----------------------------------------------------------------------------- CLI, imports


def test_cli_build_prints_the_summary(patches, tmp_path, capsys):
    out = tmp_path / "data"
    assert main(["build", "--patches", str(patches), "--out", str(out), "--split",
                 "0.6,0.2,0.2", "--split-by", "block", "--block-size", "3", "--seed", "1"]) == 0
    text = capsys.readouterr().out
    info = load_dataset_info(out)
    assert text.strip() == format_summary(info)
    assert "examples: train" in text and "nir" in text and "cloud" in text
    assert "blocks of 3x3 patches (4)" in text
    assert "Downloading and preparing" not in text  # tfds's own chatter is kept out


def test_cli_build_on_an_empty_folder_exits_2(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "data"
    assert main(["build", "--patches", str(empty), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "contains no patches" in err[0] and str(empty) in err[0]
    assert not out.exists()


def test_importing_the_package_does_not_import_tensorflow():
    code = ("import sys, satseg_jax.datasets, satseg_jax.datasets.build, "
            "satseg_jax.datasets.splits, satseg_jax.datasets.statistics; "
            "assert 'tensorflow' not in sys.modules, 'tensorflow imported'; "
            "assert callable(satseg_jax.datasets.build_dataset)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_tensorflow_import_leaves_keras_out_and_the_environment_as_it_was():
    """datasets.tfenv.import_tf: TensorFlow's eager Keras import (~4 s per process that
    reads a dataset) is skipped, TF_USE_LEGACY_KERAS is set only during the import, and
    tf.keras still resolves to Keras 3 when someone asks for it."""
    code = ("import os, sys\n"
            "from satseg_jax.datasets.tfenv import import_tfds\n"
            "import_tfds()\n"
            "print('keras' in sys.modules, 'TF_USE_LEGACY_KERAS' in os.environ)\n"
            "import tensorflow as tf\n"
            "print(tf.keras.layers.Dense.__module__.split('.')[0])\n")
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["False", "False", "keras"], proc.stdout
