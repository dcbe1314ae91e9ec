"""Window arithmetic shared by patch cutting and sliding-window prediction.

Pure integer geometry, no I/O: a window is ``Win(row, col, height, width)`` in pixels of
the scene, ``height``/``width`` being the part that lies inside the scene. Keeping this
apart from rasterio makes the rules (how many patches, where the last one starts)
testable in microseconds and reusable by ``predict`` without opening a file.

Two tilings:

- :func:`patch_windows` (training patches): a regular grid every ``stride`` pixels;
  partial windows at the right/bottom edge are dropped or kept (to be padded).
- :func:`covering_windows` (whole-scene prediction): every pixel covered, neighbours
  overlapping by at least ``overlap`` pixels, the last row/column shifted inwards so no
  window needs padding unless the scene is smaller than one window.
"""

from __future__ import annotations

from typing import NamedTuple

from satseg_jax.errors import SatsegError

EDGES = ("drop", "pad")


class Win(NamedTuple):
    """A window in scene pixels; ``height``/``width`` are clipped to the scene."""

    row: int
    col: int
    height: int
    width: int


def _check(size: int, stride: int) -> None:
    if not (isinstance(size, int) and isinstance(stride, int)) or size <= 0 or stride <= 0:
        raise SatsegError(f"patch size {size!r} and stride {stride!r} must be positive integers")


def _offsets(length: int, size: int, stride: int, edge: str) -> list[int]:
    """Start offsets along one axis."""
    if length <= 0:
        return []
    if edge == "drop":
        return list(range(0, length - size + 1, stride))
    # pad: continue while the previous window did not reach the end of the axis.
    return [o for o in range(0, max(length - size, 0) + stride, stride) if o < length]


def patch_windows(height: int, width: int, size: int, stride: int | None = None,
                  edge: str = "drop") -> list[Win]:
    """Row-major windows of ``size`` every ``stride`` pixels over a ``height×width`` scene.

    ``edge='drop'`` keeps only complete windows (RGB.byte.tif, 791×718, size 128 → 6×5 =
    30); ``'pad'`` adds the partial windows at the right/bottom edges so every pixel
    (with ``stride <= size``) is in some window; their ``height``/``width`` is the part
    inside the scene and the caller pads the patch to ``size``.
    """
    stride = size if stride is None else stride
    _check(size, stride)
    if edge not in EDGES:
        raise SatsegError(f"edge={edge!r}: expected one of {', '.join(EDGES)}")
    rows = _offsets(height, size, stride, edge)
    cols = _offsets(width, size, stride, edge)
    return [Win(r, c, min(size, height - r), min(size, width - c)) for r in rows for c in cols]


def covering_windows(height: int, width: int, size: int, overlap: int = 0) -> list[Win]:
    """Windows of ``size`` covering every pixel, neighbours sharing ≥ ``overlap`` pixels.

    The last row/column of windows is shifted inwards to end at the scene edge, so all
    windows are complete unless the scene is smaller than ``size`` along an axis (then
    the single window along that axis is clipped and must be padded).
    """
    _check(size, size)
    if not isinstance(overlap, int) or not 0 <= overlap < size:
        raise SatsegError(f"overlap {overlap!r} must be an integer in [0, tile size {size})")
    step = size - overlap

    def starts(length: int) -> list[int]:
        if length <= size:
            return [0]
        s = list(range(0, length - size, step))
        return s + [length - size]

    return [Win(r, c, min(size, height - r), min(size, width - c))
            for r in starts(height) for c in starts(width)]


def to_rasterio(win: Win, size: int | None = None):
    """The rasterio ``Window`` of ``win``; with ``size``, the full (unclipped) patch."""
    from rasterio.windows import Window

    h, w = (size, size) if size is not None else (win.height, win.width)
    return Window(win.col, win.row, w, h)


def window_transform(win: Win, transform):
    """Affine transform of a patch whose upper-left pixel is ``win``'s.

    Equal to ``rasterio.windows.transform(Window(col, row, ...), transform)``: only the
    origin moves, pixel size and rotation are the scene's.
    """
    from rasterio.windows import transform as _transform

    return _transform(to_rasterio(win), transform)
