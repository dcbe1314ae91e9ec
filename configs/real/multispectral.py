"""Recipe: decametric multispectral imagery (Sentinel-2 / Landsat, 10-30 m), any band count.

Built for sets like ../shared/data/amazon_forest_s2_rgb (Sentinel-2 chips, 3 bands there,
but nothing here assumes RGB: 4-13 reflectance bands, or an S2 + S1 stack, work the same)
on a 2-core CPU in about 30 minutes; only ``data.data_dir`` must be set:

    satseg train --config configs/real/multispectral.py --workdir runs/amazon/run \
        --config.data.data_dir=runs/amazon/data

Patches of 256 px (e.g. ``satseg patches --size 256 --stride 256``) are assumed; the
dataset needs a ``validation`` split (early stopping and the best checkpoint use it).

Choices, and why:

- **Width and depth**: U-Net, base width 32, depth 4 (~7.8 M parameters at 3 bands). At
  10 m, land-cover classes are mostly defined by spectra and texture over a few hundred
  metres: a 16× bottleneck (160 m cells) is context enough, and the extra width (vs the
  VHR recipe) buys spectral capacity rather than reach.
- **Crop**: random 160-px windows of 256-px patches with mild scale augmentation
  (0.8-1.25× zoom, aspect 0.9-1.1): the ground pixel size is fixed by the sensor, so
  only small resampling is realistic; flips and 90° rotations.
- **Photometric**: per-band brightness ± 0.1 std and contrast ± 10 %, drawn per band
  (haze, season and sun angle shift bands unequally; no RGB-only hue/saturation ops),
  after normalisation with the train split's statistics, on valid pixels only.
- **Schedule in epochs**: 40 epochs, 2 warm-up epochs, cosine AdamW (peak 1e-3,
  weight decay 1e-4); evaluation and a checkpoint every epoch; early stop after 10
  evaluations without improvement.
- **Loss**: cross-entropy + soft Dice, 1:1 (balanced IoU across classes);
  ``sqrt_inverse_frequency`` class weights soften class imbalance in land-cover sets
  with rare classes (for two balanced classes they are ~1 and change little).
- **EMA** of the weights, decay 0.99 with warm-up (fewer, larger-batch steps than the
  VHR recipe, so a shorter half-life, ~70 steps).
"""

from pathlib import Path

from satseg_jax.config_files import load_config_file


def get_config():
    c = load_config_file(Path(__file__).parents[1] / "unet_sample.py")
    c.data.data_dir = ""  # set with --config.data.data_dir=DATA (satseg build output)
    c.data.crop_size = 160
    c.data.scale_range = (0.8, 1.25)
    c.data.aspect_range = (0.9, 1.1)
    c.data.brightness = 0.1
    c.data.contrast = 0.1
    c.data.shuffle_buffer = 512

    c.model.depth = 4
    c.model.base_width = 32

    c.loss.name = "ce_dice"
    c.loss.class_weights = "sqrt_inverse_frequency"

    c.optimizer.name = "adamw"
    c.optimizer.learning_rate = 1e-3
    c.optimizer.weight_decay = 1e-4

    c.schedule.name = "warmup_cosine"
    c.schedule.warmup_steps = 0
    c.schedule.warmup_epochs = 2.0

    c.train.batch_size = 8
    c.train.num_steps = 0
    c.train.num_epochs = 40.0
    c.train.log_every = 20
    c.train.eval_every = 0
    c.train.eval_every_epochs = 1.0
    c.train.checkpoint_every = 0
    c.train.checkpoint_every_epochs = 1.0
    c.train.ema_decay = 0.99
    c.train.early_stopping_patience = 10

    c.eval.batch_size = 8
    return c
