"""Train/validation/test assignment of patches: random, or by spatial blocks.

Why blocks: neighbouring patches share texture, objects and (with overlap) pixels; a
random split puts neighbours in train and test and inflates test scores. The block
split groups the patch grid into ``block_size × block_size`` blocks and assigns whole
blocks, so two patches of the same block are always in the same split.
"""

from __future__ import annotations

import math

import numpy as np

from satseg_jax.errors import SatsegError

SPLITS = ("train", "validation", "test")


def check_fractions(fractions) -> tuple[float, float, float]:
    f = tuple(float(x) for x in fractions)
    if len(f) != 3 or any(x < 0 for x in f) or not math.isclose(sum(f), 1.0, abs_tol=1e-6):
        raise SatsegError(f"--split {','.join(map(str, fractions))}: give three non-negative "
                          "fractions (train,validation,test) that sum to 1, e.g. 0.7,0.15,0.15")
    if f[0] == 0:
        raise SatsegError("--split: the train fraction must be above 0")
    return f  # type: ignore[return-value]


def default_block_size(rows: list[int], cols: list[int], stride: int, target_blocks: int = 20
                       ) -> int:
    """Block side (in patches) giving about ``target_blocks`` blocks over the patch grid."""
    n_r = (max(rows) - min(rows)) // stride + 1
    n_c = (max(cols) - min(cols)) // stride + 1
    return max(1, round(math.sqrt(n_r * n_c / target_blocks)))


def block_keys(rows: list[int], cols: list[int], stride: int, block_size: int) -> list[tuple]:
    span = stride * block_size
    return [(r // span, c // span) for r, c in zip(rows, cols)]


def assign_splits(ids: list[str], rows: list[int], cols: list[int], fractions, seed: int = 0,
                  method: str = "block", stride: int = 1, block_size: int | None = None
                  ) -> tuple[dict[str, str], dict]:
    """Map each patch id to a split; also return how (method, block size, seed)."""
    fractions = check_fractions(fractions)
    n = len(ids)
    rng = np.random.default_rng(seed)
    wanted = [s for s, f in zip(SPLITS, fractions) if f > 0]
    if n < len(wanted):
        raise SatsegError(f"only {n} patches for {len(wanted)} non-empty splits; make more "
                          "patches (smaller --size or --stride) or change --split")
    if method == "random":
        groups = [[i] for i in rng.permutation(n)]
        info = {"method": "random"}
    elif method == "block":
        bs = block_size or default_block_size(rows, cols, stride)
        keys = block_keys(rows, cols, stride, bs)
        by_key: dict[tuple, list[int]] = {}
        for i, k in enumerate(keys):
            by_key.setdefault(k, []).append(i)
        ordered = sorted(by_key)
        groups = [by_key[ordered[j]] for j in rng.permutation(len(ordered))]
        if len(groups) < len(wanted):
            raise SatsegError(f"only {len(groups)} spatial blocks for {len(wanted)} splits; "
                              "use a smaller --block-size")
        info = {"method": "block", "block_size": bs, "num_blocks": len(groups)}
    else:
        raise SatsegError(f"--split-by {method!r}: expected random or block")
    # Greedy by deficit: each group goes to the split furthest below its target count.
    targets = np.array(fractions) * n
    counts = np.zeros(3)
    out: dict[str, str] = {}
    for g in groups:
        deficit = np.where(targets > 0, (targets - counts) / np.maximum(targets, 1e-9), -np.inf)
        s = int(np.argmax(deficit))
        counts[s] += len(g)
        for i in g:
            out[ids[i]] = SPLITS[s]
    info.update({"fractions": list(fractions), "seed": seed})
    return out, info
