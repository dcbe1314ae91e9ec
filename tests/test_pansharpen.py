"""Pan-sharpening: fused bands on PAN's grid, closer to the truth than upsampling alone."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT

from satseg_jax.cli import main
from satseg_jax.raster.sample import write_sample_scene


@pytest.fixture(scope="module")
def degraded(tmp_path_factory):
    """Full-resolution sample bands, their 4x-coarser versions, and a PAN from their mean."""
    root = tmp_path_factory.mktemp("ps")
    s = write_sample_scene(root / "sample", size=256, seed=6)
    full, coarse = [], []
    for b in ("blue", "green", "red", "nir"):
        with rasterio.open(s[b]) as ds:
            profile, data = ds.profile, ds.read(1)
        full.append(data.astype(np.float64))
        small = data.reshape(64, 4, 64, 4).astype(np.float64).mean(axis=(1, 3))
        t = ds.transform * ds.transform.scale(4, 4)
        p = root / f"{b}_coarse.tif"
        with rasterio.open(p, "w", **{**profile, "width": 64, "height": 64, "transform": t,
                                      "blockxsize": 16, "blockysize": 16}) as dst:
            dst.write(np.rint(small).astype("uint16"), 1)
        coarse.append(p)
    pan = root / "pan.tif"
    with rasterio.open(pan, "w", **profile) as dst:
        dst.write(np.rint(np.mean(full, axis=0)).astype("uint16"), 1)
    return root, np.stack(full), coarse, pan, s["labels"]


@pytest.mark.parametrize("method", ["brovey", "ihs", "weighted"])
def test_fusion_beats_bilinear_upsampling(degraded, method):
    root, full, coarse, pan, labels = degraded
    out = root / f"fused_{method}.tif"
    assert main(["compose", "--bands", *map(str, coarse), "--pansharpen", str(pan),
                 "--method", method, "--out", str(out)]) == 0
    with rasterio.open(out) as f, rasterio.open(pan) as p:
        assert (f.crs, f.transform, f.shape, f.count) == (p.crs, p.transform, p.shape, 4)
        fused = f.read().astype(np.float64)
        up = []
        for c in coarse:
            with rasterio.open(c) as ds, WarpedVRT(ds, crs=p.crs, transform=p.transform,
                                                   width=p.width, height=p.height,
                                                   resampling=Resampling.bilinear) as v:
                up.append(v.read(1).astype(np.float64))
    up = np.stack(up)
    valid = (full > 0).all(axis=0)
    valid[:8], valid[-8:], valid[:, :8], valid[:, -8:] = False, False, False, False
    rmse_fused = np.sqrt(((fused - full)[:, valid] ** 2).mean())
    rmse_up = np.sqrt(((up - full)[:, valid] ** 2).mean())
    print(f"{method}: RMSE fused {rmse_fused:.1f} vs bilinear {rmse_up:.1f}")
    assert rmse_fused < rmse_up, (method, rmse_fused, rmse_up)
