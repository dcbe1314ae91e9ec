"""Generate small labelled image/mask folder datasets like the published ones.

Non-georeferenced JPEG images of mixed sizes, colour-coded masks (RGB PNG or palette
PNG) with one ignore colour, and the ``classes.json`` that declares them. The truth
(class id per pixel, 255 = ignore) is returned so tests can check every decoded patch.
Images carry a class-dependent colour plus noise, so a tiny model can learn them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import rasterio

CLASSES = [
    {"id": 0, "name": "road", "colour": "#ff0000"},
    {"id": 1, "name": "grass", "colour": [0, 255, 0], "value": 7},
    {"id": 2, "name": "water", "colour": "#0000ff"},
    {"name": "unlabeled", "colour": "#000000", "ignore": True},
]
COLOURS = np.array([(255, 0, 0), (0, 255, 0), (0, 0, 255)], np.uint8)
IGNORE_COLOUR = (0, 0, 0)
# What each class looks like in the image (RGB), before noise.
LOOKS = np.array([(120, 120, 120), (40, 150, 50), (30, 60, 160)], np.float32)
SIZES = [(48, 64), (64, 64), (80, 48), (56, 72), (64, 96), (40, 40)]


def truth_labels(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Blocky class map (8-px cells) with a few ignore cells."""
    cells = rng.integers(0, 3, size=(h // 8 + 1, w // 8 + 1))
    lab = np.kron(cells, np.ones((8, 8), np.int64))[:h, :w].astype(np.uint8)
    holes = rng.random((h // 8 + 1, w // 8 + 1)) < 0.08
    lab[np.kron(holes, np.ones((8, 8), bool))[:h, :w]] = 255
    return lab


def image_for(rng: np.random.Generator, lab: np.ndarray) -> np.ndarray:
    """(3, H, W) uint8 image whose colour follows the labels."""
    base = LOOKS[np.where(lab == 255, 0, lab)]
    img = base + rng.normal(0, 12, base.shape)
    return np.clip(np.moveaxis(img, -1, 0), 0, 255).astype(np.uint8)


def write_image(path: Path, img: np.ndarray, driver: str = "JPEG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver=driver, width=img.shape[2], height=img.shape[1],
                       count=img.shape[0], dtype="uint8") as dst:
        dst.write(img)


def write_rgb_mask(path: Path, lab: np.ndarray, driver: str = "PNG") -> None:
    rgb = np.zeros((3, *lab.shape), np.uint8)
    for k in range(3):
        rgb[:, lab == k] = COLOURS[k][:, None]
    rgb[:, lab == 255] = np.array(IGNORE_COLOUR, np.uint8)[:, None]
    write_image(path, rgb, driver)


def write_palette_mask(path: Path, lab: np.ndarray) -> None:
    """Palette PNG whose indices are NOT the class ids (the palette decides)."""
    index = np.where(lab == 255, 9, lab + 3).astype(np.uint8)  # 3,4,5 = classes, 9 = ignore
    cmap = {i: (17 * i, 3 * i, 200 - i, 255) for i in range(16)}
    for k in range(3):
        cmap[k + 3] = (*COLOURS[k].tolist(), 255)
    cmap[9] = (*IGNORE_COLOUR, 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="PNG", width=lab.shape[1], height=lab.shape[0],
                       count=1, dtype="uint8") as dst:
        dst.write(index[None])
        dst.write_colormap(1, cmap)


def write_classes(path: Path) -> Path:
    path.write_text(json.dumps(CLASSES, indent=1) + "\n")
    return path


def colour_folder_set(root: Path, n: int = 12, seed: int = 0) -> dict[str, np.ndarray]:
    """ROOT/images/img_XX.jpg + ROOT/masks/img_XX.png (even: RGB, odd: palette).

    Returns {stem: truth labels}.
    """
    rng = np.random.default_rng(seed)
    truth = {}
    for i in range(n):
        h, w = SIZES[i % len(SIZES)]
        lab = truth_labels(rng, h, w)
        stem = f"img_{i:02d}"
        write_image(root / "images" / f"{stem}.jpg", image_for(rng, lab))
        if i % 2 == 0:
            write_rgb_mask(root / "masks" / f"{stem}.png", lab)
        else:
            write_palette_mask(root / "masks" / f"{stem}.png", lab)
        truth[stem] = lab
    write_classes(root / "classes.json")
    return truth


def write_raw_palette_png(path: Path, index: np.ndarray, palette: list[tuple]) -> None:
    """An 8-bit palette PNG written byte by byte, so pixels may use indices the PLTE
    chunk does not define (GDAL and PIL refuse or remap those when writing)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    h, w = index.shape
    raw = b"".join(b"\x00" + index[r].astype(np.uint8).tobytes() for r in range(h))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n"
                     + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 3, 0, 0, 0))
                     + chunk(b"PLTE", bytes(v for c in palette for v in c))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
