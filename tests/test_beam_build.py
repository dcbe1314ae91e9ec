"""satseg build --beam-runner: the Apache Beam build writes the plain build's dataset.

DirectRunner on a small generated patches folder (tests/helpers/patch_folders.py). The
plain build is the reference: the same examples in every split (decoded and compared by
id: image, mask and metadata bytes), the same satseg_dataset.json, loadable with tfds.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import sys

import numpy as np
import pytest
import rasterio

pytest.importorskip("apache_beam")  # a guard only: CI installs the beam extra

from satseg_jax.cli import main  # noqa: E402
from satseg_jax.datasets.build import (  # noqa: E402
    INFO_FILE,
    build_classification_dataset,
    build_dataset,
    builder_for,
    format_summary,
)
from satseg_jax.datasets.splits import SPLITS  # noqa: E402
from satseg_jax.datasets.statistics import DatasetStats  # noqa: E402
from satseg_jax.errors import SatsegError  # noqa: E402
from tests.helpers.patch_folders import DEFAULT_CLASSES, write_patches_folder  # noqa: E402

CLASSES = [*DEFAULT_CLASSES, {"id": 3, "name": "cloud", "colour": "#ffffff"}]
BUILD = {"split": (0.6, 0.2, 0.2), "seed": 3, "split_by": "block", "block_size": 2}
# Two worker threads: bundles are processed apart, so partial statistics are merged.
THREADS = "--direct_num_workers=2 --direct_running_mode=multi_threading"


# Builds and loads must never reach the network (tfds GCS lookups included).
pytestmark = pytest.mark.usefixtures("no_network")


@pytest.fixture(scope="module")
def patches(tmp_path_factory):
    """36 uint16 patches of 16 px on a 6x6 grid; class 'cloud' never occurs."""
    return write_patches_folder(tmp_path_factory.mktemp("p") / "patches", size=16,
                                grid=(6, 6), classes=CLASSES, mask_classes=3, seed=1)


@pytest.fixture(scope="module")
def plain(patches, tmp_path_factory):
    out = tmp_path_factory.mktemp("plain") / "data"
    return out, build_dataset(patches, out, progress=False, **BUILD)


@pytest.fixture(scope="module")
def beam_cli(patches, tmp_path_factory):
    """The Beam build through the CLI; the plain generator is made to fail meanwhile, so
    the examples can only have come from the pipeline."""
    from satseg_jax.datasets.segmentation_builder import SatsegPatches

    def not_beam(*args, **kwargs):
        raise AssertionError("the plain generator ran in a --beam-runner build")

    out = tmp_path_factory.mktemp("beam") / "data"
    argv = ["build", "--patches", str(patches), "--out", str(out), "--split", "0.6,0.2,0.2",
            "--seed", "3", "--split-by", "block", "--block-size", "2",
            "--beam-runner", "DirectRunner", "--beam-options", THREADS]
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(printed):
        mp.setattr(SatsegPatches, "_generate_examples", not_beam)
        assert main(argv) == 0
    return out, json.loads((out / INFO_FILE).read_text()), printed.getvalue()


def _examples_by_id(out, id_key: str) -> dict[str, dict[str, tuple[str, dict]]]:
    """{split: {id: (split, {feature: bytes or value})}} of a built dataset."""
    import tensorflow_datasets as tfds

    builder = builder_for(out)
    found: dict = {}
    for split in builder.info.splits:
        ds = builder.as_dataset(split=split, shuffle_files=False)
        for ex in tfds.as_numpy(ds):
            key = ex[id_key].decode()
            assert key not in found.get(split, {}), f"{key} twice in {split}"
            found.setdefault(split, {})[key] = {
                k: (v.dtype.str, v.shape, v.tobytes()) if isinstance(v, np.ndarray) else v
                for k, v in ex.items()}
    return found


def _assert_same_info(a: dict, b: dict) -> None:
    """Every field equal; band mean/std to float rounding (Beam merges partial sums in
    the runner's order, a plain build adds patch after patch)."""
    assert a.keys() == b.keys()
    for key in a:
        if key in ("mean", "std"):
            np.testing.assert_allclose(b[key], a[key], rtol=1e-12, atol=0, err_msg=key)
        else:
            assert b[key] == a[key], key


# ----------------------------------------------------------------------------- equal datasets


def test_beam_build_writes_the_plain_builds_examples_and_numbers(plain, beam_cli):
    import tensorflow_datasets as tfds

    (p_out, p_info), (b_out, b_info, printed) = plain, beam_cli
    _assert_same_info(p_info, b_info)
    assert b_info["stats_valid_pixels"] > 0 and b_info["class_pixel_counts"]["train"][3] == 0
    p_ex, b_ex = _examples_by_id(p_out, "patch_id"), _examples_by_id(b_out, "patch_id")
    assert set(b_ex) == set(SPLITS)
    for split in SPLITS:
        assert b_ex[split].keys() == p_ex[split].keys()  # same ids in the same split
        assert len(b_ex[split]) == b_info["num_examples"][split]
        for pid, ex in p_ex[split].items():
            assert b_ex[split][pid] == ex, (split, pid)  # image, mask, transform, crs, ...
    # Same tfds metadata and files; nothing of the pipeline is left behind.
    b_builder = tfds.builder_from_directory(str(b_out / b_info["builder_dir"]))
    p_builder = builder_for(p_out)
    assert b_builder.info.features.to_json() == p_builder.info.features.to_json()
    for split in SPLITS:
        assert b_builder.info.splits[split].num_examples == p_info["num_examples"][split]
    assert sorted(f.relative_to(b_out) for f in b_out.rglob("*")) == \
        sorted(f.relative_to(p_out) for f in p_out.rglob("*"))
    # Loadable by name too, and the CLI printed the usual summary (only).
    ds = tfds.load("satseg_patches", data_dir=str(b_out), split="test", download=False)
    assert sum(1 for _ in ds) == b_info["num_examples"]["test"]
    assert printed.strip() == format_summary(b_info)


def _class_folders(patches, root):
    """Scene-classification folders from the patches: each image under its mask's
    majority class (names keep r<row>_c<col>)."""
    root.mkdir()
    for mask_path in sorted((patches / "masks").glob("*.tif")):
        with rasterio.open(mask_path) as ds:
            m = ds.read(1)
        name = CLASSES[int(np.bincount(m[m != 255], minlength=4).argmax())]["name"]
        (root / name).mkdir(exist_ok=True)
        shutil.copy(patches / "images" / mask_path.name, root / name / mask_path.name)
    return root


def test_beam_classification_build_equals_the_plain_one(patches, tmp_path):
    images = _class_folders(patches, tmp_path / "images")
    kw = {"split": (0.5, 0.25, 0.25), "seed": 1, "split_by": "random", "progress": False}
    a = build_classification_dataset(images, tmp_path / "plain", **kw)
    b = build_classification_dataset(images, tmp_path / "beam", beam_runner="DirectRunner",
                                     **kw)
    assert a == b  # statistics are computed before the build, in this process, both times
    pa, pb = (_examples_by_id(tmp_path / d, "example_id") for d in ("plain", "beam"))
    assert pa == pb and sum(len(v) for v in pb.values()) == 36


# ----------------------------------------------------------------------------- statistics


def test_partial_statistics_merge_like_one_pass():
    """Beam merges per-bundle statistics in any order: equal to one pass up to rounding,
    an empty side changes nothing, and the JSON hand-over keeps every bit."""
    rng = np.random.default_rng(0)
    exs = [(("train", "validation", "test")[i % 3],
            rng.normal(5e3, 30.0, (8, 8, 3)).astype(np.float32),
            rng.integers(0, 4, (8, 8)).astype(np.uint8)) for i in range(30)]
    exs[4][2][0, :3] = 255

    def stats(items) -> DatasetStats:
        s = DatasetStats(3, 4, nodata=None)
        for split, img, mask in items:
            s.add(split, img, mask)
        return s

    whole = stats(exs)
    parts = [stats(exs[i::4]) for i in (3, 1, 0, 2)]
    merged = DatasetStats(3, 4, None)
    for p in parts:
        merged.merge(p)
    np.testing.assert_allclose(merged.bands.mean, whole.bands.mean, rtol=1e-13)
    np.testing.assert_allclose(merged.bands.std, whole.bands.std, rtol=1e-12)
    np.testing.assert_array_equal(merged.bands.n, whole.bands.n)
    for s in SPLITS:
        assert merged.class_counts[s].tolist() == whole.class_counts[s].tolist()
        assert merged.examples[s] == whole.examples[s] and merged.ignored[s] == whole.ignored[s]
    copy = DatasetStats.from_json(json.loads(json.dumps(whole.to_json())))
    assert copy.to_json() == whole.to_json()
    assert DatasetStats(3, 4, None).merge(copy).to_json() == whole.to_json()  # empty side


# ----------------------------------------------------------------------------- errors


def _leftovers(parent) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith((".data", "data")))


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_bad_runner_or_options_are_one_line_errors_before_any_output(patches, tmp_path,
                                                                     capsys):
    out = tmp_path / "data"
    base = ["build", "--patches", str(patches), "--out", str(out)]
    cases = [(["--beam-runner", "DirectRuner"], "--beam-runner DirectRuner: not a Beam runner"),
             (["--beam-runner", "collections.OrderedDict"], "is not a Beam PipelineRunner"),
             (["--beam-runner", "no_such_pkg.Runner"], "cannot be loaded"),
             (["--beam-runner", "DirectRunner", "--beam-options=--direct_num_workers=two"],
              "invalid int value: 'two'"),
             (["--beam-runner", "DirectRunner", "--beam-options=--runner=DirectRunner"],
              "give it with --beam-runner"),
             (["--beam-options=--direct_num_workers=2"], "--beam-options needs --beam-runner")]
    for extra, pattern in cases:
        assert main(base + extra) == 2, extra
        line = _one_line_error(capsys)
        assert line.startswith("satseg: error: ") and pattern in line, (extra, line)
        assert _leftovers(tmp_path) == [], extra


def test_missing_beam_names_the_extra_to_install(patches, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "apache_beam", None)  # import apache_beam fails
    assert main(["build", "--patches", str(patches), "--out", str(tmp_path / "data"),
                 "--beam-runner", "DirectRunner"]) == 2
    assert 'pip install "satseg-jax[beam]"' in _one_line_error(capsys)
    assert _leftovers(tmp_path) == []


def test_errors_on_workers_come_back_as_one_line_and_leave_no_out_dir(patches, tmp_path):
    bad = tmp_path / "bad-class"
    shutil.copytree(patches, bad)
    with rasterio.open(bad / "masks" / "r000080_c000080.tif", "r+") as ds:
        m = ds.read(1)
        m[0, 0] = 7  # found by the statistics branch of the pipeline
        ds.write(m, 1)
    corrupt = tmp_path / "corrupt"
    shutil.copytree(patches, corrupt)
    (corrupt / "images" / "r000048_c000048.tif").write_bytes(b"II*\x00 not a tiff")
    out = tmp_path / "data"
    for folder, pattern in [(bad, r"r000080_c000080.tif: holds class id\(s\) \[7\]"),
                            (corrupt, "r000048_c000048.tif: cannot be read")]:
        with pytest.raises(SatsegError, match=pattern) as info:
            build_dataset(folder, out, progress=False, beam_runner="DirectRunner", **BUILD)
        assert "\n" not in str(info.value) and "while running" not in str(info.value)
        assert not out.exists() and _leftovers(tmp_path) == [], folder
