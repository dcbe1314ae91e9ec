"""Sweep: every U-Net variant of unet_variants.py on a REAL dataset, trained with a recipe.

    satseg benchmark --sweep configs/bench/unet_variants_real.py:rgb_vhr \
        --data-dir runs/kampala/data --workdir runs/bench_kampala      # drone RGB
    satseg benchmark --sweep configs/bench/unet_variants_real.py:multispectral \
        --data-dir runs/amazon/data --workdir runs/bench_amazon        # Sentinel-2

ARG picks the recipe in configs/real/ whose data handling the runs share (crop, batch,
augmentation, loss, optimizer); the variants, their widths and the
baseline rows are those of configs/bench/unet_variants.py, so the real tables and the
sample-scene table compare the same models.

Why shorter than the recipe: six variants x three seeds must finish on 2 CPU cores in
about an hour, so each run is 300 steps (the recipe's crop, batch and loss), with a
checkpoint at the end; like the recipes, no split is looked at while training
(``data.eval_split = ""``) and the table scores the last checkpoint on ``test``. EMA decay
0.98 (half-life ~35 steps) suits 300 steps. The recipe runs themselves (README, "Recipes
for real imagery") are the full-length figures.

CerraNet is not a row: it classifies whole scenes, and these are segmentation sets.
"""

from pathlib import Path

from satseg_jax.config_files import load_config_file

RECIPES = ("rgb_vhr", "multispectral")


def get_config(recipe: str = "rgb_vhr"):
    if recipe not in RECIPES:
        raise ValueError(f"recipe {recipe!r}: expected one of {', '.join(RECIPES)}")
    configs = Path(__file__).parents[1]
    sweep = load_config_file(configs / "bench" / "unet_variants.py")
    base = load_config_file(configs / "real" / f"{recipe}.py")
    base.train.num_epochs = 0.0
    base.train.num_steps = 300
    base.train.checkpoint_every = 300
    base.train.log_every = 50
    base.train.ema_decay = 0.98
    base.train.early_stopping_patience = 0
    base.data.eval_split = ""
    base.schedule.warmup_epochs = 0.0
    base.schedule.warmup_steps = 20
    sweep.base = base
    sweep.seeds = (0, 1, 2)
    sweep.split = "test"
    return sweep
