"""Pair the image and mask files of a labelled dataset delivered as folders.

Published sets come as ``images/`` + ``masks/`` folders (DeepGlobe, LandCover.ai, the
Kaggle sets), often split into region folders that reuse the same file names in every
region (LoveDA: ``Train/Rural/images_png/1.png`` and ``Train/Urban/images_png/1.png``).
Pairing rules, chosen so that a wrong pair is impossible rather than unlikely:

- ``images`` / ``masks`` are folders or globs of folders (``'LoveDA/Train/*/images_png'``).
  With globs, an image folder pairs only with the mask folder whose wildcards matched the
  same text (``Rural`` with ``Rural``), so equal file names in two regions never cross.
- Inside a folder pair, files are found recursively. An image pairs with the mask at the
  same relative path (suffix aside); failing that, with the one mask of the same file
  stem, but only when one side is flat (no sub-folders): two different sub-folder trees
  never pair by name alone. A stem that could pair with more than one file is an error
  listing the candidates, never a silent choice.
- ``pattern`` (``'{stem}_sat.jpg:{stem}_mask.png'``) handles sets that name the two
  differently; it also lets images and masks share one folder (DeepGlobe). Files that do
  not match their side of the pattern are not part of the dataset.

Each pair gets a ``key``: the image's path relative to the common parent of all image
folders, without suffix, '/'-separated (``Rural/images_png/1``). Keys are unique, name
the source image in index.csv and split files, and make patch ids unique.
"""

from __future__ import annotations

import fnmatch
import glob
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from satseg_jax.errors import SatsegError

# Raster formats GDAL reads that labelled sets are delivered in.
RASTER_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".jp2", ".bmp", ".gif", ".img",
                   ".webp")
LOSSY_SUFFIXES = (".jpg", ".jpeg", ".webp")
_WILDCARD = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class Pair:
    """One source image and its mask; ``key`` is unique within the dataset."""

    image: Path
    mask: Path
    key: str


@dataclass(frozen=True)
class Pairing:
    pairs: tuple[Pair, ...]
    unpaired_images: tuple[Path, ...]
    unpaired_masks: tuple[Path, ...]

    def check_complete(self, skip_unpaired: bool = False) -> list[str]:
        """Raise for unpaired files unless ``skip_unpaired``; return the skip report lines."""
        lines = [f"image without mask: {p}" for p in self.unpaired_images]
        lines += [f"mask without image: {p}" for p in self.unpaired_masks]
        if lines and not skip_unpaired:
            shown = "; ".join(lines[:10]) + (f"; ... and {len(lines) - 10} more"
                                            if len(lines) > 10 else "")
            raise SatsegError(
                f"{len(lines)} unpaired file(s): {shown}. Fix the names (or give --pair "
                "PATTERN, e.g. '{stem}_sat.jpg:{stem}_mask.png'), or pass --skip-unpaired to "
                "leave them out")
        if not self.pairs:
            raise SatsegError("no image/mask pairs found; check --images/--masks (and --pair)")
        return lines


def parse_pattern(pattern: str) -> tuple[re.Pattern, re.Pattern]:
    """``'{stem}_sat.jpg:{stem}_mask.png'`` -> two regexes capturing the stem."""
    parts = pattern.split(":")
    if len(parts) != 2 or any(p.count("{stem}") != 1 for p in parts):
        raise SatsegError(f"--pair {pattern!r}: expected IMAGE_NAME:MASK_NAME with one {{stem}} "
                          "in each, e.g. '{stem}_sat.jpg:{stem}_mask.png'")
    out = []
    for p in parts:
        if "/" in p or "\\" in p:
            raise SatsegError(f"--pair {pattern!r}: name file names only, not folders")
        head, tail = p.split("{stem}")
        out.append(re.compile(re.escape(head) + r"(?P<stem>.+)" + re.escape(tail) + r"\Z",
                              re.IGNORECASE))
    return out[0], out[1]


def _bracket_end(component: str, i: int) -> int:
    """Index of the ``]`` closing the glob class opened at ``component[i] == '['``, or -1
    when it is a literal ``[`` (as glob reads it: ``[!`` and a first ``]`` are inside)."""
    j = i + 1
    if j < len(component) and component[j] == "!":
        j += 1
    if j < len(component) and component[j] == "]":
        j += 1
    return component.find("]", j)


def _component_regex(component: str) -> str:
    """One path component of a glob as a regex with a group per wildcard (``*``, ``?``,
    ``[...]``), so a match yields the text each wildcard matched: ``*chips`` matches
    ``val-chips`` with ``val-`` (and ``chips`` with ``''``), which is what pairs
    ``kampala/*chips`` with ``kampala/*binarymasks`` region by region."""
    out, i = [], 0
    while i < len(component):
        c = component[i]
        end = _bracket_end(component, i) if c == "[" else -1
        if c in "*?" or end > 0:
            part = component[i:end + 1] if end > 0 else c
            rx = fnmatch.translate(part).removeprefix("(?s:").removesuffix(")\\Z")
            out.append("(" + rx + ")")
            i = end + 1 if end > 0 else i + 1
        else:
            out.append(re.escape(c))
            i += 1
    return "".join(out)


def expand_folders(spec: str, what: str) -> dict[tuple[str, ...], Path]:
    """Folders matched by ``spec`` keyed by the text its wildcards matched (() if none):
    ``'data/*/images'`` gives ``('rural',)`` for ``data/rural/images``, and
    ``'kampala/*chips'`` gives ``('val-',)`` for ``kampala/val-chips``."""
    if not _WILDCARD.search(spec):
        path = Path(spec)
        if not path.is_dir():
            raise SatsegError(f"{what} {spec}: not a folder; give the folder holding the "
                              "files (or a glob of folders in quotes)")
        return {(): path}
    norm = spec.replace("\\", "/").rstrip("/")
    comps = norm.split("/")
    wild = {i: re.compile(_component_regex(c)) for i, c in enumerate(comps)
            if _WILDCARD.search(c)}
    found: dict[tuple[str, ...], Path] = {}
    for m in sorted(glob.glob(norm)):
        if not os.path.isdir(m):
            continue
        mcomps = m.replace("\\", "/").rstrip("/").split("/")
        region: tuple[str, ...] = ()
        for i, rx in wild.items():
            mm = rx.fullmatch(mcomps[i]) if len(mcomps) == len(comps) else None
            # glob normalised the path differently: the whole component is the region
            region += mm.groups() if mm else (mcomps[i] if i < len(mcomps) else "",)
        found[region] = Path(m)
    if not found:
        raise SatsegError(f"{what} {spec!r}: the glob matches no folder")
    return found


def _raster_files(root: Path, exclude: tuple[Path, ...] = ()) -> list[Path]:
    out = []
    excl = [e.resolve() for e in exclude if e.resolve() != root.resolve()]
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        dirnames[:] = sorted(n for n in dirnames if not n.startswith(".")
                             and (d / n).resolve() not in excl)
        for name in sorted(filenames):
            if not name.startswith(".") and name.lower().endswith(RASTER_SUFFIXES):
                out.append(d / name)
    return out


def _strip_suffix(rel: Path) -> str:
    return rel.with_suffix("").as_posix()


def _pair_in(img_root: Path, mask_root: Path, pattern, prefix: str,
             pairs: list[Pair], lone_images: list[Path], lone_masks: list[Path]) -> None:
    same = img_root.resolve() == mask_root.resolve()
    if same and pattern is None:
        raise SatsegError(f"--images and --masks are the same folder {img_root}; give --pair "
                          "PATTERN (e.g. '{stem}_sat.jpg:{stem}_mask.png') to tell them apart")
    images = _raster_files(img_root, exclude=(mask_root,))
    masks = _raster_files(mask_root, exclude=(img_root,))

    def side(files: list[Path], root: Path, rx, not_rx=None) -> dict[str, list[tuple[str, Path]]]:
        """stem -> [(relative path key, file)]; ``not_rx``: names that belong to the
        other side (one shared folder with '{stem}.png:{stem}_mask.png')."""
        by_stem: dict[str, list[tuple[str, Path]]] = {}
        for f in files:
            if rx is not None:
                m = rx.match(f.name)
                if m is None or (not_rx is not None and not_rx.match(f.name)):
                    continue
                stem = m.group("stem")
                rel = (f.parent.relative_to(root) / stem).as_posix()
            else:
                stem = f.stem
                rel = _strip_suffix(f.relative_to(root))
            by_stem.setdefault(stem, []).append((rel, f))
        return by_stem

    img_rx, mask_rx = pattern if pattern is not None else (None, None)
    img_side = side(images, img_root, img_rx, mask_rx if same else None)
    mask_side = side(masks, mask_root, mask_rx)
    mask_by_rel = {rel: f for lst in mask_side.values() for rel, f in lst}
    flat_masks = all("/" not in rel for rel in mask_by_rel)
    flat_images = all("/" not in rel for lst in img_side.values() for rel, _ in lst)
    dup_rel = [rel for rel in mask_by_rel
               if sum(r == rel for lst in mask_side.values() for r, _ in lst) > 1]
    if dup_rel:
        files = [str(f) for lst in mask_side.values() for r, f in lst if r == dup_rel[0]]
        raise SatsegError(f"masks {', '.join(files)} differ only in suffix; keep one of them")
    used_masks: set[Path] = set()
    for stem in sorted(img_side):
        entries = img_side[stem]
        for rel, img in entries:
            mask = mask_by_rel.get(rel)
            if mask is None:
                # by stem only across a flat side (images/a/x.jpg ~ masks/x.png): two
                # different sub-folder trees never pair by name alone
                parent = rel.rpartition("/")[0]
                cands = [f for r, f in mask_side.get(stem, [])
                         if flat_masks or flat_images or r.rpartition("/")[0] == parent]
                if len(cands) == 1 and len(entries) == 1:
                    mask = cands[0]
                elif len(cands) > 1 or (cands and len(entries) > 1):
                    imgs = ", ".join(str(f) for _, f in entries)
                    raise SatsegError(
                        f"image(s) {imgs} could pair with more than one mask "
                        f"({', '.join(str(c) for c in cands)}): the stem {stem!r} is ambiguous. "
                        "Keep matching sub-folders under --images and --masks, or point them "
                        "at one region each (a glob such as 'DATA/*/images' pairs per region)")
            if mask is None:
                lone_images.append(img)
                continue
            if mask in used_masks:
                raise SatsegError(f"mask {mask} would pair with two images; rename one")
            used_masks.add(mask)
            key = (prefix + "/" + rel) if prefix else rel
            pairs.append(Pair(image=img, mask=mask, key=key))
    lone_masks.extend(f for lst in mask_side.values() for _, f in lst if f not in used_masks)


def find_pairs(images: str | Path, masks: str | Path, pattern: str | None = None) -> Pairing:
    """Pair the files under ``images`` with those under ``masks`` (see the module doc).

    Returns every pair (sorted by key) plus the files left without a partner; raises
    SatsegError for missing folders, mismatched glob regions or ambiguous stems.
    """
    rx = parse_pattern(pattern) if pattern else None
    img_dirs = expand_folders(str(images), "--images")
    mask_dirs = expand_folders(str(masks), "--masks")
    if len(img_dirs) > 1 or len(mask_dirs) > 1:
        n_img = {len(k) for k in img_dirs}
        n_mask = {len(k) for k in mask_dirs}
        if n_img != n_mask:
            raise SatsegError(f"--images {images!r} and --masks {masks!r} have a different "
                              "number of wildcards; use the same ones in both so each image "
                              "folder pairs with its own mask folder")
    pairs: list[Pair] = []
    lone_images: list[Path] = []
    lone_masks: list[Path] = []
    parent = Path(os.path.commonpath([str(p.absolute()) for p in img_dirs.values()]))
    for region in sorted(set(img_dirs) | set(mask_dirs)):
        img_root, mask_root = img_dirs.get(region), mask_dirs.get(region)
        if img_root is None or mask_root is None:
            root = img_root or mask_root
            (lone_images if img_root else lone_masks).extend(_raster_files(root))
            continue
        prefix = ""
        if len(img_dirs) > 1:
            prefix = img_root.absolute().relative_to(parent).as_posix()
        _pair_in(img_root, mask_root, rx, prefix, pairs, lone_images, lone_masks)
    keys = [p.key for p in pairs]
    if len(set(keys)) != len(keys):  # cannot happen with distinct folders; guards the contract
        raise SatsegError("two image files map to the same source key; rename one")
    return Pairing(tuple(sorted(pairs, key=lambda p: p.key)), tuple(lone_images),
                   tuple(lone_masks))


def find_images(images: str | Path) -> list[tuple[str, Path]]:
    """(key, path) of every raster under ``images``, sorted by key, for inference over a
    folder set without masks (``satseg predict --images``).

    ``images`` is what ``--images`` takes for pairing (a folder, or a quoted glob of
    region folders, searched recursively) or a glob of files (``'tiles/*.jpg'``). Keys
    follow the pairing rule (the path under the common parent of the folders, or of the
    files, without suffix), so region folders that reuse file names keep distinct keys.
    """
    spec = str(images)
    if _WILDCARD.search(spec) and not any(os.path.isdir(m) for m in glob.glob(spec)):
        files = [Path(m) for m in sorted(glob.glob(spec)) if os.path.isfile(m)
                 and m.lower().endswith(RASTER_SUFFIXES)]
        if not files:
            raise SatsegError(f"--images {spec!r}: the glob matches no image file "
                              f"({', '.join(RASTER_SUFFIXES)})")
        parent = Path(os.path.commonpath([str(f.absolute().parent) for f in files]))
        found = [(_strip_suffix(f.absolute().relative_to(parent)), f) for f in files]
    else:
        dirs = expand_folders(spec, "--images")
        parent = Path(os.path.commonpath([str(p.absolute()) for p in dirs.values()]))
        found = [(_strip_suffix(f.absolute().relative_to(parent if len(dirs) > 1 else root
                                                        .absolute())), f)
                 for root in dirs.values() for f in _raster_files(root)]
        if not found:
            raise SatsegError(f"--images {spec}: no image file ({', '.join(RASTER_SUFFIXES)})"
                              " in it")
    counts = Counter(k for k, _ in found)
    dupes = sorted(k for k, n in counts.items() if n > 1)
    if dupes:
        raise SatsegError(f"--images {spec}: {len(dupes)} name(s) differ only in their suffix "
                          f"(e.g. {dupes[0]}: {[str(f) for k, f in found if k == dupes[0]]}); "
                          "their maps would have the same name: move one")
    return sorted(found)


def safe_id(key: str) -> str:
    """A source key as a file-name-safe patch-id prefix ('/' -> '__')."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", key.replace("/", "__"))
