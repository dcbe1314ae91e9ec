"""Bring your own dataset, end to end (issue 11 must-show): a folder of 12 generated,
non-georeferenced JPEG images of mixed sizes with colour-coded masks (half RGB PNG,
half palette PNG, one ignore colour) goes through patches -> build --split-by source ->
train -> evaluate -> predict with the unchanged ``satseg`` commands; the only config
change is ``data.data_dir`` (bands and classes come from the dataset) plus the tiny
model settings every test uses.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio

from satseg_jax.cli import main
from tests.helpers.labelled_folders import COLOURS, colour_folder_set

REPO = Path(__file__).resolve().parents[1]
TINY = ["--config.model.depth=2", "--config.model.base_width=4",
        "--config.train.batch_size=4", "--config.train.num_steps=8",
        "--config.train.log_every=4", "--config.train.eval_every=4",
        "--config.train.checkpoint_every=4", "--config.schedule.warmup_steps=2",
        "--config.eval.batch_size=8", "--config.data.crop_size=0",
        "--config.data.num_parallel_calls=1"]

pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")


def test_colour_coded_jpeg_folder_end_to_end(tmp_path, capsys):
    truth = colour_folder_set(tmp_path / "set")
    s = tmp_path / "set"
    patches, data, run = tmp_path / "patches", tmp_path / "data", tmp_path / "run"
    assert main(["patches", "--images", str(s / "images"), "--masks", str(s / "masks"),
                 "--classes", str(s / "classes.json"), "--size", "32", "--stride", "16",
                 "--out", str(patches)]) == 0
    # no mask patch holds a value outside the declared classes and 255
    for m in (patches / "masks").iterdir():
        with rasterio.open(m) as ds:
            assert set(np.unique(ds.read(1)).tolist()) <= {0, 1, 2, 255}, m.name
    assert main(["build", "--patches", str(patches), "--out", str(data),
                 "--split-by", "source", "--split", "0.6,0.2,0.2"]) == 0
    info = json.loads((data / "satseg_dataset.json").read_text())
    assert info["crs"] is None and info["bands"] == ["red", "green", "blue"]
    # every source image sits in exactly one split, and all of them are placed
    placed = info["split"]["sources"]
    keys = [k for split in placed.values() for k in split]
    assert sorted(keys) == sorted(truth) and len(set(keys)) == len(keys) == 12
    capsys.readouterr()

    assert main(["train", "--config", str(REPO / "configs" / "unet_sample.py"),
                 "--workdir", str(run), f"--config.data.data_dir={data}", *TINY]) == 0
    assert main(["evaluate", "--workdir", str(run), "--split", "test"]) == 0
    metrics = json.loads((run / "metrics_test.json").read_text())
    assert metrics["class_names"] == ["road", "grass", "water"]
    cm = np.asarray(metrics["confusion_matrix"])
    assert cm.sum() == sum(info["class_pixel_counts"]["test"])  # ignore never counted

    image = s / "images" / "img_03.jpg"  # a plain JPEG, 72 x 56 px
    out = tmp_path / "img_03_mask.png"
    assert main(["predict", "--workdir", str(run), "--image", str(image), "--out",
                 str(out), "--tile", "32", "--overlap", "8"]) == 0
    with rasterio.open(out) as ds, rasterio.open(image) as src:
        assert ds.driver == "PNG" and (ds.width, ds.height) == (src.width, src.height)
        pred = ds.read(1)
        cmap = ds.colormap(1)
    assert set(np.unique(pred).tolist()) <= {0, 1, 2, 255}
    for k in range(3):
        assert tuple(cmap[k][:3]) == tuple(COLOURS[k].tolist())
    assert pred.shape == truth["img_03"].shape
