"""Train/validation/test assignment from a split file that names the source images of
each split (``satseg build --split-file``), so results are comparable with published
splits.

Why apart from ``splits``: matching a user's list of names to the source images of a
patches folder (by key, file name or stem; exhaustive, one-to-one) is its own concern,
with its own errors; the assignment by fractions does not need any of it.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from satseg_jax.datasets.splits import (
    SPLITS,
    no_source_column,
    patch_sources,
    source_of,
    sources_per_split,
)
from satseg_jax.errors import SatsegError

# Split names a split file may use; "val" is common in published lists.
SPLIT_FILE_KEYS = {"train": "train", "validation": "validation", "val": "validation",
                   "test": "test"}
_WILDCARD = re.compile(r"[*?\[]")
SPLIT_FILE_FORMAT = '{"train": ["img_001.tif", ...], "validation": [...], "test": [...]}'


def read_split_file(path: str | Path) -> tuple[dict[str, list[str]], str]:
    """The source-image lists of a split file and the sha256 of its bytes.

    Format: ``{"train": [...], "validation": [...], "test": [...]}``; ``val`` is accepted
    for ``validation`` (published lists use both) and a missing split is empty. The
    digest goes into satseg_dataset.json, so a result can be traced to the exact list.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SatsegError(f"--split-file {path}: file not found; give a JSON file "
                          f"{SPLIT_FILE_FORMAT}") from None
    except OSError as e:
        raise SatsegError(f"--split-file {path}: cannot be read ({e.strerror})") from None
    sha = hashlib.sha256(data).hexdigest()
    try:
        obj = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SatsegError(f"{path}: not valid JSON ({e}); expected {SPLIT_FILE_FORMAT}") \
            from None
    if not isinstance(obj, dict):
        raise SatsegError(f"{path}: expected a JSON object {SPLIT_FILE_FORMAT}, got "
                          f"{type(obj).__name__}")
    lists: dict[str, list[str]] = {s: [] for s in SPLITS}
    given: dict[str, str] = {}
    for k, v in obj.items():
        name = SPLIT_FILE_KEYS.get(k)
        if name is None:
            raise SatsegError(f"{path}: unknown split {k!r}; use train, validation (or val) "
                              f"and test, e.g. {SPLIT_FILE_FORMAT}")
        if name in given:
            raise SatsegError(f"{path}: both {given[name]!r} and {k!r} are given; 'val' is "
                              "another name for 'validation': merge them into one list")
        given[name] = k
        if not isinstance(v, list) or not all(isinstance(x, str) and x.strip() for x in v):
            raise SatsegError(f"{path}: {k!r} must be a list of source image names "
                              f"(non-empty strings), e.g. {SPLIT_FILE_FORMAT}")
        lists[name] = [x.strip() for x in v]
    if not any(lists.values()):
        raise SatsegError(f"{path}: every split is empty; list the source images of each "
                          f"split, e.g. {SPLIT_FILE_FORMAT}")
    return lists, sha


def _norm_name(name: str) -> str:
    """'/'-separated, no empty or '.' parts: how entries and source paths are compared."""
    return "/".join(p for p in name.replace("\\", "/").split("/") if p not in ("", "."))


def _source_names(key: str, image: str | None) -> set[str]:
    """The names a split file may use for a source: its key, its image path as given,
    either with or without the image suffix, and every trailing part of those (so the
    image file name, the file stem and e.g. ``region_a/images/0001.png`` all match)."""
    paths = [key]
    if image:
        img = PurePosixPath(_norm_name(image))
        paths += [str(img), str(img.with_suffix("")), key + img.suffix]
    names: set[str] = set()
    for p in paths:
        parts = _norm_name(p).split("/")
        names.update("/".join(parts[i:]) for i in range(len(parts)))
    names.discard("")
    return names


def _listing(items: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _source_images(index_rows: Sequence[Mapping], sources: Sequence[Mapping]
                   ) -> dict[str, str | None]:
    """Source key -> image path: patches.json's ``sources`` (images that gave no patch
    too), then index.csv's ``source_image`` where those have none."""
    images: dict[str, str | None] = {}
    for s in sources:
        images[str(s["key"])] = s.get("image")
    for r in index_rows:
        key = source_of(r)
        if key is not None and (key not in images or images[key] is None):
            images[key] = r.get("source_image") or None
    return images


@dataclass
class _Matches:
    """How a split file's entries matched the sources (see ``_match_entries``)."""

    split_of: dict[str, tuple[str, str]] = field(default_factory=dict)  # key -> (split, entry)
    unmatched: list[str] = field(default_factory=list)
    ambiguous: list[tuple[str, str, list[str]]] = field(default_factory=list)
    twice: list[str] = field(default_factory=list)


def _match_entries(lists: Mapping[str, list[str]], images: Mapping[str, str | None]
                   ) -> _Matches:
    """Each entry of each split matched to the one source it names (key, image name or
    stem), or a glob (``*``, ``?``, ``[...]``) to every source key it matches
    (``training/*``: the authors' folder split); entries matching none (or, without
    wildcards, several), and sources in two splits, are collected."""
    names: dict[str, set[str]] = {}
    for key, image in images.items():
        for nm in _source_names(key, image):
            names.setdefault(nm, set()).add(key)
    m = _Matches()
    for split in SPLITS:
        for entry in lists[split]:
            if _WILDCARD.search(entry):  # a folder of a region: 'training/*'
                keys = sorted(k for k in images
                              if fnmatch.fnmatchcase(k, _norm_name(entry)))
            else:
                keys = sorted(names.get(_norm_name(entry), ()))
                if len(keys) > 1:
                    m.ambiguous.append((entry, split, keys))
                    continue
            if not keys:
                m.unmatched.append(entry)
            for key in keys:
                if key in m.split_of and m.split_of[key][0] != split:
                    other, was = m.split_of[key]
                    m.twice.append(f"{key} in {other} (as {was!r}) and {split} (as {entry!r})")
                else:
                    m.split_of.setdefault(key, (split, entry))
    return m


def _check_matches(path: Path, m: _Matches, images: Mapping[str, str | None]) -> None:
    """Refuse anything but an exact one-to-one match of entries and source images."""
    example = sorted(images)[0]
    if m.unmatched:
        n = len(m.unmatched)
        raise SatsegError(
            f"{path}: {n} entr{'y' if n == 1 else 'ies'} match no "
            f"source image of the patches folder: {_listing(m.unmatched)}; name each source "
            f"by its key (index.csv column source, e.g. {example}), its image file name, "
            "its file stem, or a glob of keys ('region_a/*')")
    if m.ambiguous:
        entry, split, keys = m.ambiguous[0]
        more = f" ({len(m.ambiguous) - 1} more entries are ambiguous)" \
            if len(m.ambiguous) > 1 else ""
        raise SatsegError(
            f"{path}: entry {entry!r} in {split} matches {len(keys)} source images "
            f"({_listing(keys, 5)}){more}; name the one you mean by its key "
            f"(region/images/name as in index.csv column source), e.g. {keys[0]!r}")
    if m.twice:
        raise SatsegError(f"{path}: {len(m.twice)} source image(s) listed in two splits: "
                          f"{_listing(m.twice)}; a source image belongs to one split")
    missing = sorted(set(images) - set(m.split_of))
    if missing:
        raise SatsegError(
            f"{path}: {len(missing)} source image(s) of the patches folder are in no split: "
            f"{_listing(missing)}; add them to a split or remove them (from the images "
            "folder, then re-run satseg patches): published split lists are exhaustive")


def assign_from_split_file(index_rows: Sequence[Mapping], split_file: str | Path,
                           sources: Sequence[Mapping] = (), *,
                           index_path: str = "index.csv") -> tuple[dict[str, str], dict]:
    """Map every patch id to the split its source image is listed in by ``split_file``.

    ``index_rows`` need a ``source`` column (folders from ``satseg patches --images/
    --masks``); ``source_image`` (the image path) lets entries use file names. ``sources``:
    patches.json's ``sources`` (``key``, ``image``), so images that gave no patch can be
    listed too. An entry names a source by key, image file name or file stem. Published
    lists are exhaustive and exact, so anything that is not an exact one-to-one match is
    an error rather than a guess: an entry matching no source, an entry matching several
    (same name in two regions: use the key), a source in two splits, a source in none.
    The validation split may be empty (many published sets have only train/test), and so
    may train: a file listing only test images builds a test-only dataset.
    """
    path = Path(split_file)
    lists, sha = read_split_file(path)
    if patch_sources([(str(r["patch_id"]), 0, 0, source_of(r)) for r in index_rows],
                      index_path) is None:
        raise no_source_column("--split-file", index_path)
    images = _source_images(index_rows, sources)
    m = _match_entries(lists, images)
    _check_matches(path, m, images)
    assignment = {str(r["patch_id"]): m.split_of[source_of(r)][0] for r in index_rows}
    if lists["train"] and "train" not in assignment.values():
        raise SatsegError(f"{path}: the {len(lists['train'])} train image(s) gave no patches "
                          "(see satseg patches --min-valid); band statistics and training "
                          "need train patches")
    info = {"method": "file", "fractions": None, "seed": None, "block_size": None,
            "num_blocks": None, "split_file": str(path.resolve()), "split_file_sha256": sha,
            "num_sources": len(images),
            "sources": sources_per_split({k: v[0] for k, v in m.split_of.items()})}
    return dict(sorted(assignment.items())), info
