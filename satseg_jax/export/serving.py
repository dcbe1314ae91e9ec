"""``satseg predict --model DIR``: an exported SavedModel or ONNX model through the same
tiled predictor as a Flax run, in a process that never imports JAX (TensorFlow runs the
SavedModel's ``XlaCallModule`` with its own XLA; onnxruntime runs the ONNX graph).

Only the probabilities differ from :class:`satseg_jax.predict.ScenePredictor`: the scene
checks, the tile loop, the blending and the COG/PNG writing are the same code
(:mod:`satseg_jax.tiled_scene`). The scene's own invalid pixels (nodata, non-finite) are
passed to the model as NaN, which the exported function treats as invalid (zero after
normalisation), so a scene whose nodata differs from the run's is masked as predict
masks it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from satseg_jax.classes import BandsAndClasses
from satseg_jax.errors import SatsegError

SERVING_CARD = "serving_card.json"
CARD_FORMAT = "satseg-serving/1"


@dataclass(frozen=True)
class ServingCard(BandsAndClasses):
    """What the scene checks and the map writer need of an exported model (a run card's
    fields of the same names)."""

    bands: tuple[str, ...]
    image_dtype: str | None
    nodata: float | None
    classes: tuple[dict, ...]
    multiple: int
    tile: int | None  # height and width fixed at export (--tile), else None
    raw: dict


def read_serving_card(model_dir: str | Path) -> ServingCard:
    path = Path(model_dir) / SERVING_CARD
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        raise SatsegError(f"{model_dir}: no {SERVING_CARD}; is it a folder written by "
                          "'satseg export --out'?") from None
    except ValueError:
        raise SatsegError(f"{path}: is not valid JSON; export the run again") from None
    if d.get("format") != CARD_FORMAT:
        raise SatsegError(f"{path}: format {d.get('format')!r}, expected {CARD_FORMAT!r}; "
                          "export the run again with this version")
    if d.get("model_format") not in ("savedmodel", "onnx"):
        raise SatsegError(f"{model_dir}: holds a {d.get('model_format')} export; predict "
                          "--model runs SavedModel and ONNX exports (satseg export --format "
                          "savedmodel|onnx); a StableHLO export runs with "
                          "jax.export.deserialize")
    inp = d["input"]
    return ServingCard(bands=tuple(inp["bands"]), image_dtype=None, nodata=inp["nodata"],
                       classes=tuple(d["classes"]),
                       multiple=int(inp["height_width_multiple_of"]), tile=inp.get("tile"),
                       raw=d)


class ExportedModel:
    """A SavedModel or ONNX export, loaded once: ``probabilities_of(state, raw, valid)``
    as the tile loop calls it, (batch, classes, tile, tile) float32."""

    def __init__(self, model_dir: str | Path) -> None:
        self.dir = Path(model_dir)
        self.card = read_serving_card(self.dir)
        files = self.card.raw["files"]
        try:
            if self.card.raw["model_format"] == "onnx":
                self._run = self._onnx(self.dir / files["onnx"])
            else:
                self._run = self._savedmodel(self.dir / files["savedmodel"], files["signature"])
        except (OSError, ValueError, RuntimeError) as e:
            raise SatsegError(f"{self.dir}: the exported model cannot be loaded "
                              f"({str(e).splitlines()[0][:200]}); export the run again") from None

    @staticmethod
    def _savedmodel(path: Path, signature: str):
        from satseg_jax.datasets.tfenv import import_tf

        tf = import_tf()
        serve = tf.saved_model.load(str(path)).signatures[signature]
        return lambda x: serve(bands=tf.constant(x))["probabilities"].numpy()

    @staticmethod
    def _onnx(path: Path):
        try:
            import onnxruntime as ort
        except ImportError:
            raise SatsegError(f"{path}: running an ONNX export needs onnxruntime: pip "
                              "install 'satseg-jax[export]'") from None

        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return lambda x: session.run(["probabilities"], {"bands": x})[0]

    def probabilities_of(self, state, raw: np.ndarray, valid: np.ndarray) -> np.ndarray:
        x = raw.astype(np.float32)
        x[~valid] = np.nan
        return self._run(x).transpose(0, 3, 1, 2)


def predict_exported(model_dir: str | Path, image: str | Path, out: str | Path,
                     tile: int = 256, overlap: int = 64, blend: str = "gaussian",
                     probabilities: str | Path | None = None, batch: int = 8,
                     progress: bool = True) -> dict:
    """:func:`satseg_jax.predict.predict_scene` with an exported SavedModel."""
    from satseg_jax.sliding_window import TileSetup
    from satseg_jax.tiled_scene import blend_window, check_outputs, check_tiling, map_scene

    check_tiling(tile, overlap, batch)
    check_outputs(Path(image), Path(out), probabilities)
    t0 = time.perf_counter()
    card = read_serving_card(model_dir)  # before TensorFlow or onnxruntime starts
    if card.tile and tile != card.tile:
        raise SatsegError(f"--tile {tile}: this model was exported for --tile {card.tile} "
                          f"only ({Path(model_dir) / SERVING_CARD})")
    if tile % card.multiple:
        raise SatsegError(f"--tile {tile} must be divisible by {card.multiple} for this model "
                          f"({Path(model_dir) / SERVING_CARD})")
    model = ExportedModel(model_dir)
    setup = TileSetup(state=None, probabilities_of=model.probabilities_of, batch=batch,
                      tile=tile, in_tile=tile, margin=0, weights=blend_window(tile, blend),
                      blend=blend, num_bands=model.card.num_bands)
    summary = map_scene(setup, model.card, image, out, overlap, probabilities=probabilities,
                        progress=progress, inputs={"model": model.dir})
    run = model.card.raw["run"]
    return {**summary, "weights": run["weights"], "checkpoint_step": run["checkpoint_step"],
            "seconds": time.perf_counter() - t0, "model": str(model.dir)}
