"""Sweep: every U-Net variant on the sample dataset, same data, steps and optimizer.

    satseg benchmark --sweep configs/bench/unet_variants.py --workdir runs/bench \
        [--steps 300] [--seeds 0,1]

Widths are chosen so the variants have comparable cost on a CPU; change ``variants``
to compare other settings (depth, norm, upsampling...). ``baselines`` adds classical rows
(``satseg baseline`` methods); ``baseline_options`` (a dict of ``run_baseline`` arguments,
e.g. ``{"pixels": 100000}``) and ``split`` (default ``test``) are optional.
"""

from pathlib import Path

from satseg_jax.config_files import load_config_file


def get_config():
    import ml_collections

    sweep = ml_collections.ConfigDict()
    sweep.base = load_config_file(Path(__file__).parents[1] / "unet_sample.py")
    sweep.base.train.num_steps = 300
    sweep.base.train.eval_every = 150
    sweep.base.train.checkpoint_every = 150
    common = {"depth": 3, "base_width": 16, "norm": "batch", "dropout": 0.0,
              "upsample": "transpose"}
    sweep.variants = {
        "unet": {"name": "unet", **common},
        "unet_bilinear": {"name": "unet", **{**common, "upsample": "bilinear"}},
        "attention_unet": {"name": "attention_unet", **common},
        "residual_unet": {"name": "residual_unet", **common},
        "unet_plus_plus": {"name": "unet_plus_plus", **{**common, "base_width": 12}},
        "r2_unet": {"name": "r2_unet", **{**common, "base_width": 12}},
    }
    sweep.seeds = (0, 1)
    # Classical rows beside the variants (satseg baseline): the floor and the forests.
    sweep.baselines = ("majority", "rf", "rf-texture")
    return sweep
