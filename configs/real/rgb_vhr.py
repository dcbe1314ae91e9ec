"""Recipe: very-high-resolution RGB (drone / aerial, 0.05-0.5 m), e.g. building footprints.

Built for sets like ../shared/data/oam_buildings_fair (256-px uint8 RGB chips, two
classes, ~100-150 training chips) on a 2-core CPU in about 30 minutes; only
``data.data_dir`` must be set:

    satseg train --config configs/real/rgb_vhr.py --workdir runs/kampala/run \
        --config.data.data_dir=runs/kampala/data

The dataset needs a ``validation`` split taken from the training area (early stopping and
the best checkpoint are chosen on it, never on test); with train/test only, build with a
split file that lists some training chips under "validation".

Choices, and why:

- **Width and depth**: U-Net, base width 24, depth 4 (~4.4 M parameters). At 0.1-0.3 m a
  building spans 30-200 px: depth 4 gives a 16× downsampled bottleneck whose receptive
  field covers a whole roof and its surroundings, which is where U-Net beats per-pixel
  classifiers on this kind of data; width 24 keeps a 192-px batch of 8 near 1 step/s on
  2 cores.
- **Crop**: random 192-px windows of the 256-px chips, zoomed 0.75-1.33× (scale
  augmentation: mixed web-map zooms z19-z21 differ by 2× per level) with aspect 0.8-1.25,
  flips and 90° rotations (overhead imagery has no "up"). Evaluation uses whole chips.
- **Photometric**: brightness ± 0.2 std and contrast ± 20 % per band (drone flights
  differ in exposure and white balance).
- **Schedule in epochs**: 60 passes over the train split (converted with its size), 2
  warm-up epochs, then cosine decay of AdamW (peak 2e-3, weight decay 1e-4); evaluation
  and a checkpoint every 2 epochs; stop after 8 evaluations (16 epochs) without
  improvement of the validation mIoU.
- **Loss**: cross-entropy + soft Dice, 1:1. Buildings are ~20-50 % of the pixels and
  vary a lot between chips; Dice (over the whole batch) keeps the minority class's
  recall up without per-pixel weights, CE keeps the gradients well behaved early on.
  Class weights stay off (set ``loss.class_weights='sqrt_inverse_frequency'`` for rarer
  classes).
- **EMA** of the weights (decay 0.995 with warm-up, half-life ~140 steps): evaluated,
  checkpointed and used by evaluate/predict; it smooths the noise of batch-8 updates.
"""

from pathlib import Path

from satseg_jax.config_files import load_config_file


def get_config():
    c = load_config_file(Path(__file__).parents[1] / "unet_sample.py")
    c.data.data_dir = ""  # set with --config.data.data_dir=DATA (satseg build output)
    c.data.crop_size = 192
    c.data.scale_range = (0.75, 1.33)
    c.data.aspect_range = (0.8, 1.25)
    c.data.brightness = 0.2
    c.data.contrast = 0.2
    c.data.shuffle_buffer = 512

    c.model.depth = 4
    c.model.base_width = 24
    c.model.upsample = "transpose"

    c.loss.name = "ce_dice"
    c.loss.class_weights = "none"

    c.optimizer.name = "adamw"
    c.optimizer.learning_rate = 2e-3
    c.optimizer.weight_decay = 1e-4

    c.schedule.name = "warmup_cosine"
    c.schedule.warmup_steps = 0
    c.schedule.warmup_epochs = 2.0

    c.train.batch_size = 8
    c.train.num_steps = 0
    c.train.num_epochs = 60.0
    c.train.log_every = 20
    c.train.eval_every = 0
    c.train.eval_every_epochs = 2.0
    c.train.checkpoint_every = 0
    c.train.checkpoint_every_epochs = 2.0
    c.train.ema_decay = 0.995
    c.train.early_stopping_patience = 8

    c.eval.batch_size = 8
    return c
