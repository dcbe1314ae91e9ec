"""The bad-input matrix (issue 9, part 3) and idempotent data prep (part 4), via the CLI.

Every case runs the ``satseg`` command (``satseg_jax.cli.main``) and checks the
contract of README "The commands": exit status 2, one line ``satseg: error: ...`` that
names the file/field and the fix, and no output (nor a temporary sibling) left behind.
Inputs are small generated rasters, so the whole file runs in well under a minute.

| case                                   | test here                                        |
|----------------------------------------|--------------------------------------------------|
| corrupt / truncated GeoTIFF            | test_corrupt_or_truncated_geotiff                |
| bands differing in CRS/transform/size/dtype | test_band_grid_mismatch                     |
| label raster on another grid           | test_label_raster_on_another_grid                |
| scene all nodata                       | test_all_nodata_scene                            |
| NaN/inf pixels (nodata)                | test_nan_inf_pixels_are_nodata                   |
| label values outside classes.json      | test_label_values_outside_classes                |
| vector: invalid geometries             | test_invalid_vector_geometry,                    |
|                                        | test_self_intersecting_and_open_rings_are_repaired |
| vector: wrong class field              | test_wrong_class_field                           |
| vector: other CRS (reprojected)        | test_vector_in_other_crs_is_reprojected          |
| empty patches folder                   | test_empty_patches_folder                        |
| dataset dir from another version       | test_dataset_dir_from_incompatible_version       |
| config typos (override, config file)   | test_config_override_typo, test_config_file_typo |
| workdir of an incompatible config      | test_workdir_of_incompatible_config              |
| checkpoint from a different model      | test_checkpoint_from_a_different_model           |
| evaluate: unknown --split              | test_evaluate_unknown_split_lists_the_valid_ones |
| predict: tile/overlap/batch impossible | test_predict_impossible_tiling                   |
| NaN loss                               | test_nan_loss_stops_after_n_steps (library       |
|                                        | level: test_train.py::test_nonfinite_losses_...) |
| disk full: patches, TFRecords, compose | test_disk_full_while_writing_*                   |
| disk full: checkpoint                  | test_disk_full_while_writing_a_checkpoint (real  |
|                                        | tmpfs: test_checkpoints.py::test_full_disk_...)  |

Idempotency: test_patches_rerun_is_byte_identical, test_build_rerun_is_byte_identical,
test_interrupted_*_leaves_nothing_and_rerun_equals_clean.
"""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio

from satseg_jax.cli import main
from satseg_jax.raster.compose import compose_bands
from satseg_jax.raster.sample import write_sample_scene
from tests.helpers.printed import summary_lines

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- helpers


def _listing(folder: Path) -> list[str]:
    """Every path under ``folder`` (hidden temporaries included), relative and sorted."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def run(argv: list) -> int:
    """``satseg ARGV`` (paths allowed in ARGV) -> exit status."""
    return main([str(a) for a in argv])


def fails(capsys, argv: list[str], *needles: str) -> str:
    """Run ``satseg argv``; assert exit 2 and one ``satseg: error:`` line holding every
    needle; return that line (tqdm bars may precede it on stderr)."""
    capsys.readouterr()
    assert run(argv) == 2
    err = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()
    assert err, "nothing printed on stderr"
    line = err[-1]
    assert line.startswith("satseg: error: "), line
    for n in needles:
        assert n in line, f"{n!r} not in {line!r}"
    print(line)  # shown with pytest -s: the message each case prints
    return line


def fails_leaving_nothing(capsys, argv: list[str], folder: Path, *needles: str) -> str:
    """``fails`` and nothing new under ``folder`` (no output, no ``.NAME.*.tmp``)."""
    before = _listing(folder)
    line = fails(capsys, argv, *needles)
    assert _listing(folder) == before, set(_listing(folder)) ^ set(before)
    return line


def sha256_tree(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under ``folder``."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _write(path: Path, data: np.ndarray, ref: Path, **profile) -> Path:
    """A GeoTIFF with ``data`` ((H, W) or (C, H, W)) on ``ref``'s grid unless overridden."""
    data = data if data.ndim == 3 else data[None]
    with rasterio.open(ref) as src:
        prof = {"driver": "GTiff", "height": data.shape[1], "width": data.shape[2],
                "count": data.shape[0], "dtype": data.dtype.name, "crs": src.crs,
                "transform": src.transform, "nodata": None}
    prof.update(profile)
    with rasterio.open(path, "w", **prof) as dst:
        dst.write(data)
    return path


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> dict[str, Path]:
    """A generated 128-px scene: bands, labels.tif/.geojson, classes.json, scene.tif."""
    root = tmp_path_factory.mktemp("bad")
    s = write_sample_scene(root / "sample", size=128, seed=1)
    s["scene"] = compose_bands([s[b] for b in ("blue", "green", "red", "nir")],
                               root / "scene.tif", progress=False)
    return s


def _patches_args(s: dict, out: Path, *extra: str, labels: str = "--labels") -> list[str]:
    src = s["labels"] if labels == "--labels" else s["vector"]
    return ["patches", "--image", s["scene"], labels, src, "--classes", s["classes"],
            "--size", "64", "--out", out, *extra]


# ----------------------------------------------------------------------------- rasters


@pytest.mark.parametrize("damage", ["header-only", "truncated-pixels", "not-a-tiff"])
def test_corrupt_or_truncated_geotiff(sample, tmp_path, capsys, damage):
    """A truncated or corrupt input names the file and says to re-download/re-export it,
    whether GDAL fails on open (header) or only when the pixels are read."""
    def damaged(src: Path, name: str) -> Path:
        data = src.read_bytes()
        bad = tmp_path / name
        bad.write_bytes({"header-only": data[:8], "truncated-pixels": data[:len(data) // 2],
                         "not-a-tiff": b"this is not a GeoTIFF\n" * 10}[damage])
        return bad

    why = "pixel data is corrupt or truncated" if damage == "truncated-pixels" else \
        "cannot be read as a raster"
    band = damaged(sample["blue"], "band.tif")
    fails_leaving_nothing(capsys, ["compose", "--bands", sample["green"], band, "--out",
                                   tmp_path / "o.tif"], tmp_path, str(band), why, "re-")
    scene = damaged(sample["scene"], "scene.tif")
    fails_leaving_nothing(capsys, ["patches", "--image", scene, "--labels", sample["labels"],
                                   "--classes", sample["classes"], "--size", "64",
                                   "--out", tmp_path / "p"], tmp_path, str(scene), why, "re-")


@pytest.mark.parametrize("field", ["crs", "transform", "size", "dtype"])
def test_band_grid_mismatch(sample, tmp_path, capsys, field):
    """compose refuses a band whose CRS, transform, size or dtype differs from the first
    band's, naming the file and the field, and says how to fix it."""
    blue = sample["blue"]
    with rasterio.open(blue) as ds:
        px, t = ds.read(1), ds.transform
    odd = tmp_path / f"odd_{field}.tif"
    if field == "crs":
        _write(odd, px, blue, crs="EPSG:32724")
    elif field == "transform":
        _write(odd, px, blue, transform=t * t.translation(1, 0))
    elif field == "size":
        _write(odd, px[:100, :100], blue)
    else:
        _write(odd, px.astype(np.float32), blue)
    fix = "convert the bands to one dtype" if field == "dtype" else "--resample-to"
    fails_leaving_nothing(capsys, ["compose", "--bands", blue, odd, "--out",
                                   tmp_path / "scene.tif"], tmp_path, str(odd), field, fix)


def test_label_raster_on_another_grid(sample, tmp_path, capsys):
    with rasterio.open(sample["labels"]) as ds:
        lab, t = ds.read(1), ds.transform
    shifted = _write(tmp_path / "shifted.tif", lab, sample["labels"],
                     transform=t * t.translation(0, 2))
    fails_leaving_nothing(capsys, ["patches", "--image", sample["scene"], "--labels", shifted,
                                   "--classes", sample["classes"], "--size", "64", "--out",
                                   tmp_path / "p"], tmp_path, str(shifted), "transform",
                          "warp the labels onto the scene grid")


def test_all_nodata_scene(sample, tmp_path, capsys):
    nod = _write(tmp_path / "nodata.tif", np.zeros((4, 128, 128), np.uint16), sample["scene"],
                 nodata=0)
    fails_leaving_nothing(capsys, ["patches", "--image", nod, "--labels", sample["labels"],
                                   "--classes", sample["classes"], "--size", "64", "--out",
                                   tmp_path / "p"], tmp_path, str(nod),
                          "no patch has valid fraction", "all nodata", "--min-valid")


def test_nan_inf_pixels_are_nodata(sample, tmp_path, capsys):
    """In a float scene NaN and ±inf pixels are nodata: ignore (255) in the mask, not
    counted as valid, and left out of the band statistics of the built dataset. A scene
    with nothing but NaN/inf is the all-nodata error."""
    with rasterio.open(sample["scene"]) as ds:
        img = ds.read().astype(np.float32)
    img[:, :16, :] = np.nan  # whole rows
    img[2, 40:50, 40:50] = np.inf  # one band is enough
    img[0, 100:110, 5:20] = -np.inf
    scene = _write(tmp_path / "float.tif", img, sample["scene"], nodata=None)
    bad = ~np.isfinite(img).all(axis=0)
    with rasterio.open(sample["labels"]) as ds:  # labels.tif has nodata 255 at the border
        unlabelled = ds.read(1) == ds.nodata
    out = tmp_path / "p"
    assert run(_patches_args({**sample, "scene": scene}, out, "--min-valid", "0.1")) == 0
    seen = np.zeros_like(bad)
    for m in (out / "masks").glob("*.tif"):
        r, c = int(m.stem[1:7]), int(m.stem[9:])
        with rasterio.open(m) as ds:
            mask = ds.read(1)
        want = (bad | unlabelled)[r:r + 64, c:c + 64]
        np.testing.assert_array_equal(mask == 255, want, err_msg=m.name)
        seen[r:r + 64, c:c + 64] = True
    assert seen.all() and bad.sum() > 16 * 128
    index = (out / "index.csv").read_text().splitlines()
    frac = round(1 - float(bad[:64, :64].mean()), 6)  # 16 NaN rows and the inf square
    assert index[1].startswith("r000000_c000000,") and f",{frac}," in index[1]
    data = tmp_path / "data"
    assert run(["build", "--patches", out, "--out", data, "--split", "0.5,0.25,0.25",
                 "--split-by", "random"]) == 0
    info = json.loads((data / "satseg_dataset.json").read_text())
    assert np.isfinite(info["mean"]).all() and np.isfinite(info["std"]).all()

    all_nan = _write(tmp_path / "nan.tif", np.full((4, 128, 128), np.nan, np.float32),
                     sample["scene"], nodata=None)
    fails_leaving_nothing(capsys, _patches_args({**sample, "scene": all_nan}, tmp_path / "q"),
                          tmp_path, str(all_nan), "no patch has valid fraction")


def test_label_values_outside_classes(sample, tmp_path, capsys):
    """A label value classes.json does not declare is listed with its pixel count."""
    entries = json.loads(sample["classes"].read_text())[:5]  # drop value 5 (burned)
    few = tmp_path / "few.json"
    few.write_text(json.dumps(entries))
    line = fails_leaving_nothing(capsys, ["patches", "--image", sample["scene"], "--labels",
                                          sample["labels"], "--classes", few, "--size", "64",
                                          "--out", tmp_path / "p"], tmp_path,
                                 str(sample["labels"]), "5 (", str(few))
    assert "ignore" in line


# ----------------------------------------------------------------------------- vectors


def _square(x0: float, y0: float, x1: float, y1: float) -> list:
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def _geojson(path: Path, features: list[tuple[dict, object]], crs: str | None) -> Path:
    fc = {"type": "FeatureCollection",
          "features": [{"type": "Feature", "geometry": g, "properties": {"class": v}}
                       for g, v in features]}
    if crs:
        fc["crs"] = {"type": "name", "properties": {"name": crs}}
    path.write_text(json.dumps(fc))
    return path


def _scene_box(sample) -> tuple[float, float, float, float]:
    with rasterio.open(sample["scene"]) as ds:
        return tuple(ds.bounds)


@pytest.mark.parametrize("geometry,why", [
    ({"type": "Polygon", "coordinates": "abc"}, "coordinates are str"),
    ({"type": "Polygon", "coordinates": [[[0, 0], 5, [1, 1], [0, 0]]]}, "ring 0 position 1 is 5"),
    ({"type": "Polygon", "coordinates": [[[0, 0], [1, 1]]]}, "fewer than 3 distinct corners"),
    ({"type": "Polygon", "coordinates": [[[0, 0], [0, float("nan")], [1, 1], [0, 0]]]},
     "not finite"),
    ({"type": "LineString", "coordinates": [[0, 0], [1, 1]]}, "geometry type 'LineString'"),
    ({"type": "MultiPolygon", "coordinates": [[[[0, 0], ["x", 1], [1, 1], [0, 0]]]]},
     "polygon 0 ring 0 position 1"),
])
def test_invalid_vector_geometry(sample, tmp_path, capsys, geometry, why):
    """A malformed geometry (GDAL would crash, burn nothing or burn a thin line) is
    reported with the feature's index, its class and the file."""
    left, bottom, right, top = _scene_box(sample)
    good = {"type": "Polygon", "coordinates": [_square(left, bottom, right, top)]}
    if geometry["type"] != "LineString":  # put the bad coordinates inside the scene
        geometry = json.loads(json.dumps(geometry).replace("[0, 0]", f"[{left}, {bottom}]")
                              .replace("[1, 1]", f"[{right}, {top}]"))
    vec = _geojson(tmp_path / "bad.geojson", [(good, 1), (geometry, 2)], "EPSG:32723")
    fails_leaving_nothing(capsys, ["patches", "--image", sample["scene"], "--vector", vec,
                                   "--classes", sample["classes"], "--size", "64", "--out",
                                   tmp_path / "p"], tmp_path, str(vec),
                          "feature 1 (class=2) has an invalid geometry", why, "Fix")


def test_self_intersecting_and_open_rings_are_repaired(sample, tmp_path, capsys):
    """A bowtie (self-intersecting ring) gives the pixels of its two triangles, which is
    what shapely.make_valid makes of it; an open ring is closed (and counted)."""
    left, bottom, right, top = _scene_box(sample)
    w, h = right - left, top - bottom
    x0, x1, y0, y1 = left + 0.1 * w, left + 0.9 * w, bottom + 0.1 * h, bottom + 0.9 * h
    xm, ym = (x0 + x1) / 2, (y0 + y1) / 2
    bowtie = {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y1], [x1, y0], [x0, y1],
                                                  [x0, y0]]]}
    triangles = {"type": "MultiPolygon", "coordinates": [
        [[[x0, y0], [xm, ym], [x0, y1], [x0, y0]]], [[[xm, ym], [x1, y1], [x1, y0], [xm, ym]]]]}
    open_ring = {"type": "Polygon", "coordinates": [_square(left, bottom, left + 0.05 * w,
                                                            top)[:-1]]}
    closed = {"type": "Polygon", "coordinates": [_square(left, bottom, left + 0.05 * w, top)]}
    a = _geojson(tmp_path / "a.geojson", [(bowtie, 1), (open_ring, 2)], "EPSG:32723")
    b = _geojson(tmp_path / "b.geojson", [(triangles, 1), (closed, 2)], "EPSG:32723")
    args = ["--min-valid", "0", "--size", "64"]
    capsys.readouterr()
    assert run(["patches", "--image", sample["scene"], "--vector", a, "--classes",
                 sample["classes"], "--out", tmp_path / "a", *args]) == 0
    assert summary_lines(capsys.readouterr().out)["repaired geometries"] == "1"
    assert run(["patches", "--image", sample["scene"], "--vector", b, "--classes",
                 sample["classes"], "--out", tmp_path / "b", *args]) == 0
    hits = 0
    for m in sorted((tmp_path / "a" / "masks").glob("*.tif")):
        with rasterio.open(m) as x, rasterio.open(tmp_path / "b" / "masks" / m.name) as y:
            ma = x.read(1)
            np.testing.assert_array_equal(ma, y.read(1), err_msg=m.name)
            hits += int((ma == 1).sum())
    assert hits > 0.3 * 128 * 128  # the bowtie really burnt (about half the square)


def test_wrong_class_field(sample, tmp_path, capsys):
    fails_leaving_nothing(capsys, _patches_args(sample, tmp_path / "p", "--class-field",
                                                "label", labels="--vector"), tmp_path,
                          str(sample["vector"]), "no attribute 'label'", "available: ['class']",
                          "--class-field")


def test_vector_in_other_crs_is_reprojected(sample, tmp_path, capsys):
    """Polygons in WGS 84 (plain RFC 7946 GeoJSON) are reprojected onto the UTM scene:
    the masks equal those of the same polygons in the scene CRS, but for the pixels whose
    centre lies within rounding distance of an edge."""
    from rasterio.warp import transform_geom

    gj = json.loads(sample["vector"].read_text())
    for f in gj["features"]:
        f["geometry"] = transform_geom("EPSG:32723", "EPSG:4326", f["geometry"], precision=9)
    del gj["crs"]
    wgs = tmp_path / "wgs84.geojson"
    wgs.write_text(json.dumps(gj))
    assert run(_patches_args(sample, tmp_path / "utm", labels="--vector")) == 0
    assert run(_patches_args({**sample, "vector": wgs}, tmp_path / "wgs",
                              labels="--vector")) == 0
    same = total = 0
    for m in sorted((tmp_path / "utm" / "masks").glob("*.tif")):
        with rasterio.open(m) as x, rasterio.open(tmp_path / "wgs" / "masks" / m.name) as y:
            same += int((x.read(1) == y.read(1)).sum())
            total += x.width * x.height
    assert total == 128 * 128 and same / total > 0.995


# ----------------------------------------------------------------------------- datasets


def test_empty_patches_folder(tmp_path, capsys):
    empty = tmp_path / "patches"
    empty.mkdir()
    fails_leaving_nothing(capsys, ["build", "--patches", empty, "--out", tmp_path / "data"],
                          tmp_path, str(empty), "contains no patches", "run satseg patches")


def test_dataset_dir_from_incompatible_version(tmp_path, capsys):
    """A dataset folder whose satseg_dataset.json has another format_version: the message
    says to rebuild, and no --workdir is created (train makes it only once the dataset,
    config and model have been checked)."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "satseg_dataset.json").write_text(json.dumps({"format_version": 0}))
    work = tmp_path / "run"
    fails(capsys, ["train", "--config", REPO / "configs" / "unet_sample.py", "--workdir", work,
                   f"--config.data.data_dir={data}"],
          str(data / "satseg_dataset.json"), "incompatible version", "rebuild with satseg build")
    assert not work.exists()


# ----------------------------------------------------------------------------- configs


def test_config_override_typo(tmp_path, capsys):
    line = fails(capsys, ["train", "--config", REPO / "configs" / "unet_sample.py", "--workdir",
                          tmp_path / "run", "--config.train.batch_sise=4"],
                 "--config.train.batch_sise", "did you mean 'batch_size'",
                 "valid fields of config.train: batch_size, checkpoint_every")
    assert "num_steps" in line
    fails(capsys, ["train", "--config", REPO / "configs" / "unet_sample.py", "--workdir",
                   tmp_path / "run", "--config.trian.num_steps=4"],
          "unknown config field config.trian", "valid fields of config: data, eval")
    assert not (tmp_path / "run").exists()


def test_config_file_typo(tmp_path, capsys):
    cfg = tmp_path / "typo.py"
    cfg.write_text(f"import sys\nsys.path.insert(0, {str(REPO / 'configs')!r})\n"
                   "import unet_sample\n\ndef get_config():\n    c = unet_sample.get_config()\n"
                   "    c.optimizer.learnig_rate = 1e-3\n    return c\n")
    fails(capsys, ["train", "--config", cfg, "--workdir", tmp_path / "run"], str(cfg),
          "config.optimizer.learnig_rate", "did you mean 'learning_rate'",
          "valid fields of config.optimizer: b1, b2")
    fails(capsys, ["train", "--config", tmp_path / "nope.py", "--workdir", tmp_path / "run"],
          "nope.py: config file not found")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.py")), ids=lambda p: p.name)
def test_every_shipped_config_passes_the_field_check(path):
    """CONFIG_FIELDS must know every field the shipped configs set (and so every field a
    new knob adds to them), or `satseg train` would refuse them."""
    from satseg_jax.config_files import check_config_fields, load_config_file

    check_config_fields(load_config_file(path), str(path))


# ----------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def trained(tiny_dataset, tmp_path_factory) -> tuple[Path, Path]:
    """(config file, workdir) of a 2-step run of the tiny config on the tiny dataset."""
    root = tmp_path_factory.mktemp("trained")
    cfg = root / "tiny.py"
    cfg.write_text(f"import sys\nsys.path.insert(0, {str(REPO)!r})\n"
                   "from tests.workers.tiny_config import tiny_config\n\n"
                   "def get_config():\n"
                   f"    return tiny_config({str(tiny_dataset)!r}, **{{'train.num_steps': 2, "
                   "'train.eval_every': 2, 'train.checkpoint_every': 2, 'train.log_every': 1})\n")
    work = root / "run"
    assert run(["train", "--config", str(cfg), "--workdir", str(work)]) == 0
    return cfg, work


def test_workdir_of_incompatible_config(trained, capsys):
    cfg, work = trained
    before = _listing(work)
    fails(capsys, ["train", "--config", cfg, "--workdir", work, "--config.model.base_width=8"],
          str(work), "written by an incompatible config", "model", "Use a new --workdir")
    assert _listing(work) == before


def test_checkpoint_from_a_different_model(trained, tmp_path, capsys):
    """A workdir whose checkpoint was written by another model (here: its config.json
    edited to a wider U-Net) is refused on restore, naming the checkpoint."""
    _, work = trained
    other = tmp_path / "other"
    shutil.copytree(work, other)
    config = json.loads((other / "config.json").read_text())
    config["model"]["base_width"] = 8
    (other / "config.json").write_text(json.dumps(config))
    before = _listing(other)
    fails(capsys, ["evaluate", "--workdir", other, "--checkpoint", "latest"],
          str(other / "checkpoints"), "checkpoint does not match this model/optimizer",
          "use a fresh --workdir")
    assert _listing(other) == before


def test_evaluate_unknown_split_lists_the_valid_ones(trained, capsys):
    """A typo in --split (issue 29: it was a KeyError traceback) names the valid splits."""
    _, work = trained
    before = _listing(work)
    fails(capsys, ["evaluate", "--workdir", work, "--split", "tset"],
          "--split tset", "has no such split", "valid splits: train, validation, test")
    assert _listing(work) == before


@pytest.mark.parametrize("option, needle", [
    (["--tile", "0"], "--tile 0: the tile size must be a positive number"),
    (["--tile=-64"], "--tile -64: the tile size must be a positive number"),
    (["--overlap", "-1"], "--overlap -1: the overlap must be at least 0 and less than "
                          "--tile 256"),
    (["--tile", "64", "--overlap", "64"], "--overlap 64: the overlap must be at least 0"),
    (["--batch", "0"], "--batch 0: the number of tiles per model call must be at least 1"),
])
def test_predict_impossible_tiling(trained, sample, tmp_path, capsys, option, needle):
    _, work = trained
    fails_leaving_nothing(capsys, ["predict", "--workdir", work, "--image", sample["scene"],
                                   "--out", tmp_path / "map.tif", *option], tmp_path, needle)


def test_nan_loss_stops_after_n_steps(trained, tmp_path, capsys):
    """A diverging run (lr 1e30, no clipping) skips the non-finite updates, counts them and
    stops after config.train.max_nonfinite_steps of them in a row."""
    cfg, _ = trained
    fails(capsys, ["train", "--config", cfg, "--workdir", tmp_path / "nan",
                   "--config.train.num_steps=12", "--config.train.max_nonfinite_steps=3",
                   "--config.optimizer.learning_rate=1e30", "--config.optimizer.grad_clip_norm=0",
                   "--config.schedule.name=constant"],
          "non-finite for 3 steps in a row", "lower config.optimizer.learning_rate")


# ----------------------------------------------------------------------------- disk full


def _enospc(path) -> OSError:
    return OSError(errno.ENOSPC, "No space left on device", str(path))


def test_disk_full_while_writing_patches(sample, tmp_path, capsys, monkeypatch):
    from satseg_jax.raster import patches as patches_mod

    real, calls = patches_mod._write_patch, []

    def write(path, *args):
        calls.append(path)
        if len(calls) == 5:  # a few files in: some patches are already on disk
            Path(path).write_bytes(b"II*\x00half")
            raise _enospc(path)
        real(path, *args)

    monkeypatch.setattr(patches_mod, "_write_patch", write)
    out = tmp_path / "p"
    fails_leaving_nothing(capsys, _patches_args(sample, out), tmp_path, str(out), "disk full",
                          "No space left on device", "Free space", "run the command again")


def test_disk_full_while_writing_tfrecords(sample, tmp_path, capsys, monkeypatch):
    from tensorflow_datasets.core import file_adapters

    patches = tmp_path / "patches"
    assert run(_patches_args(sample, patches, "--size", "32")) == 0

    def write_examples(cls, path, iterator):
        Path(path).write_bytes(b"half a shard")
        raise _enospc(path)

    monkeypatch.setattr(file_adapters.TfRecordFileAdapter, "write_examples",
                        classmethod(write_examples))
    out = tmp_path / "data"
    fails_leaving_nothing(capsys, ["build", "--patches", patches, "--out", out], tmp_path,
                          str(out), "disk full", "No space left on device", "Free space")


def test_disk_full_while_writing_a_checkpoint(trained, tmp_path, capsys, monkeypatch):
    """Orbax fails with ENOSPC while saving step 4 of a resumed run: one line naming the
    checkpoint folder and the step, and the last complete checkpoint (step 2) stays the
    latest, so running the same command again resumes from it."""
    import orbax.checkpoint as ocp

    cfg, work = trained
    run_dir = tmp_path / "run"
    shutil.copytree(work, run_dir)
    real_save = ocp.CheckpointManager.save

    def save(self, step, *args, **kwargs):
        if step == 4:
            raise _enospc(Path(self.directory) / f"{step}.orbax-checkpoint-tmp")
        return real_save(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", save)
    fails(capsys, ["train", "--config", cfg, "--workdir", run_dir,
                   "--config.train.num_steps=4", "--config.train.eval_every=4",
                   "--config.train.checkpoint_every=4"],
          str(run_dir / "checkpoints"), "disk full while writing checkpoint 4",
          "resume from the last complete checkpoint")
    steps = sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [2]


def test_disk_full_while_writing_compose(sample, tmp_path, capsys, monkeypatch):
    """compose writes through atomic_path; ENOSPC raised inside its write loop (here by
    the per-window read, the closest hook rasterio leaves) becomes the same message."""
    from satseg_jax.raster import compose as compose_mod

    def read_window(ds, window, path, *a, **k):
        raise _enospc(path)

    monkeypatch.setattr(compose_mod, "read_window", read_window)
    out = tmp_path / "scene.tif"
    fails_leaving_nothing(capsys, ["compose", "--bands", sample["blue"], sample["green"],
                                   "--out", out], tmp_path, str(out), "disk full")


# ----------------------------------------------------------------------------- idempotency


def test_patches_rerun_is_byte_identical(sample, tmp_path):
    """Same inputs, same output: every file (patch GeoTIFFs, index.csv, classes.json,
    patches.json) hashes the same whether written to a new folder or over the old one.
    patches.json holds no time: timings are only in the printed summary."""
    for out, extra in ((tmp_path / "a", ()), (tmp_path / "b", ("--threads", "1")),
                       (tmp_path / "a", ("--overwrite",))):
        before = sha256_tree(tmp_path / "a") if out.exists() else None
        assert run(_patches_args(sample, out, "--stride", "32", "--edge", "pad",
                                  *extra)) == 0
        if before is not None:
            assert sha256_tree(out) == before
    a, b = sha256_tree(tmp_path / "a"), sha256_tree(tmp_path / "b")
    assert a == b and {"index.csv", "patches.json", "classes.json"} <= set(a)
    assert len(a) == 3 + 2 * 9  # 3x3 windows of 64 px every 32 px over 128 px
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


def test_interrupted_patches_leaves_nothing_and_rerun_equals_clean(sample, tmp_path,
                                                                   monkeypatch):
    """Ctrl-C half way: exit 130, no output and no temporary folder (and an existing
    output kept intact under --overwrite); running the same command again gives the
    clean run's files."""
    from satseg_jax.raster import patches as patches_mod

    clean = tmp_path / "clean"
    assert run(_patches_args(sample, clean)) == 0
    real, calls = patches_mod._write_patch, []

    def interrupted(path, *args):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        real(path, *args)

    monkeypatch.setattr(patches_mod, "_write_patch", interrupted)
    out = tmp_path / "out"
    assert run(_patches_args(sample, out)) == 130
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clean"]
    calls.clear()
    assert run(_patches_args(sample, clean, "--overwrite")) == 130
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clean"]
    monkeypatch.setattr(patches_mod, "_write_patch", real)
    assert run(_patches_args(sample, out)) == 0
    assert sha256_tree(out) == sha256_tree(clean)


@pytest.fixture(scope="module")
def patches_dir(sample, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("idem") / "patches"
    assert run(_patches_args(sample, out, "--size", "32")) == 0
    return out


def test_build_rerun_is_byte_identical(patches_dir, tmp_path):
    """Same patches, same dataset: TFRecord shards, tfds metadata and satseg_dataset.json
    hash the same in a new folder and when rebuilt over the old one with --overwrite.
    (satseg_dataset.json names the patches folder by absolute path: the same folder, so
    the same bytes.)"""
    args = ["build", "--patches", str(patches_dir), "--split", "0.6,0.2,0.2"]
    assert run([*args, "--out", str(tmp_path / "a")]) == 0
    assert run([*args, "--out", str(tmp_path / "b")]) == 0
    a, b = sha256_tree(tmp_path / "a"), sha256_tree(tmp_path / "b")
    assert a == b
    assert any(".tfrecord" in k for k in a) and "satseg_dataset.json" in a
    assert run([*args, "--out", str(tmp_path / "a"), "--overwrite"]) == 0
    assert sha256_tree(tmp_path / "a") == a
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


def test_interrupted_build_leaves_nothing_and_rerun_equals_clean(patches_dir, tmp_path,
                                                                 monkeypatch):
    from tensorflow_datasets.core import file_adapters

    args = ["build", "--patches", str(patches_dir), "--split", "0.6,0.2,0.2"]
    assert run([*args, "--out", str(tmp_path / "clean")]) == 0
    real = file_adapters.TfRecordFileAdapter.write_examples.__func__
    calls = []

    def interrupted(cls, path, iterator):
        calls.append(path)
        if len(calls) == 2:  # the first split's shard is written, then Ctrl-C
            raise KeyboardInterrupt
        return real(cls, path, iterator)

    monkeypatch.setattr(file_adapters.TfRecordFileAdapter, "write_examples",
                        classmethod(interrupted))
    assert run([*args, "--out", str(tmp_path / "out")]) == 130
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clean"]
    monkeypatch.setattr(file_adapters.TfRecordFileAdapter, "write_examples",
                        classmethod(real))
    assert run([*args, "--out", str(tmp_path / "out")]) == 0
    assert sha256_tree(tmp_path / "out") == sha256_tree(tmp_path / "clean")


if __name__ == "__main__":  # pragma: no cover - convenience: print every message
    sys.exit(pytest.run([__file__, "-q", "-s"]))
