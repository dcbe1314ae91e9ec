"""An encoder weight directory (``ENC_DIR``): Orbax-saved variables plus a JSON card.

Layout::

    ENC_DIR/variables/   Orbax (StandardCheckpointer) tree {'params': ..., 'batch_stats': ...}
    ENC_DIR/card.json    source, arch, input bands in order, normalisation, licence,
                         the file it came from (name, SHA-256), what was left out, and a
                         CRC-32 of every array

Why a card: the most frequent fine-tuning mistake with remote-sensing weights is feeding
them other bands, another band order or another scaling than they were trained on. The
card carries that contract beside the weights, and training checks the dataset against
it. Why digests: a damaged weight file must be refused, not fine-tuned from
(``read_encoder_dir`` recomputes them).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from satseg_jax.errors import SatsegError

CARD = "card.json"
VARIABLES = "variables"
CARD_VERSION = 1
CARD_FIELDS = ("version", "arch", "source", "bands", "mean", "std", "input_scale", "licence",
               "file", "file_sha256", "wrapper", "prefix", "dropped", "arrays", "digests")


def _digests(variables: dict[str, Any]) -> dict[str, str]:
    from satseg_jax.checkpoints import digests

    return digests(variables)


def write_encoder_dir(out: str | Path, variables: dict[str, Any], card: dict[str, Any],
                      overwrite: bool = False) -> Path:
    """Write ``variables`` and ``card`` (fields of CARD_FIELDS but version/arrays/digests)
    to ``out`` atomically: a half-written directory never appears under its name."""
    import orbax.checkpoint as ocp

    from satseg_jax.io_utils import atomic_dir

    out = Path(out)
    variables = {c: v for c, v in variables.items() if v}
    full = {"version": CARD_VERSION, **card,
            "arrays": int(sum(1 for _ in _leaves(variables))),
            "digests": _digests(variables)}
    unknown = sorted(set(full) - set(CARD_FIELDS))
    if unknown:
        raise ValueError(f"unknown card fields {unknown}")
    with atomic_dir(out, overwrite=overwrite) as tmp:
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save((tmp / VARIABLES).absolute(), variables)
        checkpointer.wait_until_finished()
        checkpointer.close()
        (tmp / CARD).write_text(json.dumps(full, indent=2) + "\n")
    return out


def _leaves(tree: Any):
    if isinstance(tree, dict):
        for v in tree.values():
            yield from _leaves(v)
    else:
        yield tree


def read_card(enc_dir: str | Path) -> dict[str, Any]:
    """The card of an encoder directory, checked for the fields training relies on."""
    path = Path(enc_dir) / CARD
    if not path.is_file():
        raise SatsegError(f"{enc_dir}: not an encoder weight directory (no {CARD}); make one "
                          "with 'satseg weights import'")
    try:
        card = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SatsegError(f"{path}: unreadable weight card ({e}); import the weights "
                          "again") from None
    missing = [f for f in CARD_FIELDS if f not in card]
    if missing or card.get("version") != CARD_VERSION:
        raise SatsegError(f"{path}: weight card version {card.get('version')!r} lacks "
                          f"{missing}; import the weights again with this satseg")
    return card


def read_encoder_dir(enc_dir: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(variables, card)`` of an encoder directory, every array verified against the
    card's CRC-32; a mismatch or unreadable array raises SatsegError naming the directory."""
    import orbax.checkpoint as ocp

    card = read_card(enc_dir)
    path = (Path(enc_dir) / VARIABLES).absolute()
    try:
        checkpointer = ocp.StandardCheckpointer()
        variables = checkpointer.restore(path)
        checkpointer.close()
    except Exception as e:  # Orbax/tensorstore raise many types for damaged files
        raise SatsegError(f"{enc_dir}: cannot read the encoder weights ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:200]}); import them again") from None
    variables = {c: _as_numpy(v) for c, v in variables.items()}
    got = _digests(variables)
    bad = sorted(k for k in set(got) | set(card["digests"])
                 if got.get(k) != card["digests"].get(k))
    if bad:
        raise SatsegError(f"{enc_dir}: {len(bad)} weight arrays do not match their card "
                          f"digests (first: {bad[0]}); the directory is damaged, import the "
                          "weights again")
    return variables, card


def _as_numpy(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _as_numpy(v) for k, v in tree.items()}
    return np.asarray(tree)
