"""Per-band statistics (train split only), class pixel counts per split, class weights.

Why train only: normalising with statistics that saw validation/test pixels leaks the
held-out data into training. Why streaming: a dataset need not fit in memory, so the
mean and variance are merged patch by patch (Chan et al.'s parallel update of count,
mean and sum of squared deviations, in float64), which is as exact as a two-pass
computation and does not suffer the cancellation of a plain sum-of-squares.

Valid pixels are the ones ``satseg patches`` counts as data
(:func:`satseg_jax.raster.io.valid_pixels`, the one rule both share): a pixel is invalid
when *every* band equals the image's nodata value, or when any band is NaN/±inf (float
images). Only valid pixels enter the band statistics. Label pixels equal to the ignore
label 255 are counted apart from the classes.
"""

from __future__ import annotations

import numpy as np

from satseg_jax.classes import IGNORE_LABEL
from satseg_jax.datasets.splits import SPLITS
from satseg_jax.errors import SatsegError
from satseg_jax.raster.io import valid_pixels


class BandStats:
    """Streaming per-band count, mean and M2 (sum of squared deviations), float64."""

    def __init__(self, num_bands: int):
        self.n = np.zeros(num_bands, np.float64)
        self.mean = np.zeros(num_bands, np.float64)
        self.m2 = np.zeros(num_bands, np.float64)

    def update(self, image: np.ndarray, valid: np.ndarray | None = None) -> None:
        """Merge the pixels of ``image`` (..., C) where ``valid`` (...) is True (all if None).

        Per patch: mean and M2 by two passes in float64 (sums through BLAS: a strided
        numpy reduction over channels-last data is the slow part of a build), then
        Chan et al.'s pairwise merge into the running totals.
        """
        c = image.shape[-1]
        x = image.reshape(-1, c)
        if valid is not None and not valid.all():
            x = x[valid.reshape(-1)]
        nb = x.shape[0]
        if nb == 0:
            return
        xf = x.astype(np.float64)
        mb = (np.ones(nb) @ xf) / nb
        xf -= mb
        m2b = np.einsum("ij,ij->j", xf, xf)
        n = self.n + nb
        delta = mb - self.mean
        self.mean = self.mean + delta * (nb / n)
        self.m2 = self.m2 + m2b + delta**2 * (self.n * nb / n)
        self.n = n

    def merge(self, other: BandStats) -> None:
        """Fold another partial result into this one (Chan et al.'s pairwise update).

        Why: a distributed build (Beam) accumulates statistics per bundle of examples on
        different workers and combines them; an empty side (n == 0) leaves the other
        exactly unchanged, so only the order of non-empty merges affects the last bits.
        """
        n = self.n + other.n
        safe = np.where(n > 0, n, 1.0)
        delta = other.mean - self.mean
        self.mean = self.mean + delta * (other.n / safe)
        self.m2 = self.m2 + other.m2 + delta**2 * (self.n * other.n / safe)
        self.n = n

    @property
    def var(self) -> np.ndarray:
        """Population variance (ddof=0), 0 for a band without pixels."""
        return np.where(self.n > 0, self.m2 / np.maximum(self.n, 1), 0.0)

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.var)


def class_pixel_counts(mask: np.ndarray, num_classes: int, where: str = "mask"
                       ) -> tuple[np.ndarray, int]:
    """(per-class pixel counts (K,), ignored pixel count) of a uint8 mask.

    A value in K..254 is neither a class nor ignore: an error naming ``where``.
    """
    c = np.bincount(np.asarray(mask, np.uint8).ravel(), minlength=256)
    bad = np.flatnonzero(c[num_classes:IGNORE_LABEL])
    if bad.size:
        raise SatsegError(f"{where}: holds class id(s) {(bad + num_classes).tolist()} not in "
                          f"classes.json (ids 0..{num_classes - 1}, 255 = ignore); re-run "
                          "satseg patches with the matching classes.json")
    return c[:num_classes].astype(np.int64), int(c[IGNORE_LABEL])


def inverse_frequency_weights(counts) -> np.ndarray:
    """w_k ∝ 1 / (pixel count of class k), normalised to mean 1 over the classes present.

    A class with no train pixel gets weight 0: the loss can never see it in training,
    and an infinite or made-up weight would only distort the normalisation of the others.
    """
    counts = np.asarray(counts, np.float64)
    w = np.zeros_like(counts)
    present = counts > 0
    if present.any():
        w[present] = 1.0 / counts[present]
        w[present] /= w[present].mean()
    return w


class DatasetStats:
    """Everything ``satseg build`` reports about the examples it writes, in one pass.

    ``add(split, image, mask)`` is called once per example; band statistics are kept for
    ``stats_split`` only, class/ignored pixel counts and example counts for every split.
    """

    def __init__(self, num_bands: int, num_classes: int, nodata: float | int | None,
                 stats_split: str = "train"):
        self.num_classes = num_classes
        self.nodata = nodata
        self.stats_split = stats_split
        self.bands = BandStats(num_bands)
        self.class_counts = {s: np.zeros(num_classes, np.int64) for s in SPLITS}
        self.ignored = dict.fromkeys(SPLITS, 0)
        self.examples = dict.fromkeys(SPLITS, 0)

    def add(self, split: str, image: np.ndarray, mask: np.ndarray | None,
            where: str = "mask") -> None:
        """Count one example: ``image`` (H, W, C), ``mask`` (H, W) uint8 or None."""
        self.examples[split] += 1
        if mask is not None:
            counts, ignored = class_pixel_counts(mask, self.num_classes, where)
            self.class_counts[split] += counts
            self.ignored[split] += ignored
        if split == self.stats_split:
            self.bands.update(image, valid_pixels(image, self.nodata, channels_last=True))

    def merge(self, other: DatasetStats) -> DatasetStats:
        """Add another partial result (same bands, classes, nodata) into this one; return self.

        Why: under Beam each worker counts the examples it generates, and the partial
        results are merged (any order: counts add exactly, band statistics by Chan's
        update, equal to a sequential pass up to float rounding).
        """
        self.bands.merge(other.bands)
        for s in SPLITS:
            self.class_counts[s] += other.class_counts[s]
            self.ignored[s] += other.ignored[s]
            self.examples[s] += other.examples[s]
        return self

    def to_json(self) -> dict:
        """A JSON-able dict; floats keep every bit (``json`` writes them with ``repr``)."""
        return {
            "num_bands": len(self.bands.n), "num_classes": self.num_classes,
            "nodata": self.nodata, "stats_split": self.stats_split,
            "n": self.bands.n.tolist(), "mean": self.bands.mean.tolist(),
            "m2": self.bands.m2.tolist(),
            "class_counts": {s: self.class_counts[s].tolist() for s in SPLITS},
            "ignored": dict(self.ignored), "examples": dict(self.examples),
        }

    @classmethod
    def from_json(cls, d: dict) -> DatasetStats:
        """The inverse of :meth:`to_json`."""
        stats = cls(d["num_bands"], d["num_classes"], d["nodata"], d["stats_split"])
        stats.bands.n = np.asarray(d["n"], np.float64)
        stats.bands.mean = np.asarray(d["mean"], np.float64)
        stats.bands.m2 = np.asarray(d["m2"], np.float64)
        for s in SPLITS:
            stats.class_counts[s] = np.asarray(d["class_counts"][s], np.int64)
            stats.ignored[s] = int(d["ignored"][s])
            stats.examples[s] = int(d["examples"][s])
        return stats

    def band_summary(self) -> tuple[list[float], list[float]]:
        """(mean, std) per band; a SatsegError when some band has no valid pixel."""
        if self.bands.n.min(initial=np.inf) == 0:
            empty = np.flatnonzero(self.bands.n == 0).tolist()
            raise SatsegError(f"the {self.stats_split} split has no valid pixel in band(s) "
                              f"{empty} (all nodata/NaN) to compute band statistics from; "
                              "check the scene's nodata value, or change --split/--seed")
        return self.bands.mean.tolist(), self.bands.std.tolist()
