"""benchmarks/speed.py: runs end to end at a tiny size, without TensorFlow, with or
without PyTorch, and writes the JSON the results table is built from."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SPEED = REPO / "benchmarks" / "speed.py"
HAVE_TORCH = importlib.util.find_spec("torch") is not None


def _load_speed():
    """benchmarks/speed.py as a module (registered first: its dataclass needs that)."""
    if "satseg_speed" in sys.modules:
        return sys.modules["satseg_speed"]
    spec = importlib.util.spec_from_file_location("satseg_speed", SPEED)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["satseg_speed"] = mod
    spec.loader.exec_module(mod)
    return mod


def _run(tmp_path: Path, *extra: str) -> dict:
    """speed.py --quick in a subprocess where tensorflow/tfds/rasterio cannot be imported."""
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    for name in ("tensorflow", "tensorflow_datasets", "rasterio"):
        (blocked / f"{name}.py").write_text(
            f"raise ImportError('{name} is blocked: speed.py must not need it')\n")
    out = tmp_path / "speed.json"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join([str(blocked), str(REPO)]))
    cmd = [sys.executable, str(SPEED), "--quick", "--no-default", "--out", str(out), *extra]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "train img/s" in proc.stdout  # the table was printed
    return json.loads(out.read_text())


def _check_common(report: dict, base: int = 4) -> dict:
    for key in ("benchmark", "machine", "config", "variants", "matmul_ceiling_gflops",
                "flops_per_image_g", "flops_per_image_analytic_g", "flops_source", "sections"):
        assert key in report, key
    m = report["machine"]
    for key in ("cpu", "cpu_isa", "cores", "jax", "jaxlib", "flax", "platform", "device_kind",
                "machine"):
        assert key in m, key
    assert m["machine"].startswith("cpu-")
    assert report["config"]["base"] == base and report["config"]["batch"] == 2
    tuned = report["variants"]["tuned"]
    assert "error" not in tuned, tuned.get("error")
    jax_res = tuned["jax"]
    for key in ("train_img_s", "predict_img_s", "train_gflops", "params", "compile_s"):
        assert key in jax_res, key
    assert jax_res["train_img_s"]["reps"] == 2
    assert jax_res["train_img_s"]["min"] <= jax_res["train_img_s"]["median"]
    assert report["matmul_ceiling_gflops"] > 0
    assert report["flops_per_image_g"] > 0
    # The worker sets malloc up as `satseg train` does (satseg_jax.cpu.host_memory) and counts
    # the page faults of a timed step.
    assert isinstance(tuned["malloc_settings"], list)
    assert jax_res["minor_faults_per_step"] >= 0
    assert jax_res["conv"] in ("onednn", "xla")
    # Optional sections are registered and skipped unless asked for.
    return tuned


@pytest.mark.timeout(180)
def test_quick_run_without_torch(tmp_path):
    report = _run(tmp_path, "--no-torch")
    tuned = _check_common(report)
    assert "torch" not in tuned and "ratio_train_jax_over_torch" not in tuned


def _smp_or_skip() -> None:
    from satseg_jax.weights.torch_libs import import_torch_library

    try:
        import_torch_library("segmentation_models_pytorch")
    except ImportError:
        pytest.skip("needs segmentation_models_pytorch: pip install -e '.[weights]'")


@pytest.mark.timeout(180)
@pytest.mark.skipif(not HAVE_TORCH, reason="torch not installed (pip install '.[bench]')")
def test_quick_run_with_torch_times_unet_resnet18_against_smp(tmp_path):
    """With torch, one run (the encoder mode, the comparison issue 31 asks for): unet-
    resnet18 against smp's Unet('resnet18'), the same parameter count (checked by the
    worker: smp's 14,328,354 for 3 bands and 2 classes), FLOPs counted on the smp twin,
    JAX/PyTorch ratios paired within the worker."""
    _smp_or_skip()
    report = _run(tmp_path, "--encoder", "resnet18", "--bands", "3", "--classes", "2",
                  "--torch-compile", "off")
    tuned = _check_common(report, base=16)
    assert report["config"]["encoder"] == "resnet18" and report["config"]["depth"] == 5
    assert tuned["same_param_count"] is True
    assert tuned["jax"]["params"] == tuned["torch"]["params"] == 14_328_354
    for key in ("train_img_s", "predict_img_s", "train_gflops"):
        assert key in tuned["torch"], key
    assert report["flops_source"].startswith("torch FlopCounterMode")
    assert tuned["ratio_train_paired"]["median"] > 0
    assert tuned["ratio_train_jax_over_torch"] > 0
    assert report["machine"]["torch"]


@pytest.mark.skipif(not HAVE_TORCH, reason="torch not installed (pip install '.[bench]')")
def test_plain_torch_twin_trains_with_the_jax_models_parameter_count():
    """The plain-U-Net PyTorch side (the default mode): built with the JAX model's
    parameter count (torch_unet.build asserts it) and its train/predict steps run."""
    speed = _load_speed()
    args = speed.parse_args(["--quick"])
    t = speed.torch_side(args, "cpu")
    torch_unet = importlib.import_module("torch_unet")
    assert t["params"] == torch_unet.expected_param_count(args.bands, args.classes,
                                                          args.base, args.depth)
    t["train"]()
    t["predict"]()


def test_smp_twin_has_the_jax_encoder_unets_parameter_count():
    """The encoder mode's smp model (decoder widths base * 2**level) and the JAX model
    are the same architecture, parameter for parameter, at a non-default depth too."""
    pytest.importorskip("torch")
    _smp_or_skip()
    import jax
    import jax.numpy as jnp

    from satseg_jax.models import get_model

    speed = _load_speed()
    args = speed.parse_args(["--encoder", "resnet34", "--base", "8", "--bands", "5"])
    assert (args.depth, args.base) == (5, 8)
    model = get_model({"name": "unet", "encoder": "resnet34", "depth": 5, "base_width": 8,
                       "upsample": "nearest"}, args.classes)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                               jnp.zeros((1, 64, 64, 5)), train=False))
    jax_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(shapes["params"]))
    assert jax_params == importlib.import_module("torch_unet").param_count(speed.smp_unet(args))


def test_machine_slug():
    speed = _load_speed()
    assert speed.machine_slug("cpu", "cpu", "AMD EPYC", 2) == "cpu-2core-amd-epyc"
    assert (speed.machine_slug("cpu", "cpu", "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz",
                               2) == "cpu-2core-intel-xeon-platinum")
    assert speed.machine_slug("gpu", "NVIDIA H100 80GB HBM3", "x", 16) == "gpu-h100"
    assert speed.machine_slug("tpu", "TPU v5 lite", "x", 8) == "tpu-v5-lite"
    # Two VMs both named "AMD EPYC" (Zen 3 AVX2, Zen 4 AVX-512) get different ids.
    assert speed.machine_slug("cpu", "cpu", "AMD EPYC", 2,
                              ["avx2", "fma"]) == "cpu-2core-amd-epyc-avx2"
    assert speed.machine_slug("cpu", "cpu", "AMD EPYC", 2,
                              ["avx2", "avx512f", "avx512_bf16"]) == "cpu-2core-amd-epyc-avx512"
    assert speed.machine_slug("cpu", "cpu", "Intel(R) Xeon(R) Processor", 2,
                              ["avx2", "avx512f", "amx_tile"]) == "cpu-2core-intel-xeon-amx"
    assert speed.machine_slug("gpu", "NVIDIA H100", "x", 16, ["avx512f"]) == "gpu-h100"


def test_analytic_flops_close_to_xla_count():
    """XLA's cost analysis counts 17.2-17.4 GFLOP per trained image for base 32, depth 4,
    128 px, 4 bands, 6 classes; 3x the forward pass is within 5 % of that."""
    speed = _load_speed()
    g = speed.analytic_train_flops(4, 6, 32, 4, 128) / 1e9
    assert 17.0 < g < 18.3


def test_sections_skip_cleanly_when_modules_are_missing():
    speed = _load_speed()
    calls = []

    @speed.register_section("needs_missing", "test", requires=("no_such_module_xyz",))
    def _sec(args):
        calls.append(args)
        return {"ran": True}

    @speed.register_section("needs_nothing", "test")
    def _sec2(args):
        return {"ran": True}

    args = speed.parse_args(["--quick", "--sections", "needs_missing,needs_nothing"])
    out = speed.run_sections(args)
    assert out["needs_missing"]["status"] == "skipped"
    assert "no_such_module_xyz" in out["needs_missing"]["reason"]
    assert out["needs_nothing"] == {"ran": True}
    assert calls == []


def test_default_variant_keeps_the_callers_flags():
    """The 'default' reference runs the flags the caller had *before* ``cpu.setup()``
    added the project's defaults to XLA_FLAGS (it once ran the tuned flags under the
    name 'default'); unknown model patches in a variant name are refused."""
    speed = _load_speed()
    from satseg_jax.cpu import xla_flags

    args = speed.parse_args(["--variant", "mine+flaxpool=--x=1"])
    vs = speed.variants(args, user="")
    assert vs["default"] == ""
    for key, value in xla_flags.recommended_flags().items():
        assert f"--{key}={value}" in vs["tuned"], vs["tuned"]
    assert vs["mine+flaxpool"] == "--x=1"
    with pytest.raises(SystemExit, match="unknown model patch"):
        speed.variants(speed.parse_args(["--variant", "a+nosuch="]), user="")


def test_step_ab_compares_current_and_patched_model(capsys):
    """benchmarks/step_ab.py: both steps in one process, paired ratio printed, losses of
    the exact max-pool rewrite agree with nn.max_pool's."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location("satseg_step_ab",
                                                      REPO / "benchmarks" / "step_ab.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        assert mod.main(["--patch", "flaxpool", "--rounds", "2", "--base", "4", "--depth",
                         "2", "--size", "32", "--batch", "2", "--warmup", "1"]) == 0
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    out = capsys.readouterr().out
    assert "speed-up of the current model, paired" in out
    assert "losses agree (rtol 1e-5): True" in out


def test_conv_layers_benchmark_runs_each_flag_setting_in_its_own_process(tmp_path):
    """benchmarks/conv_layers.py --quick: one worker per XLA flag setting, each seeing its
    own XLA_FLAGS (the project's defaults switched off), GFLOP/s per shape in the JSON."""
    out = tmp_path / "conv.json"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    cmd = [sys.executable, str(REPO / "benchmarks" / "conv_layers.py"), "--quick", "--no-torch",
           "--batch", "2", "--reps", "2", "--variant", "w512=--xla_cpu_prefer_vector_width=512",
           "--out", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report["variants"]) == {"ynn", "eigen", "w512"}
    assert report["variants"]["ynn"]["xla_flags"] == ""
    assert "-individual_convolution" in report["variants"]["eigen"]["xla_flags"]
    assert report["variants"]["w512"]["xla_flags"] == "--xla_cpu_prefer_vector_width=512"
    for res in report["variants"].values():
        assert [r["shape"] for r in res["rows"]] == [[2, side, side, cin, cout]
                                                for side, cin, cout in report["shapes"]]
        for row in res["rows"]:
            assert row["jax_fwd"] > 0 and row["jax_grad"] > 0
            assert "torch_fwd" not in row


def test_cpu_isa_reads_the_flags_line_and_keeps_only_known_extensions(tmp_path):
    """machine.cpu_isa: the vector extensions from the first ``flags`` line, in ISA_FLAGS
    order; a missing file gives an empty list, not an error."""
    speed = _load_speed()
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Some CPU\n"
                    "flags\t\t: fpu sse2 amx_tile avx512f avx2 avx512fp16\n"
                    "processor\t: 1\nflags\t\t: fpu\n")
    assert speed.cpu_isa(info) == ["avx2", "avx512f", "amx_tile"]
    assert speed._cpuinfo("model name", info) == "Some CPU"
    assert speed.cpu_isa(tmp_path / "absent") == []


def test_model_patches_apply_to_their_worker_only():
    """``+flaxbn+matmulup`` (the step before NOTES §13: BatchNorm+ReLU and up-sampling in
    XLA) trains the same numbers as the current step, and jax_side undoes the patches
    so later models in the process get the current layers."""
    speed = _load_speed()
    from satseg_jax.models import blocks

    current = (blocks.FusedBatchNormReLU, blocks.ConvTranspose2x2)
    args = speed.parse_args(["--quick", "--no-torch"])
    sides = {}
    for worker in ("tuned", "tuned+flaxbn+matmulup"):
        args.worker = worker
        sides[worker] = speed.jax_side(args)
        assert (blocks.FusedBatchNormReLU, blocks.ConvTranspose2x2) == current
        for _ in range(3):
            sides[worker]["train"]()
    now, before = sides["tuned"]["ffi_targets"], sides["tuned+flaxbn+matmulup"]["ffi_targets"]
    # --quick: depth 2, 2 convs per block -> 10 BatchNorm+ReLU layers, 2 up-samplings;
    # patched: no fused BatchNorm, and each up-sampling's 3 oneDNN calls (data gradient
    # forward; forward and kernel gradient backward) are matmuls again.
    assert now["bn_relu_forward"] == now["bn_relu_backward"] == 10
    assert "bn_relu_forward" not in before and "bn_relu_backward" not in before
    for name in ("data_grad", "forward", "kernel_grad"):
        assert now[name] == before[name] + 2, (name, now, before)
    np.testing.assert_allclose(sides["tuned"]["losses"],
                               sides["tuned+flaxbn+matmulup"]["losses"], rtol=1e-4)
