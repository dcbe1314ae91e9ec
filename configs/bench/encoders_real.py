"""Sweep: named encoders under U-Net, U-Net++, FPN and DeepLabV3+ on a REAL dataset.

    satseg benchmark --sweep configs/bench/encoders_real.py:rgb_vhr \
        --data-dir runs/kampala/data --workdir runs/bench_enc_kampala     # drone RGB
    satseg benchmark --sweep configs/bench/encoders_real.py:multispectral \
        --data-dir runs/amazon/data --workdir runs/bench_enc_amazon       # Sentinel-2 RGB

Rows (issue 31's list): the recipe's own plain ``unet`` (the row every other one is
paired against), ``unet`` × {resnet18, resnet34, resnet50, convnext_tiny},
``unet_plus_plus`` × resnet34, ``deeplabv3plus`` × resnet50 and ``fpn`` × resnet34, plus
the classical baselines. The encoder rows take smp's defaults (U-Net / U-Net++ decoders
256-128-64-32-16 over 5 stages, nearest up-sampling; DeepLabV3+ at output stride 16; FPN
256/128 channels), so each row is the model a torch user would get from
``smp.<Decoder>(encoder)``, parameter for parameter (tests/test_encoders.py,
tests/test_decoders.py).

Starting weights: every encoder row starts from random weights unless the row (or
``--config`` below) names imported ones. To compare pretrained starts, import them once
(``satseg weights import``, README "Pretrained encoders") and add
``"encoder_weights": "runs/enc/resnet34"`` (and ``"adapt_bands"`` where the bands
differ) to the rows; the card's normalisation replaces the dataset's for its bands.

Schedule: that of ``unet_variants_real.py`` (300 steps of the recipe's crop, batch,
augmentation and loss, EMA 0.98, no split looked at while training, the last checkpoint
scored on ``test``), so the two real tables are comparable. Crops must be divisible by
32 for the 5-stage encoders: both recipes' crops are (128 and 64 px).
"""

from pathlib import Path

import ml_collections

from satseg_jax.config_files import load_config_file

RECIPES = ("rgb_vhr", "multispectral")
# smp's decoder defaults over a 5-stage encoder (models/unet.py, "encoder").
SMP_UNET = {"depth": 5, "base_width": 16, "upsample": "nearest"}


def encoder_rows(plain_unet: dict) -> dict[str, dict]:
    """The sweep's rows: ``{label: config.model fields}``."""
    rows = {"unet": dict(plain_unet)}
    for encoder in ("resnet18", "resnet34", "resnet50", "convnext_tiny"):
        rows[f"unet_{encoder}"] = {"name": "unet", "encoder": encoder, **SMP_UNET}
    rows["unet_plus_plus_resnet34"] = {"name": "unet_plus_plus", "encoder": "resnet34",
                                       **SMP_UNET}
    rows["deeplabv3plus_resnet50"] = {"name": "deeplabv3plus", "encoder": "resnet50"}
    rows["fpn_resnet34"] = {"name": "fpn", "encoder": "resnet34"}
    return rows


def get_config(recipe: str = "rgb_vhr"):
    if recipe not in RECIPES:
        raise ValueError(f"recipe {recipe!r}: expected one of {', '.join(RECIPES)}")
    configs = Path(__file__).parents[1]
    # The real-data schedule, seeds, split and baselines of the variant sweep.
    sweep = load_config_file(configs / "bench" / "unet_variants_real.py", recipe)
    plain = sweep.base.model.to_dict()
    sweep.variants = ml_collections.ConfigDict(encoder_rows(plain))
    return sweep
