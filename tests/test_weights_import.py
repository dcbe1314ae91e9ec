"""``satseg weights import`` / ``show``: strict conversion, the card, verified reads.

Every state dict here is a real torch model's (random init: no weights can be downloaded
in CI), saved the way the libraries save them (.pth via torch.save, .safetensors).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from satseg_jax.cli import main
from satseg_jax.weights.convert import torch_key
from satseg_jax.weights.store import read_encoder_dir
from tests.helpers import torch_twins as tt

torch = tt.torch


@pytest.fixture(scope="module")
def resnet18_pth(tmp_path_factory) -> tuple[Path, dict]:
    tv = tt.library("torchvision")
    model = tv.models.resnet18()
    tt.randomise_bn(model)
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(model.state_dict(), path)
    return path, tt.state_dict_numpy(model)


def _flat(tree, prefix=()):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _flat(v, (*prefix, k))
        else:
            yield (*prefix, k), v


def _import(args, capsys) -> tuple[int, str, str]:
    rc = main(["weights", "import", *map(str, args)])
    out, err = capsys.readouterr()
    return rc, out, err


def test_import_show_round_trip(resnet18_pth, tmp_path, capsys):
    path, state = resnet18_pth
    out = tmp_path / "enc"
    rc, text, err = _import(["--from", "torchvision", "--arch", "resnet18", "--file", path,
                             "--out", out, "--licence", "BSD-3-Clause"], capsys)
    assert rc == 0, err
    kept = [k for k in state if not (k.startswith("fc.") or k.endswith("num_batches_tracked"))]
    assert f"converted {len(kept)} tensors; left out {len(state) - len(kept)}" in text
    variables, card = read_encoder_dir(out)
    assert card["bands"] == ["red", "green", "blue"] and card["input_scale"] == 255.0
    assert card["mean"] == [0.485, 0.456, 0.406] and card["licence"] == "BSD-3-Clause"
    assert set(card["dropped"]) == {"fc.weight", "fc.bias"} | {
        k for k in state if k.endswith("num_batches_tracked")}
    for p, value in _flat(variables):
        want = state[torch_key(p)]
        if value.ndim == 4:
            want = np.transpose(want, (2, 3, 1, 0))
        np.testing.assert_array_equal(value, want)
    assert main(["weights", "show", str(out)]) == 0
    assert "digests verified" in capsys.readouterr().out


def _variant(state: dict, kind: str) -> tuple[dict, str]:
    s = {k: torch.from_numpy(v.copy()) for k, v in state.items()}
    if kind == "missing":
        del s["layer3.1.bn2.running_var"]
        return s, "1 missing: layer3.1.bn2.running_var"
    if kind == "extra":
        s["layer5.0.conv1.weight"] = torch.zeros(3, 3, 3, 3)
        return s, "1 unexpected: layer5.0.conv1.weight"
    s["layer2.0.conv2.weight"] = torch.zeros(128, 64, 3, 3)
    return s, "wrongly shaped: layer2.0.conv2.weight (128, 64, 3, 3) (expected (128, 128, 3, 3))"


@pytest.mark.parametrize("kind", ["missing", "extra", "shape"])
def test_bad_state_dicts_are_refused_naming_the_key(kind, resnet18_pth, tmp_path, capsys):
    bad, message = _variant(resnet18_pth[1], kind)
    path = tmp_path / f"{kind}.pth"
    torch.save(bad, path)
    rc, _, err = _import(["--from", "torchvision", "--arch", "resnet18", "--file", path,
                          "--out", tmp_path / "enc"], capsys)
    assert rc != 0
    assert message in err and str(path) in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "enc").exists()


def test_safetensors_wrapper_and_prefix(resnet18_pth, tmp_path, capsys):
    from safetensors.torch import save_file

    _, state = resnet18_pth
    path = tmp_path / "backbone.safetensors"
    save_file({f"backbone.{k}": torch.from_numpy(v.copy()) for k, v in state.items()}
              | {"head.weight": torch.zeros(2, 512)}, str(path))
    rc, _, err = _import(["--from", "timm", "--arch", "resnet18", "--file", path,
                          "--out", tmp_path / "enc"], capsys)
    assert rc != 0 and "--prefix" in err
    rc, _, err = _import(["--from", "timm", "--arch", "resnet18", "--file", path,
                          "--out", tmp_path / "enc", "--prefix", "backbone."], capsys)
    assert rc == 0, err
    card = json.loads((tmp_path / "enc" / "card.json").read_text())
    assert card["dropped"]["head.weight"] == "outside --prefix backbone."
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {k: torch.from_numpy(v.copy()) for k, v in state.items()},
                "epoch": 3}, wrapped)
    rc, _, err = _import(["--from", "torchvision", "--arch", "resnet18", "--file", wrapped,
                          "--out", tmp_path / "enc2"], capsys)
    assert rc == 0, err
    assert json.loads((tmp_path / "enc2" / "card.json").read_text())["wrapper"] == "state_dict"


def test_multispectral_torchgeo_layout_keeps_its_bands(tmp_path, capsys):
    """SSL4EO-S12's ResNet-50 is timm's resnet50 with 13 input bands: its card must carry
    the 13 Sentinel-2 bands, in the weights' order, with their normalisation."""
    timm = tt.library("timm")
    model = timm.create_model("resnet50", in_chans=13, pretrained=False)
    path = tmp_path / "ssl4eo_s12_resnet50.pth"
    torch.save(model.state_dict(), path)
    bands = "B1,B2,B3,B4,B5,B6,B7,B8,B8A,B9,B10,B11,B12"
    base = ["--from", "torchgeo", "--arch", "resnet50", "--file", path, "--out",
            tmp_path / "enc"]
    rc, _, err = _import(base, capsys)
    assert rc != 0 and "--bands --mean --std --input-scale" in err
    rc, _, err = _import([*base, "--bands", "B2,B3,B4", "--mean", "0,0,0", "--std", "1,1,1",
                          "--input-scale", "10000"], capsys)
    assert rc != 0 and "takes 13 bands but --bands gives 3" in err
    rc, _, err = _import([*base, "--bands", bands, "--mean", ",".join(["0"] * 13), "--std",
                          ",".join(["1"] * 13), "--input-scale", "10000"], capsys)
    assert rc == 0, err
    variables, card = read_encoder_dir(tmp_path / "enc")
    assert card["bands"] == bands.split(",") and card["source"] == "torchgeo"
    assert variables["params"]["conv1"]["kernel"].shape == (7, 7, 13, 64)


def test_a_damaged_encoder_directory_is_refused(resnet18_pth, tmp_path, capsys):
    out = tmp_path / "enc"
    rc, _, err = _import(["--from", "torchvision", "--arch", "resnet18", "--file",
                          resnet18_pth[0], "--out", out], capsys)
    assert rc == 0, err
    card = json.loads((out / "card.json").read_text())
    key = sorted(card["digests"])[0]
    card["digests"][key] = "00000000"  # the array no longer matches what was imported
    (out / "card.json").write_text(json.dumps(card))
    assert main(["weights", "show", str(out)]) != 0
    err = capsys.readouterr().err
    assert "do not match their card digests" in err and str(out) in err
    (out / "card.json").write_text("{")
    assert main(["weights", "show", str(out)]) != 0
    assert "unreadable weight card" in capsys.readouterr().err


def test_existing_output_and_offline_download_are_one_line(resnet18_pth, tmp_path, capsys):
    out = tmp_path / "enc"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    rc, _, err = _import(["--from", "torchvision", "--arch", "resnet18", "--file",
                          resnet18_pth[0], "--out", out], capsys)
    assert rc != 0 and "--overwrite" in err and (out / "keep.txt").read_text() == "mine"
    rc, _, err = _import(["--from", "torchvision", "--arch", "resnet18", "--download",
                          "NoSuchWeights.X", "--out", tmp_path / "dl"], capsys)
    assert rc != 0 and "NoSuchWeights.X" in err and len(err.strip().splitlines()) == 1


def test_arch_choices_are_the_encoders():
    from satseg_jax.commands.weights import ARCHS, SOURCES
    from satseg_jax.models.encoders import ENCODERS
    from satseg_jax.weights.importer import SOURCES as IMPORT_SOURCES

    assert ARCHS == ENCODERS and SOURCES == IMPORT_SOURCES
