"""A generated, georeferenced sample scene for the quickstart and the tests.

Why generated: the quickstart must run offline on any machine, and tests need a scene
whose labels are known exactly. The scene imitates a 4-band multispectral image over
the Brazilian Cerrado (UTM 23S, reflectance x 10000 as uint16) with six land-cover
classes laid out as blobby natural regions, a river and lakes, burned scars and a
rotated grid of crop parcels.

Why it is not trivially separable: real classes overlap spectrally, so each class has a
second "variant" signature it drifts towards (clear/turbid water, sparse/dense forest,
grassland/wooded savanna, green/harvested crop, bare soil/built-up, fresh/old burn),
driven by smooth fields or per-parcel draws. On top come haze, multiplicative texture,
a blurred sensor response (mixed pixels at boundaries) and signal-dependent noise. A
per-pixel classifier confuses a noticeable share of pixels; spatial context (parcel
shapes, neighbours) resolves most of them, which is what a U-Net learns.

How it stays light: every random field is a sum of Gaussian bumps on a coarse lattice,
evaluated for any range of rows by two small matrix products, and pixel noise is drawn
from per-row-block seeds; so the bands are computed and written in strips of rows, the
strips join seamlessly, and the result does not depend on the strip height. Only the
uint8 label map (needed whole for polygonizing) and the footprint mask are held for
the full scene.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from satseg_jax.classes import IGNORE_LABEL, classes_from_list
from satseg_jax.errors import SatsegError
from satseg_jax.io_utils import atomic_dir

BANDS = ("blue", "green", "red", "nir")

# id, name, colour
SAMPLE_CLASSES = (
    (0, "water", "#1f78b4"),
    (1, "forest", "#1b7837"),
    (2, "savanna", "#c2a878"),
    (3, "cropland", "#b2df8a"),
    (4, "bare_urban", "#bdbdbd"),
    (5, "burned", "#3d2b1f"),
)
WATER, FOREST, SAVANNA, CROPLAND, BARE, BURNED = range(6)

# Reflectance x 10000 for (blue, green, red, nir): the class's main signature and the
# variant it drifts towards (mix fraction 0..1 per pixel, see _scene_rows).
SIGNATURES = np.array([
    [(480, 600, 380, 230), (760, 980, 820, 520)],      # water: clear -> turbid
    [(300, 580, 330, 3300), (400, 720, 600, 2750)],    # forest: dense -> sparse canopy
    [(620, 900, 1150, 2400), (460, 740, 720, 2850)],   # savanna: grassland -> wooded
    [(430, 960, 540, 4300), (820, 1050, 1350, 2650)],  # cropland: green crop -> harvested
    [(1450, 1650, 1950, 2650), (1150, 1250, 1350, 1900)],  # bare soil -> built-up
    [(330, 420, 480, 760), (520, 720, 900, 1600)],     # burned: fresh -> old scar
], dtype=np.float32)
# Multiplicative texture amplitude per class (built-up and crops are the most uneven).
TEXTURE = np.array([0.02, 0.05, 0.06, 0.05, 0.09, 0.05], dtype=np.float32)
# Additive haze per band (scattering is strongest in blue).
HAZE = np.array([160, 110, 60, 20], dtype=np.float32)

SAMPLE_CRS = "EPSG:32723"  # WGS 84 / UTM zone 23S (central Brazil)
SAMPLE_ORIGIN = (180000.0, 8250000.0)  # upper-left corner, metres
STRIP = 256  # rows computed and written at a time (= the GeoTIFF tile height)
PSF_SIGMA = 0.8  # sensor point-spread (pixels): mixes neighbouring classes at edges
HALO = 10  # rows of context each side of a strip for the blurs (texture + PSF radius)
NOISE_BLOCK = 64  # rows per independently seeded block of pixel noise


class SmoothField:
    """Zero-mean, unit-variance random field with blobs about ``scale`` pixels wide.

    A sum of Gaussian bumps on a square lattice (spacing ``scale / 2``) with standard
    normal weights: ``f = Wy @ C @ Wx.T``. Rows of ``Wy``/``Wx`` are normalised so the
    variance is 1 everywhere, so any range of rows can be evaluated on its own and
    strips fit together exactly.
    """

    def __init__(self, rng: np.random.Generator, size: int, scale: float):
        spacing = max(1.0, scale / 2.0)
        n = int(np.ceil(size / spacing)) + 5
        self.nodes = ((np.arange(n) - 2) * spacing).astype(np.float32)
        self.sigma = spacing
        self.coef = rng.standard_normal((n, n), dtype=np.float32)
        self.size = size
        self.wx = self._weights(0, size)

    def _weights(self, start: int, stop: int) -> np.ndarray:
        pos = np.arange(start, stop, dtype=np.float32)[:, None]
        w = np.exp(-0.5 * ((pos - self.nodes[None, :]) / self.sigma) ** 2)
        return w / np.sqrt((w * w).sum(axis=1, keepdims=True))

    def rows(self, r0: int, r1: int) -> np.ndarray:
        """The field on rows ``r0..r1`` (may extend past the scene), shape (r1-r0, size)."""
        return (self._weights(r0, r1) @ self.coef) @ self.wx.T


def _noise_rows(seed: int, key: int, r0: int, r1: int, width: int) -> np.ndarray:
    """Standard normal noise for rows r0..r1, identical whichever strip asks for it."""
    blocks = []
    first, last = r0 // NOISE_BLOCK, (r1 - 1) // NOISE_BLOCK
    for b in range(first, last + 1):
        g = np.random.default_rng([seed, key, b + 1_000_000])  # b may be -1 (halo)
        blocks.append(g.standard_normal((NOISE_BLOCK, width), dtype=np.float32))
    block = np.concatenate(blocks)
    off = r0 - first * NOISE_BLOCK
    return block[off:off + (r1 - r0)]


class SampleScene:
    """The scene's random ingredients (drawn once from the seed) and per-strip rendering."""

    def __init__(self, size: int, seed: int):
        self.size, self.seed = size, seed
        rng = np.random.default_rng(seed)
        big = float(np.clip(size / 6, 48.0, 256.0))  # region scale: pixels, not scene share
        self.natural = [SmoothField(rng, size, big) for _ in range(3)]
        self.rough = [SmoothField(rng, size, max(12.0, big / 5)) for _ in range(3)]
        self.crop_zone = SmoothField(rng, size, big)
        self.burn = SmoothField(rng, size, max(24.0, big / 2.5))
        self.lake = SmoothField(rng, size, max(24.0, big / 2))
        self.variant = SmoothField(rng, size, max(24.0, big / 2))
        self.texture = SmoothField(rng, size, max(8.0, size / 64))
        self.haze = SmoothField(rng, size, size / 1.5)
        # Crop parcels: a grid rotated by a few degrees, rows/columns of varied widths.
        self.angle = np.deg2rad(rng.uniform(-25, 25))
        parcel = float(np.clip(size / 20, 16, 64))
        n_edges = int(3 * size / parcel) + 8
        self.u_edges = np.cumsum(rng.uniform(0.6, 1.4, n_edges) * parcel) - 1.5 * size
        self.v_edges = np.cumsum(rng.uniform(0.6, 1.4, n_edges) * parcel) - 1.5 * size
        self.parcel_on = rng.random((n_edges + 1, n_edges + 1)) < 0.8
        harvested = rng.random((n_edges + 1, n_edges + 1)) < 0.25
        self.parcel_variant = np.where(harvested, rng.uniform(0.55, 0.9, harvested.shape),
                                       rng.uniform(0.0, 0.3, harvested.shape))
        # River: a sinuous band across the scene.
        self.river_phase = rng.uniform(0, 2 * np.pi)
        self.river_amp = rng.uniform(0.15, 0.3)
        self.river_width = max(2.5, size / 110)
        # Footprint: rotated rectangle; outside is the nodata border.
        self.foot_angle = np.deg2rad(rng.uniform(6, 12))
        self.foot_half = size * rng.uniform(0.45, 0.48)

    def _grids(self, r0: int, r1: int) -> tuple[np.ndarray, np.ndarray]:
        yy = np.arange(r0, r1, dtype=np.float32)[:, None]
        xx = np.arange(self.size, dtype=np.float32)[None, :]
        return yy, xx

    def labels_rows(self, r0: int, r1: int) -> tuple[np.ndarray, np.ndarray]:
        """(class ids uint8, variant fraction float32 in 0..1) for rows r0..r1."""
        yy, xx = self._grids(r0, r1)
        f = [n.rows(r0, r1) + 0.35 * r.rows(r0, r1) for n, r in zip(self.natural, self.rough)]
        f[2] -= 0.7  # bare/urban is the rarest natural cover
        labels = np.array([FOREST, SAVANNA, BARE], np.uint8)[np.argmax(np.stack(f), axis=0)]
        variant = np.clip(0.5 + 0.3 * self.variant.rows(r0, r1), 0.0, 1.0)
        # Cropland: parcels of a rotated grid inside the agricultural zone.
        cos, sin = np.cos(self.angle), np.sin(self.angle)
        u = xx * cos + yy * sin
        v = -xx * sin + yy * cos
        iu = np.searchsorted(self.u_edges, u)
        iv = np.searchsorted(self.v_edges, v)
        zone = self.crop_zone.rows(r0, r1) + 0.2 * self.rough[0].rows(r0, r1) > 0.25
        crop = zone & self.parcel_on[iu, iv]
        labels[crop] = CROPLAND
        variant[crop] = self.parcel_variant[iu, iv][crop]
        # Burned scars over forest and savanna; older scars are greener.
        burn = self.burn.rows(r0, r1)
        burned = (burn + 0.3 * self.rough[1].rows(r0, r1) > 1.55) & np.isin(
            labels, [FOREST, SAVANNA])
        labels[burned] = BURNED
        variant[burned] = np.clip(0.45 - 0.25 * (burn[burned] - 1.55), 0.0, 1.0)
        # Water: lakes and a river (turbid), drawn last.
        lake = self.lake.rows(r0, r1) + 0.2 * self.rough[2].rows(r0, r1) > 1.85
        t = yy / self.size
        centre = self.size * (0.5 + self.river_amp * np.sin(2 * np.pi * 1.3 * t
                                                             + self.river_phase))
        width = self.river_width * (1 + 0.35 * np.sin(yy / 41.0 + self.river_phase))
        river = np.abs(xx - centre) < width
        water = lake | river
        labels[water] = WATER
        variant[lake] = np.clip(variant[lake] - 0.3, 0.0, 1.0)
        variant[river] = 0.75
        return labels, variant.astype(np.float32)

    def footprint_rows(self, r0: int, r1: int) -> np.ndarray:
        """True inside the rotated acquisition footprint."""
        yy, xx = self._grids(r0, r1)
        c = (self.size - 1) / 2
        a = self.foot_angle
        u = (xx - c) * np.cos(a) + (yy - c) * np.sin(a)
        v = -(xx - c) * np.sin(a) + (yy - c) * np.cos(a)
        return (np.abs(u) < self.foot_half) & (np.abs(v) < self.foot_half)

    def bands_rows(self, labels: np.ndarray, variant: np.ndarray, r0: int, r1: int,
                   top: int) -> np.ndarray:
        """(4, r1-r0, W) float32 reflectance for rows r0..r1.

        ``labels``/``variant`` cover rows ``top .. top+len`` (the strip plus a halo) so the
        sensor blur sees across the strip's edges.
        """
        from scipy import ndimage

        a, b = top, top + labels.shape[0]
        sig = SIGNATURES[labels]  # (h, W, 2, 4)
        x = sig[..., 0, :] + (sig[..., 1, :] - sig[..., 0, :]) * variant[..., None]
        fine = ndimage.gaussian_filter(_noise_rows(self.seed, 1, a, b, self.size), 1.2)
        tex = 1.0 + TEXTURE[labels] * (1.2 * self.texture.rows(a, b) + 2.5 * fine)
        x = x * tex[..., None] + HAZE * np.clip(0.5 + 0.4 * self.haze.rows(a, b),
                                                0.0, 1.0)[..., None]
        x = np.moveaxis(x, -1, 0)  # (4, h, W)
        x = ndimage.gaussian_filter(x, sigma=(0, PSF_SIGMA, PSF_SIGMA), mode="nearest")
        x = x[:, r0 - a:r1 - a]
        for i in range(len(BANDS)):
            noise = _noise_rows(self.seed, 10 + i, r0, r1, self.size)
            x[i] += noise * np.sqrt(40.0 ** 2 + (0.03 * x[i]) ** 2)
        return x


def _scene_labels(scene: SampleScene, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, variant fraction quantised to uint8, footprint) of the whole scene,
    computed strip by strip; kept whole because the bands' blurs need their halo."""
    labels = np.empty((size, size), np.uint8)
    variant = np.empty((size, size), np.uint8)  # quantised 0..255 to stay small
    valid = np.empty((size, size), bool)
    for r0 in range(0, size, STRIP):
        r1 = min(size, r0 + STRIP)
        lab, var = scene.labels_rows(r0, r1)
        labels[r0:r1], variant[r0:r1] = lab, np.rint(var * 255)
        valid[r0:r1] = scene.footprint_rows(r0, r1)
    return labels, variant, valid


def _write_bands(tmp: Path, scene: SampleScene, base: dict, labels: np.ndarray,
                 variant: np.ndarray, valid: np.ndarray) -> None:
    """The four uint16 band files (0 = nodata outside the footprint), strip by strip with
    a halo of context rows, so memory holds one strip of bands at a time."""
    import rasterio
    from rasterio.windows import Window

    size = base["width"]
    dsts = [rasterio.open(tmp / f"{name}.tif", "w", dtype="uint16", nodata=0, **base)
            for name in BANDS]
    try:
        for name, dst in zip(BANDS, dsts):
            dst.set_band_description(1, name)
            dst.update_tags(1, units="reflectance x 10000")
        for r0 in range(0, size, STRIP):
            r1 = min(size, r0 + STRIP)
            a, b = max(0, r0 - HALO), min(size, r1 + HALO)
            x = scene.bands_rows(labels[a:b], variant[a:b].astype(np.float32) / 255,
                                 r0, r1, a)
            x = np.clip(np.rint(x), 1, 65535).astype(np.uint16)  # 0 is nodata
            x[:, ~valid[r0:r1]] = 0
            win = Window(0, r0, size, r1 - r0)
            for i, dst in enumerate(dsts):
                dst.write(x[i], 1, window=win)
    finally:
        for dst in dsts:
            dst.close()


def _write_labels(tmp: Path, base: dict, labels: np.ndarray, classes) -> None:
    """labels.tif (with a colour table) and the same labels as polygons, labels.geojson
    in the scene CRS (a legacy ``crs`` member, so vector patching is exercised too)."""
    import rasterio
    from rasterio import features

    with rasterio.open(tmp / "labels.tif", "w", dtype="uint8", nodata=IGNORE_LABEL,
                       **base) as dst:
        dst.write(labels, 1)
        dst.set_band_description(1, "class")
        dst.write_colormap(1, {c.id: (*c.colour, 255) for c in classes.classes})
    feats = [
        {"type": "Feature", "properties": {"class": int(v)}, "geometry": geom}
        for geom, v in features.shapes(labels, mask=labels != IGNORE_LABEL,
                                       transform=base["transform"])
    ]
    epsg = SAMPLE_CRS.split(":")[1]
    collection = {"type": "FeatureCollection", "name": "labels",
                  "crs": {"type": "name",
                          "properties": {"name": f"urn:ogc:def:crs:EPSG::{epsg}"}},
                  "features": feats}
    (tmp / "labels.geojson").write_text(json.dumps(collection, separators=(",", ":")))


def write_sample_scene(out_dir: str | Path, size: int = 1024, seed: int = 0,
                       pixel_size: float = 8.0, overwrite: bool = False) -> dict[str, Path]:
    """Write the sample scene into ``out_dir``; return the paths by role.

    Files: ``blue/green/red/nir.tif`` (uint16, nodata 0), ``labels.tif`` (uint8, 255 =
    nodata), ``labels.geojson`` (the same labels as polygons, property ``class``, in the
    scene CRS) and ``classes.json``. Deterministic for a given ``seed``. Keys of the
    result: blue, green, red, nir, labels, vector, classes.
    """
    from rasterio.transform import from_origin

    if int(size) != size or size < 64:
        raise SatsegError(f"--size {size}: the sample scene needs at least 64 pixels")
    size = int(size)
    if not pixel_size > 0:
        raise SatsegError(f"--pixel-size {pixel_size}: must be a positive number of metres")
    out_dir = Path(out_dir)
    scene = SampleScene(size, seed)
    transform = from_origin(SAMPLE_ORIGIN[0], SAMPLE_ORIGIN[1], pixel_size, pixel_size)
    block = 256 if size >= 256 else 16 * (size // 16)
    base = {"driver": "GTiff", "height": size, "width": size, "count": 1, "crs": SAMPLE_CRS,
            "transform": transform, "tiled": True, "blockxsize": block, "blockysize": block,
            "compress": "deflate"}
    classes = classes_from_list(
        [{"id": cid, "name": name, "colour": colour} for cid, name, colour in SAMPLE_CLASSES],
        source="sample classes",
    )
    labels, variant, valid = _scene_labels(scene, size)
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        _write_bands(tmp, scene, base, labels, variant, valid)
        labels[~valid] = IGNORE_LABEL
        del variant, valid
        _write_labels(tmp, base, labels, classes)
        classes.save(tmp / "classes.json")
    names = {**{b: f"{b}.tif" for b in BANDS}, "labels": "labels.tif",
             "vector": "labels.geojson", "classes": "classes.json"}
    return {k: out_dir / v for k, v in names.items()}
