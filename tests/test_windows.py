"""Window arithmetic: counts, edges, coverage, transforms (pure geometry, no files)."""

from __future__ import annotations

import numpy as np
import pytest
from affine import Affine
from rasterio.windows import Window
from rasterio.windows import transform as rio_window_transform

from satseg_jax.errors import SatsegError
from satseg_jax.raster.windows import (
    Win,
    covering_windows,
    patch_windows,
    to_rasterio,
    window_transform,
)

# RGB.byte.tif's grid: 791 wide x 718 high.
H, W = 718, 791


def test_rgb_byte_grid_drop_gives_30_full_windows():
    wins = patch_windows(H, W, 128, 128, "drop")
    assert len(wins) == 30  # 6 columns x 5 rows
    assert sorted({w.col for w in wins}) == [0, 128, 256, 384, 512, 640]
    assert sorted({w.row for w in wins}) == [0, 128, 256, 384, 512]
    assert all((w.height, w.width) == (128, 128) for w in wins)
    assert wins[0] == Win(0, 0, 128, 128) and wins[1] == Win(0, 128, 128, 128)  # row-major


def test_pad_adds_clipped_edge_windows():
    wins = patch_windows(H, W, 128, 128, "pad")
    assert len(wins) == 42  # 7 columns x 6 rows
    last = wins[-1]
    assert last == Win(640, 768, H - 640, W - 768)
    assert {w.width for w in wins if w.col == 768} == {W - 768}


@pytest.mark.parametrize("size,stride", [(128, 128), (128, 64), (100, 37), (64, 100)])
def test_windows_stay_inside_and_pad_covers(size, stride):
    for edge in ("drop", "pad"):
        for w in patch_windows(H, W, size, stride, edge):
            assert 0 <= w.row < H and 0 <= w.col < W
            assert w.row + w.height <= H and w.col + w.width <= W
    if stride <= size:
        cover = np.zeros((H, W), bool)
        for w in patch_windows(H, W, size, stride, "pad"):
            cover[w.row:w.row + w.height, w.col:w.col + w.width] = True
        assert cover.all()


def test_overlapping_stride_count():
    # 718 rows, size 128, stride 64 -> starts 0..576 step 64 = 10; 791 cols -> 0..640 = 11.
    assert len(patch_windows(H, W, 128, 64, "drop")) == 10 * 11


def test_scene_smaller_than_patch():
    assert patch_windows(50, 60, 128, 128, "drop") == []
    assert patch_windows(50, 60, 128, 128, "pad") == [Win(0, 0, 50, 60)]


@pytest.mark.parametrize("kwargs", [dict(edge="crop"), dict(size=0), dict(stride=-1)])
def test_bad_arguments_are_user_errors(kwargs):
    args = dict(height=H, width=W, size=128, stride=128, edge="drop") | kwargs
    with pytest.raises(SatsegError):
        patch_windows(**args)


@pytest.mark.parametrize("size,overlap", [(128, 0), (128, 32), (256, 64), (1000, 10)])
def test_covering_windows_cover_with_overlap(size, overlap):
    wins = covering_windows(H, W, size, overlap)
    cover = np.zeros((H, W), np.int32)
    for w in wins:
        assert w.row + w.height <= H and w.col + w.width <= W
        if H >= size and W >= size:
            assert (w.height, w.width) == (size, size)
        cover[w.row:w.row + w.height, w.col:w.col + w.width] += 1
    assert cover.min() >= 1
    cols = sorted({w.col for w in wins})
    for a, b in zip(cols, cols[1:]):
        assert a + size - b >= overlap  # neighbours share at least `overlap` pixels


def test_covering_windows_rejects_bad_overlap():
    with pytest.raises(SatsegError):
        covering_windows(H, W, 128, 128)


def test_window_transform_matches_rasterio():
    scene = Affine(300.0379266750948, 0.0, 101985.0, 0.0, -300.041782729805, 2826915.0)
    w = Win(384, 512, 128, 128)
    assert to_rasterio(w) == Window(512, 384, 128, 128)
    assert window_transform(w, scene) == rio_window_transform(Window(512, 384, 128, 128), scene)
    assert window_transform(w, scene) * (0, 0) == scene * (512, 384)
    # A clipped edge window still reports its full patch on request.
    assert to_rasterio(Win(640, 768, 78, 23), size=128) == Window(768, 640, 128, 128)
