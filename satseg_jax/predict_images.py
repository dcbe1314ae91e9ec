"""``satseg predict --images DIR_OR_GLOB --out-dir OUT``: a class map for every image of a
folder set, in one process.

Why: mapping a folder of test tiles with one ``satseg predict`` per file pays, per file,
for the interpreter and library start, the checkpoint restore and the XLA compile, all
of which take longer than mapping a 1024² tile. Here the run is restored and its tile
function compiled once (:class:`satseg_jax.predict.ScenePredictor`; once per input
pixel dtype), and every file goes through the same sliding window as single-scene
``predict``, so each map is the one ``satseg predict --image FILE`` would write
(benchmarks/predict_folder.py measures the difference).

- **One map per input**, named after its key (its path under the image folder, or the
  common parent of region folders or of globbed files, without suffix; see
  :func:`satseg_jax.raster.pairing.find_images`): ``OUT/<key>.tif``, a Cloud-Optimised
  GeoTIFF, for a georeferenced input; ``OUT/<key>.png``, a palette PNG, for a plain
  image without CRS (JPEG/PNG tiles), exactly as single-image predict writes them.
- **A bad file does not stop the others.** Each failure (wrong band count, unreadable
  file, ...) is reported with the file's name as it happens; the other files are
  mapped, the failures are listed in ``OUT/predictions.json``, and the command exits
  non-zero at the end. A disk that is full or not writable stops everything: no later
  file could be written either.
- **Atomic output folder.** ``OUT`` is written under a temporary name and renamed when
  complete; an existing non-empty ``OUT`` is refused unless ``overwrite`` (then it is
  replaced only once the new one is complete), like every other output folder.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from satseg_jax.errors import SatsegError
from satseg_jax.io_utils import DiskFullError, NotWritableError, atomic_dir

SUMMARY_NAME = "predictions.json"


def _map_name(key: str, georeferenced: bool) -> str:
    return key + (".tif" if georeferenced else ".png")


def _is_georeferenced(image: Path) -> bool:
    from satseg_jax.raster.masks import quiet_georeference
    from satseg_jax.tiled_scene import open_scene

    with quiet_georeference(), open_scene(image) as src:
        return src.crs is not None


def predict_images(workdir, images: str | Path, out_dir: str | Path,
                   checkpoint: str = "best", tile: int = 256, overlap: int = 64,
                   blend: str = "gaussian", batch: int = 8, tta: bool = False,
                   overwrite: bool = False, progress: bool = True,
                   on_error=None, ema: bool = True) -> dict:
    """Map every image under ``images`` into ``out_dir``; return a summary.

    ``workdir`` is a run folder or a loaded ``runs.Run``. ``on_error(image, message)``
    is called for each file that fails, as it fails (the CLI prints it); the summary
    lists ``maps`` (one entry per mapped file) and ``failed`` (image, error).
    ``tile``/``overlap``/``blend``/``batch``/``tta``/``ema`` mean what they mean for
    :func:`satseg_jax.predict.predict_scene`.
    """
    from tqdm import tqdm

    from satseg_jax.predict import ScenePredictor
    from satseg_jax.raster.pairing import find_images
    from satseg_jax.runs import Run, load_run
    from satseg_jax.tiled_scene import check_tiling

    t0 = time.perf_counter()
    check_tiling(tile, overlap, batch)
    files = find_images(images)
    run = workdir if isinstance(workdir, Run) else load_run(workdir, checkpoint, ema=ema)
    predictor = ScenePredictor(run, tile=tile, overlap=overlap, blend=blend, batch=batch,
                               tta=tta)
    maps: list[dict] = []
    failed: list[dict] = []
    out_dir = Path(out_dir)
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        for key, image in tqdm(files, desc="predict", unit="image", disable=not progress):
            try:
                name = _map_name(key, _is_georeferenced(image))
                (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                r = predictor.predict(image, tmp / name, progress=False)
            except (DiskFullError, NotWritableError):
                raise
            except SatsegError as e:
                failed.append({"image": str(image), "error": str(e)})
                if on_error is not None:
                    on_error(image, str(e))
                continue
            maps.append({"key": key, "image": str(image), "map": str(out_dir / name),
                         "format": r["format"], "width": r["width"], "height": r["height"],
                         "class_pixels": r["class_pixels"]})
        if not maps:
            raise SatsegError(f"--images {images}: none of the {len(files)} file(s) could be "
                              f"mapped (first: {failed[0]['image']}: {failed[0]['error']}); "
                              "nothing was written")
        summary = {"run": str(run.path), "checkpoint_step": int(run.step), "tta": tta,
                   "tile": tile, "overlap": overlap, "blend": blend, "images": str(images),
                   "maps": maps, "failed": failed}
        (tmp / SUMMARY_NAME).write_text(json.dumps(summary, indent=2) + "\n")
    summary.update(out_dir=str(out_dir), seconds=time.perf_counter() - t0,
                   summary_file=str(out_dir / SUMMARY_NAME))
    return summary
