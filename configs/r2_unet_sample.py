"""r2_unet on the sample dataset: the quickstart config with `model.name = "r2_unet"`.

    satseg train --config configs/r2_unet_sample.py --workdir runs/r2_unet
"""

from pathlib import Path

from satseg_jax.config_files import load_config_file


def get_config():
    c = load_config_file(Path(__file__).with_name("unet_sample.py"))
    c.model.name = "r2_unet"
    c.model.base_width = 12
    return c
