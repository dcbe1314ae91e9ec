"""Quickstart: a small padded U-Net on the generated sample scene, sized for a 2-core CPU.

Every knob a user may set lives here; override any of them on the command line, e.g.
``satseg train --config configs/unet_sample.py --workdir runs/x --config.train.num_steps=50``.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    # 'segmentation' (per-pixel labels) or 'classification' (one label per patch).
    c.task = "segmentation"
    # 'jit': one program over a Mesh of all devices (batch sharded along 'data');
    # 'pmap': per-device replicas with lax.pmean of gradients and BatchNorm statistics.
    c.parallelism = "jit"

    c.data = ml_collections.ConfigDict()
    c.data.data_dir = "runs/quickstart/data"  # written by `satseg build`
    c.data.train_split = "train"
    c.data.eval_split = "validation"  # scored during training; "" = none (fixed schedule)
    c.data.crop_size = 64  # random crop for training; 0 or the patch size = no crop
    c.data.augment = True  # random flips and 90° rotations, same for image and mask
    c.data.shuffle_buffer = 1024  # decoded examples held for shuffling
    c.data.cache = True  # keep decoded examples in memory (small datasets only)
    c.data.num_parallel_calls = 2  # tf.data threads for decoding/augmentation
    # Random resized crop (satseg_jax/augment.py): zoom factor vs the source pixels and
    # width/height aspect, both drawn log-uniformly; (1.0, 1.0) = off (plain crop).
    c.data.scale_range = (1.0, 1.0)
    c.data.aspect_range = (1.0, 1.0)
    # Per-band photometric jitter after normalisation (image only, never the mask):
    # brightness shift up to ± this many band std, contrast factor in 1 ± this; 0 = off.
    c.data.brightness = 0.0
    c.data.contrast = 0.0

    c.model = ml_collections.ConfigDict()
    c.model.name = "unet"
    c.model.depth = 3
    c.model.base_width = 16
    c.model.norm = "batch"
    c.model.dropout = 0.0
    c.model.upsample = "transpose"

    c.loss = ml_collections.ConfigDict()
    # cross_entropy | dice | focal | ce_dice; or set `weights` for a weighted sum.
    c.loss.name = "cross_entropy"
    c.loss.weights = ml_collections.ConfigDict()  # e.g. {'cross_entropy': 1.0, 'dice': 0.5}
    # none | inverse_frequency | sqrt_inverse_frequency (from satseg_dataset.json) |
    # one weight per class id, e.g. "1,3"; weights both CE (per pixel) and Dice (per class).
    c.loss.class_weights = "none"
    c.loss.label_smoothing = 0.0
    c.loss.focal_gamma = 2.0

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "adamw"  # adam | adamw | sgd (momentum)
    c.optimizer.learning_rate = 3e-3  # peak learning rate of the schedule
    c.optimizer.weight_decay = 1e-4
    c.optimizer.momentum = 0.9  # sgd only
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.999
    c.optimizer.grad_clip_norm = 1.0  # 0 disables clipping

    c.schedule = ml_collections.ConfigDict()
    # constant | warmup_cosine | piecewise | exponential
    c.schedule.name = "warmup_cosine"
    c.schedule.warmup_steps = 30
    c.schedule.end_factor = 0.01  # warmup_cosine: final lr = end_factor * peak
    c.schedule.boundaries = (0.6, 0.85)  # piecewise: fractions of num_steps
    c.schedule.scales = (0.1, 0.1)  # piecewise: multiply lr by these at the boundaries
    c.schedule.decay_rate = 0.5  # exponential: lr *= decay_rate every transition_steps
    c.schedule.transition_steps = 200
    c.schedule.warmup_epochs = 0.0  # > 0: replaces warmup_steps (which must then be 0)

    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 16  # global batch, split across all devices
    c.train.num_steps = 300
    # Length in passes over the train split instead (num_steps must then be 0); also
    # eval_every_epochs / checkpoint_every_epochs for eval_every / checkpoint_every.
    c.train.num_epochs = 0.0
    c.train.eval_every_epochs = 0.0
    c.train.checkpoint_every_epochs = 0.0
    c.train.compute_dtype = "float32"  # or bfloat16 (params stay float32)
    # CPU convolutions: 'auto' = oneDNN's (cpu/onednn_conv.py; needs `apt-get install
    # libdnnl-dev g++`) on a one-device CPU run, XLA's otherwise; 'onednn' | 'xla' force.
    c.train.cpu_conv = "auto"
    c.train.log_every = 25
    c.train.eval_every = 150
    c.train.checkpoint_every = 150
    c.train.keep_checkpoints = 2  # the last k; the best by validation mIoU is kept too
    c.train.max_nonfinite_steps = 10  # stop after this many non-finite losses in a row
    # Several processes agree on a SIGTERM/SIGINT stop every this many steps (an
    # all-gather: ~1 % of a small step at 10).
    c.train.stop_check_every = 10
    # Exponential moving average of the weights, evaluated (and used by evaluate/predict)
    # instead of the raw weights; 0 = off. ema_warmup: decay min(d, (1+t)/(10+t)).
    c.train.ema_decay = 0.0
    c.train.ema_warmup = True
    # Stop when the eval split's mIoU has not improved by more than min_delta for this
    # many evaluations in a row; 0 = never.
    c.train.early_stopping_patience = 0
    c.train.early_stopping_min_delta = 0.0

    c.eval = ml_collections.ConfigDict()
    c.eval.batch_size = 32
    c.eval.crop_size = 0  # centre crop for evaluation; 0 = the whole patch
    return c
