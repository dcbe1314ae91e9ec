"""``satseg map``: every scene of a list predicted into ``MAPDIR/scenes/<id>.tif``,
restartable, divided among processes.

Why this shape:

- **A done marker per scene, written last.** ``scenes/<id>.json`` is written atomically
  after the scene's COG is complete and read back; it records the map's sha256, the
  source file's size and modification time, the scene's date, grid and class pixels. A
  rerun skips a scene whose marker, map (hash) and source still agree, and predicts the
  rest, so a crash or SIGKILL costs at most the scenes that were in flight: their
  temporaries never carry the final name.
- **One model per MAPDIR.** ``map.json`` holds the run, checkpoint step, weights and
  tiling that made the maps; a rerun with another run or settings into the same MAPDIR is
  refused (it would mix two models in one mosaic and one table).
- **Failures are per scene.** A scene that cannot be mapped (unreadable, corrupt, other
  bands) is reported by id as it fails, recorded in ``scenes/<id>.failed.json`` (so the
  area table can list it) and the others go on; a rerun tries it again. A full or
  read-only disk stops everything: no later scene could be written either.
- **The model is restored and compiled once per process**, and only if this process has
  a scene left to map: a rerun over a finished MAPDIR starts no JAX work.
- **Each process writes only its own scenes** (:func:`satseg_jax.mapping.scenes.share_of`);
  whichever finishes last rebuilds ``mosaic.vrt`` from every done marker, under a lock
  (:mod:`satseg_jax.mapping.mosaic`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from satseg_jax.catalog.manifest import file_sha256
from satseg_jax.errors import SatsegError
from satseg_jax.io_utils import DiskFullError, NotWritableError, atomic_path
from satseg_jax.mapping.scenes import Scene

MAP_CARD = "map.json"
SCENES_DIR = "scenes"
CARD_VERSION = 1


def marker_path(mapdir: Path, sid: str) -> Path:
    return Path(mapdir) / SCENES_DIR / f"{sid}.json"


def failed_path(mapdir: Path, sid: str) -> Path:
    return Path(mapdir) / SCENES_DIR / f"{sid}.failed.json"


def map_path(mapdir: Path, sid: str) -> Path:
    return Path(mapdir) / SCENES_DIR / f"{sid}.tif"


def _write_json(path: Path, data: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


def _source_stamp(path: Path) -> dict:
    st = path.stat()
    return {"source": str(path.absolute()), "source_bytes": st.st_size,
            "source_mtime_ns": st.st_mtime_ns}


def read_marker(mapdir: Path, sid: str) -> dict | None:
    """The done marker of scene ``sid``, or None when there is none (or it is unreadable:
    then the scene is simply mapped again)."""
    try:
        return json.loads(marker_path(mapdir, sid).read_text())
    except (OSError, ValueError):
        return None


def is_done(mapdir: Path, scene: Scene) -> bool:
    """Marker present, source unchanged and the map's bytes the ones recorded."""
    m = read_marker(mapdir, scene.id)
    if m is None or not scene.path.exists():
        return False
    stamp = _source_stamp(scene.path)
    if any(m.get(k) != v for k, v in stamp.items() if k != "source"):
        return False
    out = map_path(mapdir, scene.id)
    return out.is_file() and file_sha256(out) == m.get("sha256")


def card_for(run, settings: dict) -> dict:
    """What made the maps: checked on every rerun into the same MAPDIR."""
    card = run.card
    return {"version": CARD_VERSION, "run": str(Path(run.path).absolute()),
            "checkpoint_step": int(run.step), "weights": run.weights, **settings,
            "classes": [dict(c) for c in card.classes], "bands": list(card.bands)}


def check_card(mapdir: Path, card: dict) -> None:
    """Write ``map.json`` or refuse a MAPDIR made with another run or settings."""
    path = Path(mapdir) / MAP_CARD
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            raise SatsegError(f"{path}: is not valid JSON; it records what made the maps in "
                              f"{mapdir}: restore it, or map into a new --out") from None
        diff = sorted(k for k in set(old) | set(card) if old.get(k) != card.get(k))
        if diff:
            k = diff[0]
            raise SatsegError(f"{mapdir}: was mapped with {k}={old.get(k)!r}, this run has "
                              f"{card.get(k)!r}; map into a new --out (one model per map "
                              "folder), or rerun with the same settings")
        return
    _write_json(path, card)


def read_card(mapdir: Path) -> dict:
    path = Path(mapdir) / MAP_CARD
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise SatsegError(f"{mapdir}: no {MAP_CARD}; is it a folder written by satseg map "
                          "--out?") from None
    except ValueError:
        raise SatsegError(f"{path}: is not valid JSON; rerun satseg map into a new "
                          "--out") from None


def mapped_km2(summary: dict) -> float:
    """km² of the mapped (non-nodata) pixels of one scene, for the progress bar."""
    n = sum(summary["class_pixels"].values())
    if summary.get("pixel_area_m2"):
        return n * summary["pixel_area_m2"] / 1e6
    return 0.0


def _record(scene: Scene, out: Path, summary: dict) -> dict:
    import rasterio

    with rasterio.open(out) as m:
        crs = m.crs.to_wkt() if m.crs else None
        grid = {"crs": crs, "transform": list(m.transform)[:6], "width": m.width,
                "height": m.height, "bounds": list(m.bounds)}
    return {"id": scene.id, "date": scene.date.isoformat() if scene.date else None,
            "map": f"{SCENES_DIR}/{out.name}", "sha256": file_sha256(out),
            **_source_stamp(scene.path), **grid, "class_pixels": summary["class_pixels"],
            "km2_mapped": mapped_km2(summary), "seconds": summary["seconds"]}


def map_scenes(run_or_workdir, scenes: list[Scene], mapdir: str | Path, *,
               checkpoint: str = "best", tile: int = 256, overlap: int = 64,
               blend: str = "gaussian", batch: int = 8, tta: bool = False, ema: bool = True,
               index: int = 0, count: int = 1, progress: bool = True, on_error=None,
               on_skip=None) -> dict:
    """Map this process's share of ``scenes`` into ``mapdir``; return a summary.

    ``on_error(scene, message)`` is called for each failed scene as it fails,
    ``on_skip(scene)`` for each one already done. The summary lists ``mapped``,
    ``skipped`` and ``failed`` ids, km² and seconds.
    """
    from tqdm import tqdm

    from satseg_jax.mapping.scenes import share_of
    from satseg_jax.tiled_scene import check_tiling

    check_tiling(tile, overlap, batch)
    mapdir = Path(mapdir)
    mine = share_of(scenes, index, count)
    todo = [s for s in mine if not is_done(mapdir, s)]
    skipped = [s.id for s in mine if s not in todo]
    for s in mine:
        if s not in todo and on_skip is not None:
            on_skip(s)
    t0 = time.perf_counter()
    result = {"mapdir": str(mapdir), "process": [index, count], "scenes": len(scenes),
              "share": len(mine), "mapped": [], "skipped": skipped, "failed": [], "km2": 0.0}
    settings = {"tile": tile, "overlap": overlap, "blend": blend, "tta": tta}
    predictor = _predictor(run_or_workdir, checkpoint, ema, settings, batch, mapdir, todo)
    bar = tqdm(total=len(todo), desc=f"map {index + 1}/{count}" if count > 1 else "map",
               unit="scene", disable=not progress)
    for scene in todo:
        try:
            out = map_path(mapdir, scene.id)
            summary = predictor.predict(scene.path, out, progress=False)
            rec = {**_record(scene, out, summary), "process": [index, count]}
            _write_json(marker_path(mapdir, scene.id), rec)
            failed_path(mapdir, scene.id).unlink(missing_ok=True)
        except (DiskFullError, NotWritableError):
            raise
        except SatsegError as e:
            _write_json(failed_path(mapdir, scene.id),
                        {"id": scene.id, "source": str(scene.path), "error": str(e)})
            result["failed"].append({"id": scene.id, "source": str(scene.path),
                                     "error": str(e)})
            if on_error is not None:
                on_error(scene, str(e))
        else:
            result["mapped"].append(scene.id)
            result["km2"] += rec["km2_mapped"]
        bar.set_postfix_str(f"{result['km2']:.1f} km²")
        bar.update()
    bar.close()
    result["seconds"] = time.perf_counter() - t0
    return result


def _predictor(run_or_workdir, checkpoint, ema, settings, batch, mapdir, todo):
    """The restored run's ScenePredictor, checked against ``map.json``; None when nothing
    is left to map (no restore, no compile), after checking what can be checked without
    a restore: the run's folder and the tiling."""
    from satseg_jax.predict import ScenePredictor
    from satseg_jax.runs import Run, load_run

    if (Path(mapdir) / MAP_CARD).exists():
        old = read_card(mapdir)
        path = Path(getattr(run_or_workdir, "path", run_or_workdir)).absolute()
        check_card(mapdir, {**old, "run": str(path), **settings})
        if not todo:
            return None
    run = run_or_workdir if isinstance(run_or_workdir, Run) else load_run(
        run_or_workdir, checkpoint, ema=ema)
    check_card(mapdir, card_for(run, settings))
    return ScenePredictor(run, tile=settings["tile"], overlap=settings["overlap"],
                          blend=settings["blend"], batch=batch, tta=settings["tta"])


def done_records(mapdir: Path) -> list[dict]:
    """Every scene's done marker in ``mapdir`` whose map is present, sorted by id."""
    out = []
    for p in sorted((Path(mapdir) / SCENES_DIR).glob("*.json")):
        if p.name.endswith(".failed.json"):
            continue
        try:
            rec = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if (Path(mapdir) / rec["map"]).is_file():
            out.append(rec)
    return out


def failed_records(mapdir: Path) -> list[dict]:
    """The scenes whose last attempt failed (and that have not been mapped since)."""
    out = []
    for p in sorted((Path(mapdir) / SCENES_DIR).glob("*.failed.json")):
        try:
            out.append(json.loads(p.read_text()))
        except (OSError, ValueError):
            out.append({"id": p.name.removesuffix(".failed.json"), "error": "unreadable"})
    return out

