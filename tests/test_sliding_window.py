"""The tile loop and its strip writer against a whole-scene reference.

Why: the writer keeps only a strip of blended probabilities and moves it up the scene
(``MapWriter._compact``) only when a tile would run past its end; a slip in that
bookkeeping shifts or drops rows of the map. A deterministic stand-in model (no JAX)
makes the expected map computable by accumulating every tile over the whole scene.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from satseg_jax.raster.windows import covering_windows
from satseg_jax.sliding_window import TileSetup
from satseg_jax.tiled_scene import blend_window, map_scene

K, BANDS = 3, 2
W_MIX = np.array([[0.03, -0.02, 0.01], [-0.01, 0.02, 0.015]], np.float32)


def _probs(raw: np.ndarray) -> np.ndarray:
    """(b, K, t, t) softmax of a fixed linear map of the raw bands: a per-pixel 'model'."""
    logits = raw.astype(np.float32) @ W_MIX
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)).transpose(0, 3, 1, 2)


def _reference(scene: np.ndarray, tile: int, overlap: int, weights: np.ndarray) -> np.ndarray:
    """The class map from blending every tile over the whole scene at once."""
    _, h, w = scene.shape
    acc = np.zeros((K, h, w), np.float32)
    for win in covering_windows(h, w, tile, overlap):
        rows, cols = slice(win.row, win.row + win.height), slice(win.col, win.col + win.width)
        p = _probs(scene[:, rows, cols].transpose(1, 2, 0)[None])[0]
        acc[:, rows, cols] += p * weights[:win.height, :win.width]
    return np.argmax(acc, axis=0).astype(np.uint8)


@pytest.mark.parametrize("weighted", [False, True])  # window applied by the host / model
@pytest.mark.parametrize("height", [40, 700])  # the strip holds the scene / moves often
def test_strip_writer_gives_the_whole_scene_map(tmp_path, height, weighted):
    rng = np.random.default_rng(height)
    scene = rng.integers(1, 255, (BANDS, height, 90), dtype=np.uint8)
    path = tmp_path / "scene.tif"
    with rasterio.open(path, "w", driver="GTiff", width=90, height=height, count=BANDS,
                       dtype="uint8", crs="EPSG:32722",
                       transform=from_origin(500000, 8e6, 10, 10)) as dst:
        dst.write(scene)
    tile, overlap, weights = 32, 8, blend_window(32, "gaussian")
    model = (lambda state, x, v: _probs(x) * weights) if weighted else (
        lambda state, x, v: _probs(x))
    setup = TileSetup(state=None, probabilities_of=model, batch=3, tile=tile, in_tile=tile,
                      margin=0, weights=weights, blend="gaussian", num_bands=BANDS,
                      weighted=weighted)
    card = SimpleNamespace(num_bands=BANDS, bands=["b1", "b2"], nodata=None, image_dtype="uint8",
                           num_classes=K, class_names=["a", "b", "c"],
                           classes=[{"colour": c} for c in ("#ff0000", "#00ff00", "#0000ff")])
    blocks: list[tuple[int, np.ndarray]] = []
    summary = map_scene(setup, card, path, tmp_path / "map.tif", overlap, progress=False,
                        on_rows=lambda cls, top: blocks.append((top, cls.copy())))
    expected = _reference(scene, tile, overlap, weights)
    with rasterio.open(tmp_path / "map.tif") as m:
        got = m.read(1)
    assert np.array_equal(got, expected)
    # Blocks arrive in order, each starting where the last ended, and cover the scene.
    tops = [t for t, _ in blocks]
    assert tops[0] == 0 and np.array_equal(np.concatenate([b for _, b in blocks]), expected)
    assert all(t1 == t0 + len(b) for (t0, b), t1 in zip(blocks, tops[1:]))
    assert summary["class_pixels"] == {n: int((expected == i).sum())
                                       for i, n in enumerate(card.class_names)}
    if height > 40:
        assert len(blocks) > 3  # many flushes, so the strip moved
