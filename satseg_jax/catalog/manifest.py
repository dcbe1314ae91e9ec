"""``DIR/manifest.json``: what ``satseg download`` fetched, so later steps need no typing.

One entry per file: item id, asset key, ``eo:common_name``, source URL (query string and
credentials removed), bytes, sha256 checksum (multihash hex, as STAC's
``file:checksum``), datetime, CRS, and the window read (null for a whole file). The
manifest is rewritten atomically after every completed file, so an interrupted download
keeps an accurate record of what is complete, and ``satseg compose --item DIR/<item>``
can map band names to files.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

from satseg_jax.errors import SatsegError

MANIFEST = "manifest.json"
VERSION = 1
# multihash codes STAC's file:checksum uses (https://multiformats.io/multihash/)
_MULTIHASH = {0x12: ("sha256", 32), 0x13: ("sha512", 64), 0x11: ("sha1", 20),
              0xD5: ("md5", 16)}


def parse_multihash(text: str) -> tuple[str, str]:
    """``"1220<hex>"`` -> (``"sha256"``, hex digest); SatsegError for unknown codes."""
    try:
        raw = bytes.fromhex(text)
        code, length, digest = raw[0], raw[1], raw[2:]
        name, size = _MULTIHASH[code]
        if length != size or len(digest) != size:
            raise ValueError
    except (ValueError, KeyError, IndexError):
        raise SatsegError(f"file:checksum {text!r} is not a multihash this tool knows "
                          "(sha2-256, sha2-512, sha1, md5)") from None
    return name, digest.hex()


def multihash_sha256(digest_hex: str) -> str:
    return "1220" + digest_hex


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


class Manifest:
    """Thread-safe manifest of one download folder (entries keyed by item and asset)."""

    def __init__(self, root: Path, catalog: str | None = None) -> None:
        self.root = Path(root)
        self.path = self.root / MANIFEST
        self.lock = threading.Lock()
        self.data = {"version": VERSION, "catalog": catalog, "files": []}
        if self.path.exists():
            try:
                old = json.loads(self.path.read_text())
                if old.get("version") == VERSION:
                    self.data["files"] = list(old.get("files", []))
                    self.data["catalog"] = catalog or old.get("catalog")
            except json.JSONDecodeError:
                pass  # rewritten from the files' state below

    def entry(self, item: str, asset: str) -> dict | None:
        for e in self.data["files"]:
            if e["item"] == item and e["asset"] == asset:
                return e
        return None

    def record(self, entry: dict) -> None:
        with self.lock:
            self.data["files"] = [e for e in self.data["files"]
                                  if (e["item"], e["asset"]) != (entry["item"], entry["asset"])]
            self.data["files"].append(entry)
            self.data["files"].sort(key=lambda e: (e["item"], e["asset"]))
            tmp = self.path.with_name("." + MANIFEST + ".tmp")
            tmp.write_text(json.dumps(self.data, indent=2) + "\n")
            tmp.replace(self.path)


def item_files(item_dir: Path, bands: list[str]) -> list[Path]:
    """The downloaded files of ``item_dir`` for ``bands`` (asset keys or common names),
    in that order, from the manifest one folder up."""
    item_dir = Path(item_dir)
    path = item_dir.parent / MANIFEST
    if not path.exists():
        raise SatsegError(f"{item_dir}: no {MANIFEST} in {item_dir.parent}; --item takes a "
                          "folder written by satseg download (DIR/<item id>)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise SatsegError(f"{path}: not valid JSON ({e}); re-run satseg download") from None
    item = item_dir.name
    entries = [e for e in data.get("files", []) if e.get("item") == item]
    if not entries:
        raise SatsegError(f"{path}: no downloaded files for item {item!r}; re-run satseg "
                          "download for it")
    out = []
    for b in bands:
        hits = [e for e in entries if e["asset"] == b] or \
            [e for e in entries if (e.get("common_name") or "").lower() == b.lower()]
        if len(hits) != 1:
            have = ", ".join(f"{e['asset']}({e.get('common_name') or '-'})" for e in entries)
            what = "matches several assets" if hits else "is not among the downloaded assets"
            raise SatsegError(f"{item_dir}: band {b!r} {what}: {have}; name asset keys, or "
                              "download the missing band")
        f = item_dir.parent / hits[0]["path"]
        if not f.exists():
            raise SatsegError(f"{f}: listed in {path} but missing; re-run satseg download")
        out.append(f)
    return out
