"""Issue 29, item 1: no command writes over one of its own inputs.

Every command that writes refuses, before any work, an output that is the same file as
one of its inputs after following links (symlinks, hard links), and an output folder
that is or contains an input folder or file. Each case runs ``satseg`` and checks exit
status 2, the one ``satseg: error:`` line naming both paths, that every input file is
byte-for-byte unchanged and that no file (temporaries included) appeared or vanished.

Item 2 in part: an output that cannot be written where it is named (below a file, a
file output naming a folder, a folder output naming a file) is refused the same way,
before any work.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from satseg_jax.cli import main
from satseg_jax.errors import SatsegError
from satseg_jax.io_utils import refuse_overwriting_inputs
from satseg_jax.raster.compose import compose_bands
from satseg_jax.raster.sample import write_sample_scene


def _tree(folder: Path) -> dict[str, str]:
    """{relative path: sha256 (files) or 'dir'/'link'} of everything under ``folder``."""
    out = {}
    for p in sorted(folder.rglob("*")):
        key = str(p.relative_to(folder))
        if p.is_symlink():
            out[key] = f"link -> {os.readlink(p)}"
        elif p.is_dir():
            out[key] = "dir"
        else:
            out[key] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def refused(capsys, root: Path, argv: list, *needles: str) -> str:
    """``satseg argv`` exits 2 with one ``satseg: error:`` line holding every needle, and
    leaves every file under ``root`` as it was."""
    before = _tree(root)
    capsys.readouterr()
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    line = err[0]
    assert line.startswith("satseg: error: "), line
    for n in needles:
        assert str(n) in line, f"{n!r} not in {line!r}"
    assert _tree(root) == before
    print(line)
    return line


@pytest.fixture
def scene(tmp_path) -> dict[str, Path]:
    """A 64-px sample scene (bands, labels, classes.json) and its composed scene.tif."""
    s = write_sample_scene(tmp_path / "sample", size=64, seed=3)
    s["scene"] = compose_bands([s[b] for b in ("blue", "green", "red", "nir")],
                               tmp_path / "scene.tif", progress=False)
    s["root"] = tmp_path
    return s


# ----------------------------------------------------------------------------- predict


def test_predict_out_is_the_image(scene, capsys):
    """The reported case: ``--out S --image S`` would replace the scene by its map. The
    check runs before the run is even loaded (the workdir here does not exist)."""
    s = scene["scene"]
    refused(capsys, scene["root"], ["predict", "--workdir", scene["root"] / "no-run",
                                    "--image", s, "--out", s],
            f"--out {s} is the same file as --image {s}", "choose another --out")


@pytest.mark.parametrize("how", ["symlink", "hardlink", "dotdot"])
def test_predict_out_is_the_image_through_a_link(scene, capsys, how):
    s = scene["scene"]
    out = scene["root"] / "map.tif"
    if how == "symlink":
        out.symlink_to(s)
    elif how == "hardlink":
        os.link(s, out)
    else:
        out = scene["root"] / "sample" / ".." / s.name
    refused(capsys, scene["root"], ["predict", "--workdir", scene["root"] / "no-run",
                                    "--image", s, "--out", out],
            f"--out {out}", f"--image {s}")


def test_predict_probabilities_is_the_image_or_the_map(scene, capsys):
    s, root = scene["scene"], scene["root"]
    refused(capsys, root, ["predict", "--workdir", root / "no-run", "--image", s,
                           "--out", root / "map.tif", "--probabilities", s],
            f"--probabilities {s} is the same file as --image {s}")
    refused(capsys, root, ["predict", "--workdir", root / "no-run", "--image", s,
                           "--out", root / "map.tif", "--probabilities", root / "map.tif"],
            "--out", "--probabilities", "give each output its own path")


# ----------------------------------------------------------------------------- data prep


def test_compose_out_is_one_of_the_bands(scene, capsys):
    bands = [scene[b] for b in ("blue", "green", "red")]
    refused(capsys, scene["root"], ["compose", "--bands", *bands, "--out", bands[1]],
            f"--out {bands[1]} is the same file as --bands {bands[1]}")


def test_compose_out_is_the_resample_reference(scene, capsys):
    bands = [scene[b] for b in ("blue", "green")]
    refused(capsys, scene["root"], ["compose", "--bands", *bands, "--resample-to",
                                    scene["red"], "--out", scene["red"]],
            f"--resample-to {scene['red']}")


def test_patches_out_contains_the_scene(scene, capsys):
    """--overwrite would replace the folder holding the scene, labels and classes."""
    s = scene
    out = s["labels"].parent
    refused(capsys, s["root"], ["patches", "--image", s["scene"], "--labels", s["labels"],
                                "--classes", s["classes"], "--size", "32", "--out", out,
                                "--overwrite"],
            f"--out {out} is or contains --labels {s['labels']}", "outside it")


def test_patches_out_is_the_images_folder(scene, capsys, tmp_path):
    images = tmp_path / "set" / "images"
    images.mkdir(parents=True)
    (images / "a.tif").write_bytes(scene["scene"].read_bytes())
    refused(capsys, tmp_path, ["patches", "--images", tmp_path / "set" / "*",
                               "--masks", images, "--classes", scene["classes"],
                               "--out", tmp_path / "set", "--overwrite"],
            f"--out {tmp_path / 'set'} is or contains --images")


def test_build_out_is_the_patches_folder(tmp_path, capsys):
    patches = tmp_path / "patches"
    patches.mkdir()
    (patches / "index.csv").write_text("id\n")
    refused(capsys, tmp_path, ["build", "--patches", patches, "--out", tmp_path,
                               "--overwrite"],
            f"--out {tmp_path} is or contains --patches {patches}")


# ----------------------------------------------------------------------------- maps, runs


def test_area_out_is_the_map_or_classes(scene, capsys):
    m, c = scene["labels"], scene["classes"]
    refused(capsys, scene["root"], ["area", "--map", m, "--out", m],
            f"--out {m} is the same file as --map {m}")
    refused(capsys, scene["root"], ["area", "--map", m, "--classes", c, "--out", c],
            f"--out {c} is the same file as --classes {c}")


def test_plot_out_is_an_input(scene, capsys):
    s, m, c = scene["scene"], scene["labels"], scene["classes"]
    for victim, option in ((s, "--image"), (m, "--map")):
        refused(capsys, scene["root"], ["plot", "--image", s, "--map", m, "--classes", c,
                                        "--out", victim],
                f"--out {victim} is the same file as {option} {victim}")


def test_search_and_download_outputs_are_not_their_inputs(tmp_path, capsys):
    """search --out on its --aoi or static --catalog, download's manifest.json on its
    --items or --aoi: refused before any network access, files unchanged."""
    aoi = tmp_path / "aoi.geojson"
    aoi.write_text('{"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]}')
    cat = tmp_path / "catalog.json"
    cat.write_text("{}")
    refused(capsys, tmp_path, ["search", "--catalog", cat, "--collection", "c", "--aoi", aoi,
                               "--out", aoi], f"--out {aoi} is the same file as --aoi {aoi}")
    refused(capsys, tmp_path, ["search", "--catalog", cat, "--collection", "c", "--out", cat],
            f"--out {cat} is the same file as --catalog {cat}")
    items = tmp_path / "dl" / "manifest.json"
    items.parent.mkdir()
    items.write_text('{"type": "FeatureCollection", "features": []}')
    refused(capsys, tmp_path, ["download", "--items", items, "--assets", "red", "--out",
                               items.parent],
            f"--out {items} is the same file as --items {items}")
    refused(capsys, tmp_path, ["download", "--items", aoi, "--assets", "red", "--out", aoi],
            f"--out {aoi} is a file, and the output is a folder")


def test_evaluate_outputs_are_not_the_data(tmp_path, capsys):
    """evaluate writes RUN/metrics_SPLIT.json, confusion/overlays PNGs and
    predictions_SPLIT/: --data must not be one of them."""
    run = tmp_path / "run"
    data = run / "predictions_test"
    data.mkdir(parents=True)
    (data / "satseg_dataset.json").write_text("{}")
    refused(capsys, tmp_path, ["evaluate", "--workdir", run, "--data", data],
            f"--data {data}")


# ----------------------------------------------------------------------------- the helper


def test_helper_lets_distinct_and_new_paths_through(tmp_path):
    a = tmp_path / "a.tif"
    a.write_bytes(b"x")
    refuse_overwriting_inputs({"--out": tmp_path / "new.tif"}, {"--image": a})
    refuse_overwriting_inputs({"--out": tmp_path / "o"}, {"--image": a, "--none": None},
                              folders=("--out",))
    # a file output inside an input folder destroys nothing
    refuse_overwriting_inputs({"--out": tmp_path / "map.tif"}, {"--workdir": tmp_path})


def test_helper_refuses_a_folder_output_above_an_input(tmp_path):
    a = tmp_path / "in" / "deep" / "a.tif"
    a.parent.mkdir(parents=True)
    a.write_bytes(b"x")
    with pytest.raises(SatsegError, match="is or contains --image"):
        refuse_overwriting_inputs({"--out": tmp_path / "in"}, {"--image": a},
                                  folders=("--out",))
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "in")
    with pytest.raises(SatsegError, match="is or contains --image"):
        refuse_overwriting_inputs({"--out": link}, {"--image": a}, folders=("--out",))


# ----------------------------------------------------------------------------- unwritable


def _commands_writing_to(s: dict, out: Path) -> dict[str, list]:
    """argv of every command that writes, with ``out`` as its output."""
    bands = [s[b] for b in ("blue", "green")]
    return {
        "sample": ["sample", "--out", out, "--size", "32"],
        "compose": ["compose", "--bands", *bands, "--out", out],
        "patches": ["patches", "--image", s["scene"], "--labels", s["labels"], "--classes",
                    s["classes"], "--size", "32", "--out", out],
        "build": ["build", "--patches", s["root"] / "no-patches", "--out", out],
        "predict": ["predict", "--workdir", s["root"] / "no-run", "--image", s["scene"],
                    "--out", out],
        "predict-probabilities": ["predict", "--workdir", s["root"] / "no-run", "--image",
                                  s["scene"], "--out", s["root"] / "m.tif",
                                  "--probabilities", out],
        "area": ["area", "--map", s["labels"], "--out", out],
        "plot": ["plot", "--image", s["scene"], "--map", s["labels"], "--classes",
                 s["classes"], "--out", out],
    }


FILE_OUTPUTS = ["compose", "predict", "predict-probabilities", "area", "plot"]
FOLDER_OUTPUTS = ["sample", "patches", "build"]


@pytest.mark.parametrize("command", FILE_OUTPUTS + FOLDER_OUTPUTS)
def test_output_below_a_file(scene, capsys, command):
    """``--out notes.txt/x`` was a FileExistsError/NotADirectoryError traceback, raised
    only after the work (plot, compose) or at its start."""
    notes = scene["root"] / "notes.txt"
    notes.write_text("not a folder\n")
    out = notes / "x.tif"
    argv = _commands_writing_to(scene, out)[command]
    option = "--probabilities" if command == "predict-probabilities" else "--out"
    refused(capsys, scene["root"], argv,
            f"{option} {out}: {notes} is a file, not a folder; choose an {option} in a folder")


@pytest.mark.parametrize("command", FILE_OUTPUTS)
def test_file_output_naming_a_folder(scene, capsys, command):
    """``predict --out EXISTING_DIR`` failed only after inference (IsADirectoryError on
    the final rename); now it is refused before the run is even loaded."""
    folder = scene["root"] / "maps"
    folder.mkdir()
    (folder / "keep.txt").write_text("x")
    argv = _commands_writing_to(scene, folder)[command]
    option = "--probabilities" if command == "predict-probabilities" else "--out"
    refused(capsys, scene["root"], argv,
            f"{option} {folder} is a folder, and the output is a file; name the file")


@pytest.mark.parametrize("command", FOLDER_OUTPUTS)
def test_folder_output_naming_a_file(scene, capsys, command):
    """``sample --out FILE`` said 'output folder already exists and is not empty'; with
    --overwrite it would have replaced the file by a folder."""
    f = scene["root"] / "a-file"
    f.write_text("x")
    argv = _commands_writing_to(scene, f)[command] + ["--overwrite"]
    refused(capsys, scene["root"], argv,
            f"--out {f} is a file, and the output is a folder; choose another --out")


# ----------------------------------------------------------------------------- library API


def _library_calls(s: dict[str, Path]) -> dict[str, tuple]:
    """One call per library entry point that writes, each naming an input as output."""
    from satseg_jax.area import write_area_csv
    from satseg_jax.evaluate import evaluate_workdir
    from satseg_jax.plots import map_preview_png
    from satseg_jax.predict import predict_scene
    from satseg_jax.raster.patches import make_patches

    root, scene, labels = s["root"], s["scene"], s["labels"]
    table = {"classes": ["a"], "rows": {"scene": [1.0]}, "map": str(labels), "regions": None,
             "units": "km2"}
    return {
        "predict_scene": (lambda: predict_scene(root / "no-run", scene, scene),
                          f"out {scene} is the same file as image {scene}"),
        "compose_bands": (lambda: compose_bands([s["blue"], s["red"]], s["red"]),
                          f"out {s['red']} is the same file as bands {s['red']}"),
        "make_patches": (lambda: make_patches(scene, labels.parent, s["classes"], size=32,
                                              labels=labels, overwrite=True),
                         f"out_dir {labels.parent} is or contains labels {labels}"),
        "write_area_csv": (lambda: write_area_csv(table, labels),
                           f"out {labels} is the same file as map {labels}"),
        "map_preview_png": (lambda: map_preview_png(scene, labels, ["a"], [(0, 0, 0)], scene),
                            f"out {scene} is the same file as image {scene}"),
        "evaluate_workdir": (lambda: evaluate_workdir(root, save_predictions=True,
                                                      data_dir=str(root / "predictions_test")),
                             f"predictions {root / 'predictions_test'} is or contains "
                             f"data_dir {root / 'predictions_test'}"),
    }


@pytest.mark.parametrize("entry", ["predict_scene", "compose_bands", "make_patches",
                                   "write_area_csv", "map_preview_png", "evaluate_workdir"])
def test_library_entry_points_refuse_to_overwrite_their_inputs(scene, entry):
    """Not only the CLI: a script calling the library directly is refused the same way,
    before any work (predict and evaluate before a run is even looked for), and every
    file stays as it was."""
    call, needle = _library_calls(scene)[entry]
    before = _tree(scene["root"])
    with pytest.raises(SatsegError) as e:
        call()
    assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert _tree(scene["root"]) == before
