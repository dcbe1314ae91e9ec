"""Class definitions (``classes.json``): ids, names, colours, source values, ignore entries.

Format: a JSON list, one object per class::

    [{"id": 0, "name": "water", "colour": "#1f78b4"},
     {"id": 1, "name": "forest", "colour": [51, 160, 44], "value": 7},
     {"name": "unlabelled", "colour": "#000000", "ignore": true}]

- ``colour`` or ``color``: ``"#rrggbb"`` or ``[r, g, b]``.
- ``value``: the value in source label rasters when it differs from ``id``.
- ``ignore: true``: pixels with that value/colour become the ignore label 255 (never
  counted in losses or metrics). Ignore entries need no ``id``.

Class ids must be 0..K-1 without gaps, because they index the model's logits and the
confusion matrix. 255 is reserved for ignore.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from satseg_jax.errors import SatsegError

IGNORE_LABEL = 255


class BandsAndClasses:
    """Counts and names read off a card's ``bands`` and ``classes`` ({"id", "name",
    "colour"} per class id): shared by a run's card and an exported model's."""

    bands: tuple[str, ...]
    classes: tuple[dict, ...]

    @property
    def num_bands(self) -> int:
        return len(self.bands)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(str(c["name"]) for c in self.classes)


@dataclass(frozen=True)
class ClassInfo:
    id: int
    name: str
    colour: tuple[int, int, int]
    value: int
    colour_declared: bool = True  # False: a default palette colour, not a mask colour


@dataclass(frozen=True)
class ClassSet:
    """The classes of a dataset, in id order, plus the source values mapped to ignore."""

    classes: tuple[ClassInfo, ...]
    ignore_values: tuple[int, ...] = ()
    ignore_colours: tuple[tuple[int, int, int], ...] = ()
    source: str = "<memory>"
    _lut: np.ndarray | None = field(default=None, compare=False, repr=False)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]

    @property
    def colours(self) -> list[tuple[int, int, int]]:
        return [c.colour for c in self.classes]

    @property
    def colours_declared(self) -> bool:
        """Every class names its colour: colour-coded masks can be decoded."""
        return all(c.colour_declared for c in self.classes)

    def to_json(self) -> list[dict]:
        out: list[dict] = [
            {"id": c.id, "name": c.name, "colour": hex_colour(c.colour), "value": c.value}
            for c in self.classes
        ]
        for v in self.ignore_values:
            out.append({"name": f"ignore_{v}", "value": v, "ignore": True})
        for col in self.ignore_colours:
            out.append({"name": f"ignore_{hex_colour(col)[1:]}", "colour": hex_colour(col),
                        "ignore": True})
        return out

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2) + "\n")

    def value_to_id(self, values: np.ndarray, what: str = "label raster",
                    tolerance: int | None = None) -> np.ndarray:
        """Map source label values to class ids (uint8); ignore values -> 255.

        Raises SatsegError naming each undeclared value and its pixel count: labels are
        never silently remapped. ``tolerance`` (for lossy JPEG masks only) maps a value to
        the nearest declared value at most that far away.
        """
        values = np.asarray(values)
        if not tolerance and values.dtype.kind in "ui" and values.dtype.itemsize <= 2:
            # Fast path for 8/16-bit labels (every label raster seen so far): one table
            # lookup per pixel instead of a sort. Signed values index through their
            # unsigned view. Anything undeclared falls through to the reporting path.
            ids, known = self._value_luts(values.dtype.str)
            idx = values.view(f"u{values.dtype.itemsize}")
            if known[idx].all():
                return ids[idx]
        uniq, inv = np.unique(values, return_inverse=True)
        return self.lookup("values", uniq, inv.reshape(values.shape), what, tolerance)

    @functools.lru_cache(maxsize=8)  # noqa: B019  (frozen, hashable; a handful of dtypes)
    def _value_luts(self, dtype: str) -> tuple[np.ndarray, np.ndarray]:
        """Per-dtype tables (class id, declared?) indexed by the unsigned view of a value."""
        dt = np.dtype(dtype)
        n = 1 << (8 * dt.itemsize)
        ids = np.full(n, IGNORE_LABEL, np.uint8)
        known = np.zeros(n, bool)
        info = np.iinfo(dt)
        for value, cid in self._table("values", "label raster").items():
            if info.min <= value <= info.max:
                pos = int(np.array(value, dt).view(f"u{dt.itemsize}"))
                ids[pos], known[pos] = cid, True
        return ids, known

    def colour_to_id(self, rgb: np.ndarray, what: str = "mask",
                     tolerance: int | None = None) -> np.ndarray:
        """Map an (..., 3) uint8 colour array to class ids (uint8); ignore colours -> 255.

        Colour-coded masks (DeepGlobe, LandCover.ai previews, palette PNGs) carry one RGB
        colour per class. An undeclared colour raises SatsegError listing each one with
        its pixel count. ``tolerance`` (lossy JPEG masks only) accepts the nearest
        declared colour whose largest per-channel difference is at most that.
        """
        rgb = np.asarray(rgb)
        uniq, inv = np.unique(pack_colours(rgb), return_inverse=True)
        return self.lookup("colours", uniq, inv.reshape(rgb.shape[:-1]), what, tolerance)

    def check_declared(self, kind: str, uniq: np.ndarray, counts: np.ndarray, what: str,
                       tolerance: int | None = None) -> None:
        """Raise the undeclared-values error for distinct ``uniq`` values (``kind``
        "values") or packed colours ("colours") seen with ``counts`` pixels, e.g. totals
        gathered over a whole file strip by strip."""
        self.lookup(kind, np.asarray(uniq), np.arange(len(uniq)), what, tolerance,
                     counts=np.asarray(counts))

    def _table(self, kind: str, what: str) -> dict:
        if kind == "values":
            table = {c.value: c.id for c in self.classes}
            table.update({v: IGNORE_LABEL for v in self.ignore_values})
            return table
        colours = [c.colour for c in self.classes] + list(self.ignore_colours)
        if len(set(colours)) != len(colours):
            dup = sorted({hex_colour(c) for c in colours if colours.count(c) > 1})
            raise SatsegError(f"{self.source}: two entries share the colour {', '.join(dup)}; "
                              f"colour-coded masks ({what}) cannot tell them apart")
        table = {_pack(c.colour): c.id for c in self.classes}
        table.update({_pack(c): IGNORE_LABEL for c in self.ignore_colours})
        return table

    def lookup(self, kind: str, uniq: np.ndarray, inv: np.ndarray, what: str,
                tolerance: int | None, counts: np.ndarray | None = None) -> np.ndarray:
        """Shared by value_to_id and colour_to_id: one table lookup per distinct value."""
        table = self._table(kind, what)
        fmt, dist = (str, _value_dist) if kind == "values" else (_colour_hex, _colour_dist)
        ids = np.empty(len(uniq), np.uint8)
        bad = []
        for j, k in enumerate(uniq.tolist()):
            if k in table:
                ids[j] = table[k]
                continue
            if tolerance and k < 1 << 24:
                d, best = min((dist(k, t), t) for t in table)
                if d <= tolerance:
                    ids[j] = table[best]
                    continue
            bad.append(j)
        if bad:
            if counts is None:
                counts = np.bincount(inv.ravel(), minlength=len(uniq))
            order = sorted(bad, key=lambda j: -counts[j])
            listing = ", ".join(f"{fmt(uniq[j].item())} ({counts[j]} px)" for j in order[:20])
            more = f" and {len(order) - 20} more" if len(order) > 20 else ""
            near = f" within --colour-tolerance {tolerance}" if tolerance else ""
            raise SatsegError(
                f"{what}: {kind} not declared{near} in {self.source}: {listing}{more}. "
                f"Add them to {self.source} (as a class or with \"ignore\": true)."
            )
        return ids[inv]


def pack_colours(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) colours -> (...) uint32 keys 0xRRGGBB (one value per colour)."""
    rgb = np.asarray(rgb)
    return ((rgb[..., 0].astype(np.uint32) << 16) | (rgb[..., 1].astype(np.uint32) << 8)
            | rgb[..., 2].astype(np.uint32))


def _pack(c: tuple[int, int, int]) -> int:
    return (c[0] << 16) | (c[1] << 8) | c[2]


def _unpack(k: int) -> tuple[int, int, int]:
    return ((k >> 16) & 255, (k >> 8) & 255, k & 255)


def _colour_hex(k: int) -> str:
    if k >= 1 << 24:  # see raster.masks.palette_lut
        return f"palette index {k - (1 << 24)} (not in the colour table)"
    return hex_colour(_unpack(k))


def _value_dist(a: int, b: int) -> int:
    return abs(int(a) - int(b))


def _colour_dist(a: int, b: int) -> int:
    """Largest per-channel difference: JPEG noise moves each channel a few levels."""
    return max(abs(x - y) for x, y in zip(_unpack(a), _unpack(b)))


def hex_colour(c: tuple[int, int, int]) -> str:
    """(r, g, b) -> '#rrggbb'."""
    return "#{:02x}{:02x}{:02x}".format(*c)


def parse_colour(value, where: str) -> tuple[int, int, int]:
    if isinstance(value, str):
        s = value.strip().lstrip("#")
        if len(s) == 6:
            try:
                return (int(s[0:2], 16), int(s[2:4], 16), int(s[4:6], 16))
            except ValueError:
                pass
    elif isinstance(value, (list, tuple)) and len(value) == 3:
        if all(isinstance(x, int) and 0 <= x <= 255 for x in value):
            return (int(value[0]), int(value[1]), int(value[2]))
    raise SatsegError(f"{where}: colour {value!r} is not '#rrggbb' or [r, g, b] with 0..255")


_DEFAULT_PALETTE = [
    (31, 120, 180), (51, 160, 44), (178, 223, 138), (255, 127, 0), (227, 26, 28),
    (106, 61, 154), (177, 89, 40), (166, 206, 227), (251, 154, 153), (253, 191, 111),
]


def classes_from_list(entries: list, source: str = "<memory>") -> ClassSet:
    """Validate a parsed classes.json list and build a ClassSet."""
    if not isinstance(entries, list) or not entries:
        raise SatsegError(f"{source}: expected a non-empty JSON list of class objects")
    classes: list[ClassInfo] = []
    ignore_values: list[int] = []
    ignore_colours: list[tuple[int, int, int]] = []
    for i, e in enumerate(entries):
        where = f"{source} entry {i}"
        if not isinstance(e, dict):
            raise SatsegError(f"{where}: expected an object like {{\"id\": 0, \"name\": ...}}")
        colour_raw = e.get("colour", e.get("color"))
        colour = parse_colour(colour_raw, where) if colour_raw is not None else None
        if e.get("ignore", False):
            if "value" in e:
                ignore_values.append(int(e["value"]))
            if colour is not None:
                ignore_colours.append(colour)
            if "value" not in e and colour is None:
                raise SatsegError(f"{where}: an ignore entry needs a \"value\" or a \"colour\"")
            continue
        if "id" not in e or "name" not in e:
            raise SatsegError(f"{where}: a class needs \"id\" and \"name\"")
        cid = e["id"]
        if not isinstance(cid, int) or not 0 <= cid < IGNORE_LABEL:
            raise SatsegError(f"{where}: id {cid!r} must be an integer in 0..254")
        declared = colour is not None
        if colour is None:
            colour = _DEFAULT_PALETTE[cid % len(_DEFAULT_PALETTE)]
        value = e.get("value", cid)
        if not isinstance(value, int) or isinstance(value, bool):
            raise SatsegError(f"{where}: value {value!r} must be an integer (the class's value "
                              "in source masks)")
        classes.append(ClassInfo(id=cid, name=str(e["name"]), colour=colour, value=value,
                                 colour_declared=declared))
    classes.sort(key=lambda c: c.id)
    ids = [c.id for c in classes]
    if ids != list(range(len(ids))):
        raise SatsegError(
            f"{source}: class ids must be 0..K-1 without gaps or repeats, got {ids}"
        )
    values = [c.value for c in classes] + ignore_values
    if len(set(values)) != len(values):
        raise SatsegError(f"{source}: two entries share the same source value: {values}")

    return ClassSet(tuple(classes), tuple(ignore_values), tuple(ignore_colours), source)


def load_classes(path: str | Path) -> ClassSet:
    """Read and validate a classes.json file (errors name the file and the entry)."""
    path = Path(path)
    try:
        entries = json.loads(path.read_text())
    except FileNotFoundError:
        raise SatsegError(f"{path}: classes file not found") from None
    except json.JSONDecodeError as e:
        raise SatsegError(f"{path}: not valid JSON ({e})") from None
    return classes_from_list(entries, source=str(path))
