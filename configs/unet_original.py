"""U-Net as published (Ronneberger et al. 2015): valid 3×3 convolutions, copy-and-crop.

The output is smaller than the input (a 572-px input gives 388 px); the loss and the
metrics use the matching centre crop of the mask. Valid input sizes for depth 4 are
12 mod 16 (…, 236, 252, 268, …, 572): with 256-px patches we train on random 252-px
crops (68-px outputs) and evaluate on the centre 252 px of each patch. The paper's
setting is SGD with momentum 0.99 and batch 1; we keep SGD with momentum but use a
small batch with BatchNorm off, as published.
"""

from pathlib import Path

from satseg_jax.config_files import load_config_file


def get_config():
    c = load_config_file(Path(__file__).with_name("unet_sample.py"))
    c.data.data_dir = "runs/original/data"  # a dataset built with 256-px patches
    c.data.crop_size = 252
    c.eval.crop_size = 252
    c.model.name = "unet_original"
    c.model.depth = 4
    c.model.base_width = 64
    # Knobs of the padded U-Net that the original has no use for.
    del c.model["norm"], c.model["dropout"], c.model["upsample"]
    c.optimizer.name = "sgd"
    c.optimizer.momentum = 0.99
    c.optimizer.learning_rate = 1e-3
    c.schedule.name = "constant"
    c.train.batch_size = 4
    c.train.num_steps = 20000
    c.train.log_every = 100
    c.train.eval_every = 1000
    c.train.checkpoint_every = 1000
    c.eval.batch_size = 8
    return c
