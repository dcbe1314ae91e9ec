"""satseg_jax/cli.py and satseg_jax/commands/: parsing, help, errors, what is printed.

The commands' work is tested in the test file of each library module; here: one parser
style for every command, options declared once (CLI, data_prep scripts and library
share each default), required options shown as required, one-line usage errors, and
every command naming what it wrote.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import io
import json
from pathlib import Path

import pytest

from satseg_jax import cli
from satseg_jax.cli import main
from satseg_jax.commands import common

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = {"01_sample.py": "sample", "02_compose.py": "compose", "03_patches.py": "patches",
           "04_build.py": "build"}


def _help(run) -> str:
    """What ``run()`` prints for --help (argparse exits 0 after printing)."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), pytest.raises(SystemExit) as e:
        run()
    assert e.value.code == 0
    return buf.getvalue()


def _options(help_text: str) -> str:
    """The option lines of a --help text (its usage line names the program)."""
    return help_text[help_text.index("options:"):]


def _one_error_line(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("satseg: error: ") and "\n" not in err, err
    return err


def test_train_help_marks_config_and_workdir_required(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    text = _help(lambda: main(["train", "--help"]))
    usage = text.splitlines()[0]
    assert "--config CONFIG.py --workdir DIR" in usage, usage
    assert "[--config" not in usage and "[--workdir" not in usage
    assert "Restores the latest checkpoint" in text  # the long description is kept
    assert "--config.KEY=VALUE" in text  # and how to override fields


def test_evaluate_help_keeps_the_long_description_and_both_spellings():
    text = _help(lambda: main(["evaluate", "--help"]))
    assert "confusion matrix over the whole split" in text
    assert "--save-predictions, --save_predictions" in text


@pytest.mark.parametrize("argv", [["train", "--workdir", "w"], ["train", "--config", "c.py"],
                                  ["evaluate"], ["predict", "--workdir", "w"]])
def test_missing_required_options_are_one_line_and_status_2(capsys, argv):
    err = _one_error_line(capsys, argv)
    assert "the following arguments are required" in err and f"satseg {argv[0]}" in err


def test_unknown_options_are_refused(capsys):
    err = _one_error_line(capsys, ["area", "--map", "m.tif", "--config.seed=1"])
    assert "unrecognized arguments: --config.seed=1" in err
    err = _one_error_line(capsys, ["train", "--config", str(REPO / "configs" / "unet_sample.py"),
                                   "--workdir", "w", "stray"])
    assert "unrecognized arguments: stray" in err


def test_override_errors_name_the_field(tmp_path, capsys):
    err = _one_error_line(capsys, ["train", "--config", str(REPO / "configs" / "unet_sample.py"),
                                   "--workdir", str(tmp_path / "run"),
                                   "--config.train.batch_size=1e-3"])
    assert "--config.train.batch_size=1e-3: expected an integer" in err
    assert not (tmp_path / "run").exists()


def test_bbox_with_negative_values_is_one_argument():
    assert cli._join_negative_values(["search", "--bbox", "-47.9,-15.9,-47.7,-15.7"]) == \
        ["search", "--bbox=-47.9,-15.9,-47.7,-15.7"]


def test_library_defaults_match_the_signatures(monkeypatch):
    """Every default the CLI reads from a library source equals the imported function's."""
    seen: list[tuple[str, str, str]] = []
    real = common.library_default

    def record(module: str, function: str, parameter: str):
        seen.append((module, function, parameter))
        return real(module, function, parameter)

    for mod in ("data", "catalog", "model", "maps", "baseline"):
        monkeypatch.setattr(f"satseg_jax.commands.{mod}.library_default", record)
    cli.build_parser()
    assert len(seen) >= 20
    for module, function, parameter in seen:
        fn = getattr(importlib.import_module(module), function)
        want = inspect.signature(fn).parameters[parameter].default
        assert real(module, function, parameter) == want, (module, function, parameter)


def test_patch_size_default_is_the_library_one():
    from satseg_jax.raster.patches import make_patches

    parser = cli.build_parser()
    args, _ = parser.parse_known_args(["patches", "--image", "s.tif", "--labels", "l.tif",
                                       "--classes", "c.json", "--out", "o"])
    assert args.size == inspect.signature(make_patches).parameters["size"].default


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"data_prep_{name[:2]}",
                                                  REPO / "data_prep" / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_data_prep_scripts_share_the_cli_options(name, monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")
    script = _options(_help(lambda: _script(name).main(["--help"])))
    satseg = _options(_help(lambda: main([SCRIPTS[name], "--help"])))
    assert script == satseg


def test_data_prep_script_runs_like_the_command(tmp_path, capsys):
    assert _script("01_sample.py").main(["--out", str(tmp_path / "s"), "--size", "64"]) == 0
    out = capsys.readouterr().out
    assert "labels.geojson" in out and f"wrote {tmp_path / 's'}" in out
    assert _script("01_sample.py").main(["--out", str(tmp_path / "s"), "--size", "64"]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_patches_prints_readable_lines_without_progress_bars(tmp_path, capsys):
    from tests.helpers.printed import summary_lines

    assert main(["sample", "--out", str(tmp_path / "s"), "--size", "128"]) == 0
    s = tmp_path / "s"
    assert main(["patches", "--image", str(s / "red.tif"), "--labels", str(s / "labels.tif"),
                 "--classes", str(s / "classes.json"), "--size", "32",
                 "--out", str(tmp_path / "p")]) == 0
    cap = capsys.readouterr()
    assert "\r" not in cap.err + cap.out  # stderr is not a terminal: no progress bars
    assert not cap.out.lstrip().startswith("{")
    rows = summary_lines(cap.out)
    meta = json.loads((tmp_path / "p" / "patches.json").read_text())
    assert rows["patches"].startswith(f"{meta['num_patches']} kept of {meta['num_windows']}")
    assert rows["bands"] == "red" and "ignored pixels" in rows
    assert cap.out.strip().splitlines()[-1].startswith(f"wrote {tmp_path / 'p'}")


# ----------------------------------------------------------------------------- what was written


def test_evaluate_names_the_files_it_wrote(tmp_path, capsys, monkeypatch):
    """The command names each path the library reports as written by this call (a folder
    of predicted masks with a trailing slash), after the metrics table."""
    from satseg_jax import evaluate, metrics

    run = tmp_path / "run"
    (run / "predictions_test").mkdir(parents=True)

    def fake(workdir, split, save_predictions, **kwargs):
        paths = [Path(workdir) / f"metrics_{split}.json", Path(workdir) / f"confusion_{split}.png"]
        for p in paths:
            p.write_text("new")
        return {"split": split, "written": [str(p) for p in paths]
                + [str(Path(workdir) / f"predictions_{split}")]}

    monkeypatch.setattr(evaluate, "evaluate_workdir", fake)
    monkeypatch.setattr(metrics, "format_metrics_table", lambda r: "table")
    assert main(["evaluate", "--workdir", str(run), "--save_predictions"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == ["table", f"wrote {run / 'metrics_test.json'}",
                   f"wrote {run / 'confusion_test.png'}",
                   f"wrote {run / 'predictions_test'}/ (predicted masks)"]


def test_predict_names_the_probabilities_file(tmp_path, capsys, monkeypatch):
    from satseg_jax import predict

    seen = {}

    def fake(workdir, image, out, **kwargs):
        seen.update(kwargs)
        return {"notes": [], "map": out, "format": "COG", "width": 4, "height": 4, "tiles": 1,
                "checkpoint_step": 2, "seconds": 0.1, "class_pixels": {"a": 16},
                "pixel_area_m2": 64.0, "crs": "EPSG:32723"}

    monkeypatch.setattr(predict, "predict_scene", fake)
    assert main(["predict", "--workdir", "w", "--image", "s.tif", "--out", "m.tif",
                 "--probabilities", "p.tif"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("wrote m.tif (COG, 4x4 px, 1 tiles, checkpoint 2)")
    assert "wrote p.tif (per-class probabilities" in out
    assert seen["progress"] is False and seen["tile"] == 256
