"""Train-step and inference speed of satseg's U-Net in JAX/Flax next to PyTorch, one command.

    python benchmarks/speed.py [--quick] [--base 32 --depth 4 --size 128 --batch 8
                                --bands 4 --classes 6 --reps 5 --dtype float32|bfloat16]
    python benchmarks/speed.py --encoder resnet34 --bands 3 --classes 2   # vs smp's Unet

Why it is built this way:

- **Same process, interleaved.** Machines are shared and noisy, so each JAX variant runs
  in its own worker process (``XLA_FLAGS`` is read once per process, before JAX starts)
  that times the JAX step and the PyTorch step *alternately*, rep after rep. Ratios
  JAX/PyTorch are taken inside one worker; absolute img/s may drift between workers.
- **Variants.** ``tuned`` = the project's XLA defaults (:mod:`satseg_jax.cpu.xla_flags`);
  ``default`` = plain jaxlib defaults, for reference; ``--variant NAME=FLAGS`` adds more
  (e.g. to try a flag); ``+flaxpool`` in NAME patches an earlier layer formulation back
  in (:func:`apply_model_patches`). On accelerators the CPU flags change nothing; ``tuned`` only.
- **The production step.** The JAX side is ``satseg_jax.train``'s own ``Runner``,
  ``create_train_state`` and ``make_train_step`` (jit, donated state), built from
  ``configs/unet_sample.py`` with the model size overridden; the PyTorch side is the
  twin in ``benchmarks/torch_unet.py`` (same parameter count, channels_last, AdamW,
  gradient clipping, cross-entropy with ignore label 255).
- **Encoder U-Nets.** ``--encoder resnet34`` (any name of ``satseg_jax.models.encoders``)
  times ``unet`` with that encoder under the smp-style decoder (depth 5, base width 16,
  nearest up-sampling unless given) against segmentation_models_pytorch's
  ``Unet(encoder)`` with the same decoder widths: the same architecture, parameter for
  parameter (the worker checks the counts agree). FLOPs per image then come from
  torch's ``FlopCounterMode`` on one smp train step when torch is installed (the
  analytic count is the plain U-Net's), else from XLA's cost analysis.
- **Figures.** img/s (median of ``--reps`` timed reps after warm-up, with min–max),
  GFLOP/s from XLA's cost analysis of the compiled step (on GPUs it leaves cuDNN
  convolutions out, so the analytic count is reported too and used there), share of a
  *measured* matmul ceiling (max of a large ``jnp.dot`` and ``torch.mm``, f32 on CPU,
  bf16 with ``--dtype bfloat16``), inference img/s for both frameworks.
- **No TensorFlow needed.** Only jax/flax/optax (+ torch when installed) are imported,
  so it runs on a GPU box without tensorflow/tfds/rasterio. Sections that do need them
  (input pipeline, data prep, whole-scene predict) are registered in ``SECTIONS`` and
  skipped with a message when their modules are missing; see :func:`register_section`.

Writes ``benchmarks/results/<machine>.json`` (``--out`` to change), e.g.
``cpu-2core-amd-epyc-avx2.json`` or ``gpu-h100.json``, and prints a table.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run as a script from a checkout, installed or not
BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))  # torch_unet.py

RESULT_TAG = "SPEED_RESULT "
QUICK = {"base": 4, "depth": 2, "size": 32, "batch": 2, "reps": 2, "warmup": 1,
         "steps_per_rep": 1}
# With --encoder: smp's Unet decoder (widths 256..16 over 5 encoder stages), unless given.
ENCODER_DEFAULTS = {"base": 16, "depth": 5}


# ----------------------------------------------------------------------------- helpers


def have(module: str) -> bool:
    """Whether ``module`` is importable (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def stats(times: list[float], work: float) -> dict[str, float]:
    """Median and min–max of ``work / time`` (e.g. images per second) over reps."""
    rates = sorted(work / t for t in times)
    return {"median": rates[len(rates) // 2], "min": rates[0], "max": rates[-1],
            "reps": len(rates)}


def interleaved(fns: dict[str, Callable[[], Any]], reps: int, warmup: int) -> dict[str, list]:
    """Time each function once per round, ``reps`` rounds after ``warmup`` rounds.

    Alternating the frameworks inside every round spreads a noisy neighbour's load over
    both sides instead of letting it land on one.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list] = {k: [] for k in fns}
    order = list(fns)
    for i in range(reps):
        for name in order if i % 2 == 0 else order[::-1]:  # ABBA: no side always first
            t0 = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t0)
    return times


def paired_ratio(times_a: list[float], times_b: list[float]) -> dict[str, float]:
    """Median over rounds of speed(a)/speed(b) = t_b/t_a, each from the *same* round.

    Why: a load burst that hits one round slows both sides of that round's pair, so the
    per-round ratio is steadier than the ratio of two medians taken over all rounds.
    """
    r = sorted(tb / ta for ta, tb in zip(times_a, times_b))
    return {"median": r[len(r) // 2], "min": r[0], "max": r[-1]}


def _cpuinfo(field: str, path: Path = Path("/proc/cpuinfo")) -> str | None:
    """The first ``field: value`` of /proc/cpuinfo (None where it cannot be read)."""
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(":")
            if name.strip().lower() == field:
                return value.strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux, platform elsewhere)."""
    return _cpuinfo("model name") or platform.processor() or platform.machine()


# Vector/matrix extensions that decide which convolution library is fastest (NOTES §11).
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16")


def cpu_isa(path: Path = Path("/proc/cpuinfo")) -> list[str]:
    """The ``ISA_FLAGS`` this CPU has, from /proc/cpuinfo (empty where it cannot be read):
    the model name alone ("Intel(R) Xeon(R) Processor" on a VM) does not tell AVX-512."""
    have = set((_cpuinfo("flags", path) or "").split())
    return [f for f in ISA_FLAGS if f in have]


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def isa_tier(isa: list[str]) -> str:
    """The widest vector/matrix unit among ``isa`` (``cpu_isa()``): ``amx``, ``avx512``,
    ``avx2`` or ``""``. Why in the machine id: two VMs both called "AMD EPYC" were a Zen 3
    (AVX2) and a Zen 4 (AVX-512), and their results must not overwrite each other."""
    have = set(isa)
    for tier, flag in (("amx", "amx_tile"), ("avx512", "avx512f"), ("avx2", "avx2")):
        if flag in have:
            return tier
    return ""


def machine_slug(platform_name: str, device_kind: str, cpu: str, cores: int,
                 isa: list[str] | None = None) -> str:
    """Short file-name-safe machine id: ``cpu-2core-amd-epyc-avx2``, ``gpu-h100``,
    ``tpu-v5e``; ``isa`` (``cpu_isa()``) adds the CPU's widest vector unit."""
    if platform_name == "cpu":
        words = [w for w in slug(re.sub(r"\(.*?\)|\d+-core processor|processor|cpu", " ",
                                        cpu, flags=re.I)).split("-") if w]
        tier = isa_tier(isa or [])
        return f"cpu-{cores}core-" + "-".join(words[:3] + ([tier] if tier else []))
    kind = slug(device_kind)
    kind = re.sub(r"^(nvidia|amd|google|tpu)-", "", kind)
    short = kind.split("-")[0] if platform_name == "gpu" else kind
    return f"{platform_name}-{short}"


# ----------------------------------------------------------------------------- sections


@dataclass
class Section:
    """An optional benchmark part; skipped with a message when ``requires`` is missing.

    ``run(args) -> dict`` returns what goes under ``sections[name]`` in the JSON. The
    input-pipeline / data-prep / predict parts live in ``pipeline_speed.py`` and
    ``predict_scene.py`` (they need TensorFlow or rasterio); attach them here.
    """

    name: str
    description: str
    run: Callable[[argparse.Namespace], dict]
    requires: tuple[str, ...] = ()
    default: bool = False  # run without being named in --sections

    def missing(self) -> list[str]:
        return [m for m in self.requires if not have(m)]


SECTIONS: dict[str, Section] = {}


def register_section(name: str, description: str, requires: tuple[str, ...] = (),
                     default: bool = False) -> Callable:
    """Decorator: ``@register_section("pipeline", "...", requires=("tensorflow",))``."""

    def wrap(fn: Callable[[argparse.Namespace], dict]) -> Callable:
        SECTIONS[name] = Section(name, description, fn, tuple(requires), default)
        return fn

    return wrap


def _scratch(name: str) -> Path:
    import tempfile

    return Path(tempfile.mkdtemp(prefix=f"satseg_speed_{name}_"))


@register_section("input_pipeline", "tf.data images/s, no model (benchmarks/pipeline_speed.py)",
                  requires=("tensorflow", "tensorflow_datasets", "rasterio"))
def section_input_pipeline(args: argparse.Namespace) -> dict:
    """Images/s out of ``input_pipeline.train_iterator`` (TFRecords, normalise, flips and
    rotations, shuffle, batch) on 128-px patches with 2 tf.data threads; the summary sets
    it against the trainer's img/s (the goal: >= 20x, enough to feed an accelerator)."""
    import shutil

    import pipeline_speed

    work = _scratch("pipeline")
    try:
        return pipeline_speed.input_pipeline(work, max(args.reps, 5), batch=16, steps=50,
                                             threads=2, crop=0)
    finally:
        shutil.rmtree(work, ignore_errors=True)


@register_section("data_prep", "satseg patches vs gdal_retile.py, MB/s (pipeline_speed.py)",
                  requires=("rasterio",))
def section_data_prep(args: argparse.Namespace) -> dict:
    """``satseg patches`` against ``gdal_retile.py`` on a generated 4096²×4 scene (each a
    fresh process, DEFLATE both sides), median of >= 5 runs after a warm-up."""
    import shutil

    import pipeline_speed

    work = _scratch("prep")
    try:
        return pipeline_speed.data_prep(work, args.prep_size, 256, max(args.reps, 5))
    finally:
        shutil.rmtree(work, ignore_errors=True)


@register_section("predict", "whole-scene predict overhead over the raw model "
                  "(benchmarks/predict_scene.py)", requires=("rasterio", "tensorflow"))
def section_predict(args: argparse.Namespace) -> dict:
    """Runs ``predict_scene.py --size N`` (it needs the quickstart's trained run) and
    returns its JSON: time, peak RSS, tile-loop overhead over the raw batched model."""
    import predict_scene

    out = BENCH / "results" / f"predict_scene_{args.predict_size}_{predict_scene.machine()}.json"
    cmd = [sys.executable, str(BENCH / "predict_scene.py"), "--size", str(args.predict_size),
           "--reps", str(max(args.reps, 5)), "--result", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return {"status": "error", "error": (proc.stdout + proc.stderr)[-1500:]}
    return json.loads(out.read_text())


def run_sections(args: argparse.Namespace) -> dict:
    """Run the sections asked for (``--sections a,b`` or ``all``); skip missing ones."""
    wanted = [s for s in SECTIONS.values() if s.default or s.name in args.sections
              or "all" in args.sections]
    out = {}
    for sec in wanted:
        missing = sec.missing()
        if missing:
            msg = f"skipped: {', '.join(missing)} not installed"
            print(f"[section {sec.name}] {msg}")
            out[sec.name] = {"status": "skipped", "reason": msg}
            continue
        try:
            out[sec.name] = sec.run(args)
        except Exception as e:  # a broken optional part must not lose the main figures
            out[sec.name] = {"status": "error", "error": f"{type(e).__name__}: {e}"}
    return out


# ----------------------------------------------------------------------------- config


def sample_config(args: argparse.Namespace) -> Any:
    """``configs/unet_sample.py`` with the model/batch of ``args`` (ml_collections when
    installed; otherwise a namespace with the same fields, so a bare GPU box works)."""
    try:
        spec = importlib.util.spec_from_file_location("unet_sample",
                                                      REPO / "configs" / "unet_sample.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        c = mod.get_config()
    except ImportError:
        ns = SimpleNamespace
        c = ns(seed=0, task="segmentation", parallelism="jit",
               data=ns(crop_size=0),
               model=ns(name="unet", depth=3, base_width=16, norm="batch", dropout=0.0,
                        upsample="transpose", encoder="none", encoder_bn="train"),
               loss=ns(name="cross_entropy", weights={}, class_weights="none",
                       label_smoothing=0.0, focal_gamma=2.0),
               optimizer=ns(name="adamw", learning_rate=3e-3, weight_decay=1e-4,
                            momentum=0.9, b1=0.9, b2=0.999, grad_clip_norm=1.0),
               schedule=ns(name="warmup_cosine", warmup_steps=30, end_factor=0.01,
                           boundaries=(0.6, 0.85), scales=(0.1, 0.1), decay_rate=0.5,
                           transition_steps=200),
               train=ns(batch_size=16, num_steps=300, compute_dtype="float32",
                        cpu_conv="auto"))
    c.model.base_width = args.base
    c.model.depth = args.depth
    if args.encoder != "none":  # smp's Unet decoder: nearest up-sampling
        c.model.encoder = args.encoder
        c.model.upsample = "nearest"
    c.train.batch_size = args.batch
    c.train.compute_dtype = args.dtype
    c.data.crop_size = 0
    return c


def analytic_train_flops(bands: int, classes: int, base: int, depth: int, size: int) -> float:
    """FLOPs of one trained image (forward + both backward passes ~= 3x forward) of the
    padded U-Net, counting multiply-adds of convolutions as 2 FLOPs, as XLA's cost
    analysis does. Used where that analysis is blind (cuDNN convs on GPUs); for base 32,
    depth 4, 128 px it gives 18.2 GFLOP vs XLA's 17.4 (the first conv's input gradient
    is never computed; element-wise work is left out)."""
    widths = [base * 2**i for i in range(depth + 1)]
    fwd, s, cin = 0.0, size, bands
    for w in widths[:depth]:
        fwd += 2 * s * s * 9 * (cin * w + w * w)
        cin, s = w, s // 2
    fwd += 2 * s * s * 9 * (widths[depth - 1] * widths[depth] + widths[depth] ** 2)
    for level in reversed(range(depth)):
        s *= 2
        w = widths[level]
        fwd += 2 * s * s * widths[level + 1] * w  # 2x2 stride-2 transposed conv
        fwd += 2 * s * s * 9 * (2 * w * w + w * w)
    fwd += 2 * size * size * widths[0] * classes
    return 3.0 * fwd


# ----------------------------------------------------------------------------- worker


def _cost_flops(compiled: Any) -> float | None:
    """Total FLOPs from XLA's cost analysis (a dict, or a list of one dict in older JAX)."""
    try:
        cost = compiled.cost_analysis()
    except Exception:
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    if not cost or "flops" not in cost:
        return None
    return float(cost["flops"])


def matmul_ceiling(dtype: str, platform_name: str, use_torch: bool, reps: int) -> dict:
    """Measured matmul GFLOP/s: the ceiling against which model FLOP rates are put."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    n = 2048 if platform_name == "cpu" else 8192
    jd = jnp.bfloat16 if dtype == "bfloat16" else jnp.float32
    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), jd)
    dot = jax.jit(jnp.dot)
    fns = {"jax": lambda: dot(a, a).block_until_ready()}
    if use_torch:
        import torch

        dev = "cuda" if platform_name == "gpu" and torch.cuda.is_available() else "cpu"
        td = torch.bfloat16 if dtype == "bfloat16" else torch.float32
        ta = torch.randn(n, n, dtype=td, device=dev)

        def tmm() -> None:
            torch.mm(ta, ta)
            if dev == "cuda":
                torch.cuda.synchronize()

        fns["torch"] = tmm
    times = interleaved(fns, max(reps, 3), 2)
    out = {k: stats(v, 2 * n**3 / 1e9) for k, v in times.items()}
    out["n"] = n
    out["dtype"] = dtype
    # The ceiling is the best rate seen (max over reps and frameworks): a neighbour's
    # load can only make a rep slower, never faster than the hardware allows.
    out["ceiling_gflops"] = max(v["max"] for v in out.values() if isinstance(v, dict))
    return out


def torch_side(args: argparse.Namespace, platform_name: str, compile_model: bool = False
               ) -> dict:
    """Build the PyTorch twin and its train/predict closures (same data as the JAX side)."""
    import numpy as np
    import torch
    import torch_unet

    torch.manual_seed(0)
    dev = "cuda" if platform_name == "gpu" and torch.cuda.is_available() else "cpu"
    if args.encoder != "none":
        model = smp_unet(args).to(dev).to(memory_format=torch.channels_last)
    else:
        model = torch_unet.build(args.bands, args.classes, args.base, args.depth,
                                 channels_last=True).to(dev)
    nparams = torch_unet.param_count(model)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.999), weight_decay=1e-4)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((args.batch, args.bands, args.size, args.size),
                                             dtype=np.float32)).to(dev)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.from_numpy(rng.integers(0, args.classes, (args.batch, args.size, args.size))
                         ).long().to(dev)
    amp = args.dtype == "bfloat16"
    net = torch.compile(model) if compile_model else model
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=255)

    def sync() -> None:
        if dev == "cuda":
            torch.cuda.synchronize()

    def train() -> None:
        model.train()
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=amp):
            loss = loss_fn(net(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sync()

    def predict() -> None:
        model.eval()
        with torch.inference_mode(), torch.autocast(dev, dtype=torch.bfloat16, enabled=amp):
            net(x)
        sync()

    return {"train": train, "predict": predict, "params": nparams,
            "threads": torch.get_num_threads(), "version": torch.__version__}


def smp_unet(args: argparse.Namespace) -> Any:
    """segmentation_models_pytorch's ``Unet`` with encoder ``args.encoder`` (random init)
    and the decoder widths of the JAX model (``base * 2**level``, deepest first)."""
    from satseg_jax.weights.torch_libs import import_torch_library

    smp = import_torch_library("segmentation_models_pytorch")
    widths = tuple(args.base * 2**level for level in reversed(range(args.depth)))
    return smp.Unet(args.encoder, encoder_depth=args.depth, encoder_weights=None,
                    decoder_channels=widths, in_channels=args.bands, classes=args.classes)


def torch_train_flops(args: argparse.Namespace) -> float | None:
    """FLOPs of one trained image (forward + backward) of the smp twin, counted by torch's
    ``FlopCounterMode`` (convolutions and matmuls, a multiply-add = 2 FLOPs, as XLA)."""
    try:
        import torch
        from torch.utils.flop_counter import FlopCounterMode
    except ImportError:
        return None
    model = smp_unet(args).eval()  # BatchNorm's mode changes no convolution or matmul
    x = torch.zeros(1, args.bands, args.size, args.size)
    with FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    return float(counter.get_total_flops())


# ----------------------------------------------------------------------------- model patches
#
# Earlier formulations of U-Net layers, patched into one worker process to measure what
# a change to satseg_jax/models/blocks.py bought (``--variant "tuned+flaxpool=FLAGS"``).
# Each keeps the parameter tree identical. "flaxpool": ``nn.max_pool`` (select-and-
# scatter gradient) instead of ``blocks.down`` (reshape + max, element-wise backward).
# "matmulup": the 2x2 up-sampling as matmul + depth-to-space in XLA even where the
# oneDNN path is on (before NOTES §13 the oneDNN path took only the 3x3 convolutions).
# "flaxbn": batch norm + ReLU in XLA (flax BatchNorm's arithmetic, same variables) where
# the oneDNN path would run its fused kernel (NOTES §13).


MODEL_PATCHES = {"flaxbn", "flaxpool", "matmulup", "xlaconv", "sysmalloc"}
# "xlaconv" is not a layer formulation but the convolution library: it sets
# config.train.cpu_conv = 'xla' (XLA's Eigen convolutions instead of oneDNN's, NOTES §12).
# "sysmalloc" leaves glibc's malloc at its defaults (no satseg_jax.cpu.host_memory settings),
# under which XLA unmaps and re-faults its step buffer every step (NOTES §12).


def apply_model_patches(patches: set[str]) -> list[tuple[Any, str, Any]]:
    """Patch the layer formulations named in ``patches`` into this process; returns
    ``(module, name, original)`` for each replaced attribute, to undo it."""
    patches = patches - {"xlaconv", "sysmalloc"}
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from satseg_jax.models import blocks, unet, variants

    undo: list[tuple[Any, str, Any]] = []

    def replace(mod: Any, name: str, value: Any) -> None:
        undo.append((mod, name, getattr(mod, name)))
        setattr(mod, name, value)

    if "flaxpool" in patches:
        def flax_down(x: Any) -> Any:
            return nn.max_pool(x, (2, 2), strides=(2, 2))

        for mod in (blocks, unet, variants):
            if hasattr(mod, "down"):
                replace(mod, "down", flax_down)
    if "matmulup" in patches:
        class MatmulUp(blocks.ConvTranspose2x2):
            @nn.compact
            def __call__(self, inputs: Any) -> Any:
                kernel = self.param("kernel", self.kernel_init,
                                    (2, 2, inputs.shape[-1], self.features), self.param_dtype)
                bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
                n, h, w, _ = inputs.shape
                y = jnp.einsum("nhwc,abco->nhawbo", inputs, kernel[::-1, ::-1])
                return y.reshape(n, 2 * h, 2 * w, self.features) + bias

        replace(blocks, "ConvTranspose2x2", MatmulUp)
    if "flaxbn" in patches:
        class XlaBatchNormReLU(blocks.FusedBatchNormReLU):
            """What nn.BatchNorm + nn.relu compute in training, under the fused layer's
            variable names (flax's fast variance: E[x²] - E[x]²)."""

            @nn.compact
            def __call__(self, x: Any) -> Any:
                c = (x.shape[-1],)
                scale = self.param("scale", nn.initializers.ones, c, jnp.float32)
                bias = self.param("bias", nn.initializers.zeros, c, jnp.float32)
                ra_mean = self.variable("batch_stats", "mean", jnp.zeros, c, jnp.float32)
                ra_var = self.variable("batch_stats", "var", jnp.ones, c, jnp.float32)
                mean = x.mean((0, 1, 2))
                var = jnp.maximum((x * x).mean((0, 1, 2)) - mean * mean, 0.0)
                if not self.is_initializing():
                    m = self.momentum
                    ra_mean.value = m * ra_mean.value + (1 - m) * mean
                    ra_var.value = m * ra_var.value + (1 - m) * var
                y = (x - mean) * (jax.lax.rsqrt(var + self.epsilon) * scale) + bias
                return nn.relu(y)

        replace(blocks, "FusedBatchNormReLU", XlaBatchNormReLU)
    return undo


def jax_side(args: argparse.Namespace) -> dict:
    """The production JAX step (``train.Runner``) on random data of the requested shape."""
    patches = set(args.worker.split("+")[1:]) if args.worker else set()
    undo = apply_model_patches(patches)
    try:
        return _jax_side(args, patches)
    finally:  # later models in this process get the current layers again
        for mod, name, original in reversed(undo):
            setattr(mod, name, original)


def _jax_side(args: argparse.Namespace, patches: set[str]) -> dict:
    """jax_side with the patches in place: the steps are compiled here (``lower`` +
    ``compile``, called as compiled), so no later retrace sees other layers."""
    import jax
    import numpy as np

    from satseg_jax import cpu, steps

    config = sample_config(args)
    # "default" is plain jaxlib: XLA's convolutions too; "+xlaconv" asks for them.
    if "xlaconv" in patches or (args.worker or "").split("+")[0] == "default":
        config.train.cpu_conv = "xla"
    conv = "onednn" if cpu.conv_fn_for(config) is not None else "xla"
    tx, _ = steps.create_optimizer(config)
    runner = steps.Runner(config, lambda axis: steps.build_model(config, args.classes, axis),
                          args.classes, tx=tx, loss_config=config.loss)
    shape = (args.batch, args.size, args.size, args.bands)
    state = steps.create_train_state(0, runner.model, tx, shape)
    nparams = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(state.params))
    state = runner.place_state(state)
    rng = np.random.default_rng(0)
    batch = runner.shard({"image": rng.standard_normal(shape, dtype=np.float32),
                          "mask": rng.integers(0, args.classes, shape[:3]).astype(np.int32)})
    t0 = time.perf_counter()
    compiled = runner.train_step.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    predict_compiled = runner.predict.lower(state, batch["image"]).compile()
    flops = _cost_flops(compiled)
    # Which oneDNN kernels the compiled step calls (convs, transposed convs run as data
    # gradients, fused BatchNorm+ReLU): a patch shows up here.
    found = re.findall(r'custom_call_target="satseg_onednn_conv_(\w+)"', compiled.as_text())
    ffi_targets = {name: found.count(name) for name in sorted(set(found))}
    holder = {"state": state, "loss": [], "faults": []}
    from satseg_jax.cpu import minor_faults

    def step() -> None:
        faults = minor_faults()
        holder["state"], metrics = compiled(holder["state"], batch)
        jax.block_until_ready(metrics)
        holder["faults"].append(minor_faults() - faults)
        holder["loss"].append(float(metrics["loss"]))

    def predict() -> None:
        jax.block_until_ready(predict_compiled(holder["state"], batch["image"]))

    return {"train": step, "predict": predict, "params": nparams, "flops_xla": flops,
            "compile_s": compile_s, "losses": holder["loss"], "conv": conv,
            "faults": holder["faults"], "ffi_targets": ffi_targets}


def worker(args: argparse.Namespace) -> dict:
    """One variant: JAX step and (when installed) PyTorch step, timed alternately.

    malloc is set up as ``satseg train`` sets it (satseg_jax.cpu.host_memory), before JAX
    starts, unless the variant says ``+sysmalloc``; PyTorch runs in the same process,
    so both frameworks get the same allocator. XLA_FLAGS are the variant's, set by the
    parent (``run_worker``), so no XLA defaults are applied here."""
    from satseg_jax import cpu

    sysmalloc = "sysmalloc" in (args.worker or "").split("+")[1:]
    malloc = [] if sysmalloc else cpu.keep_freed_memory(enable=True)
    import jax

    dev = jax.devices()[0]
    platform_name = dev.platform
    use_torch = have("torch") and not args.no_torch
    out: dict[str, Any] = {"variant": args.worker, "xla_flags": os.environ.get("XLA_FLAGS", ""),
                           "platform": platform_name, "device_kind": dev.device_kind,
                           "malloc_settings": malloc}
    j = jax_side(args)
    out["jax"] = {"params": j["params"], "flops_xla_per_step": j["flops_xla"],
                  "compile_s": round(j["compile_s"], 2), "conv": j["conv"],
                  "onednn_kernels": j["ffi_targets"]}
    fns = {"jax_train": j["train"]}
    t = None
    if use_torch:
        t = torch_side(args, platform_name)
        out["torch"] = {"params": t["params"], "threads": t["threads"], "version": t["version"]}
        # The same architecture on both sides, or the ratio means nothing.
        out["same_param_count"] = t["params"] == j["params"]
        fns["torch_train"] = t["train"]
    steps = args.steps_per_rep
    rounds = {k: (lambda f=f: [f() for _ in range(steps)]) for k, f in fns.items()}
    times = interleaved(rounds, args.reps, args.warmup)
    for k, v in times.items():
        out[k.split("_")[0]]["train_img_s"] = stats(v, args.batch * steps)
    if "torch_train" in times:
        out["ratio_train_paired"] = paired_ratio(times["jax_train"], times["torch_train"])
    out["jax"]["losses_first_steps"] = j["losses"][: args.warmup * steps + 3]
    # Page faults during a timed step (median): ~0 when freed step buffers are reused.
    timed = sorted(j["faults"][args.warmup * steps:]) or [0]
    out["jax"]["minor_faults_per_step"] = timed[len(timed) // 2]
    pfns = {"jax_predict": j["predict"]}
    if t is not None:
        pfns["torch_predict"] = t["predict"]
    prounds = {k: (lambda f=f: [f() for _ in range(steps)]) for k, f in pfns.items()}
    ptimes = interleaved(prounds, args.reps, args.warmup)
    for k, v in ptimes.items():
        out[k.split("_")[0]]["predict_img_s"] = stats(v, args.batch * steps)
    if "torch_predict" in ptimes:
        out["ratio_predict_paired"] = paired_ratio(ptimes["jax_predict"], ptimes["torch_predict"])
    if use_torch and args.torch_compile:
        out["torch_compile"] = torch_compile_timing(args, platform_name, j["train"])
    if args.matmul:
        out["matmul"] = matmul_ceiling(args.dtype, platform_name, use_torch, args.reps)
    return out


def torch_compile_timing(args: argparse.Namespace, platform_name: str,
                         jax_train: Callable[[], None]) -> dict:
    """torch.compile'd train step, interleaved with the JAX step again (its own ratio)."""
    try:
        t0 = time.perf_counter()
        t = torch_side(args, platform_name, compile_model=True)
        t["train"]()  # compiles
        compile_s = time.perf_counter() - t0
        steps = args.steps_per_rep
        times = interleaved({"jax": lambda: [jax_train() for _ in range(steps)],
                             "torch_compile": lambda: [t["train"]() for _ in range(steps)]},
                            args.reps, args.warmup)
        return {"compile_s": round(compile_s, 1),
                "train_img_s": stats(times["torch_compile"], args.batch * steps),
                "jax_train_img_s_same_rounds": stats(times["jax"], args.batch * steps)}
    except Exception as e:  # inductor needs a C++ compiler etc.; report, don't die
        return {"error": f"{type(e).__name__}: {str(e)[:300]}"}


# ----------------------------------------------------------------------------- main


def variants(args: argparse.Namespace, user: str) -> dict[str, str]:
    """Variant name -> XLA_FLAGS for its worker; ``user`` is the caller's XLA_FLAGS as
    they were *before* ``cpu.setup()`` added the project's defaults to them."""
    from satseg_jax.cpu import xla_flags

    tuned = xla_flags.merged_flags(user, xla_flags.recommended_flags())
    out = {"tuned": tuned}
    if not args.no_default:
        # oneDNN for the 3x3 convolutions only (up-sampling and BatchNorm+ReLU in XLA:
        # `tuned` before NOTES §13), the project's flags with XLA's own convolutions
        # (before the oneDNN path), glibc's malloc defaults, and plain jaxlib.
        out["tuned+flaxbn+matmulup"] = tuned
        out["tuned+xlaconv"] = tuned
        out["tuned+sysmalloc"] = tuned
        out["default"] = user
    for spec in args.variant:
        name, _, flags = spec.partition("=")
        unknown = set(name.split("+")[1:]) - MODEL_PATCHES
        if unknown:
            raise SystemExit(f"speed.py: --variant {name!r}: unknown model patch(es) "
                             f"{sorted(unknown)} after '+'; known: {sorted(MODEL_PATCHES)}")
        out[name] = flags
    return out


def run_worker(name: str, flags: str, argv: list[str], timeout: float) -> dict:
    env = dict(os.environ, XLA_FLAGS=flags, SATSEG_XLA_DEFAULTS="0")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, *argv]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"variant": name, "xla_flags": flags, "error": f"timed out after {timeout:.0f} s"}
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    return {"variant": name, "xla_flags": flags,
            "error": f"worker exited {proc.returncode}: {proc.stderr[-1500:]}"}


def machine_info() -> dict:
    """CPU, cores, library versions and the JAX device (imported here, in the parent)."""
    import jax

    info = {"cpu": cpu_model(), "cpu_isa": cpu_isa(), "cores": os.cpu_count(),
            "python": platform.python_version(),
            "os": platform.platform(), "jax": jax.__version__}
    for mod in ("jaxlib", "flax", "optax", "torch"):
        try:
            info[mod] = importlib.import_module(mod).__version__
        except Exception:
            info[mod] = None
    dev = jax.devices()[0]
    info.update(platform=dev.platform, device_kind=dev.device_kind,
                device_count=jax.device_count())
    info["machine"] = machine_slug(dev.platform, dev.device_kind, info["cpu"], info["cores"],
                                   info["cpu_isa"])
    return info


def summarise(res: dict, flops_img: float, ceiling: float | None, batch: int) -> None:
    """Add GFLOP/s, % of ceiling and JAX/PyTorch ratios to a worker result (in place)."""
    for fw in ("jax", "torch"):
        if fw in res and "train_img_s" in res[fw]:
            r = res[fw]["train_img_s"]["median"]
            res[fw]["train_gflops"] = r * flops_img / 1e9
            if ceiling:
                res[fw]["train_pct_of_matmul_ceiling"] = 100 * r * flops_img / 1e9 / ceiling
    if "torch" in res and "train_img_s" in res.get("torch", {}):
        res["ratio_train_jax_over_torch"] = (res["jax"]["train_img_s"]["median"]
                                             / res["torch"]["train_img_s"]["median"])
        res["ratio_predict_jax_over_torch"] = (res["jax"]["predict_img_s"]["median"]
                                               / res["torch"]["predict_img_s"]["median"])
    tc = res.get("torch_compile", {})
    if "train_img_s" in tc:
        tc["ratio_jax_over_torch_compile"] = (tc["jax_train_img_s_same_rounds"]["median"]
                                              / tc["train_img_s"]["median"])


def print_table(report: dict) -> None:
    m = report["machine"]
    cfg = report["config"]
    print(f"\n{m['machine']}: {m['cpu']} ({m['cores']} cores), {m['device_kind']}; "
          f"jax {m['jax']} flax {m['flax']} torch {m['torch']}")
    enc = cfg.get("encoder", "none")
    model = f"unet-{enc} (vs smp Unet)" if enc != "none" else "unet"
    print(f"{model} base {cfg['base']} depth {cfg['depth']}, {cfg['size']}px x {cfg['bands']} "
          f"bands, batch {cfg['batch']}, {cfg['dtype']}; {report['flops_per_image_g']:.2f} "
          f"GFLOP/trained image ({report['flops_source']}); matmul ceiling "
          f"{report.get('matmul_ceiling_gflops') or float('nan'):.0f} GFLOP/s")
    hdr = (f"{'variant':<16} {'framework':<18} {'train img/s (min-max)':<24} {'GFLOP/s':>8} "
           f"{'% ceil':>7} {'predict img/s':>14} {'JAX/torch train, paired':>24} "
           f"{'faults/step':>11}")
    print(hdr)
    print("-" * len(hdr))
    for name, res in report["variants"].items():
        if "error" in res:
            print(f"{name:<16} ERROR {res['error'][:200]}")
            continue
        for fw in ("jax", "torch"):
            if fw not in res or "train_img_s" not in res[fw]:
                continue
            s, p = res[fw]["train_img_s"], res[fw]["predict_img_s"]
            ratio = ""
            if fw == "jax" and "ratio_train_paired" in res:
                pr = res["ratio_train_paired"]
                ratio = f"{pr['median']:.2f}x ({pr['min']:.2f}-{pr['max']:.2f})"
            pct = res[fw].get("train_pct_of_matmul_ceiling")
            label = f"jax ({res[fw].get('conv', 'xla')} conv)" if fw == "jax" else fw
            faults = res[fw].get("minor_faults_per_step", "")
            print(f"{name:<16} {label:<18} {s['median']:7.2f} ({s['min']:.2f}-{s['max']:.2f})"
                  f"{'':<6} {res[fw]['train_gflops']:8.1f} "
                  f"{(f'{pct:.1f}' if pct is not None else '-'):>7} "
                  f"{p['median']:14.2f} {ratio:>24} {faults:>11}")
        tc = res.get("torch_compile")
        if tc and "train_img_s" in tc:
            s = tc["train_img_s"]
            print(f"{name:<16} {'torch.compile':<18} {s['median']:7.2f} "
                  f"({s['min']:.2f}-{s['max']:.2f})  compile {tc['compile_s']} s; "
                  f"jax/compile {tc['ratio_jax_over_torch_compile']:.2f}x")
        elif tc:
            print(f"{name:<16} torch.compile      {tc.get('error', '')[:150]}")


def print_sections(report: dict) -> None:
    """The optional sections' figures, set against the JAX trainer where that matters."""
    secs = report.get("sections") or {}
    tuned = report["variants"].get("tuned", {})
    trainer = tuned.get("jax", {}).get("train_img_s", {}).get("median")
    for name, sec in secs.items():
        if sec.get("status") in ("skipped", "error"):
            print(f"[{name}] {sec['status']}: {sec.get('reason') or sec.get('error', '')[:300]}")
            continue
        if name == "input_pipeline":
            ratio = sec["images_per_s"] / trainer if trainer else float("nan")
            sec["times_trainer"] = round(ratio, 1)
            print(f"input pipeline alone: {sec['images_per_s']:.0f} img/s ({sec['threads']} "
                  f"tf.data threads, {sec['crop']} px, batch {sec['batch']}) = {ratio:.0f}x the "
                  f"JAX trainer's {trainer or float('nan'):.2f} img/s (goal >= 20x)")
        elif name == "data_prep":
            for r in sec["rows"]:
                if "skipped" in r:
                    print(f"  {r['tool']:<40} skipped: {r['skipped']}")
                else:
                    print(f"  {r['tool']:<40} {r['median_s']:6.2f} s ({r['min_s']:.2f}-"
                          f"{r['max_s']:.2f})  {r['mb_per_s']:6.1f} MB/s")
        elif name == "predict":
            print(f"predict {sec['scene']['size']}²: tile loop {sec['predict']['seconds_loop']:.1f}"
                  f" s vs raw model {sec['raw_model_seconds_for_same_tiles']:.1f} s -> overhead "
                  f"{sec['overhead_loop_vs_raw']:+.1%}; peak RSS "
                  f"{sec['predict']['peak_rss_mib']:.0f} MiB")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="tiny smoke run: base 4, depth 2, 32 px, batch 2, 2 reps")
    p.add_argument("--base", type=int, default=32, help="U-Net base width")
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--size", type=int, default=128, help="input side (px)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--bands", type=int, default=4)
    p.add_argument("--classes", type=int, default=6)
    p.add_argument("--encoder", default="none",
                   help="a named encoder (resnet34, ...): unet with it vs smp's Unet")
    p.add_argument("--reps", type=int, default=5, help="timed reps (median, min-max)")
    p.add_argument("--warmup", type=int, default=2, help="untimed reps first")
    p.add_argument("--steps-per-rep", type=int, default=2, help="train steps per timed rep")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="compute dtype (bfloat16 for accelerators; params stay f32)")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=XLA_FLAGS",
                   help="extra JAX variant with these XLA_FLAGS (repeatable)")
    p.add_argument("--no-default", action="store_true",
                   help="skip the plain-jaxlib-defaults reference variant")
    p.add_argument("--no-torch", action="store_true", help="JAX only")
    p.add_argument("--torch-compile", choices=("auto", "on", "off"), default="auto",
                   help="also time torch.compile (auto: not with --quick)")
    p.add_argument("--sections", default="", help="optional sections: comma list or 'all' ("
                   + ", ".join(SECTIONS) + ")")
    p.add_argument("--prep-size", type=int, default=4096,
                   help="data_prep section: scene side (px)")
    p.add_argument("--predict-size", type=int, default=4096,
                   help="predict section: scene side (px)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per worker")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON path (default benchmarks/results/<machine>.json)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--matmul", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    defaults = {a.dest: a.default for a in p._actions}
    given = {k for k in defaults if hasattr(args, k) and getattr(args, k) != defaults[k]}
    if args.quick:
        for k, v in QUICK.items():
            if k not in given:
                setattr(args, k, v)
    if args.encoder != "none":
        for k, v in ENCODER_DEFAULTS.items():
            if k not in given:
                setattr(args, k, v)
    args.sections = [s for s in args.sections.split(",") if s]
    tc = args.torch_compile
    args.torch_compile = tc == "on" or (tc == "auto" and not args.quick)
    return args


WORKER_KEYS = ("base", "depth", "size", "batch", "bands", "classes", "encoder", "reps",
               "warmup", "steps_per_rep", "dtype")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        res = worker(args)
        print(RESULT_TAG + json.dumps(res))
        return 0
    user_flags = os.environ.get("XLA_FLAGS", "")  # read before cpu.setup() edits it
    # XLA defaults and malloc settings as `satseg train` has them, before jax starts here
    # too: the input-pipeline section runs in this process.
    from satseg_jax import cpu

    cpu.setup()

    info = machine_info()
    fwd = [f"--{k.replace('_', '-')}={getattr(args, k)}" for k in WORKER_KEYS]
    if args.no_torch:
        fwd.append("--no-torch")
    report: dict[str, Any] = {"benchmark": "speed", "machine": info,
                              "config": {k: getattr(args, k) for k in WORKER_KEYS},
                              "variants": {}}
    vs = variants(args, user_flags)
    if info["platform"] != "cpu":  # the CPU flags change nothing there
        vs = {k: v for k, v in vs.items()
              if k not in ("default", "tuned+xlaconv", "tuned+sysmalloc")}
    for i, (name, flags) in enumerate(vs.items()):
        extra = ["--matmul"] if i == 0 else []
        extra += ["--torch-compile=on" if (i == 0 and args.torch_compile)
                  else "--torch-compile=off"]
        print(f"[{name}] XLA_FLAGS={flags!r} ...", flush=True)
        report["variants"][name] = run_worker(name, flags, fwd + extra, args.timeout)
    first = next(iter(report["variants"].values()))
    mm = first.get("matmul")
    # XLA's cost analysis does not see custom calls (oneDNN convolutions): count FLOPs
    # from the variant with the most, i.e. one whose convolutions XLA compiled itself.
    first = max(report["variants"].values(),
                key=lambda r: r.get("jax", {}).get("flops_xla_per_step") or 0)
    report["matmul"] = mm
    report["matmul_ceiling_gflops"] = mm["ceiling_gflops"] if mm else None
    analytic = analytic_train_flops(args.bands, args.classes, args.base, args.depth, args.size)
    counted = None
    if args.encoder != "none":  # the analytic count is the plain U-Net's
        counted = None if args.no_torch else torch_train_flops(args)
        analytic = counted
    xla = first.get("jax", {}).get("flops_xla_per_step")
    # XLA's count on GPU leaves cuDNN convolutions out: trust it only on the CPU, and
    # only from a variant whose convolutions XLA compiled (with every variant on oneDNN,
    # e.g. --no-default, it counts just the element-wise rest: < 1 % of the analytic).
    if counted:
        flops_img, source = counted, "torch FlopCounterMode, smp twin"
    elif xla and info["platform"] == "cpu" and (analytic is None
                                                or xla / args.batch > 0.5 * analytic):
        flops_img, source = xla / args.batch, "XLA cost analysis"
    elif analytic is not None:
        flops_img, source = analytic, "analytic (3x forward)"
    else:  # an encoder U-Net on an accelerator without torch: no trustworthy count
        flops_img, source = float("nan"), "none (install torch to count)"
    report["flops_per_image_g"] = flops_img / 1e9
    report["flops_per_image_analytic_g"] = analytic / 1e9 if analytic else None
    report["flops_per_image_xla_g"] = xla / args.batch / 1e9 if xla else None
    report["flops_source"] = source
    for res in report["variants"].values():
        if "error" not in res:
            summarise(res, flops_img, report["matmul_ceiling_gflops"], args.batch)
    report["sections"] = run_sections(args)
    print_table(report)
    print_sections(report)
    out = args.out or REPO / "benchmarks" / "results" / f"{info['machine']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(out)
    print(f"wrote {out}")
    errors = [n for n, r in report["variants"].items() if "error" in r]
    differ = [n for n, r in report["variants"].items() if r.get("same_param_count") is False]
    for name in differ:
        res = report["variants"][name]
        print(f"speed.py: variant {name}: the JAX model has {res['jax']['params']:,} parameters "
              f"and the PyTorch one {res['torch']['params']:,}; the ratio compares different "
              "models (for --encoder, smp builds every encoder stage: use --depth 5)",
              file=sys.stderr)
    return 1 if errors or differ else 0


if __name__ == "__main__":
    raise SystemExit(main())
