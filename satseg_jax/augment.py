"""Training augmentations in TensorFlow (tf.data), pure functions of a stateless seed.

Every function takes ``tf`` (imported by the caller: this module imports nothing heavy)
and a (2,) int ``seed``; the result is a function of the inputs and the seed only, which
is what exact resume needs (the input pipeline keys each example's seed by its position
in the stream).

- ``geometric``: the random crop, or with ``scale_range``/``aspect_range`` a random
  *resized* crop (a window of random size and aspect, resized to the crop size), then
  flips and 90° rotations. The image is resized bilinearly, the mask with nearest
  neighbour, so a mask keeps exactly its class ids (and 255) and never gains a value
  by interpolation; both use the same window and half-pixel-centre sampling, so they
  stay aligned.
- ``photometric``: per-band brightness and contrast, applied to the image only, and
  only to valid pixels (nodata stays 0).

Conventions (why: a recipe must mean the same on RGB uint8 tiles and Sentinel-2
reflectance):

- **Scale** is a zoom factor relative to the source pixels: 1 = native resolution,
  2 = objects twice as large (a window half the crop's side, upsampled), 0.5 = half as
  large. The window's side is ``crop / zoom``, stretched by ``sqrt(aspect)`` in width and
  shrunk by it in height, and clipped to the patch: zooming out (< 1) therefore needs a
  crop smaller than the patch. Zoom and aspect are drawn log-uniformly.
- **Photometric** changes are made *after* normalisation, in units of each band's
  train-split standard deviation, and *before* the geometric transforms: brightness adds
  ``U(-b, b)`` to each band, contrast scales each band's deviation from its per-image
  mean (over valid pixels) by ``U(1 - c, 1 + c)``. Each band is drawn independently, so
  it works for any band count (no RGB-only hue or saturation).
"""

from __future__ import annotations

import math
from typing import Any


def sub_seed(tf, seed, n: int):
    """An independent seed derived from ``seed`` (a new draw leaves the old ones as
    they were)."""
    return tf.random.experimental.stateless_fold_in(seed, n)


def _log_uniform(tf, seed, lo: float, hi: float):
    u = tf.random.stateless_uniform((), seed, dtype=tf.float32)
    return tf.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))


def resized_crop_window(tf, seed, patch: tuple[Any, Any], out: int,
                        scale_range: tuple[float, float], aspect_range: tuple[float, float]):
    """(y0, x0, h, w) of a random window of ``patch`` (height, width) for an ``out``-px
    output: side ``out / zoom`` scaled by the aspect, clipped to the patch, at a uniform
    random position."""
    seeds = tf.random.experimental.stateless_split(seed, num=4)
    zoom = _log_uniform(tf, seeds[0], *scale_range)
    aspect = _log_uniform(tf, seeds[1], *aspect_range)
    ph, pw = tf.cast(patch[0], tf.float32), tf.cast(patch[1], tf.float32)
    h = tf.clip_by_value(tf.round(out / zoom / tf.sqrt(aspect)), 1.0, ph)
    w = tf.clip_by_value(tf.round(out / zoom * tf.sqrt(aspect)), 1.0, pw)
    y0 = tf.floor(tf.random.stateless_uniform((), seeds[2]) * (ph - h + 1.0))
    x0 = tf.floor(tf.random.stateless_uniform((), seeds[3]) * (pw - w + 1.0))
    return [tf.cast(v, tf.int32) for v in (y0, x0, h, w)]


def random_resized_crop(tf, image, mask, seed, out: int, scale_range: tuple[float, float],
                        aspect_range: tuple[float, float]):
    """Crop a random window (``resized_crop_window``) of image (H, W, C) and mask (H, W)
    and resize it to ``out``×``out``: image bilinear, mask nearest neighbour."""
    shape = tf.shape(image)
    y0, x0, h, w = resized_crop_window(tf, seed, (shape[0], shape[1]), out, scale_range,
                                       aspect_range)
    img = tf.image.resize(image[y0:y0 + h, x0:x0 + w], (out, out), method="bilinear")
    msk = tf.image.resize(mask[y0:y0 + h, x0:x0 + w, None], (out, out), method="nearest")
    return img, tf.cast(msk[..., 0], mask.dtype)


def is_identity(scale_range: tuple[float, float], aspect_range: tuple[float, float]) -> bool:
    """Whether the resized crop is off (both ranges (1, 1)): then the plain crop runs."""
    return tuple(map(float, scale_range)) == (1.0, 1.0) and \
        tuple(map(float, aspect_range)) == (1.0, 1.0)


def geometric(tf, image, mask, seed, crop_size: int, flip_rotate: bool,
              scale_range: tuple[float, float] = (1.0, 1.0),
              aspect_range: tuple[float, float] = (1.0, 1.0)):
    """Random (resized) crop, flips and 90° rotations applied identically to image and
    mask. ``crop_size`` 0 keeps the patch size (the resized crop then outputs it too).

    With both ranges (1, 1) this draws exactly what it always drew (a plain random crop),
    so existing runs and their resume points are unchanged.
    """
    c = image.shape[-1]
    seeds = tf.random.experimental.stateless_split(seed, num=4)
    mask = tf.cast(mask, tf.int32)
    if not is_identity(scale_range, aspect_range):
        out = crop_size or int(image.shape[0])
        image, mask = random_resized_crop(tf, image, mask, sub_seed(tf, seed, 1), out,
                                          scale_range, aspect_range)
        crop_size = 0
    both = tf.concat([image, tf.cast(mask, tf.float32)[..., None]], axis=-1)
    if crop_size:
        both = tf.image.stateless_random_crop(both, (crop_size, crop_size, c + 1), seed=seeds[0])
    if flip_rotate:
        both = tf.image.stateless_random_flip_left_right(both, seed=seeds[1])
        both = tf.image.stateless_random_flip_up_down(both, seed=seeds[2])
        k = tf.random.stateless_uniform((), seeds[3], minval=0, maxval=4, dtype=tf.int32)
        both = tf.image.rot90(both, k)
    return both[..., :c], tf.cast(tf.round(both[..., c]), tf.int32)


def photometric(tf, image, valid, seed, brightness: float, contrast: float):
    """Per-band brightness (+U(-b, b)) and contrast (×U(1-c, 1+c) about the band's mean
    over ``valid`` pixels) of a normalised (H, W, C) image; invalid pixels stay 0."""
    if not brightness and not contrast:
        return image
    c = int(image.shape[-1])
    seeds = tf.random.experimental.stateless_split(seed, num=2)
    s_b, s_c = seeds[0], seeds[1]
    v = tf.cast(valid, image.dtype)[..., None]
    count = tf.maximum(tf.reduce_sum(v), 1.0)
    mean = tf.reduce_sum(image * v, axis=(0, 1)) / count
    factor = tf.random.stateless_uniform((c,), s_c, 1.0 - contrast, 1.0 + contrast)
    shift = tf.random.stateless_uniform((c,), s_b, -brightness, brightness)
    out = (image - mean) * factor + mean + shift
    return out * v
