"""Per-band statistics (train split only) and class frequencies per split.

Why train only: normalising with statistics that saw validation/test pixels leaks
information from the held-out data into training. Statistics are streamed patch by
patch (Chan et al. parallel merging of mean and M2 in float64), so they need one patch
in memory, not the dataset.
"""

from __future__ import annotations

import numpy as np


class BandStats:
    """Streaming per-band mean / variance over valid pixels."""

    def __init__(self, num_bands: int):
        self.n = np.zeros(num_bands, np.float64)
        self.mean = np.zeros(num_bands, np.float64)
        self.m2 = np.zeros(num_bands, np.float64)

    def update(self, image: np.ndarray, valid: np.ndarray) -> None:
        """``image`` (C, H, W) or (H, W, C) with ``channels_last``; ``valid`` (H, W)."""
        x = image.reshape(image.shape[0], -1)[:, valid.ravel()].astype(np.float64)
        nb = x.shape[1]
        if nb == 0:
            return
        mb = x.mean(axis=1)
        m2b = ((x - mb[:, None]) ** 2).sum(axis=1)
        n = self.n + nb
        delta = mb - self.mean
        self.mean = self.mean + delta * nb / n
        self.m2 = self.m2 + m2b + delta**2 * self.n * nb / n
        self.n = n

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(np.where(self.n > 0, self.m2 / np.maximum(self.n, 1), 0.0))


def inverse_frequency_weights(counts: np.ndarray) -> np.ndarray:
    """w_k ∝ 1 / pixel count, normalised to mean 1 over classes present in train.

    Classes with no train pixel get weight 0: there is nothing to weight, and an
    infinite weight would only matter if the class appeared, which it cannot in train.
    """
    counts = np.asarray(counts, np.float64)
    present = counts > 0
    w = np.zeros_like(counts)
    w[present] = counts[present].sum() / counts[present]
    if present.any():
        w[present] /= w[present].mean()
    return w
