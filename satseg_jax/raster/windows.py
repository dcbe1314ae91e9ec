"""Window arithmetic shared by patch cutting and (later) sliding-window prediction.

Pure integer geometry, no I/O: a window is ``(row_off, col_off, height, width)`` in
pixels of the scene. Partial windows at the right/bottom edge are either dropped or
kept and padded by the caller.
"""

from __future__ import annotations

from typing import NamedTuple

from satseg_jax.errors import SatsegError


class Win(NamedTuple):
    row: int
    col: int
    height: int
    width: int


def _offsets(length: int, size: int, stride: int, edge: str) -> list[int]:
    if edge == "drop":
        return list(range(0, length - size + 1, stride)) if length >= size else []
    if edge == "pad":
        return list(range(0, max(length - size, 0) + stride, stride)) if length > 0 else []
    raise SatsegError(f"edge={edge!r}: expected drop or pad")


def patch_windows(height: int, width: int, size: int, stride: int | None = None,
                  edge: str = "drop") -> list[Win]:
    """Row-major windows of ``size`` every ``stride`` pixels over a ``height×width`` scene.

    ``edge='drop'`` keeps only complete windows; ``'pad'`` adds the partial windows at
    the right/bottom edges (their ``height``/``width`` is the part inside the scene).
    """
    stride = stride or size
    if size <= 0 or stride <= 0:
        raise SatsegError(f"patch size {size} and stride {stride} must be positive")
    rows = [r for r in _offsets(height, size, stride, edge) if r < height]
    cols = [c for c in _offsets(width, size, stride, edge) if c < width]
    return [Win(r, c, min(size, height - r), min(size, width - c)) for r in rows for c in cols]


def covering_windows(height: int, width: int, size: int, overlap: int) -> list[Win]:
    """Windows of ``size`` (clipped to the scene) with at least ``overlap`` pixels shared
    between neighbours, covering every pixel; the last row/column is shifted inwards so
    no window hangs outside the scene unless the scene is smaller than ``size``.
    """
    if not 0 <= overlap < size:
        raise SatsegError(f"overlap {overlap} must be in [0, tile size {size})")
    step = size - overlap

    def starts(length: int) -> list[int]:
        if length <= size:
            return [0]
        s = list(range(0, length - size, step))
        return s + [length - size]

    return [Win(r, c, min(size, height - r), min(size, width - c))
            for r in starts(height) for c in starts(width)]
