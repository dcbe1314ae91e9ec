"""Reading STAC Item dicts: acquisition dates, cloud cover, band common names, and the
local bbox/date filter.

Why apart from ``search``: ``download`` reads the same fields of items (which asset is
which band) without any catalogue client, and a static catalog is filtered with these
very functions, so an API search and a walked catalog agree on what matches.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

CLOUD_KEYS = ("eo:cloud_cover", "cloud_cover")  # the second: older, pre-extension name
DATE_FORMS = (
    (re.compile(r"^\d{4}$"), "%Y", "year"),
    (re.compile(r"^\d{4}-\d{2}$"), "%Y-%m", "month"),
    (re.compile(r"^\d{4}-\d{2}-\d{2}$"), "%Y-%m-%d", "day"),
)


def parse_instant(text: str, end: bool) -> datetime:
    """One side of an interval; a bare year/month/day covers the whole period (its
    start, or its last microsecond for ``end``), as pystac-client sends it."""
    t = text.strip()
    for rx, fmt, unit in DATE_FORMS:
        if rx.match(t):
            d = datetime.strptime(t, fmt).replace(tzinfo=UTC)
            if not end:
                return d
            if unit == "year":
                nxt = d.replace(year=d.year + 1)
            elif unit == "month":
                nxt = d.replace(year=d.year + d.month // 12, month=d.month % 12 + 1)
            else:
                nxt = d + timedelta(days=1)
            return nxt - timedelta(microseconds=1)
    t = re.sub(r"(\.\d{6})\d+", r"\1", t.replace("z", "Z"))  # nanoseconds -> micro
    if t.endswith("Z"):
        t = t[:-1] + "+00:00"
    d = datetime.fromisoformat(t)
    return d if d.tzinfo else d.replace(tzinfo=UTC)


def cloud_cover(item: dict) -> float | None:
    """The item's cloud cover in percent, or None when it reports none."""
    props = item.get("properties") or {}
    for k in CLOUD_KEYS:
        v = props.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
    return None


def item_datetime(item: dict) -> tuple[datetime, datetime] | None:
    """(start, end) of the item's acquisition (equal for an instant), None when unknown."""
    props = item.get("properties") or {}
    try:
        if props.get("datetime"):
            d = parse_instant(props["datetime"], end=False)
            return d, d
        if props.get("start_datetime") and props.get("end_datetime"):
            return (parse_instant(props["start_datetime"], end=False),
                    parse_instant(props["end_datetime"], end=True))
    except ValueError:
        return None
    return None


def common_names(asset: dict) -> list[str]:
    """``eo:common_name`` values of an asset: STAC 1.0 ``eo:bands[].common_name``, STAC
    1.1 ``bands[].eo:common_name``, or an asset-level ``eo:common_name``."""
    names = []
    for b in asset.get("eo:bands") or []:
        if isinstance(b, dict) and b.get("common_name"):
            names.append(str(b["common_name"]))
    for b in asset.get("bands") or []:
        if isinstance(b, dict) and b.get("eo:common_name"):
            names.append(str(b["eo:common_name"]))
    if asset.get("eo:common_name"):
        names.append(str(asset["eo:common_name"]))
    return list(dict.fromkeys(names))


def asset_labels(item: dict) -> list[str]:
    """``B13(blue)``-style labels: asset key with its common name(s) when it has any."""
    out = []
    for key, a in (item.get("assets") or {}).items():
        names = common_names(a if isinstance(a, dict) else {})
        out.append(f"{key}({','.join(names)})" if names else key)
    return out


def _bbox_of(item: dict) -> list[float] | None:
    b = item.get("bbox")
    if b and len(b) in (4, 6):
        return [b[0], b[1], b[-3], b[-2]] if len(b) == 6 else list(b)
    return None


def _overlaps(a, b) -> bool:
    return a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]


def local_match(item: dict, bbox, when) -> bool:
    """The item meets ``bbox`` and the ``when`` interval (the filter applied here to a
    static catalog, and after an API search as well)."""
    if bbox is not None:
        ib = _bbox_of(item)
        if ib is None or not _overlaps(ib, bbox):
            return False
    if when is not None:
        t = item_datetime(item)
        if t is None:
            return False
        start, stop = when
        if (start is not None and t[1] < start) or (stop is not None and t[0] > stop):
            return False
    return True
