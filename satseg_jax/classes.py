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

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from satseg_jax.errors import SatsegError

IGNORE_LABEL = 255


@dataclass(frozen=True)
class ClassInfo:
    id: int
    name: str
    colour: tuple[int, int, int]
    value: int


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

    def to_json(self) -> list[dict]:
        out: list[dict] = [
            {"id": c.id, "name": c.name, "colour": _hex(c.colour), "value": c.value}
            for c in self.classes
        ]
        for v in self.ignore_values:
            out.append({"name": f"ignore_{v}", "value": v, "ignore": True})
        for col in self.ignore_colours:
            out.append({"name": f"ignore_{_hex(col)[1:]}", "colour": _hex(col), "ignore": True})
        return out

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2) + "\n")

    def value_to_id(self, values: np.ndarray, what: str = "label raster") -> np.ndarray:
        """Map source label values to class ids (uint8); ignore values -> 255.

        Raises SatsegError naming each undeclared value and its pixel count: labels are
        never silently remapped.
        """
        values = np.asarray(values)
        out = np.full(values.shape, IGNORE_LABEL, dtype=np.uint8)
        known = np.zeros(values.shape, dtype=bool)
        for c in self.classes:
            m = values == c.value
            out[m] = c.id
            known |= m
        for v in self.ignore_values:
            known |= values == v
        if not known.all():
            bad, counts = np.unique(values[~known], return_counts=True)
            listing = ", ".join(f"{b} ({n} px)" for b, n in zip(bad.tolist(), counts.tolist()))
            raise SatsegError(
                f"{what}: values not declared in {self.source}: {listing}. "
                f"Add them to {self.source} (as a class or with \"ignore\": true)."
            )
        return out


def _hex(c: tuple[int, int, int]) -> str:
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
        if colour is None:
            colour = _DEFAULT_PALETTE[cid % len(_DEFAULT_PALETTE)]
        value = int(e.get("value", cid))
        classes.append(ClassInfo(id=cid, name=str(e["name"]), colour=colour, value=value))
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
