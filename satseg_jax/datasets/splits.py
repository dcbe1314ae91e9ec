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
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from satseg_jax.errors import SatsegError

SPLITS = ("train", "validation", "test")
METHODS = ("block", "random")
TARGET_BLOCKS = 20


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    """Three non-negative fractions summing to 1 (train > 0), else a SatsegError."""
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
    if f[0] == 0:
        raise SatsegError(f"--split {text}: the train fraction must be above 0 (band "
                          "statistics and training need train patches)")
    return f  # type: ignore[return-value]


def infer_stride(rows: Sequence[int], cols: Sequence[int]) -> int:
    """The patch grid step: the gcd of all offsets from the first row/column (1 if none)."""
    r0, c0 = min(rows), min(cols)
    g = 0
    for r in rows:
        g = math.gcd(g, r - r0)
    for c in cols:
        g = math.gcd(g, c - c0)
    return g or 1


def default_block_size(rows: Sequence[int], cols: Sequence[int], stride: int,
                       target_blocks: int = TARGET_BLOCKS) -> int:
    """Block side (in patch positions) giving about ``target_blocks`` blocks on the grid."""
    n_r = (max(rows) - min(rows)) // stride + 1
    n_c = (max(cols) - min(cols)) // stride + 1
    return max(1, round(math.sqrt(n_r * n_c / target_blocks)))


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


def assign_splits(index_rows: Sequence[Mapping], fractions: Sequence[float] = (0.7, 0.15, 0.15),
                  seed: int = 0, method: str = "block", block_size: int | None = None, *,
                  stride: int | None = None) -> tuple[dict[str, str], dict]:
    """Map every patch id to ``train``, ``validation`` or ``test``.

    ``index_rows``: index.csv rows (mappings with ``patch_id``, ``row``, ``col``; values
    may be strings). ``method``: ``block`` (whole spatial blocks per split) or ``random``
    (patches independently). ``block_size``: block side in patch positions (default:
    about 20 blocks over the grid). ``stride``: the patch grid step in pixels (default:
    inferred from the offsets). Returns ``(assignment, info)`` where ``info`` records
    method, fractions, seed, block size and block count for satseg_dataset.json.
    """
    fractions = check_fractions(fractions)
    if method not in METHODS:
        raise SatsegError(f"--split-by {method!r}: expected one of {', '.join(METHODS)}")
    records = sorted((str(r["patch_id"]), int(r["row"]), int(r["col"])) for r in index_rows)
    n = len(records)
    eligible = [s for s, f in zip(SPLITS, fractions) if f > 0]
    if n < len(eligible):
        raise SatsegError(f"only {n} patch(es) for {len(eligible)} non-empty splits "
                          f"({', '.join(eligible)}); make more patches (smaller --size or "
                          "--stride in satseg patches) or set unused --split fractions to 0")
    ids = [r[0] for r in records]
    rows = [r[1] for r in records]
    cols = [r[2] for r in records]
    rng = np.random.default_rng(seed)
    info: dict = {"method": method, "fractions": list(fractions), "seed": int(seed),
                  "block_size": None, "num_blocks": None}
    if method == "random":
        groups = [[i] for i in range(n)]
    else:
        if block_size is not None and (not isinstance(block_size, int) or block_size < 1):
            raise SatsegError(f"--block-size {block_size!r}: must be a positive integer "
                              "(block side in patches)")
        step = stride or infer_stride(rows, cols)
        bs = block_size or default_block_size(rows, cols, step)
        by_key: dict[tuple[int, int], list[int]] = {}
        for i, key in enumerate(block_keys(rows, cols, step, bs)):
            by_key.setdefault(key, []).append(i)
        groups = [by_key[k] for k in sorted(by_key)]
        if len(groups) < len(eligible):
            hint = (f"use a smaller --block-size than {bs}" if block_size
                    else "use --split-by random or make more patches")
            raise SatsegError(f"only {len(groups)} spatial block(s) of {bs}x{bs} patches for "
                              f"{len(eligible)} non-empty splits; {hint}")
        info.update(block_size=bs, num_blocks=len(groups), stride=step)
    where = _apportion([len(g) for g in groups], fractions, rng)
    assignment = {ids[i]: SPLITS[int(where[gi])] for gi, g in enumerate(groups) for i in g}
    return dict(sorted(assignment.items())), info


def split_counts(assignment: Mapping[str, str]) -> dict[str, int]:
    """Number of patches per split (all three splits, zeros included)."""
    counts = dict.fromkeys(SPLITS, 0)
    for s in assignment.values():
        counts[s] += 1
    return counts
