"""Issue 5 paths: scene-label patches -> classification dataset -> CerraNet, and the
variant benchmark sweep (tiny sizes)."""

from __future__ import annotations

import csv
import json

import ml_collections
import numpy as np
import pytest

from satseg_jax.cli import main
from tests.workers.tiny_config import tiny_config


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    from satseg_jax.raster.compose import compose_bands
    from satseg_jax.raster.sample import write_sample_scene

    root = tmp_path_factory.mktemp("v")
    s = write_sample_scene(root / "sample", size=256, seed=4)
    scene = compose_bands([s[b] for b in ("blue", "green", "red", "nir")], root / "scene.tif",
                          progress=False)
    return root, s, scene


def test_scene_label_patches_build_and_classify(scene, tmp_path):
    import rasterio

    from satseg_jax.evaluate import evaluate_workdir
    from satseg_jax.train import train_and_evaluate

    root, s, image = scene
    out = tmp_path / "cls"
    assert main(["patches", "--image", str(image), "--labels", str(s["labels"]), "--classes",
                 str(s["classes"]), "--size", "32", "--stride", "16", "--scene-label",
                 "--purity", "0.9", "--out", str(out / "patches")]) == 0
    rows = list(csv.DictReader(open(out / "patches" / "index.csv")))
    assert rows and all(float(r["purity"]) >= 0.9 for r in rows)
    with rasterio.open(s["labels"]) as ds:
        labels = ds.read(1)
    names = json.loads(s["classes"].read_text())
    for r in rows[:20]:  # the folder class is the majority of the label window
        win = labels[int(r["row"]):int(r["row"]) + 32, int(r["col"]):int(r["col"]) + 32]
        counts = np.bincount(win[win != 255].ravel(), minlength=len(names))
        assert names[int(np.argmax(counts))]["name"] == r["class"]
        assert (out / "patches" / r["class"] / f"{r['patch_id']}.tif").exists()
    assert main(["build", "--classification", "--images", str(out / "patches"), "--out",
                 str(out / "data"), "--split-by", "block", "--split", "0.6,0.2,0.2"]) == 0
    info = json.loads((out / "data" / "satseg_dataset.json").read_text())
    assert info["task"] == "classification" and sum(info["num_examples"].values()) == len(rows)
    cfg = tiny_config(out / "data", task="classification", **{
        "train.batch_size": 8, "train.num_steps": 8, "train.eval_every": 8,
        "train.checkpoint_every": 8})
    cfg.model = ml_collections.ConfigDict({"name": "cerranet", "filters": (8, 8),
                                           "dense": (16,), "dropout": 0.15})
    train_and_evaluate(cfg, tmp_path / "run")
    m = evaluate_workdir(tmp_path / "run", split="test", checkpoint="latest")
    cm = np.asarray(m["confusion_matrix"])
    assert cm.sum() == info["num_examples"]["test"]  # one count per test image


def test_benchmark_sweep_writes_tables_and_resumes(scene, tmp_path):
    from satseg_jax.datasets.build import build_dataset
    from satseg_jax.raster.patches import make_patches
    from satseg_jax.variant_sweep import run_sweep

    root, s, image = scene
    make_patches(image, tmp_path / "p", s["classes"], size=32, labels=s["labels"],
                 progress=False)
    build_dataset(tmp_path / "p", tmp_path / "d", split=(0.6, 0.2, 0.2), split_by="random",
                  progress=False)
    sweep = ml_collections.ConfigDict()
    sweep.base = tiny_config(tmp_path / "d")
    sweep.variants = {"unet": {"name": "unet", "depth": 2, "base_width": 4},
                      "attention_unet": {"name": "attention_unet", "depth": 2,
                                         "base_width": 4}}
    sweep.seeds = (0, 1)
    sweep.baselines = ("rf", "majority")
    sweep.baseline_options = {"pixels": 3000, "trees": 4}
    rows = run_sweep(sweep, tmp_path / "runs", steps=4, speed_batch=4)
    assert [r["variant"] for r in rows[:2]] == ["attention_unet", "unet"]
    assert rows[2]["variant"] == "random forest (bands)"
    assert rows[-1]["variant"].startswith("majority class")
    assert all(r["seeds"] == 2 for r in rows[:2])
    # mean ± std and a t-interval over the 2 seeds; a paired test against unet
    att = rows[0]
    assert att["mean_iou"]["n"] == 2 and att["mean_iou"]["ci95"] > 0
    assert att["vs_reference"]["n"] == 2 and 0 <= att["vs_reference"]["p"] <= 1
    assert rows[1]["vs_reference"] is None  # unet is the reference
    md = (tmp_path / "runs" / "benchmark.md").read_text()
    assert "±" in md and "attention_unet" in md and "95% CI" in md and "vs unet" in md
    assert (tmp_path / "runs" / "benchmark.png").stat().st_size > 0
    table = list(csv.DictReader(open(tmp_path / "runs" / "benchmark.csv")))
    assert len(table) == 4 and float(table[0]["params"]) > 0
    assert float(table[0]["gflops_per_image"]) > 0 and float(table[0]["train_img_s"]) > 0
    assert float(table[0]["wall_s"]) > 0 and float(table[2]["wall_s"]) > 0
    assert float(table[2]["mean_iou"]) > float(table[3]["mean_iou"])  # rf beats majority
    assert table[2]["gflops_per_image"] == "nan" and table[2]["kind"] == "baseline"
    # Resumable: a second call redoes nothing.
    done = [tmp_path / "runs" / "unet" / "seed_0" / "result.json",
            tmp_path / "runs" / "baseline_rf" / "result.json"]
    mtimes = [p.stat().st_mtime for p in done]
    run_sweep(sweep, tmp_path / "runs", steps=4, speed_batch=4)
    assert [p.stat().st_mtime for p in done] == mtimes
    # One seed: no spread is printed where there is none.
    run_sweep(sweep, tmp_path / "runs", steps=4, seeds=[0], speed_batch=4)
    md = (tmp_path / "runs" / "benchmark.md").read_text()
    assert "±" not in md.split("\n\n")[0] and "n/a (1 shared seed)" in md


def test_sweep_config_refuses_unknown_fields_and_baselines(tmp_path):
    from satseg_jax.errors import SatsegError
    from satseg_jax.variant_sweep import run_sweep

    sweep = ml_collections.ConfigDict({"base": {}, "variants": {"unet": {}}, "seeds": (0,),
                                       "baselines": ("svm",)})
    with pytest.raises(SatsegError, match="svm"):
        run_sweep(sweep, tmp_path / "runs")
    sweep = ml_collections.ConfigDict({"base": {}, "variants": {"unet": {}}, "seeds": (0,),
                                       "baseline": ("rf",)})
    with pytest.raises(SatsegError, match="unknown field"):
        run_sweep(sweep, tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


def test_paired_test_and_seed_stats():
    from scipy import stats

    from satseg_jax.sweep_tables import paired_test, seed_stats

    a, b = {0: 0.90, 1: 0.92, 2: 0.95}, {0: 0.85, 1: 0.88, 2: 0.89, 3: 0.5}
    v = paired_test(a, b)
    assert v["n"] == 3 and v["delta"] == pytest.approx(0.05)
    assert v["p"] == pytest.approx(stats.ttest_rel([.90, .92, .95], [.85, .88, .89]).pvalue)
    assert paired_test({0: 0.5}, {0: 0.4})["significant"] is None
    s = seed_stats([0.90, 0.92, 0.95])
    lo, hi = stats.t.interval(0.95, 2, loc=s["mean"], scale=stats.sem([0.90, 0.92, 0.95]))
    assert s["mean"] - s["ci95"] == pytest.approx(lo) and s["mean"] + s["ci95"] == \
        pytest.approx(hi)
    one = seed_stats([0.9])
    assert one["n"] == 1 and np.isnan(one["std"])
