"""Train/validation/test assignment of patches: at random, or by spatial blocks.

Why blocks: neighbouring patches share texture, objects and (with a stride below the
patch size) pixels, so a random split puts near-copies of test patches in train and
inflates test scores. The block split cuts the patch grid into squares of
``block_size × block_size`` patch positions and assigns whole squares, so patches of
one block always land in the same split. (With overlapping patches, two patches on
either side of a block border can still share pixels; use ``stride == size`` for
strictly disjoint splits.)

Split sizes follow the fractions by *patch count* as closely as whole groups allow:
groups are handed out largest first to the split furthest below its target, then
single moves and pairwise swaps between splits are applied while they reduce the
squared distance to the targets. Every split with a non-zero fraction gets at least
one patch. Everything is a function of ``seed`` and the set of patches (not their
order), so a rebuild gives the same assignment.

Several source images (a patches folder from ``satseg patches --images/--masks``, whose
index.csv has a ``source`` column): patch offsets restart in every image, so the block
split keys blocks by (source, block) and a block never spans two images. ``source``
assigns whole source images (the usual protocol for tile datasets: patches of one image
share its date, sensor and place). A split file
(:func:`satseg_jax.datasets.split_file.assign_from_split_file`) names the images of each
split explicitly, so results are comparable with published splits.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from satseg_jax.errors import SatsegError

SPLITS = ("train", "validation", "test")
METHODS = ("block", "random", "source")
TARGET_BLOCKS = 20


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    """Three non-negative fractions summing to 1, else a SatsegError. A train fraction
    of 0 is allowed: ``0,0,1`` builds a test-only dataset (a published test set built on
    its own for ``satseg evaluate --data``), normalised by the run at evaluation time."""
    try:
        f = tuple(float(x) for x in fractions)
    except (TypeError, ValueError):
        f = ()
    text = ",".join(str(x) for x in fractions) if isinstance(fractions, (list, tuple)) \
        else repr(fractions)
    if (len(f) != 3 or any(not math.isfinite(x) or x < 0 for x in f)
            or not math.isclose(sum(f), 1.0, abs_tol=1e-6)):
        raise SatsegError(f"--split {text}: give three non-negative fractions "
                          "train,validation,test that sum to 1, e.g. 0.7,0.15,0.15")
    return f  # type: ignore[return-value]


def infer_stride(rows: Sequence[int], cols: Sequence[int]) -> int:
    """The patch grid step: the gcd of all offsets from the first row/column (1 if none)."""
    return _offset_gcd(rows, cols) or 1


def _offset_gcd(rows: Sequence[int], cols: Sequence[int]) -> int:
    """gcd of all offsets from the first row/column; 0 for a single position."""
    r0, c0 = min(rows), min(cols)
    g = 0
    for r in rows:
        g = math.gcd(g, r - r0)
    for c in cols:
        g = math.gcd(g, c - c0)
    return g


def _grid_positions(rows: Sequence[int], cols: Sequence[int], stride: int) -> int:
    """Patch positions of the grid spanned by the offsets (holes included)."""
    return ((max(rows) - min(rows)) // stride + 1) * ((max(cols) - min(cols)) // stride + 1)


def default_block_size(rows: Sequence[int], cols: Sequence[int], stride: int,
                       target_blocks: int = TARGET_BLOCKS) -> int:
    """Block side (in patch positions) giving about ``target_blocks`` blocks on the grid."""
    return max(1, round(math.sqrt(_grid_positions(rows, cols, stride) / target_blocks)))


def block_keys(rows: Sequence[int], cols: Sequence[int], stride: int, block_size: int
               ) -> list[tuple[int, int]]:
    """(block row, block col) of each patch: its offset from the grid origin // span."""
    span = stride * block_size
    r0, c0 = min(rows), min(cols)
    return [((r - r0) // span, (c - c0) // span) for r, c in zip(rows, cols)]


def _objective(counts: np.ndarray, targets: np.ndarray, eligible: list[int]) -> float:
    return float(sum((counts[s] - targets[s]) ** 2 for s in eligible))


def _apportion(sizes: list[int], fractions: tuple[float, float, float],
               rng: np.random.Generator) -> np.ndarray:
    """Split index (0..2) for each group of ``sizes`` patches, close to the fractions."""
    n_groups = len(sizes)
    targets = np.asarray(fractions) * sum(sizes)
    eligible = [s for s in range(3) if fractions[s] > 0]
    # Random order, then largest first (stable: equal sizes keep the random order).
    order = sorted(rng.permutation(n_groups).tolist(), key=lambda g: -sizes[g])
    where = np.full(n_groups, -1)
    counts = np.zeros(3)
    for g in order:
        s = max(eligible, key=lambda s: targets[s] - counts[s])
        where[g] = s
        counts[s] += sizes[g]
    members = {s: [g for g in order if where[g] == s] for s in range(3)}

    def move(g: int, a: int, b: int) -> None:
        members[a].remove(g)
        members[b].append(g)
        where[g] = b
        counts[a] -= sizes[g]
        counts[b] += sizes[g]

    # Every split with a non-zero fraction gets a group: take the smallest group of the
    # split furthest above its target that can spare one.
    for s in eligible:
        if not members[s]:
            donors = [t for t in eligible if len(members[t]) > 1]
            t = max(donors, key=lambda t: counts[t] - targets[t])
            move(min(members[t], key=lambda g: sizes[g]), t, s)

    # Local search: apply the best single move or pairwise swap while it helps.
    for _ in range(10_000):
        best, best_delta = None, -1e-9
        base = _objective(counts, targets, eligible)
        by_size = {s: {} for s in eligible}
        for s in eligible:
            for g in members[s]:
                by_size[s].setdefault(sizes[g], g)  # one representative per size
        for a in eligible:
            for b in eligible:
                if a == b:
                    continue
                for size_a, g in by_size[a].items():
                    if len(members[a]) > 1:
                        c = counts.copy()
                        c[a] -= size_a
                        c[b] += size_a
                        d = _objective(c, targets, eligible) - base
                        if d < best_delta:
                            best, best_delta = ("move", g, a, b), d
                    if a < b:
                        for size_b, h in by_size[b].items():
                            if size_b == size_a:
                                continue
                            c = counts.copy()
                            c[a] += size_b - size_a
                            c[b] += size_a - size_b
                            d = _objective(c, targets, eligible) - base
                            if d < best_delta:
                                best, best_delta = ("swap", g, h, a, b), d
        if best is None:
            break
        if best[0] == "move":
            move(best[1], best[2], best[3])
        else:
            _, g, h, a, b = best
            move(g, a, b)
            move(h, b, a)
    return where


def source_of(row: Mapping) -> str | None:
    """The row's source image key (index.csv column ``source``), None when absent/empty."""
    s = row.get("source")
    s = str(s).strip() if s is not None else ""
    return s or None


def patch_sources(records: Sequence[tuple], index_path: str) -> list[str] | None:
    """Source key per record (4th field), or None for a single-scene folder; a folder
    where only some rows name a source is refused (a mixed or hand-edited index)."""
    srcs = [r[3] for r in records]
    if all(s is None for s in srcs):
        return None
    blank = [r[0] for r in records if r[3] is None]
    if blank:
        raise SatsegError(f"{index_path}: {len(blank)} patch(es) have an empty 'source' (e.g. "
                          f"{blank[0]}) while others name their source image; re-run satseg "
                          "patches")
    return srcs  # type: ignore[return-value]


def _by_source(srcs: Sequence[str]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for i, s in enumerate(srcs):
        out.setdefault(s, []).append(i)
    return out


def no_source_column(flag: str, index_path: str) -> SatsegError:
    """The error for a split by source on a folder without sources (one scene)."""
    return SatsegError(f"{flag}: {index_path} has no 'source' column; only patches folders "
                       "written by satseg patches --images/--masks (several source images) "
                       "have one. For patches of one scene use --split-by block")


def _source_groups(srcs: list[str] | None, eligible: list[str], index_path: str
                   ) -> list[list[int]]:
    """``--split-by source``: one group of patch indices per source image, sorted by key."""
    if srcs is None:
        raise no_source_column("--split-by source", index_path)
    by_src = _by_source(srcs)
    if len(by_src) < len(eligible):
        raise SatsegError(
            f"--split-by source: only {len(by_src)} source image(s) in {index_path} for "
            f"{len(eligible)} non-empty splits ({', '.join(eligible)}); set unused "
            "--split fractions to 0 (e.g. --split 0.8,0,0.2) or use --split-by block")
    return [by_src[k] for k in sorted(by_src)]


def _per_source_block_keys(rows: list[int], cols: list[int], srcs: list[str],
                           stride: int | None, block_size: int | None
                           ) -> tuple[list[tuple], int, int]:
    """(block key of every patch, block size, grid step) when offsets restart in every
    source image: the grid and its blocks are per image, so no block spans two images."""
    by_src = _by_source(srcs)
    parts = {s: ([rows[i] for i in idx], [cols[i] for i in idx]) for s, idx in by_src.items()}
    g = 0
    for r, c in parts.values():
        g = math.gcd(g, _offset_gcd(r, c))
    step = stride or g or 1
    area = sum(_grid_positions(r, c, step) for r, c in parts.values())
    bs = block_size or max(1, round(math.sqrt(area / TARGET_BLOCKS)))
    keys: list[tuple] = [()] * len(rows)
    for s, idx in by_src.items():
        for i, k in zip(idx, block_keys(*parts[s], step, bs)):
            keys[i] = (s, *k)
    return keys, bs, step


def _block_groups(rows: list[int], cols: list[int], srcs: list[str] | None,
                  stride: int | None, block_size: int | None, eligible: list[str]
                  ) -> tuple[list[list[int]], int, int]:
    """``--split-by block``: (groups of patch indices, one per spatial block, in key
    order; block size; grid step)."""
    if block_size is not None and (not isinstance(block_size, int) or block_size < 1):
        raise SatsegError(f"--block-size {block_size!r}: must be a positive integer "
                          "(block side in patches)")
    if srcs is None:
        step = stride or infer_stride(rows, cols)
        bs = block_size or default_block_size(rows, cols, step)
        keys: list[tuple] = list(block_keys(rows, cols, step, bs))
    else:
        keys, bs, step = _per_source_block_keys(rows, cols, srcs, stride, block_size)
    by_key: dict[tuple, list[int]] = {}
    for i, key in enumerate(keys):
        by_key.setdefault(key, []).append(i)
    groups = [by_key[k] for k in sorted(by_key)]
    if len(groups) < len(eligible):
        hint = (f"use a smaller --block-size than {bs}" if block_size
                else "use --split-by random or make more patches")
        raise SatsegError(f"only {len(groups)} spatial block(s) of {bs}x{bs} patches for "
                          f"{len(eligible)} non-empty splits; {hint}")
    return groups, bs, step


def assign_splits(index_rows: Sequence[Mapping], fractions: Sequence[float] = (0.7, 0.15, 0.15),
                  seed: int = 0, method: str = "block", block_size: int | None = None, *,
                  stride: int | None = None, index_path: str = "index.csv"
                  ) -> tuple[dict[str, str], dict]:
    """Map every patch id to ``train``, ``validation`` or ``test``.

    ``index_rows``: index.csv rows (mappings with ``patch_id``, ``row``, ``col`` and, for
    folders of several source images, ``source``; values may be strings). ``method``:
    ``block`` (whole spatial blocks per split; with sources, blocks never span two
    images), ``random`` (patches independently) or ``source`` (whole source images per
    split, apportioned by patch count). ``block_size``: block side in patch positions
    (default: about 20 blocks over the grid, or over all images' grids together).
    ``stride``: the patch grid step in pixels (default: inferred from the offsets).
    ``index_path`` names the index in error messages. Returns ``(assignment, info)``
    where ``info`` records method, fractions, seed, block size and block count (and for
    ``source`` the source images of each split) for satseg_dataset.json.
    """
    fractions = check_fractions(fractions)
    if method not in METHODS:
        raise SatsegError(f"--split-by {method!r}: expected one of {', '.join(METHODS)}")
    records = sorted((str(r["patch_id"]), int(r["row"]), int(r["col"]), source_of(r))
                     for r in index_rows)
    n = len(records)
    eligible = [s for s, f in zip(SPLITS, fractions) if f > 0]
    if n < len(eligible):
        raise SatsegError(f"only {n} patch(es) for {len(eligible)} non-empty splits "
                          f"({', '.join(eligible)}); make more patches (smaller --size or "
                          "--stride in satseg patches) or set unused --split fractions to 0")
    ids = [r[0] for r in records]
    srcs = patch_sources(records, index_path)
    rng = np.random.default_rng(seed)
    info: dict = {"method": method, "fractions": list(fractions), "seed": int(seed),
                  "block_size": None, "num_blocks": None}
    if srcs is not None:
        info["num_sources"] = len(set(srcs))
    if method == "random":
        groups = [[i] for i in range(n)]
    elif method == "source":
        groups = _source_groups(srcs, eligible, index_path)
    else:
        groups, bs, step = _block_groups([r[1] for r in records], [r[2] for r in records],
                                         srcs, stride, block_size, eligible)
        info.update(block_size=bs, num_blocks=len(groups), stride=step)
    where = _apportion([len(g) for g in groups], fractions, rng)
    assignment = {ids[i]: SPLITS[int(where[gi])] for gi, g in enumerate(groups) for i in g}
    if method == "source":
        info["sources"] = sources_per_split(
            {srcs[g[0]]: SPLITS[int(where[gi])] for gi, g in enumerate(groups)})
    return dict(sorted(assignment.items())), info


def sources_per_split(split_of: Mapping[str, str]) -> dict[str, list[str]]:
    """Source key -> split, as the sorted source keys of each split (satseg_dataset.json)."""
    out: dict[str, list[str]] = {s: [] for s in SPLITS}
    for key in sorted(split_of):
        out[split_of[key]].append(key)
    return out


def split_counts(assignment: Mapping[str, str]) -> dict[str, int]:
    """Number of patches per split (all three splits, zeros included)."""
    counts = dict.fromkeys(SPLITS, 0)
    for s in assignment.values():
        counts[s] += 1
    return counts
