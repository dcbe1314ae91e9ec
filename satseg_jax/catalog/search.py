"""Find scenes in a STAC catalogue: ``satseg search``.

Why STAC: INPE's image catalogue (DGI) and the Brazil Data Cube answer as STAC APIs, as
do most other providers, so one client (pystac-client) covers them all; a static STAC
catalog on disk (or at a URL without item search) is walked with pystac and filtered
here, with the same filters and output.

What a user gets: the matching items as plain STAC Item dicts (asset hrefs absolute),
a table (id, date, cloud cover, assets with their ``eo:common_name``) and, with
``--out``, a STAC ItemCollection that ``satseg download --items`` reads.

Cloud cover (``--max-cloud N``): items with ``eo:cloud_cover`` <= N. The Query extension
is sent when the API declares it (less to transfer), and the filter is always applied
here as well, because APIs differ in what they do with a query they only partly
support. An item that reports no cloud cover is dropped when ``--max-cloud`` is given
(nothing shows it meets the limit; the count is reported) and kept otherwise.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from satseg_jax.catalog.aoi import geometry_bounds
from satseg_jax.catalog.auth import TOKEN_ENV, public_url, redact
from satseg_jax.catalog.items import (
    asset_labels,
    cloud_cover,
    item_datetime,
    local_match,
    parse_instant,
)
from satseg_jax.errors import SatsegError

PRESETS = {
    "inpe-dgi": "https://www.dgi.inpe.br/lgi-stac",
    "inpe-bdc": "https://data.inpe.br/bdc/stac/v1/",
}
DEFAULT_CATALOG = "inpe-dgi"
DEFAULT_PAGE_SIZE = 100
TIMEOUT_S = 60
RETRIES = 4  # per request, on connection errors, 429 and 5xx
RETRY_BACKOFF = 0.5  # seconds; doubles after each retry


@dataclass
class SearchResult:
    """Matching items (STAC Item dicts) and how they were found."""

    items: list[dict]
    catalog: str  # public URL or path
    collection: str
    dropped_no_cloud: int = 0  # items without cloud cover, dropped by --max-cloud
    server_cloud_filter: bool = False  # the Query extension was sent
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- inputs


def resolve_catalog(spec: str | None) -> str:
    """A preset name, an http(s) URL, or a local static catalog (catalog.json, or a
    folder holding one) -> the URL or the file path to open."""
    spec = (spec or DEFAULT_CATALOG).strip()
    if spec.lower() in PRESETS:
        return PRESETS[spec.lower()]
    if re.match(r"^https?://", spec, re.I):
        return spec
    p = Path(spec).expanduser()
    if p.is_dir():
        for name in ("catalog.json", "collection.json"):
            if (p / name).is_file():
                return str(p / name)
        raise SatsegError(f"--catalog {spec}: a folder without catalog.json or "
                          "collection.json; give the static catalog's JSON file")
    if p.is_file():
        return str(p)
    raise SatsegError(f"--catalog {public_url(spec)}: not a preset "
                      f"({', '.join(PRESETS)}), an http(s) URL or an existing "
                      "catalog.json; check the spelling")


def _is_url(target: str) -> bool:
    return bool(re.match(r"^https?://", target, re.I))


def parse_datetime(text: str | None) -> tuple[datetime | None, datetime | None] | None:
    """``--datetime``: ``2023``, ``2023-06``, ``2023-06-01``, an ISO time, or an interval
    ``start/end`` with ``..`` (or nothing) for an open end -> inclusive (start, end)."""
    if text is None or not str(text).strip():
        return None
    text = str(text).strip()
    try:
        if "/" in text:
            a, b = text.split("/", 1)
            start = None if a.strip() in ("", "..") else parse_instant(a, end=False)
            stop = None if b.strip() in ("", "..") else parse_instant(b, end=True)
            if start is None and stop is None:
                raise ValueError("both ends open")
        else:
            start, stop = parse_instant(text, end=False), parse_instant(text, end=True)
    except ValueError:
        raise SatsegError(f"--datetime {text!r}: expected a date or an interval, e.g. "
                          "2023-01-01/2023-12-31, 2023-06, or 2023-01-01/.. (open end)") \
            from None
    if start and stop and start > stop:
        raise SatsegError(f"--datetime {text!r}: the start is after the end")
    return start, stop


def check_max_cloud(max_cloud: float | None) -> None:
    if max_cloud is not None and not 0 <= max_cloud <= 100:
        raise SatsegError(f"--max-cloud {max_cloud:g}: a percentage, 0 to 100")


# ----------------------------------------------------------------------------- errors


def _api_error_cls():
    from pystac_client.exceptions import APIError

    return APIError


@contextmanager
def _errors(target: str, headers: dict | None, what: str) -> Iterator[None]:
    """Turn network/HTTP/format failures into one-line SatsegErrors naming the catalogue
    (without credentials) and the fix."""
    import warnings

    import requests
    from pystac_client.warnings import PystacClientWarning

    where = public_url(target)
    api_error = _api_error_cls()
    try:
        with warnings.catch_warnings():
            # "no conformance classes", "falling back to pystac": said once, in our notes
            warnings.simplefilter("ignore", PystacClientWarning)
            yield
    except SatsegError:
        raise
    except api_error as e:
        if isinstance(e.__context__, SatsegError):  # ours, re-raised by pystac-client
            raise e.__context__ from None
        status = getattr(e, "status_code", None)
        if status in (401, 403):
            has = bool(headers)
            fix = ("the credentials sent were refused; check the token in "
                   f"{TOKEN_ENV} (and --token-header) or --header" if has else
                   f"it needs credentials: export {TOKEN_ENV}=<token> (sent as "
                   "'Authorization: Bearer <token>'; another header with --token-header "
                   "NAME) or pass --header 'Name: value'")
            raise SatsegError(f"catalogue {where}: HTTP {status} while {what}; {fix}") \
                from None
        detail = " ".join(str(e).split())[:300]
        if status:
            msg = (f"catalogue {where}: HTTP {status} while {what} ({detail}); check "
                   "--catalog and --collection, or retry later if the server is down")
        else:
            msg = (f"catalogue {where}: cannot reach it while {what} ({detail}); check "
                   "the URL (--catalog) and your network connection")
        raise SatsegError(redact(msg, headers)) from None
    except (requests.RequestException, OSError) as e:
        detail = " ".join(str(e).split())[:300]
        if not _is_url(target) and isinstance(e, FileNotFoundError):
            msg = f"catalogue {where}: a file it links to is missing ({detail})"
        else:
            msg = (f"catalogue {where}: cannot read it while {what} ({detail}); check "
                   "the path or URL (--catalog) and your network connection")
        raise SatsegError(redact(msg, headers)) from None
    except (json.JSONDecodeError, *_stac_errors()) as e:  # malformed answers
        raise _not_stac(target, headers, e) from None


# ----------------------------------------------------------------------------- opening


def _open(target: str, headers: dict | None, auth_hosts: list[str] | None = None,
          token_header: str | None = None):
    """A pystac-client Client for a URL, a pystac Catalog/Collection for a file.

    The client's session sends credential headers only to the catalogue's origin and
    ``auth_hosts``: ``next`` page links, item links and redirects to another host go
    without them (:mod:`satseg_jax.catalog.trust`)."""
    import pystac
    from pystac_client.errors import ClientTypeError

    if _is_url(target):
        from pystac_client import Client
        from pystac_client.stac_api_io import StacApiIO
        from urllib3 import Retry

        # catalogue servers have bad moments: retry connection errors, 429 and 5xx
        # (POST /search included: it only reads) with doubling waits; a Retry-After is
        # not obeyed, so a server cannot park the command for an hour in silence
        retry = Retry(total=RETRIES, backoff_factor=RETRY_BACKOFF,
                      status_forcelist=(429, 500, 502, 503, 504), allowed_methods=None,
                      raise_on_status=False, respect_retry_after_header=False)
        from satseg_jax.catalog.trust import Trust, trusted_session

        io = StacApiIO(timeout=TIMEOUT_S, max_retries=retry)
        trust = Trust.build([target], auth_hosts, token_header)
        session = trusted_session(headers, trust, stop_refused=True)
        for prefix, adapter in io.session.adapters.items():
            session.mount(prefix, adapter)
        io.session = session
        opener = lambda: Client.open(target, stac_io=io)  # noqa: E731
    else:
        opener = lambda: pystac.read_file(target)  # noqa: E731
    try:
        cat = opener()
    except (KeyError, TypeError, ValueError, ClientTypeError, *_stac_errors()) as e:
        raise _not_stac(target, headers, e) from None  # not JSON, or JSON but not STAC
    if not isinstance(cat, pystac.Catalog):  # an Item, say
        raise _not_stac(target, headers, TypeError(f"a {type(cat).__name__}, not a Catalog "
                                                   "or Collection"))
    return cat


def _stac_errors() -> tuple[type[Exception], ...]:
    """pystac's exceptions for malformed STAC (they share no base class)."""
    from pystac import errors

    return (errors.STACError, errors.STACTypeError, errors.RequiredPropertyMissing,
            errors.DuplicateObjectKeyError)


def _not_stac(target: str, headers: dict | None, e: BaseException) -> SatsegError:
    detail = " ".join(str(e).split())[:200]
    return SatsegError(redact(
        f"catalogue {public_url(target)}: not a STAC catalogue or API ({type(e).__name__}: "
        f"{detail}); give a STAC API URL, a preset ({', '.join(PRESETS)}) or a "
        "catalog.json", headers))


def _has_search(cat) -> bool:
    from pystac_client import Client
    from pystac_client.conformance import ConformanceClasses

    return isinstance(cat, Client) and cat.conforms_to(ConformanceClasses.ITEM_SEARCH)


def _conforms(cat, name: str) -> bool:
    from pystac_client.conformance import ConformanceClasses

    return bool(getattr(cat, "conforms_to", None)) and \
        cat.conforms_to(ConformanceClasses.get_by_name(name))


def _collections(cat) -> list[tuple[str, str]]:
    import pystac

    cols = cat.get_collections() if hasattr(cat, "conforms_to") else (
        [cat] if isinstance(cat, pystac.Collection) else cat.get_all_collections())
    return [(c.id, (c.title or "").strip()) for c in cols]


def list_collections(catalog: str | None, headers: dict | None = None,
                     auth_hosts: list[str] | None = None, token_header: str | None = None) \
        -> list[tuple[str, str]]:
    """(id, title) of every collection a catalogue offers."""
    target = resolve_catalog(catalog)
    with _errors(target, headers, "listing collections"):
        cat = _open(target, headers, auth_hosts, token_header)
        return _collections(cat)


def _unknown_collection(cat, collection: str, target: str) -> SatsegError:
    try:
        ids = [c for c, _ in _collections(cat)]
    except Exception:  # the listing is only a hint in an error message
        ids = []
    close = difflib.get_close_matches(collection, ids, n=5, cutoff=0.5)
    shown = close or ids[:8]
    hint = (f"; {'did you mean' if close else 'available'}: {', '.join(shown)}"
            + (f" (… {len(ids)} in all)" if not close and len(ids) > 8 else "")
            if ids else "; the catalogue lists no collections")
    return SatsegError(f"--collection {collection}: not in catalogue {public_url(target)}"
                       f"{hint} (satseg search --list-collections shows them all)")


def _find_collection(cat, collection: str, target: str):
    import pystac

    if isinstance(cat, pystac.Collection) and cat.id == collection:
        return cat
    if hasattr(cat, "conforms_to"):
        col = cat.get_collection(collection)
    else:
        col = next((c for c in cat.get_all_collections() if c.id == collection), None)
    if col is None:
        raise _unknown_collection(cat, collection, target)
    return col


def _item_dicts_static(col) -> Iterator[dict]:
    for item in col.get_items(recursive=True):
        item.make_asset_hrefs_absolute()
        yield item.to_dict(include_self_link=True, transform_hrefs=True)


# ----------------------------------------------------------------------------- search


def search_items(catalog: str | None, collection: str, *,
                 bbox: Iterable[float] | None = None, intersects: dict | None = None,
                 datetime: str | None = None, max_cloud: float | None = None,
                 limit: int | None = None, page_size: int = DEFAULT_PAGE_SIZE,
                 headers: dict | None = None, auth_hosts: list[str] | None = None,
                 token_header: str | None = None) -> SearchResult:
    """Items of ``collection`` matching the filters (each optional).

    ``bbox``: (W, S, E, N) in WGS84 degrees; ``intersects``: a GeoJSON geometry (sent as
    is to APIs, a GeometryCollection as its bounding box; static catalogs compare
    bounding boxes), instead of ``bbox``; ``datetime``: see
    :func:`parse_datetime`; ``max_cloud``: at most this % ``eo:cloud_cover`` (module
    docstring); ``limit``: at most this many items; ``page_size``: items per request.
    Credential ``headers`` go only to the catalogue's origin and ``auth_hosts``
    (``HOST[:PORT]``); ``token_header`` names the header ``SATSEG_STAC_TOKEN`` is in.
    """
    if not collection:
        raise SatsegError("satseg search needs --collection ID (list them with "
                          "--list-collections)")
    if limit is not None and limit < 1:
        raise SatsegError(f"--limit {limit}: must be 1 or more")
    if page_size < 1:
        raise SatsegError(f"--page-size {page_size}: must be 1 or more")
    check_max_cloud(max_cloud)
    when = parse_datetime(datetime)
    box = list(bbox) if bbox is not None else None
    if intersects is not None:
        box = list(geometry_bounds([intersects], "the AOI geometry"))
        if intersects.get("type") == "GeometryCollection":
            intersects = None  # not every API takes one (an AOI of several features)
    target = resolve_catalog(catalog)
    result = SearchResult([], public_url(target), collection)

    def keep(items: Iterable[dict]) -> list[dict]:
        out = []
        for it in items:
            cc = cloud_cover(it)
            if max_cloud is not None:
                if cc is None:
                    result.dropped_no_cloud += 1
                    continue
                if cc > max_cloud:
                    continue
            out.append(it)
            if limit is not None and len(out) >= limit:
                break
        return out

    with _errors(target, headers, f"searching collection {collection}"):
        cat = _open(target, headers, auth_hosts, token_header)
        col = _find_collection(cat, collection, target)
        if _has_search(cat):
            kw: dict = {"collections": [collection],
                        "limit": min(page_size, limit) if limit else page_size}
            if intersects is not None:
                kw["intersects"] = intersects
            elif box is not None:
                kw["bbox"] = box
            if datetime:
                kw["datetime"] = _iso_interval(when)
            if max_cloud is not None and _conforms(cat, "QUERY"):
                kw["query"] = {"eo:cloud_cover": {"lte": max_cloud}}
                result.server_cloud_filter = True
            result.items = keep(cat.search(**kw).items_as_dicts())
        else:
            result.notes.append("the catalogue has no item search: walked it and "
                                "filtered here")
            result.items = keep(it for it in _item_dicts_static(col)
                                if local_match(it, box, when))
    if result.dropped_no_cloud:
        result.notes.append(f"{result.dropped_no_cloud} item(s) without eo:cloud_cover "
                            "left out by --max-cloud")
    return result


def _iso_interval(when) -> str:
    def f(d):
        return ".." if d is None else d.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    start, stop = when
    return f"{f(start)}/{f(stop)}"


# ----------------------------------------------------------------------------- output


def format_table(items: list[dict]) -> str:
    """id, date, cloud cover (%), assets (``B13(blue) B14(green) …``), one line each."""
    rows = []
    for it in items:
        t = item_datetime(it)
        date = t[0].astimezone(UTC).strftime("%Y-%m-%d %H:%M") if t else "-"
        cc = cloud_cover(it)
        rows.append((str(it.get("id")), date, "-" if cc is None else f"{cc:.1f}",
                     " ".join(asset_labels(it))))
    head = ("ID", "DATE (UTC)", "CLOUD %", "ASSETS")
    w = [max([len(head[i])] + [len(r[i]) for r in rows]) for i in range(3)]
    lines = [f"{head[0]:<{w[0]}}  {head[1]:<{w[1]}}  {head[2]:>{w[2]}}  {head[3]}"]
    lines += [f"{r[0]:<{w[0]}}  {r[1]:<{w[1]}}  {r[2]:>{w[2]}}  {r[3]}" for r in rows]
    return "\n".join(lines)


def format_collections(rows: list[tuple[str, str]]) -> str:
    w = max([len("ID")] + [len(r[0]) for r in rows])
    return "\n".join([f"{'ID':<{w}}  TITLE"] + [f"{c:<{w}}  {t}" for c, t in rows])


def write_item_collection(items: list[dict], out: str | Path) -> Path:
    """Write ``items`` as a STAC ItemCollection (GeoJSON FeatureCollection), atomically."""
    from satseg_jax.io_utils import atomic_path

    out = Path(out)
    doc = {"type": "FeatureCollection", "features": list(items), "links": []}
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(doc, indent=1) + "\n")
    return out
