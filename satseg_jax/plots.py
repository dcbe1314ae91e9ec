"""PNG figures: confusion matrices, per-patch overlays, scene/map previews.

matplotlib with the Agg backend, imported lazily: plotting must never be the reason a
training job fails to start on a headless node.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from satseg_jax.io_utils import atomic_path, refuse_overwriting_inputs


def confusion_matrix_png(cm: np.ndarray, class_names: list[str], path: str | Path,
                         title: str = "") -> Path:
    """Row-normalised confusion matrix (recall per true class) with raw counts annotated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(cm, dtype=np.float64)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    k = len(class_names)
    fig, ax = plt.subplots(figsize=(1.1 * k + 2.5, 1.0 * k + 2))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), class_names, rotation=45, ha="right")
    ax.set_yticks(range(k), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "confusion matrix (rows normalised)")
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{norm[i, j]:.2f}\n{int(cm[i, j])}", ha="center", va="center",
                    fontsize=7, color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return save_figure(fig, path)


def save_figure(fig, path: str | Path) -> Path:
    """Save a matplotlib figure atomically and close it.

    Through io_utils.atomic_path: the temporary ``.NAME.XXXXXXXX.tmp`` is removed on
    any failure or signal, and the next save of the same figure sweeps one a killed run
    left (also the ``.NAME.tmp.png`` of earlier versions).
    """
    import matplotlib.pyplot as plt

    path = Path(path)
    path.with_name(f".{path.name}.tmp.png").unlink(missing_ok=True)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100, format="png")  # the name ends .tmp
    finally:
        plt.close(fig)
    return path


def _decimated(path: str | Path, max_size: int, indexes=None, resampling: str = "average"):
    """Read a raster shrunk to at most ``max_size`` px (GDAL overview/decimated read).

    Only pixels are drawn, never coordinates: a plain image or map without a CRS is as
    good as a GeoTIFF here (rasterio's NotGeoreferencedWarning is silenced for it).
    """
    import warnings

    import rasterio
    from rasterio.enums import Resampling
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        src = rasterio.open(path)
    with src:
        scale = max(src.width, src.height) / max_size
        h, w = max(1, round(src.height / max(scale, 1))), max(1, round(src.width / max(scale, 1)))
        idx = indexes or list(range(1, src.count + 1))
        data = src.read(idx, out_shape=(len(idx), h, w), resampling=Resampling[resampling])
        return data, src.nodata, list(src.descriptions)


def _stretch(rgb: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """2–98 % per-band stretch to 0..1 over valid pixels (the usual RGB preview)."""
    out = np.zeros(rgb.shape, np.float32)
    for i in range(rgb.shape[0]):
        v = rgb[i][valid].astype(np.float64)
        lo, hi = (np.percentile(v, (2, 98)) if v.size else (0.0, 1.0))
        out[i] = np.clip((rgb[i] - lo) / max(hi - lo, 1e-9), 0, 1)
    return out


def map_preview_png(image: str | Path, class_map: str | Path, class_names: list[str],
                    colours: list[tuple[int, int, int]], out: str | Path,
                    rgb_bands: tuple[int, int, int] | None = None, max_size: int = 1024) -> Path:
    """Scene RGB preview beside the predicted map, with a class legend (one PNG)."""
    import matplotlib

    refuse_overwriting_inputs({"out": out}, {"image": image, "class_map": class_map})

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    _, _, desc = _decimated(image, 8)
    if rgb_bands is None:
        names = [d.lower() if d else "" for d in desc]
        if all(n in names for n in ("red", "green", "blue")):
            rgb_bands = tuple(names.index(n) + 1 for n in ("red", "green", "blue"))
        else:
            rgb_bands = tuple(min(i, len(desc)) for i in (1, 2, 3))
    rgb, nodata, _ = _decimated(image, max_size, list(rgb_bands))
    valid = ~(rgb == nodata).all(axis=0) if nodata is not None else np.ones(rgb.shape[1:], bool)
    img = _stretch(rgb, valid).transpose(1, 2, 0)
    img[~valid] = 1.0
    cls, _, _ = _decimated(class_map, max_size, [1], resampling="mode")
    cls = cls[0]
    lut = _class_lut(colours)
    fig, ax = plt.subplots(1, 2, figsize=(13, 6.5))
    ax[0].imshow(img)
    ax[0].set_title(f"{Path(image).name} (bands {rgb_bands})")
    ax[1].imshow(lut[cls])
    ax[1].set_title(Path(class_map).name)
    for a in ax:
        a.set_axis_off()
    handles = [Patch(color=np.asarray(c) / 255, label=n) for n, c in zip(class_names, colours)]
    handles.append(Patch(facecolor="white", edgecolor="grey", label="nodata"))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 7), frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return save_figure(fig, out)


def _class_lut(colours: list[tuple[int, int, int]]) -> np.ndarray:
    """256-entry RGB lookup (0..1): class ids to their colours, everything else white."""
    lut = np.ones((256, 3), np.float32)
    for i, c in enumerate(colours):
        lut[i] = np.asarray(c) / 255
    return lut


def rgb_band_indices(bands: list[str] | tuple[str, ...]) -> tuple[int, int, int]:
    """0-based indices of the bands to show as R, G, B: those named red/green/blue, else
    the first three (or the first band repeated for one- and two-band data)."""
    names = [b.lower() for b in bands]
    if all(n in names for n in ("red", "green", "blue")):
        return tuple(names.index(n) for n in ("red", "green", "blue"))
    return tuple(min(i, len(bands) - 1) for i in range(3))


def patch_overlays_png(samples: list[dict], class_names: list[str],
                       colours: list[tuple[int, int, int]], out: str | Path,
                       rgb: tuple[int, int, int] = (0, 1, 2), title: str = "") -> Path:
    """One row per patch: image (2–98 % stretch) | truth | prediction | errors.

    ``samples`` items hold ``patch_id``, ``image`` (H, W, bands; any scale),
    ``truth`` and ``pred`` (H, W uint8 class ids, 255 = ignore). The prediction is blanked
    where the truth is ignore/nodata (those pixels are not scored either), and the error
    column shows wrong pixels in red so a reviewer sees at a glance where the model fails.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    if not samples:
        raise ValueError("patch_overlays_png: no samples to draw")
    lut = _class_lut(colours)
    n = len(samples)
    fig, axes = plt.subplots(n, 4, figsize=(10, 2.6 * n + 0.8), squeeze=False)
    for row, s in zip(axes, samples):
        truth = np.asarray(s["truth"]).astype(np.uint8)
        pred = np.asarray(s["pred"]).astype(np.uint8).copy()
        scored = truth != 255
        pred[~scored] = 255
        image = np.asarray(s["image"], np.float32)[..., list(rgb)].transpose(2, 0, 1)
        img = _stretch(image, scored if scored.any() else np.ones(scored.shape, bool))
        wrong = scored & (pred != truth)
        err = np.ones((*truth.shape, 3), np.float32)
        err[scored] = 0.85
        err[wrong] = (0.85, 0.1, 0.1)
        acc = 1 - wrong.sum() / max(scored.sum(), 1)
        row[0].imshow(img.transpose(1, 2, 0))
        row[0].set_title(str(s["patch_id"]), fontsize=8)
        row[1].imshow(lut[truth], interpolation="nearest")
        row[1].set_title("truth", fontsize=8)
        row[2].imshow(lut[pred], interpolation="nearest")
        row[2].set_title("prediction", fontsize=8)
        row[3].imshow(err, interpolation="nearest")
        row[3].set_title(f"errors (accuracy {acc:.3f})", fontsize=8)
        for a in row:
            a.set_axis_off()
    handles = [Patch(color=np.asarray(c) / 255, label=nm) for nm, c in zip(class_names, colours)]
    handles.append(Patch(facecolor="white", edgecolor="grey", label="ignore / nodata"))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 7), frameon=False,
               fontsize=8)
    if title:
        fig.suptitle(title)
    height = 2.6 * n + 0.8
    fig.tight_layout(rect=(0, 0.6 / height, 1, 1 - (0.35 / height if title else 0)))
    return save_figure(fig, out)
