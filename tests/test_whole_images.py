"""Whole images in one process (issue 30, items 6, 2 --tta, 8 --probabilities, 9):
``predict --images``, ``evaluate --images/--masks``, test-time augmentation, the
probabilities file's metadata and a quiet start-up.

Cheap by design: one 2-step run on the session's ``tiny_dataset``, images of a few
dozen pixels, 32-px tiles.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import rasterio
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window

from satseg_jax.cli import main
from satseg_jax.tta import average_probabilities, dihedral_transforms
from tests.workers.tiny_config import two_step_run

REPO = Path(__file__).resolve().parents[1]
TILING = ["--checkpoint", "latest", "--tile", "32", "--overlap", "8"]


@pytest.fixture(scope="module")
def run(tiny_dataset, tmp_path_factory):
    return two_step_run(tiny_dataset, tmp_path_factory.mktemp("whole") / "run")


def _cut(src_path: Path, out: Path, rows: tuple[int, int], cols: tuple[int, int],
         georef: bool = True) -> Path:
    """A window of ``src_path`` as its own GeoTIFF (without CRS/transform: a plain TIFF)."""
    with rasterio.open(src_path) as src:
        win = Window(cols[0], rows[0], cols[1] - cols[0], rows[1] - rows[0])
        data = src.read(window=win)
        profile = {"driver": "GTiff", "width": data.shape[2], "height": data.shape[1],
                   "count": data.shape[0], "dtype": data.dtype, "nodata": src.nodata}
        if georef:
            profile.update(crs=src.crs, transform=src.window_transform(win))
        descriptions = src.descriptions
    out.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(out, "w", **profile) as dst:
            dst.write(data)
            for i, d in enumerate(descriptions, 1):
                if d:
                    dst.set_band_description(i, d)
    return out


@pytest.fixture(scope="module")
def folder(tiny_dataset, tmp_path_factory):
    """images/ + masks/ of the tiny scene: two georeferenced windows (one not square,
    with the scene's nodata border) and one plain TIFF without CRS."""
    root = tmp_path_factory.mktemp("folder")
    scene, labels = tiny_dataset.parent / "scene.tif", tiny_dataset.parent / "sample/labels.tif"
    for name, rows, cols, georef in (("a", (0, 48), (0, 48), True),
                                     ("b", (60, 100), (20, 76), True),
                                     ("c", (100, 150), (110, 160), False)):
        _cut(scene, root / "images" / f"{name}.tif", rows, cols, georef)
        _cut(labels, root / "masks" / f"{name}.tif", rows, cols, georef)
    return root


def _read_map(path: Path) -> np.ndarray:
    if path.suffix == ".png":
        from PIL import Image

        with Image.open(path) as im:
            return np.asarray(im)
    with rasterio.open(path) as m:
        return m.read(1)


def test_tta_is_the_average_of_the_manually_transformed_predictions():
    """Against numpy's own rot90/flip on a position-dependent model (so every transform
    gives another answer); 8 transforms on a square input, 4 on a non-square one."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 4)).astype(np.float32)

    def logits_fn(x):  # per-pixel linear model + a term that depends on the row
        rows = jnp.arange(x.shape[-3], dtype=jnp.float32)[:, None, None]
        return x @ w + rows * jnp.asarray([0.3, -0.2, 0.1, 0.0])

    def softmax(z):
        e = np.exp(z - z.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    for shape, n in (((2, 6, 6, 3), 8), ((2, 5, 7, 3), 4)):
        x = rng.normal(size=shape).astype(np.float32)
        assert len(dihedral_transforms(shape[1], shape[2])) == n
        want = np.zeros((*shape[:3], 4), np.float32)
        for k, flip in dihedral_transforms(shape[1], shape[2]):
            t = np.rot90(np.flip(x, 2) if flip else x, k, axes=(1, 2))
            p = softmax(np.asarray(logits_fn(jnp.asarray(t))))
            p = np.rot90(p, -k, axes=(1, 2))
            want += np.flip(p, 2) if flip else p
        got = np.asarray(jax.jit(lambda v: average_probabilities(logits_fn, v))(x))
        np.testing.assert_allclose(got, want / n, rtol=1e-5, atol=1e-6)
        assert got.shape == (*shape[:3], 4)
        # not the plain prediction: the test would pass for a no-op otherwise
        assert not np.allclose(got, softmax(np.asarray(logits_fn(jnp.asarray(x)))), atol=1e-3)


def test_tta_runner_evaluates_non_square_patches(run):
    """The TTA model through the run's own eval step on a non-square batch (4 transforms)
    gives the confusion matrix of the averaged probabilities."""
    from satseg_jax.runs import load_run
    from satseg_jax.tta import tta_runner

    r = load_run(run, "latest")
    x = np.random.default_rng(1).normal(size=(4, 32, 16, 4)).astype(np.float32)
    mask = np.random.default_rng(2).integers(0, 6, size=(4, 32, 16)).astype(np.int32)
    runner = tta_runner(r)
    cm = np.asarray(runner.unreplicate_metric(runner.eval_step(
        r.state, runner.shard({"image": x, "mask": mask}))))
    probs = average_probabilities(lambda v: r.predict(v), jnp.asarray(x))
    pred = np.asarray(probs).argmax(-1)
    want = np.bincount(mask.ravel() * 6 + pred.ravel(), minlength=36).reshape(6, 6)
    np.testing.assert_array_equal(cm, want)


def test_evaluate_images_equals_predict_images_compared_pixel_by_pixel(run, folder, tiny_dataset,
                                                                       tmp_path, capsys):
    classes = tiny_dataset.parent / "sample/classes.json"
    out = tmp_path / "maps"
    # With --tta: the same code path as without, plus the averaging (one pass: cheap).
    for tta in (["--tta"],):
        assert main(["predict", "--workdir", str(run), "--images", str(folder / "images"),
                     "--out-dir", str(out), "--overwrite", *TILING, *tta]) == 0
        assert main(["evaluate", "--workdir", str(run), "--images", str(folder / "images"),
                     "--masks", str(folder / "masks"), "--classes", str(classes), *TILING,
                     *tta]) == 0
        capsys.readouterr()
        assert sorted(p.name for p in out.iterdir()) == ["a.tif", "b.tif", "c.png",
                                                         "predictions.json"]
        cm = np.zeros((6, 6), np.int64)
        for name in "abc":
            pred = _read_map(next(out.glob(f"{name}.*")))
            with rasterio.open(folder / "masks" / f"{name}.tif") as m:
                truth = m.read(1)
            with rasterio.open(folder / "images" / f"{name}.tif") as im:
                truth[(im.read() == 0).all(0)] = 255  # image nodata is ignored, as in patches
            assert pred.shape == truth.shape
            keep = truth != 255
            assert (pred[keep] < 6).all()
            cm += np.bincount(truth[keep].astype(int) * 6 + pred[keep],
                              minlength=36).reshape(6, 6)
        metrics = json.loads((run / "metrics_images.json").read_text())
        assert metrics["tta"] is bool(tta) and metrics["num_images"] == 3
        np.testing.assert_array_equal(np.asarray(metrics["confusion_matrix"]), cm)
        assert cm.sum() > 0.9 * (48 * 48 + 40 * 56 + 50 * 50) - (cm.sum() == 0)
    with rasterio.open(out / "a.tif") as m:  # a georeferenced input: a COG with its grid
        assert m.crs is not None and m.nodata == 255


def test_a_failed_file_is_named_and_the_others_are_mapped(run, folder, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a", "b"):
        (images / f"{name}.tif").symlink_to(folder / "images" / f"{name}.tif")
    with rasterio.open(images / "bad.tif", "w", driver="GTiff", width=8, height=8, count=3,
                       dtype="uint8") as dst:  # 3 bands: the run has 4
        dst.write(np.ones((3, 8, 8), np.uint8))
    out = tmp_path / "maps"
    assert main(["predict", "--workdir", str(run), "--images", str(images / "*.tif"),
                 "--out-dir", str(out), *TILING]) == 1
    io = capsys.readouterr()
    assert "bad.tif" in io.err and "has 3 bands" in io.err and "1 image(s) failed" in io.err
    summary = json.loads((out / "predictions.json").read_text())
    assert [m["key"] for m in summary["maps"]] == ["a", "b"]
    assert [Path(f["image"]).name for f in summary["failed"]] == ["bad.tif"]
    # An existing output folder is refused without --overwrite, and left as it was.
    before = sorted(p.name for p in out.iterdir())
    assert main(["predict", "--workdir", str(run), "--images", str(images),
                 "--out-dir", str(out), *TILING]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == before
    # The output folder may not be (or hold) the inputs.
    assert main(["predict", "--workdir", str(run), "--images", str(images),
                 "--out-dir", str(images), *TILING]) == 2
    assert "destroy the input" in capsys.readouterr().err


def test_probabilities_say_what_they_hold(run, tiny_dataset, tmp_path, capsys):
    scene = tiny_dataset.parent / "scene.tif"
    assert main(["predict", "--workdir", str(run), "--image", str(scene), "--out",
                 str(tmp_path / "m.tif"), "--probabilities", str(tmp_path / "p.tif"),
                 *TILING]) == 0
    names = [c["name"] for c in json.loads((run / "run.json").read_text())["classes"]]
    with rasterio.open(tmp_path / "p.tif") as p, rasterio.open(scene) as s:
        assert list(p.descriptions) == names
        assert p.scales == (1 / 255,) * len(names) and p.offsets == (0.0,) * len(names)
        assert "0-255" in p.tags()["SATSEG_SCALE"]
        data, mask = p.read(), p.dataset_mask()
        nodata = (s.read() == 0).all(0)
        assert nodata.any() and (mask[nodata] == 0).all() and (mask[~nodata] == 255).all()
        assert (data[:, nodata] == 0).all()
        sums = data[:, ~nodata].sum(0, dtype=int)
        assert sums.min() >= 255 - len(names) and sums.max() <= 255 + len(names)
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    assert "GDAL scale 1/255" in " ".join(capsys.readouterr().out.split())


def test_no_tensorflow_start_up_lines(tiny_dataset, tmp_path):
    """``satseg build`` (which imports TensorFlow) prints none of TF's start-up lines,
    with no TF_* variable set by the caller; a Python warning raised after the CLI's
    set-up still gets through."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_")}
    env["PYTHONPATH"] = str(REPO)
    code = ("import sys, warnings; from satseg_jax.cli import main; rc = main(sys.argv[1:]); "
            "warnings.warn('a real warning'); sys.exit(rc)")
    p = subprocess.run([sys.executable, "-c", code, "build", "--patches",
                        str(tiny_dataset.parent / "patches"), "--out", str(tmp_path / "data"),
                        "--split", "0.6,0.2,0.2", "--split-by", "random"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    text = p.stdout + p.stderr
    for noise in ("oneDNN", "absl::InitializeLog", "cpu_feature_guard", "TF_ENABLE_ONEDNN_OPTS",
                  "This TensorFlow binary", "I0000"):
        assert noise not in text, text
    assert "a real warning" in p.stderr and "examples: train 22" in p.stdout
