"""``satseg export --workdir RUN --format savedmodel|onnx|stablehlo --out DIR``: a trained run
as a model that serves without Flax checkpoints.

What is exported is one function, ``bands -> probabilities``:

- **Input**: raw bands as float32, NHWC ``(batch, height, width, bands)``, in the run's
  band order and the units of its training scenes (e.g. uint16 reflectance cast to
  float32). Batch, height and width are dynamic; height and width must be multiples of
  the model's input multiple (polymorphic shapes ``(b, m*h, m*w, C)``).
- **Baked in**, exactly as ``satseg predict`` does it: pixels that are non-finite or equal
  to the run's nodata in every band are invalid and enter the model as 0; valid pixels
  are normalised with the run's train-split mean and std.
- **Output**: softmax probabilities, float32 NHWC ``(batch, height, width, classes)``.

Routes: SavedModel through ``jax2tf`` (native serialization: the graph holds one
``XlaCallModule`` op, which TensorFlow runs with its own XLA, no JAX needed; the weights
are ``tf.Variable``s, so large models stay under the 2 GB graph limit); ONNX through our
own jaxpr converter (:mod:`satseg_jax.export.onnx_graph`: jax2tf no longer emits plain TF
ops that tf2onnx could convert, and jax2onnx requires orbax-checkpoint < 0.11.37, pinned
here at 0.12.8); StableHLO through ``jax.export`` (``model.jax_exported``, reloadable with
``jax.export.deserialize``, plus the ``model.mlir`` text). Convolutions are XLA's (never
the CPU oneDNN FFI calls, which no other runtime has). ``tile`` fixes height and width
(the batch stays dynamic) for models that build resize matrices from their input size.

``DIR/serving_card.json`` says what the model expects and gives (bands, classes and
colours, nodata, tile/overlap advice) and records a check made at export: the exported
model against the Flax run on a random tile, its largest probability difference.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from satseg_jax.errors import SatsegError
from satseg_jax.export.serving import CARD_FORMAT, SERVING_CARD
from satseg_jax.io_utils import atomic_dir

FORMATS = ("savedmodel", "onnx", "stablehlo")
CHECK_TOLERANCE = 1e-4


def serving_function(run):
    """``(probabilities(variables, bands), variables, multiple)`` for ``run``."""
    from satseg_jax import steps
    from satseg_jax.models.registry import get_model, input_multiple
    from satseg_jax.raster.io import nodata_value

    config, card = run.config, run.card
    if config.task != "segmentation":
        raise SatsegError(f"{run.path} is a {config.task} run; export serves segmentation "
                          "models")
    if config.model.name == "unet_original":
        raise SatsegError(f"{run.path}: unet_original (valid convolutions) predicts a smaller "
                          "centre than its input; export a padded model (unet and variants)")
    model = get_model(config.model, num_classes=card.num_classes,
                      dtype=steps.compute_dtype(config), conv_fn=None)
    mean = np.asarray(card.mean, np.float32)
    std = np.asarray([s if s > 0 else 1.0 for s in card.std], np.float32)
    nodata = nodata_value(card.nodata, np.float32)

    def probabilities(variables, bands):
        valid = jnp.all(jnp.isfinite(bands), axis=-1)
        if nodata is not None:
            valid &= ~jnp.all(bands == nodata, axis=-1)
        x = jnp.where(valid[..., None], (bands - mean) / std, 0.0)
        logits = model.apply(variables, x, train=False)
        return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)

    state = run.state
    if run.runner.mode == "pmap":  # one copy per device: keep the first
        from satseg_jax.parallel import pmap_unreplicate

        state = pmap_unreplicate(state)
    state = jax.device_get(state)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    return probabilities, variables, input_multiple(config.model)


def input_dims(multiple: int, tile: int | None) -> str:
    """The symbolic (batch, height, width) of the exported input: any multiple of the
    model's input multiple, or a fixed ``tile``."""
    return f"b, {tile}, {tile}" if tile else f"b, {multiple}*h, {multiple}*w"


def _write_savedmodel(fn, variables, multiple: int, bands: int, out: Path,
                      tile: int | None = None):
    """``out/`` as a SavedModel with signature ``serving_default``: bands -> probabilities;
    returns a callable on numpy arrays for the export check."""
    from jax.experimental import jax2tf

    from satseg_jax.datasets.tfenv import import_tf

    tf = import_tf()
    converted = jax2tf.convert(fn, with_gradient=False, polymorphic_shapes=[
        None, f"({input_dims(multiple, tile)}, {bands})"])
    module = tf.Module()
    module.variables_tree = tf.nest.map_structure(tf.Variable, variables)

    @tf.function(autograph=False, input_signature=[
        tf.TensorSpec([None, tile, tile, bands], tf.float32, name="bands")])
    def serve(x):
        return {"probabilities": converted(module.variables_tree, x)}

    module.serve = serve
    serve.get_concrete_function()  # traces now: a model that cannot is refused here
    tf.saved_model.save(module, str(out), signatures={"serving_default": serve})
    loaded = tf.saved_model.load(str(out)).signatures["serving_default"]
    return lambda x: loaded(bands=tf.constant(x))["probabilities"].numpy()


def _write_stablehlo(fn, variables, multiple: int, bands: int, out: Path,
                     tile: int | None = None):
    """``out/model.jax_exported`` (jax.export, weights inside) and ``out/model.mlir``."""
    from jax import export

    b, h, w = export.symbolic_shape(input_dims(multiple, tile))
    exported = export.export(jax.jit(lambda x: fn(variables, x)))(
        jax.ShapeDtypeStruct((b, h, w, bands), jnp.float32))
    out.mkdir(parents=True, exist_ok=True)
    (out / "model.jax_exported").write_bytes(exported.serialize())
    (out / "model.mlir").write_text(exported.mlir_module())
    again = export.deserialize((out / "model.jax_exported").read_bytes())
    return lambda x: np.asarray(again.call(x))


def _check(exported_fn, fn, variables, card, multiple: int, tile: int | None = None,
           seed: int = 0) -> dict:
    """The exported model against the Flax function on one random tile of raw values
    around the run's statistics (dynamic shapes exercised: batch 2, a non-square tile
    unless the export has a fixed ``tile``)."""
    rng = np.random.default_rng(seed)
    h, w = 2 * multiple * max(1, 32 // multiple), 3 * multiple * max(1, 32 // multiple)
    if tile:
        h = w = tile
    x = (rng.normal(size=(2, h, w, card.num_bands)) * np.asarray(card.std)
         + np.asarray(card.mean)).astype(np.float32)
    ref = np.asarray(jax.jit(fn)(variables, x))
    got = exported_fn(x)
    diff = float(np.abs(got - ref).max())
    agree = float((got.argmax(-1) == ref.argmax(-1)).mean())
    if not diff <= CHECK_TOLERANCE:
        raise SatsegError(f"the exported model differs from the run by {diff:.2e} in "
                          f"probability (tolerance {CHECK_TOLERANCE}); nothing was written")
    return {"tile": [2, h, w, card.num_bands], "max_abs_probability_difference": diff,
            "class_agreement": agree, "tolerance": CHECK_TOLERANCE}


def _tiling_advice(multiple: int, fixed: int | None) -> dict:
    from satseg_jax.predict import predict_scene

    defaults = inspect.signature(predict_scene).parameters
    tile = fixed or int(defaults["tile"].default)
    tile = max(multiple, tile - tile % multiple)
    return {"tile": tile, "fixed": bool(fixed), "overlap": min(
                int(defaults["overlap"].default), tile // 4),
            "blend": defaults["blend"].default, "multiple": multiple,
            "note": "tiles of the advised size, overlapping and blended as satseg predict "
                    "does, give the maps the run was evaluated with; "
                    + ("only this tile size runs (exported with --tile)" if fixed else
                       "any size that is a multiple of 'multiple' runs")}


def serving_card(run, fmt: str, multiple: int, check: dict, tile: int | None = None) -> dict:
    card = run.card
    files = {"savedmodel": {"savedmodel": "savedmodel/", "signature": "serving_default"},
             "onnx": {"onnx": "onnx/model.onnx"},
             "stablehlo": {"jax_exported": "stablehlo/model.jax_exported",
                           "mlir": "stablehlo/model.mlir"}}[fmt]
    return {
        "format": CARD_FORMAT, "model_format": fmt, "files": files,
        "input": {"name": "bands", "layout": "NHWC", "dtype": "float32",
                  "bands": list(card.bands), "values": f"raw, as in the training scenes "
                  f"({card.image_dtype or 'their dtype'}) cast to float32",
                  "nodata": card.nodata, "invalid": "non-finite, or nodata in every band: "
                  "enters the model as 0, as in training",
                  "height_width_multiple_of": multiple, "tile": tile},
        "normalisation": {"mean": list(card.mean), "std": list(card.std),
                          "baked_in": True, "statistics_of": "the run's train split"},
        "output": {"name": "probabilities", "layout": "NHWC", "dtype": "float32",
                   "softmax": True, "classes": card.num_classes},
        "classes": [dict(c) for c in card.classes], "tiling": _tiling_advice(multiple, tile),
        "run": {"path": str(Path(run.path).absolute()), "model": card.model,
                "checkpoint_step": int(run.step), "weights": run.weights,
                "provenance": dict(card.provenance)},
        "check": check,
    }


def export_run(workdir, fmt: str, out: str | Path, checkpoint: str = "best",
               ema: bool = True, overwrite: bool = False, tile: int | None = None) -> dict:
    """Export the run at ``workdir`` into ``out`` (written whole or not at all). ``tile``
    fixes height and width (the batch stays dynamic): for models that build resize
    matrices from their input size (fpn, deeplabv3plus)."""
    from satseg_jax.runs import load_run

    if fmt not in FORMATS:
        raise SatsegError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    run = load_run(workdir, checkpoint, ema=ema)
    fn, variables, multiple = serving_function(run)
    if tile is not None and (tile <= 0 or tile % multiple):
        raise SatsegError(f"--tile {tile}: must be a positive multiple of {multiple} for "
                          f"{run.config.model.name}")
    dtype = str(run.config.train.compute_dtype)
    if fmt == "onnx" and dtype != "float32":
        raise SatsegError(f"{run.path}: computes in {dtype}; the ONNX export writes float32 "
                          "graphs: export as savedmodel or stablehlo")
    bands = run.card.num_bands
    with atomic_dir(Path(out), overwrite=overwrite) as tmp:
        exported_fn = write_export(fmt, fn, variables, multiple, bands, tmp / fmt, tile,
                             run.config.model.name)
        check = _check(exported_fn, fn, variables, run.card, multiple, tile)
        card = serving_card(run, fmt, multiple, check, tile)
        (tmp / SERVING_CARD).write_text(json.dumps(card, indent=2) + "\n")
    return {"out": str(out), **card}


def write_export(fmt: str, fn, variables, multiple: int, bands: int, out: Path, tile, model: str):
    """The format's writer; a model whose shapes cannot be symbolic is one clear line."""
    from satseg_jax.export.onnx_graph import write_onnx

    writer = {"savedmodel": _write_savedmodel, "onnx": write_onnx,
              "stablehlo": _write_stablehlo}[fmt]
    try:
        return writer(fn, variables, multiple, bands, out, tile)
    except (TypeError, jax.errors.ConcretizationTypeError) as e:
        if tile:
            raise
        raise SatsegError(f"{model}: its layers need a fixed input size to be traced "
                          f"({type(e).__name__}: {str(e).splitlines()[0][:120]}); export "
                          "with a fixed tile, e.g. --tile 256 (the batch stays dynamic)") from None
