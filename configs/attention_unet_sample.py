"""attention_unet on the sample dataset: the quickstart config with `model.name = "attention_unet"`.

    satseg train --config configs/attention_unet_sample.py --workdir runs/attention_unet
"""

from pathlib import Path

from satseg_jax.config_files import load_config_file


def get_config():
    c = load_config_file(Path(__file__).with_name("unet_sample.py"))
    c.model.name = "attention_unet"
    return c
