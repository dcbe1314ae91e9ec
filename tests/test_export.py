"""``satseg export`` and ``satseg predict --model`` (issue 32, item 4): the exported
SavedModel, ONNX and StableHLO give the run's probabilities (dynamic batch and tile, raw
bands in, normalisation and nodata baked in); SavedModel and ONNX map a scene through the
same tiled predictor in a process where JAX cannot be imported; the ONNX converter writes
the other model families too, or refuses by name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio

from satseg_jax.cli import main
from tests.workers.tiny_config import two_step_run

REPO = Path(__file__).resolve().parents[1]
TILING = ["--tile", "32", "--overlap", "8", "--batch", "4"]


@pytest.fixture(scope="module")
def run(tiny_dataset, tmp_path_factory):
    return two_step_run(tiny_dataset, tmp_path_factory.mktemp("export") / "run")


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory) -> dict[str, Path]:
    out = {}
    for fmt in ("savedmodel", "onnx", "stablehlo"):
        out[fmt] = tmp_path_factory.mktemp("exported") / fmt
        assert main(["export", "--workdir", str(run), "--format", fmt, "--out", str(out[fmt]),
                     "--checkpoint", "latest"]) == 0
    return out


def _tiles(scene: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """Raw tiles (b, H, W, C) and their valid masks from the scene, two shapes, with the
    scene's nodata border in them."""
    from satseg_jax.raster.io import valid_pixels

    with rasterio.open(scene) as src:
        data = src.read()
        nodata = src.nodata
    out = []
    for b, h, w in ((3, 64, 96), (1, 32, 32)):
        x = np.stack([data[:, 8 * i: 8 * i + h, 5 * i: 5 * i + w] for i in range(b)])
        x = x.transpose(0, 2, 3, 1)
        out.append((x, np.stack([valid_pixels(t, nodata, channels_last=True) for t in x])))
    return out


def test_exports_give_the_runs_probabilities_at_any_batch_and_tile(run, exported,
                                                                   tiny_dataset):
    import jax
    import onnxruntime as ort
    import tensorflow as tf

    from satseg_jax.predict import batch_probabilities
    from satseg_jax.runs import load_run

    r = load_run(run, "latest")
    card = json.loads((exported["savedmodel"] / "serving_card.json").read_text())
    assert card["input"]["bands"] == list(r.card.bands)
    assert [c["name"] for c in card["classes"]] == list(r.card.class_names)
    assert card["check"]["max_abs_probability_difference"] <= 1e-4
    serve = tf.saved_model.load(str(exported["savedmodel"] / "savedmodel")) \
        .signatures["serving_default"]
    hlo = jax.export.deserialize(
        (exported["stablehlo"] / "stablehlo" / "model.jax_exported").read_bytes())
    onnx = ort.InferenceSession(str(exported["onnx"] / "onnx" / "model.onnx"),
                                providers=["CPUExecutionProvider"])
    for x, valid in _tiles(tiny_dataset.parent / "scene.tif"):
        assert not valid.all()  # the nodata border is in the tiles
        probs_of = batch_probabilities(r.runner, max(x.shape[1:3]),  # crops to [:t, :t]
                                       np.asarray(r.card.mean, np.float32),
                                       np.asarray(r.card.std, np.float32))
        ref = np.asarray(probs_of(r.state, x, valid)).transpose(0, 2, 3, 1)
        raw = x.astype(np.float32)
        for got in (serve(bands=tf.constant(raw))["probabilities"].numpy(),
                    np.asarray(hlo.call(raw)), onnx.run(["probabilities"], {"bands": raw})[0]):
            assert got.shape == ref.shape
            np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)
            assert (got.argmax(-1) == ref.argmax(-1)).mean() >= 0.999


def test_predict_model_maps_the_scene_as_the_run_does_without_jax(run, exported,
                                                                  tiny_dataset, tmp_path):
    from satseg_jax.predict import predict_scene

    scene = tiny_dataset.parent / "scene.tif"
    predict_scene(run, scene, tmp_path / "flax.tif", checkpoint="latest", tile=32, overlap=8,
                  batch=4, progress=False)
    calls = [['predict', '--model', str(exported[fmt]), '--image', str(scene), '--out',
              str(tmp_path / f"{fmt}.tif"), *TILING] for fmt in ("savedmodel", "onnx")]
    code = ("import sys; sys.modules['jax'] = None; sys.modules['flax'] = None\n"
            "from satseg_jax.cli import main\n"
            f"rcs = [main(argv) for argv in {calls!r}]\n"
            "assert sys.modules['jax'] is None\n"
            "sys.exit(max(rcs))\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=300)
    assert p.returncode == 0, p.stderr
    for fmt in ("savedmodel", "onnx"):
        with rasterio.open(tmp_path / "flax.tif") as a, \
                rasterio.open(tmp_path / f"{fmt}.tif") as b:
            assert (a.crs, a.transform, a.nodata) == (b.crs, b.transform, b.nodata)
            assert (a.read(1) == b.read(1)).mean() >= 0.999


@pytest.mark.parametrize("model, tile", [
    ({"name": "unet", "upsample": "bilinear", "depth": 2, "base_width": 4}, None),
    ({"name": "attention_unet", "depth": 2, "base_width": 4}, None),
    ({"name": "fpn", "encoder": "resnet18"}, 64),
])
def test_onnx_converter_writes_the_model_families(model, tile, tmp_path):
    """Random weights; the converter's output against the Flax model (resize by iota and
    symbolic sizes, sigmoid attention gates, an encoder with a fixed tile)."""
    import jax
    import jax.numpy as jnp
    import ml_collections

    from satseg_jax.export.onnx_graph import write_onnx
    from satseg_jax.models.registry import get_model, input_multiple

    cfg = ml_collections.ConfigDict(model)
    net, m = get_model(cfg, num_classes=3), input_multiple(cfg)
    size = tile or 2 * m
    variables = jax.jit(lambda k: net.init(k, jnp.zeros((1, size, size, 4)), train=False))(
        jax.random.key(0, impl="rbg"))  # threefry init compiles for seconds on a CPU

    def fn(v, x):
        return jax.nn.softmax(net.apply(v, x, train=False), axis=-1)

    run_onnx = write_onnx(fn, variables, m, 4, tmp_path, tile)
    x = np.random.default_rng(0).normal(size=(3, size, tile or 3 * m, 4)).astype(np.float32)
    np.testing.assert_allclose(run_onnx(x), np.asarray(jax.jit(fn)(variables, x)), atol=1e-5)


def test_a_model_that_needs_a_fixed_size_is_told_to_pass_tile(tmp_path):
    import jax
    import jax.numpy as jnp
    import ml_collections

    from satseg_jax.errors import SatsegError
    from satseg_jax.export.exporters import write_export
    from satseg_jax.models.registry import get_model

    net = get_model(ml_collections.ConfigDict({"name": "fpn", "encoder": "resnet18"}), 3)
    variables = jax.jit(lambda k: net.init(k, jnp.zeros((1, 64, 64, 4)), train=False))(
        jax.random.key(0, impl="rbg"))  # threefry init compiles for seconds on a CPU
    with pytest.raises(SatsegError, match="export with a fixed tile, e.g. --tile 256"):
        write_export("onnx", lambda v, x: net.apply(v, x, train=False), variables, 32, 4, tmp_path,
               None, "fpn")


def test_predict_model_refuses_what_it_cannot_run(exported, tiny_dataset, tmp_path, capsys):
    scene = str(tiny_dataset.parent / "scene.tif")
    cases = [(exported["stablehlo"], "holds a stablehlo export"),
             (tmp_path, "no serving_card.json")]
    for model_dir, message in cases:
        assert main(["predict", "--model", str(model_dir), "--image", scene, "--out",
                     str(tmp_path / "m.tif"), *TILING]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    assert not (tmp_path / "m.tif").exists()
    assert main(["predict", "--model", str(exported["savedmodel"]), "--image", scene,
                 "--out", str(tmp_path / "m.tif"), "--tile", "30", "--overlap", "8"]) == 2
    assert "divisible by" in capsys.readouterr().err
