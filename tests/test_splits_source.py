"""Splits for folders of several source images: --split-by source, per-image blocks,
--split-file (published train/validation/test lists) and its errors.

Unit tests build index rows in memory; two end-to-end builds use a tiny patches folder
of 3 non-georeferenced source images written here with rasterio, following the folder
contract (index.csv ``source``/``source_image`` columns, patches.json ``sources``).
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
import warnings

import numpy as np
import pytest
import rasterio

from satseg_jax.cli import main
from satseg_jax.datasets.build import build_dataset, format_summary, load_dataset_info
from satseg_jax.datasets.patches_folder import read_patches_folder
from satseg_jax.datasets.split_file import assign_from_split_file, read_split_file
from satseg_jax.datasets.splits import SPLITS, assign_splits
from satseg_jax.errors import SatsegError
from tests.helpers.patch_folders import DEFAULT_CLASSES, write_patches_folder

pytestmark = pytest.mark.usefixtures("no_network")


def _pid(key: str, r: int, c: int) -> str:
    return f"{key.replace('/', '__')}__r{r:06d}_c{c:06d}"


def _rows(keys, grid=(4, 4), stride=16, image_root="/data/set") -> list[dict]:
    """In-memory index rows: ``grid`` patches per source key, offsets restarting at 0."""
    grids = keys if isinstance(keys, dict) else dict.fromkeys(keys, grid)
    out = []
    for key, (nr, nc) in grids.items():
        for i in range(nr):
            for j in range(nc):
                out.append({"patch_id": _pid(key, i * stride, j * stride), "row": i * stride,
                            "col": j * stride, "source": key,
                            "source_image": f"{image_root}/{key}.jpg"})
    return out


def _split_of_sources(rows, assignment) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for r in rows:
        out.setdefault(r["source"], set()).add(assignment[r["patch_id"]])
    return out


def _write_json(path, obj):
    path.write_text(json.dumps(obj))
    return path


# ----------------------------------------------------------------------------- --split-by source


def test_split_by_source_keeps_images_whole_and_follows_patch_counts():
    # 10 sources of different sizes: 4..40 patches.
    sizes = {f"r{k % 2}/images/{k:04d}": (2, 2 + 2 * k) for k in range(10)}
    rows = _rows(sizes)
    assignment, info = assign_splits(rows, (0.6, 0.2, 0.2), seed=1, method="source")
    per_source = _split_of_sources(rows, assignment)
    assert all(len(s) == 1 for s in per_source.values())
    assert info["method"] == "source" and info["num_sources"] == 10
    assert sorted(k for s in SPLITS for k in info["sources"][s]) == sorted(sizes)
    for s in SPLITS:
        assert info["sources"][s] and all(per_source[k] == {s} for k in info["sources"][s])
    counts = {s: sum(1 for v in assignment.values() if v == s) for s in SPLITS}
    total = len(rows)
    assert abs(counts["train"] / total - 0.6) < 0.1
    # The assignment is a function of the patches, not of their order.
    shuffled = rows[:]
    random.Random(0).shuffle(shuffled)
    assert assign_splits(shuffled, (0.6, 0.2, 0.2), seed=1, method="source")[0] == assignment


def test_split_by_source_errors():
    scene = [{"patch_id": f"r{r}_c{c}", "row": r, "col": c}
             for r in range(0, 64, 16) for c in range(0, 64, 16)]
    with pytest.raises(SatsegError, match=r"no 'source' column.*--images/--masks"):
        assign_splits(scene, method="source", index_path="P/index.csv")
    two = _rows(["a/images/1", "a/images/2"])
    with pytest.raises(SatsegError, match=r"only 2 source image\(s\).*3 non-empty splits"):
        assign_splits(two, (0.6, 0.2, 0.2), method="source")
    assignment, info = assign_splits(two, (0.5, 0.0, 0.5), method="source")
    assert info["sources"]["validation"] == [] and len(set(assignment.values())) == 2
    mixed = two + [{"patch_id": "x", "row": 0, "col": 0, "source": ""}]
    with pytest.raises(SatsegError, match="empty 'source'"):
        assign_splits(mixed, method="source")


def test_block_split_never_spans_two_sources():
    keys = ["region_a/images/0001", "region_b/images/0001", "region_a/images/0002"]
    rows = _rows(keys)  # 3 sources x 4x4 patches, the same offsets in every source
    _, info = assign_splits(rows, (0.6, 0.2, 0.2), seed=0, method="block", block_size=2)
    # 2x2-patch blocks: 4 per source, 12 in all (keyed by offset alone they would be 4).
    assert info["num_blocks"] == 12 and info["num_sources"] == 3 and info["stride"] == 16
    # One block per source: the block split becomes a source split.
    assignment, info = assign_splits(rows, (0.4, 0.3, 0.3), seed=0, method="block",
                                     block_size=100)
    assert info["num_blocks"] == 3
    assert all(len(s) == 1 for s in _split_of_sources(rows, assignment).values())
    # A scene (no source column) keeps its former split info.
    scene = [{k: v for k, v in r.items() if k not in ("source", "source_image")}
             for r in rows if r["source"] == keys[0]]
    _, info = assign_splits(scene, (0.5, 0.25, 0.25), method="block", block_size=2)
    assert "num_sources" not in info and info["num_blocks"] == 4


# ----------------------------------------------------------------------------- --split-file

KEYS = ["region_a/images/0001", "region_a/images/0002", "region_b/images/0003",
        "region_b/images/0004", "region_b/images/0005"]


def test_split_file_is_honoured_exactly(tmp_path):
    rows = _rows(KEYS, grid=(2, 2))
    # Keys, image file names and stems; "val" for validation.
    spec = {"train": ["region_a/images/0001", "0002.jpg", "0003"],
            "val": ["region_b/images/0004.jpg"], "test": ["/data/set/region_b/images/0005.jpg"]}
    path = _write_json(tmp_path / "splits.json", spec)
    assignment, info = assign_from_split_file(rows, path)
    want = {"region_a/images/0001": "train", "region_a/images/0002": "train",
            "region_b/images/0003": "train", "region_b/images/0004": "validation",
            "region_b/images/0005": "test"}
    assert {r["patch_id"]: want[r["source"]] for r in rows} == assignment
    assert info["method"] == "file" and info["split_file"] == str(path.resolve())
    assert info["split_file_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert info["sources"] == {"train": KEYS[:3], "validation": [KEYS[3]], "test": [KEYS[4]]}
    # Missing splits are empty; listing a source twice in one split is harmless.
    path = _write_json(tmp_path / "s2.json", {"train": KEYS[:4] + ["0001"], "test": KEYS[4:]})
    assignment, info = assign_from_split_file(rows, path)
    assert "validation" not in assignment.values() and info["sources"]["validation"] == []


def test_split_file_may_list_images_that_gave_no_patch(tmp_path):
    rows = _rows(KEYS[:2], grid=(2, 2))
    sources = [{"key": k, "image": f"/data/set/{k}.jpg"} for k in KEYS[:3]]
    path = _write_json(tmp_path / "s.json", {"train": ["0001", "0003"], "test": ["0002"]})
    assignment, info = assign_from_split_file(rows, path, sources)
    assert info["sources"]["train"] == [KEYS[0], KEYS[2]] and len(assignment) == len(rows)
    # Only patch-less images in train: nothing to train on.
    path = _write_json(tmp_path / "t.json", {"train": ["0003"], "test": ["0001", "0002"]})
    with pytest.raises(SatsegError, match="train image.*gave no patches"):
        assign_from_split_file(rows, path, sources)


@pytest.mark.parametrize("spec, pattern", [
    ({"train": KEYS[:4] + [f"nope{i}" for i in range(12)], "test": KEYS[4:]},
     r"12 entries match no source image.*nope0, .*nope9 and 2 more.*by its key"),
    ({"train": ["0001", "0002"], "test": ["0003", "0004", "0005", "0001.jpg"]},
     r"region_a/images/0001 in train \(as '0001'\) and test \(as '0001.jpg'\).*one split"),
    ({"train": KEYS[:2], "test": KEYS[2:3]},
     r"2 source image\(s\) .* in no split: region_b/images/0004, region_b/images/0005; "
     r"add them to a split or remove them"),
    ({"train": KEYS, "holdout": []}, r"unknown split 'holdout'"),
    ({"train": KEYS[:4], "val": [], "validation": KEYS[4:]}, r"both 'val' and 'validation'"),
    ({"train": "0001"}, r"'train' must be a list"),
    ({"train": [], "test": []}, r"every split is empty"),
    ({"train": ["region_c/*"], "test": KEYS},
     r"1 entry match no source image of the patches folder: region_c/\*.*or a glob of keys"),
    ({"train": ["region_a/*"], "test": ["*"]}, r"region_a/images/0001 in train \(as "
     r"'region_a/\*'\) and test \(as '\*'\)"),
    ([KEYS], r"expected a JSON object"),
])
def test_split_file_errors(tmp_path, spec, pattern):
    path = _write_json(tmp_path / "splits.json", spec)
    with pytest.raises(SatsegError, match=pattern) as e:
        assign_from_split_file(_rows(KEYS, grid=(1, 2)), path)
    assert str(path) in str(e.value)


def test_split_file_globs_take_a_folder_and_test_only_lists_need_no_train(tmp_path):
    """The authors' split by folder ('region_a/*') without listing every image, and a
    file with a test list only (a published test set built on its own)."""
    rows = _rows(KEYS, grid=(1, 2))
    path = _write_json(tmp_path / "t.json", {"train": ["region_a/*", "0003"],
                                             "val": ["*/0004"], "test": ["*/000[5]"]})
    assignment, info = assign_from_split_file(rows, path)
    assert info["sources"] == {"train": KEYS[:3], "validation": [KEYS[3]], "test": [KEYS[4]]}
    assert {r["patch_id"]: r["source"] for r in rows}.keys() == assignment.keys()
    path = _write_json(tmp_path / "o.json", {"test": ["*"]})
    assignment, info = assign_from_split_file(rows, path)
    assert set(assignment.values()) == {"test"} and info["sources"]["test"] == KEYS


def test_split_file_same_name_in_two_regions_asks_for_the_key(tmp_path):
    keys = ["region_a/images/0001", "region_b/images/0001"]
    path = _write_json(tmp_path / "s.json", {"train": ["0001.jpg"], "test": ["0001"]})
    with pytest.raises(SatsegError, match=r"entry '0001.jpg' in train matches 2 source images "
                       r"\(region_a/images/0001, region_b/images/0001\) \(1 more entries are "
                       r"ambiguous\); name the one you mean by its key"):
        assign_from_split_file(_rows(keys), path)
    path = _write_json(tmp_path / "k.json", {"train": ["region_a/images/0001"],
                                             "test": ["region_b/images/0001.jpg"]})
    assignment, _ = assign_from_split_file(_rows(keys), path)
    assert _split_of_sources(_rows(keys), assignment) == {keys[0]: {"train"},
                                                          keys[1]: {"test"}}


def test_split_file_read_errors(tmp_path):
    with pytest.raises(SatsegError, match=r"--split-file .*missing.json: file not found"):
        read_split_file(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{'train': []}")
    with pytest.raises(SatsegError, match=r"bad.json: not valid JSON"):
        read_split_file(bad)
    scene = [{"patch_id": "r0_c0", "row": 0, "col": 0}]
    with pytest.raises(SatsegError, match=r"--split-file: P/index.csv has no 'source' column"):
        assign_from_split_file(scene, _write_json(tmp_path / "s.json", {"train": ["a"]}),
                               index_path="P/index.csv")


# ----------------------------------------------------------------------------- end to end

SOURCES = ["region_a/images/0001", "region_a/images/0002", "region_b/images/0001"]


def _write_source_folder(root, size=16):
    """3 non-georeferenced source images x 4 patches (2x2 grid of ``size`` px) each."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    names = [c["name"] for c in DEFAULT_CLASSES]
    rows, sources = [], []
    for key in SOURCES:
        image = f"/data/set/{key}.jpg"
        sources.append({"key": key, "image": image, "mask": image.replace("images", "masks")
                        .replace(".jpg", ".png"), "width": 2 * size, "height": 2 * size,
                        "crs": None})
        for r in (0, size):
            for c in (0, size):
                pid = _pid(key, r, c)
                img = rng.integers(1, 255, (3, size, size), dtype=np.uint8)
                mask = rng.integers(0, 3, (size, size), dtype=np.uint8)
                prof = {"driver": "GTiff", "height": size, "width": size}
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
                    with rasterio.open(root / "images" / f"{pid}.tif", "w", count=3,
                                       dtype="uint8", **prof) as dst:
                        dst.write(img)
                    with rasterio.open(root / "masks" / f"{pid}.tif", "w", count=1,
                                       dtype="uint8", nodata=255, **prof) as dst:
                        dst.write(mask, 1)
                counts = np.bincount(mask.ravel(), minlength=256)
                row = {"patch_id": pid, "row": r, "col": c, "height": size, "width": size,
                       "valid_fraction": 1.0, "source": key, "source_image": image}
                row.update({f"count_{n}": int(counts[i]) for i, n in enumerate(names)})
                row["count_ignore"] = 0
                rows.append(row)
    with open(root / "index.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (root / "classes.json").write_text(json.dumps(DEFAULT_CLASSES))
    meta = {"format_version": 1, "bands": ["red", "green", "blue"], "dtype": "uint8",
            "nodata": None, "crs": None, "size": size, "stride": size, "edge": "drop",
            "min_valid": 0.5, "num_patches": len(rows), "sources": sources}
    (root / "patches.json").write_text(json.dumps(meta, indent=2))
    return root


@pytest.fixture(scope="module")
def source_patches(tmp_path_factory):
    return _write_source_folder(tmp_path_factory.mktemp("src") / "patches")


def test_folder_exposes_sources(source_patches):
    folder = read_patches_folder(source_patches)
    rows = folder.index_rows()
    assert {r["source"] for r in rows} == set(SOURCES) and len(rows) == 12
    assert rows[0]["source_image"] == f"/data/set/{SOURCES[0]}.jpg"
    assert [s["key"] for s in folder.sources] == SOURCES


def test_build_split_by_source_end_to_end(source_patches, tmp_path, capsys):
    out = tmp_path / "data"
    assert main(["build", "--patches", str(source_patches), "--out", str(out), "--split-by",
                 "source", "--split", "0.34,0.33,0.33"]) == 0
    info = load_dataset_info(out)
    assert capsys.readouterr().out.strip() == format_summary(info)
    rows = read_patches_folder(source_patches).index_rows()
    per_source = _split_of_sources(rows, info["assignment"])
    assert all(len(s) == 1 for s in per_source.values()) and len(per_source) == 3
    assert info["num_examples"] == {"train": 4, "validation": 4, "test": 4}
    assert info["split"]["method"] == "source" and info["crs"] is None
    assert sorted(sum(info["split"]["sources"].values(), [])) == sorted(SOURCES)


def test_build_split_file_end_to_end(source_patches, tmp_path, capsys):
    # A published train/test list: no validation split.
    spec = tmp_path / "splits.json"
    _write_json(spec, {"train": ["region_a/images/0001", "0002.jpg"],
                       "test": ["region_b/images/0001"]})
    out = tmp_path / "data"
    assert main(["build", "--patches", str(source_patches), "--out", str(out),
                 "--split-file", str(spec)]) == 0
    text = capsys.readouterr().out
    info = load_dataset_info(out)
    assert info["num_examples"] == {"train": 8, "validation": 0, "test": 4}
    for pid, s in info["assignment"].items():
        assert s == ("test" if pid.startswith("region_b") else "train")
    sp = info["split"]
    assert sp["method"] == "file" and sp["split_file"] == str(spec.resolve())
    assert sp["split_file_sha256"] == hashlib.sha256(spec.read_bytes()).hexdigest()
    assert sp["sources"] == {"train": SOURCES[:2], "validation": [], "test": SOURCES[2:]}
    assert f"split: file {spec.resolve()} (sha256 {sp['split_file_sha256'][:12]}); source " \
        "images: train 2, validation 0, test 1" in text
    assert "validation split is empty" in text
    assert "--config.data.eval_split=test" in text


def test_build_split_file_cli_errors_leave_no_output(source_patches, tmp_path, capsys):
    spec = _write_json(tmp_path / "s.json", {"train": SOURCES})
    out = tmp_path / "data"
    for extra in (["--split-by", "source"], ["--split", "0.7,0.15,0.15"]):
        assert main(["build", "--patches", str(source_patches), "--out", str(out),
                     "--split-file", str(spec), *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "the file fixes the splits; drop " + extra[0] in err[0]
        assert not out.exists()
    bad = _write_json(tmp_path / "bad.json", {"train": SOURCES[:2]})
    assert main(["build", "--patches", str(source_patches), "--out", str(out),
                 "--split-file", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "in no split: region_b/images/0001" in err[0]
    assert not out.exists()


def test_split_by_source_on_a_scene_folder_is_a_clear_error(tmp_path, capsys):
    patches = write_patches_folder(tmp_path / "scene", grid=(2, 2))
    out = tmp_path / "data"
    assert main(["build", "--patches", str(patches), "--out", str(out), "--split-by",
                 "source"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "only patches folders written by satseg patches " \
        "--images/--masks" in err[0] and str(patches / "index.csv") in err[0]
    assert not out.exists()
    with pytest.raises(SatsegError, match="the file fixes the splits; drop --split-by"):
        build_dataset(patches, out, split_by="block", split_file=tmp_path / "s.json")
