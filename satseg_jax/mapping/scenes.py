"""Which scenes ``satseg map`` maps, under which ids and dates, and which process maps each.

Why this shape:

- **Three ways to name the scenes**, all giving ``Scene(id, path, date)``: a folder or a
  quoted glob (ids follow ``predict --images``' keys: the path under the common parent,
  without suffix, ``/`` written ``__``), a ``scenes.txt`` (one path per line, relative to
  the file; ``#`` comments), or the ``manifest.json`` of ``satseg download`` (``--items``:
  the item id is the scene id and the item's datetime its date).
- **Dates** decide the month/year a scene is tallied in and which scene wins where two
  overlap (the latest). They come, first match wins, from a ``--dates`` CSV (columns
  ``id,date``), the file name through ``--date-pattern`` (``YYYY``, ``MM``, ``DD``
  tokens, ``*`` for anything, e.g. ``'S2_YYYYMMDD_*'``) or the download manifest. A date
  is a calendar day (``YYYY-MM-DD``): the period tables need no finer time.
- **Deterministic shares without a coordinator.** Mapping scenes shares nothing between
  processes, so no ``jax.distributed`` job is started (one process dying must not hang
  the others, and each process keeps its own devices): process ``i`` of ``n`` maps the
  scenes at positions ``i, i + n, ...`` of the list sorted by id, whatever the order the
  files were found in. ``i`` and ``n`` come from ``--process-index/--process-count``, or
  the launch environment (the variables the launch scripts set, a SLURM array or job
  step, a Cloud TPU VM).
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from satseg_jax.errors import SatsegError

_ID_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
PERIODS = ("month", "year", "none")


@dataclass(frozen=True)
class Scene:
    """One scene to map: ``id`` (its map is ``scenes/<id>.tif``), path, date or None."""

    id: str
    path: Path
    date: dt.date | None = None


def scene_id(key: str) -> str:
    """A file-name-safe id: subfolders as ``__``, anything else odd as ``_``."""
    return _ID_CHARS.sub("_", key.replace("/", "__").replace("\\", "__")).strip("_") or "scene"


def _scenes_txt(path: Path) -> list[tuple[str, Path]]:
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        p = Path(line)
        p = p if p.is_absolute() else path.parent / p
        if not p.is_file():
            raise SatsegError(f"{path}:{n}: {line}: no such file; fix the line or remove it")
        out.append((p.with_suffix("").name, p))
    if not out:
        raise SatsegError(f"{path}: lists no scene (one path per line)")
    return out


def _manifest_scenes(path: Path, asset: str | None) -> list[tuple[str, Path, str | None]]:
    """(item id, file, datetime) per item of a ``satseg download`` manifest."""
    try:
        files = json.loads(path.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        raise SatsegError(f"{path}: not a manifest.json written by satseg download "
                          "(no 'files' list)") from None
    by_item: dict[str, list[dict]] = {}
    for e in files:
        by_item.setdefault(str(e["item"]), []).append(e)
    out = []
    for item, entries in sorted(by_item.items()):
        chosen = [e for e in entries if asset is None or e["asset"] == asset]
        if len(chosen) != 1:
            assets = ", ".join(sorted(e["asset"] for e in entries))
            raise SatsegError(
                f"{path}: item {item} has assets {assets}; name the one that holds the scene "
                "with --asset KEY (per-band assets: 'satseg compose' them first and pass the "
                "scenes with --scenes and --dates)")
        out.append((item, path.parent / chosen[0]["path"], chosen[0].get("datetime")))
    return out


def list_scenes(scenes: str | None = None, items: str | Path | None = None,
                asset: str | None = None) -> list[Scene]:
    """Every scene named by ``scenes`` (folder, quoted glob, or ``*.txt`` list) or by the
    download manifest ``items``, sorted by id; ids must be unique."""
    if bool(scenes) == bool(items):
        raise SatsegError("satseg map: name the scenes with --scenes GLOB|DIR|scenes.txt or "
                          "--items manifest.json (one of them)")
    found: list[tuple[str, Path, str | None]]
    if items:
        found = _manifest_scenes(Path(items), asset)
    elif str(scenes).endswith(".txt") and Path(scenes).is_file():
        found = [(k, p, None) for k, p in _scenes_txt(Path(scenes))]
    else:
        from satseg_jax.raster.pairing import find_images

        found = [(k, p, None) for k, p in find_images(scenes)]
    by_id: dict[str, list[Path]] = {}
    for key, path, _ in found:
        by_id.setdefault(scene_id(key), []).append(path)
    dupes = {i: ps for i, ps in by_id.items() if len(ps) > 1}
    if dupes:
        i, ps = next(iter(sorted(dupes.items())))
        raise SatsegError(f"scene id {i!r} names {len(ps)} files ({ps[0]}, {ps[1]}); ids come "
                          "from file names: rename one, or list them in folders of their own")
    out = [Scene(scene_id(k), Path(p), _parse_date(d, f"{items}: item {k}") if d else None)
           for k, p, d in found]
    return sorted(out, key=lambda s: s.id)


def _parse_date(text: str, where: str) -> dt.date:
    try:
        return dt.date.fromisoformat(str(text).strip()[:10])
    except ValueError:
        raise SatsegError(f"{where}: date {text!r} is not YYYY-MM-DD") from None


def period_key(date: str | None, period: str) -> str:
    """The table row of a scene dated ``date`` (ISO): ``"2024-03"`` (month), ``"2024"``
    (year) or ``"all"`` (none)."""
    if period == "none":
        return "all"
    return date[:7] if period == "month" else date[:4]


def date_pattern_regex(pattern: str) -> re.Pattern:
    """``'S2_YYYYMMDD_*'`` -> a regex searched in file names; needs YYYY and MM."""
    if "YYYY" not in pattern or "MM" not in pattern:
        raise SatsegError(f"--date-pattern {pattern!r}: needs the tokens YYYY and MM (and DD "
                          "for a day), e.g. 'S2_YYYYMMDD_*'")
    out, i = [], 0
    tokens = {"YYYY": r"(?P<y>\d{4})", "MM": r"(?P<m>\d{2})", "DD": r"(?P<d>\d{2})"}
    while i < len(pattern):
        tok = next((t for t in tokens if pattern.startswith(t, i)), None)
        if tok:
            out.append(tokens[tok])
            i += len(tok)
        else:
            out.append(".*" if pattern[i] == "*" else re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


def _read_dates_csv(path: Path) -> dict[str, dt.date]:
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as e:
        raise SatsegError(f"--dates {path}: cannot be read ({e.strerror})") from None
    if not rows or not {"id", "date"} <= set(rows[0]):
        raise SatsegError(f"--dates {path}: expected a CSV with the columns id,date")
    return {scene_id(r["id"]): _parse_date(r["date"], f"{path}: id {r['id']}") for r in rows}


def with_dates(scenes: list[Scene], dates_csv: str | Path | None = None,
               date_pattern: str | None = None, items: str | Path | None = None,
               asset: str | None = None) -> list[Scene]:
    """``scenes`` with dates from the CSV, else the file name pattern, else the download
    manifest ``items`` (by item id), else as listed."""
    table = _read_dates_csv(Path(dates_csv)) if dates_csv else {}
    if items:
        for item, _, when in _manifest_scenes(Path(items), asset):
            if when:
                table.setdefault(scene_id(item), _parse_date(when, f"{items}: item {item}"))
    regex = date_pattern_regex(date_pattern) if date_pattern else None
    out = []
    for s in scenes:
        date = table.get(s.id)
        if date is None and regex is not None:
            m = regex.search(s.path.name)
            if m:
                day = m.groupdict().get("d") or "01"
                date = _parse_date(f"{m['y']}-{m['m']}-{day}",
                                   f"{s.path.name} (--date-pattern {date_pattern})")
        out.append(Scene(s.id, s.path, date or s.date))
    return out


def process_share(env: Mapping[str, str] | None = None, index: int | None = None,
                  count: int | None = None) -> tuple[int, int]:
    """(this process's index, number of processes) for dividing the scenes.

    Explicit ``index``/``count`` win; then ``SATSEG_PROCESS_ID``/``SATSEG_NUM_PROCESSES``
    (the launch scripts), a SLURM array (``SLURM_ARRAY_TASK_ID`` from
    ``SLURM_ARRAY_TASK_MIN``, ``SLURM_ARRAY_TASK_COUNT``), a SLURM job step
    (``SLURM_PROCID``/``SLURM_NTASKS``), a Cloud TPU VM (``TPU_WORKER_ID`` of
    ``TPU_WORKER_HOSTNAMES``); else one process.
    """
    env = os.environ if env is None else env
    if index is None and count is None:
        if env.get("SATSEG_NUM_PROCESSES"):
            index, count = env.get("SATSEG_PROCESS_ID", ""), env["SATSEG_NUM_PROCESSES"]
        elif env.get("SLURM_ARRAY_TASK_COUNT"):
            index = str(_int(env.get("SLURM_ARRAY_TASK_ID"), "SLURM_ARRAY_TASK_ID")
                        - _int(env.get("SLURM_ARRAY_TASK_MIN", "0"), "SLURM_ARRAY_TASK_MIN"))
            count = env["SLURM_ARRAY_TASK_COUNT"]
        elif _int(env.get("SLURM_NTASKS", "1") or "1", "SLURM_NTASKS") > 1:
            index, count = env.get("SLURM_PROCID"), env["SLURM_NTASKS"]
        elif env.get("TPU_WORKER_ID") and env.get("TPU_WORKER_HOSTNAMES"):
            index = env["TPU_WORKER_ID"]
            count = str(len([h for h in env["TPU_WORKER_HOSTNAMES"].split(",") if h.strip()]))
        else:
            return 0, 1
    count = _int(count if count is not None else "1", "the process count")
    index = _int(index if index is not None else "", "the process index")
    if count < 1 or not 0 <= index < count:
        raise SatsegError(f"process index {index} of {count}: expected 0 <= index < count "
                          "(--process-index, --process-count)")
    return index, count


def _int(value, what: str) -> int:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        raise SatsegError(f"{what} {value!r}: expected a whole number "
                          "(--process-index I --process-count N)") from None


def share_of(scenes: list[Scene], index: int, count: int) -> list[Scene]:
    """The scenes process ``index`` of ``count`` maps: every ``count``-th by sorted id."""
    return sorted(scenes, key=lambda s: s.id)[index::count]
