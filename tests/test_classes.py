"""classes.ClassSet.value_to_id: the per-pixel table used for 8/16-bit label rasters
gives exactly what the general (sort-based) path gives, and undeclared values are
still reported by value and pixel count."""

from __future__ import annotations

import json

import numpy as np
import pytest

from satseg_jax.classes import load_classes
from satseg_jax.errors import SatsegError


@pytest.fixture
def classes(tmp_path):
    path = tmp_path / "classes.json"
    path.write_text(json.dumps([
        {"id": 0, "name": "water", "value": 10},
        {"id": 1, "name": "forest", "value": -3},
        {"id": 2, "name": "urban", "value": 300},
        {"name": "nodata", "value": 0, "ignore": True},
    ]))
    return load_classes(path)


def _general(classes, values):
    uniq, inv = np.unique(values, return_inverse=True)
    return classes.lookup("values", uniq, inv.reshape(values.shape), "test", None)


@pytest.mark.parametrize("dtype,pool", [
    ("uint8", [10, 0]),                # 300 and -3 do not fit: never looked up
    ("uint16", [10, 0, 300]),
    ("int16", [10, 0, 300, -3]),
    ("int8", [10, 0, -3]),
])
def test_table_path_equals_the_general_path(classes, dtype, pool):
    rng = np.random.default_rng(0)
    values = rng.choice(np.array(pool, dtype), size=(37, 41))
    fast = classes.value_to_id(values)
    np.testing.assert_array_equal(fast, _general(classes, values))
    assert fast.dtype == np.uint8
    assert set(np.unique(fast).tolist()) <= {0, 1, 2, 255}
    assert (fast[values == 0] == 255).all()


@pytest.mark.parametrize("dtype", ["uint8", "int16", "int32"])
def test_undeclared_values_are_named_with_their_pixel_counts(classes, dtype):
    values = np.full((6, 5), 10, dtype)
    values[0, :3] = 7
    values[5, 0] = 99
    with pytest.raises(SatsegError, match=r"7 \(3 px\), 99 \(1 px\)"):
        classes.value_to_id(values, what="labels.tif")
