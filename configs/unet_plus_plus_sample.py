"""unet_plus_plus on the sample dataset: the quickstart config with `model.name = "unet_plus_plus"`.

    satseg train --config configs/unet_plus_plus_sample.py --workdir runs/unet_plus_plus
"""

from pathlib import Path

from satseg_jax.config_files import load_config_file


def get_config():
    c = load_config_file(Path(__file__).with_name("unet_sample.py"))
    c.model.name = "unet_plus_plus"
    c.model.base_width = 12
    c.model.deep_supervision = False
    return c
