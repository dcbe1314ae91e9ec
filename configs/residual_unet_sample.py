"""residual_unet on the sample dataset: the quickstart config with `model.name = "residual_unet"`.

    satseg train --config configs/residual_unet_sample.py --workdir runs/residual_unet
"""

from pathlib import Path

from satseg_jax.config_files import load_config_file


def get_config():
    c = load_config_file(Path(__file__).with_name("unet_sample.py"))
    c.model.name = "residual_unet"
    return c
