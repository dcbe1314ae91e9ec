"""Serve a source image's patch windows from rows decoded once, top to bottom.

Why: the image and mask files of labelled folder sets are mostly JPEG and PNG, which
can only be decoded from the top of the file. GDAL's drivers keep the decoder where the
last read stopped, so reading window after window along a row of patches (rows r..r+S
again for every window) restarts the decoder from the first line each time: a
1,536-px JPEG cut into 256-px patches was decoded 36 times, and ``satseg patches
--images`` ran at ~2 MB/s. Reading every row once, in order, into a buffer of the
current strip of rows (full width, ``size`` rows high) and slicing the windows from it
decodes each file once and gives the same pixels: the decoder produces the same scan
lines whichever window asked for them.

:class:`RowCachedDataset` wraps an open rasterio dataset and answers ``read(indexes,
window=...)`` like it, so the window loop (``Tiler``, ``MaskReader``) is unchanged.
Memory is one strip: ``size`` rows × the image width × its bands. A window that starts
above the strip (never the case for the row-major patch windows) is read from the file
directly, so the answer is always right, only slower.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class RowCachedDataset:
    """A read-only view of ``ds`` whose window reads come from a rolling row buffer.

    ``shape`` (height, width) narrows the view to the top-left part of the file (a mask
    a few pixels larger than its image, cropped with ``--crop-masks``): ``height`` and
    ``width`` then report that size, and reads never look past it.
    """

    def __init__(self, ds, shape: tuple[int, int] | None = None) -> None:
        self._ds = ds
        self.height, self.width = shape if shape is not None else (ds.height, ds.width)
        self._buf: np.ndarray | None = None  # (bands, rows, width)
        self._row0 = 0  # file row of the buffer's first row

    def __getattr__(self, name: str) -> Any:  # transform, crs, count, dtypes, ...
        return getattr(self._ds, name)

    def _rows(self, r0: int, r1: int) -> np.ndarray | None:
        """All bands of rows [r0, r1) over the full width, reading only rows not read
        yet; None when r0 lies above the buffer (the caller then reads directly)."""
        from rasterio.windows import Window

        buf = self._buf
        if buf is None:
            buf = np.zeros((self._ds.count, 0, self.width), self._ds.dtypes[0])
            self._row0 = r0
        if r0 < self._row0:
            return None
        end = self._row0 + buf.shape[1]
        if r0 >= end:  # past the buffer (gaps between patches): start afresh at r0
            buf, self._row0, end = buf[:, :0], r0, r0
        else:
            buf, self._row0 = buf[:, r0 - self._row0:], r0
        if r1 > end:
            new = self._ds.read(window=Window(0, end, self.width, r1 - end))
            buf = np.concatenate([buf, new], axis=1) if buf.shape[1] else new
            buf.flags.writeable = False  # windows are views of it: nobody may write
        self._buf = buf
        return buf[:, :r1 - r0]

    def read(self, indexes=None, window=None, **kwargs) -> np.ndarray:
        """``ds.read(indexes, window=window)`` for a window inside the view, as a
        read-only view of the row buffer (the window loop only reads its pixels)."""
        if window is None or kwargs:
            return self._ds.read(indexes, window=window, **kwargs)
        r0, c0 = int(window.row_off), int(window.col_off)
        r1, c1 = r0 + int(window.height), c0 + int(window.width)
        if not (0 <= r0 <= r1 <= self.height and 0 <= c0 <= c1 <= self.width):
            return self._ds.read(indexes, window=window)
        rows = self._rows(r0, r1)
        if rows is None:
            return self._ds.read(indexes, window=window)
        out = rows[:, :, c0:c1]  # a read-only view: no copy of every patch
        if indexes is None:
            return out
        if isinstance(indexes, int):
            return out[indexes - 1]
        return out[[i - 1 for i in indexes]]
