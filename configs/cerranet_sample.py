"""CerraNet scene classifier on classification patches cut from the sample scene.

    satseg patches --image runs/quickstart/scene.tif --labels runs/quickstart/sample/labels.tif \
        --classes runs/quickstart/sample/classes.json --size 64 --stride 32 --scene-label \
        --purity 0.9 --out runs/cerranet/patches
    satseg build --classification --images runs/cerranet/patches --out runs/cerranet/data \
        --split-by block
    satseg train --config configs/cerranet_sample.py --workdir runs/cerranet/train

CerraNet as published takes 256×256 inputs; on 64-px patches the six conv+pool stages
leave no pixel, so this config uses the first four stages (filters 64-64-128-128).
"""

from pathlib import Path

from satseg_jax.config_files import load_config_file


def get_config():
    c = load_config_file(Path(__file__).with_name("unet_sample.py"))
    c.task = "classification"
    c.data.data_dir = "runs/cerranet/data"
    c.data.crop_size = 0
    c.model = {"name": "cerranet", "filters": (64, 64, 128, 128), "dense": (256, 128),
               "dropout": 0.15}
    c.optimizer.learning_rate = 1e-3
    c.train.batch_size = 32
    c.train.num_steps = 600
    c.train.eval_every = 200
    c.train.checkpoint_every = 200
    c.eval.batch_size = 64
    return c
