"""Shared test fixtures: paths to the team's real samples (skipped when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests run on the CPU; keep TensorFlow off any accelerator and quiet.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SATSEG_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_rasterio() -> Path:
    """../shared/data/rasterio (real Landsat subset etc.); skip when the folder is absent."""
    d = SHARED_DATA / "rasterio"
    if not (d / "RGB.byte.tif").exists():
        pytest.skip(f"real sample data not found at {d} (set SATSEG_SHARED_DATA to its parent)")
    return d
