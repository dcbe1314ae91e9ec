"""A small STAC API on 127.0.0.1 for tests (stdlib only, a background thread).

Why: ``satseg search``/``download`` talk to real catalogues (INPE's DGI, the Brazil Data
Cube); tests must run offline, see exactly what the client sent (paths, Range headers,
credentials, bytes transferred) and make the server misbehave on purpose (5xx, 404, slow
files). It implements what pystac-client and GDAL's ``/vsicurl/`` use:

- ``/`` landing page (item-search + query + ogcapi-features conformance), ``/conformance``
- ``/collections``, ``/collections/{id}``, ``/collections/{id}/items[/{item}]``
- ``/search`` GET and POST: collections, ids, bbox, intersects (its bbox), datetime
  (instant or ``start/end`` with ``..`` open ends), query (``eo:cloud_cover`` etc. with
  lt/lte/gt/gte/eq/neq/in), limit + a token-based ``next`` link
- ``/files/...`` static files from ``root/files/`` with HEAD, ``Accept-Ranges`` and
  single ``Range: bytes=a-b | a- | -n`` requests (206 + Content-Range), ETag.

Usage::

    with StacServer(tmp_path, token="s3cret") as srv:
        srv.add_collection("C1", "Test collection")
        for it in make_items(tmp_path):
            srv.add_item(it)
        srv.url  # http://127.0.0.1:PORT
"""

from __future__ import annotations

import copy
import json
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

STAC_VERSION = "1.0.0"
CONFORMS_TO = [
    "https://api.stacspec.org/v1.0.0/core",
    "https://api.stacspec.org/v1.0.0/collections",
    "https://api.stacspec.org/v1.0.0/item-search",
    "https://api.stacspec.org/v1.0.0/item-search#query",
    "https://api.stacspec.org/v1.0.0/ogcapi-features",
    "http://www.opengis.net/spec/ogcapi-features-1/conf/1.0/core",
    "http://www.opengis.net/spec/ogcapi-features-1/conf/1.0/geojson",
]
CHUNK = 64 * 1024
DEFAULT_LIMIT = 10
MAX_LIMIT = 1000
_TYPES = {".tif": "image/tiff", ".tiff": "image/tiff", ".png": "image/png",
          ".json": "application/json", ".jpg": "image/jpeg", ".jp2": "image/jp2"}


class _BadRequest(Exception):
    pass


def _parse_dt(text: str) -> datetime:
    t = text.strip().replace("z", "Z")
    if t.endswith("Z"):
        t = t[:-1] + "+00:00"
    if len(t) == 10:  # a bare date
        t += "T00:00:00+00:00"
    d = datetime.fromisoformat(t)
    return d if d.tzinfo else d.replace(tzinfo=UTC)


def _dt_range(text: str) -> tuple[datetime | None, datetime | None]:
    """``instant`` or ``start/end`` (``..`` or empty = open) -> (start, end), inclusive."""
    try:
        if "/" in text:
            a, b = text.split("/", 1)
            start = None if a.strip() in ("", "..") else _parse_dt(a)
            end = None if b.strip() in ("", "..") else _parse_dt(b)
            return start, end
        d = _parse_dt(text)
        return d, d
    except ValueError:
        raise _BadRequest(f"bad datetime {text!r}") from None


def _item_times(item: dict) -> tuple[datetime, datetime] | None:
    p = item.get("properties") or {}
    if p.get("datetime"):
        d = _parse_dt(p["datetime"])
        return d, d
    if p.get("start_datetime") and p.get("end_datetime"):
        return _parse_dt(p["start_datetime"]), _parse_dt(p["end_datetime"])
    return None


def _geom_bbox(geom: dict) -> list[float]:
    pts: list[tuple[float, float]] = []

    def walk(c):
        if isinstance(c, (list, tuple)) and c and isinstance(c[0], (int, float)):
            pts.append((float(c[0]), float(c[1])))
        elif isinstance(c, (list, tuple)):
            for x in c:
                walk(x)

    if geom.get("type") == "GeometryCollection":
        for g in geom.get("geometries", []):
            b = _geom_bbox(g)
            pts.extend([(b[0], b[1]), (b[2], b[3])])
    else:
        walk(geom.get("coordinates", []))
    if not pts:
        raise _BadRequest("intersects: geometry without coordinates")
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    return [min(xs), min(ys), max(xs), max(ys)]


def _bbox_of(item: dict) -> list[float] | None:
    b = item.get("bbox")
    if b:
        return [b[0], b[1], b[-3], b[-2]] if len(b) == 6 else list(b)
    if item.get("geometry"):
        return _geom_bbox(item["geometry"])
    return None


def _overlaps(a: list[float], b: list[float]) -> bool:
    return a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]


_OPS = {
    "eq": lambda v, x: v == x, "neq": lambda v, x: v != x,
    "lt": lambda v, x: v < x, "lte": lambda v, x: v <= x,
    "gt": lambda v, x: v > x, "gte": lambda v, x: v >= x,
    "in": lambda v, x: v in x,
}


def _matches_query(item: dict, query: dict) -> bool:
    props = item.get("properties") or {}
    for name, conds in query.items():
        if name not in props or props[name] is None:
            return False  # as real APIs do: a filter on a missing field excludes the item
        if not isinstance(conds, dict):
            raise _BadRequest(f"query.{name}: expected an object of operators")
        for op, x in conds.items():
            if op not in _OPS:
                raise _BadRequest(f"query.{name}: unknown operator {op!r}")
            try:
                if not _OPS[op](props[name], x):
                    return False
            except TypeError:
                return False
    return True


class StacServer:
    """A STAC API + range-capable file server for tests; a context manager.

    ``requests``: every request as ``{"method", "path", "range", "status", "bytes",
    "query", "headers", "body"}`` (``bytes`` = response body bytes actually sent;
    ``query`` the raw query string, ``body`` the request body text or None). ``fail_plan``: path ->
    statuses answered (in order, any method) before serving normally. ``missing``: paths
    answered 404 forever. ``throttle``: path -> seconds slept per 64 KiB chunk sent.

    Second host (issue 29): the server also answers as ``alt_url``
    (``http://localhost:PORT``, another host name for the same socket), so a test sees
    which credentials reached which host (``requests_to(host)``, by the Host header).
    ``assets_on_alt``: relative asset hrefs point at ``alt_url`` instead of ``url``.
    ``redirects``: path -> absolute URL answered with 302 (on ``url``'s host only, so a
    redirect to the same path on ``alt_url`` is served).
    ``token_hosts``: when set, only requests to these host names need the token.
    ``next_on_alt``: ``next`` page links of /search point at ``alt_url``.
    """

    def __init__(self, root: Path, token: str | None = None,
                 token_header: str = "Authorization") -> None:
        self.root = Path(root)
        self.token = token
        self.token_header = token_header
        self.url = ""
        self.requests: list[dict] = []
        self.fail_plan: dict[str, list[int]] = {}
        self.missing: set[str] = set()
        self.throttle: dict[str, float] = {}
        self.assets_on_alt = False
        self.next_on_alt = False
        self.in_flight = 0  # requests being answered (recorded when done)
        self.redirects: dict[str, str] = {}
        self.token_hosts: set[str] | None = None
        self._collections: dict[str, dict] = {}
        self._items: dict[str, list[dict]] = {}
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------------- public API

    def add_collection(self, cid: str, title: str = "") -> None:
        with self._lock:
            self._collections.setdefault(cid, {"id": cid, "title": title or cid})
            self._collections[cid]["title"] = title or cid
            self._items.setdefault(cid, [])

    def add_item(self, item: dict) -> None:
        """Add a STAC Item dict (to ``item["collection"]``, created when new)."""
        cid = item.get("collection")
        if not cid:
            if len(self._collections) != 1:
                raise ValueError("item without 'collection' and not exactly one collection")
            cid = next(iter(self._collections))
        if cid not in self._collections:
            self.add_collection(cid)
        it = copy.deepcopy(item)
        it["collection"] = cid
        with self._lock:
            self._items[cid] = [x for x in self._items[cid] if x["id"] != it["id"]] + [it]

    def bytes_sent(self, path_prefix: str = "/files/") -> int:
        with self._lock:
            return sum(r["bytes"] for r in self.requests
                       if r["method"] == "GET" and r["path"].startswith(path_prefix))

    @property
    def alt_url(self) -> str:
        """The same server under another host name (``localhost`` instead of 127.0.0.1)."""
        return self.url.replace("127.0.0.1", "localhost")

    def requests_to(self, host: str) -> list[dict]:
        """Recorded requests whose Host header names ``host`` (any port), once those in
        flight are recorded (a client may read the answer before the log is written)."""
        deadline = time.monotonic() + 5
        while self.in_flight and time.monotonic() < deadline:
            time.sleep(0.01)
        with self._lock:
            return [r for r in self.requests
                    if (r["headers"].get("Host") or "").rpartition(":")[0] == host]

    def __enter__(self) -> StacServer:
        server = self

        class Handler(_Handler):
            stac = server

        self._httpd = _Server(("127.0.0.1", 0), Handler)
        host, port = self._httpd.server_address[:2]
        self.url = f"http://{host}:{port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True,
                                        name=f"StacServer:{port}")
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    # ----------------------------------------------------------------- views

    def _abs(self, href: str) -> str:
        if "://" in href:
            return href
        return f"{self.alt_url if self.assets_on_alt else self.url}/{href.lstrip('/')}"

    def _serve_item(self, item: dict) -> dict:
        it = copy.deepcopy(item)
        it.setdefault("type", "Feature")
        it.setdefault("stac_version", STAC_VERSION)
        it.setdefault("stac_extensions", [])
        for a in (it.get("assets") or {}).values():
            if "href" in a:
                a["href"] = self._abs(a["href"])
        cid = it["collection"]
        base = f"{self.url}/collections/{cid}"
        it["links"] = [
            {"rel": "self", "href": f"{base}/items/{it['id']}", "type": "application/geo+json"},
            {"rel": "parent", "href": base, "type": "application/json"},
            {"rel": "collection", "href": base, "type": "application/json"},
            {"rel": "root", "href": f"{self.url}/", "type": "application/json"},
        ]
        return it

    def _collection(self, cid: str) -> dict:
        c = self._collections[cid]
        items = self._items.get(cid, [])
        boxes = [b for b in (_bbox_of(i) for i in items) if b]
        bbox = ([min(b[0] for b in boxes), min(b[1] for b in boxes),
                 max(b[2] for b in boxes), max(b[3] for b in boxes)]
                if boxes else [-180.0, -90.0, 180.0, 90.0])
        times = [t for t in (_item_times(i) for i in items) if t]
        interval = ([min(t[0] for t in times).isoformat().replace("+00:00", "Z"),
                     max(t[1] for t in times).isoformat().replace("+00:00", "Z")]
                    if times else [None, None])
        base = f"{self.url}/collections/{cid}"
        return {
            "type": "Collection", "stac_version": STAC_VERSION, "stac_extensions": [],
            "id": cid, "title": c["title"], "description": c["title"],
            "license": "proprietary",
            "extent": {"spatial": {"bbox": [bbox]}, "temporal": {"interval": [interval]}},
            "links": [
                {"rel": "self", "href": base, "type": "application/json"},
                {"rel": "parent", "href": f"{self.url}/", "type": "application/json"},
                {"rel": "root", "href": f"{self.url}/", "type": "application/json"},
                {"rel": "items", "href": f"{base}/items", "type": "application/geo+json"},
            ],
        }

    def _landing(self) -> dict:
        u = self.url
        links = [
            {"rel": "self", "href": f"{u}/", "type": "application/json"},
            {"rel": "root", "href": f"{u}/", "type": "application/json"},
            {"rel": "conformance", "href": f"{u}/conformance", "type": "application/json"},
            {"rel": "data", "href": f"{u}/collections", "type": "application/json"},
            {"rel": "search", "href": f"{u}/search", "type": "application/geo+json",
             "method": "GET"},
            {"rel": "search", "href": f"{u}/search", "type": "application/geo+json",
             "method": "POST"},
        ]
        links += [{"rel": "child", "href": f"{u}/collections/{cid}",
                   "type": "application/json", "title": c["title"]}
                  for cid, c in self._collections.items()]
        return {"type": "Catalog", "stac_version": STAC_VERSION, "id": "test-stac-api",
                "title": "satseg test STAC API", "description": "Local STAC API for tests",
                "conformsTo": CONFORMS_TO, "links": links}

    def _search(self, params: dict, method: str, path: str, cid: str | None = None) -> dict:
        """Filter, page and wrap items in a FeatureCollection with a ``next`` link."""
        cols = [cid] if cid else params.get("collections") or list(self._collections)
        ids = params.get("ids")
        bbox = params.get("bbox")
        if params.get("intersects"):
            bbox = _geom_bbox(params["intersects"])
        if bbox is not None:
            if len(bbox) == 6:
                bbox = [bbox[0], bbox[1], bbox[3], bbox[4]]
            if len(bbox) != 4:
                raise _BadRequest("bbox: expected 4 or 6 numbers")
        dt = _dt_range(params["datetime"]) if params.get("datetime") else None
        query = params.get("query") or {}
        try:
            limit = int(params.get("limit") or DEFAULT_LIMIT)
            offset = int(params.get("token") or 0)
        except (TypeError, ValueError):
            raise _BadRequest("limit/token must be integers") from None
        if limit < 1:
            raise _BadRequest("limit must be >= 1")
        limit = min(limit, MAX_LIMIT)

        for c in cols:
            if c not in self._collections:
                raise _NotFound(f"collection {c!r} not found")
        matched = []
        for c in cols:
            for it in self._items.get(c, []):
                if ids and it["id"] not in ids:
                    continue
                if bbox is not None:
                    ib = _bbox_of(it)
                    if ib is None or not _overlaps(ib, bbox):
                        continue
                if dt is not None:
                    t = _item_times(it)
                    if t is None:
                        continue
                    start, end = dt
                    if (start is not None and t[1] < start) or (end is not None and t[0] > end):
                        continue
                if query and not _matches_query(it, query):
                    continue
                matched.append(it)
        page = matched[offset:offset + limit]
        links = [{"rel": "root", "href": f"{self.url}/", "type": "application/json"}]
        if offset + limit < len(matched):
            token = str(offset + limit)
            base = self.alt_url if self.next_on_alt else self.url
            if method == "POST":
                links.append({"rel": "next", "href": f"{base}{path}", "method": "POST",
                              "type": "application/geo+json", "body": {"token": token},
                              "merge": True})
            else:
                q = {k: (json.dumps(v) if isinstance(v, (dict, list)) and k in
                         ("query", "intersects") else
                         ",".join(map(str, v)) if isinstance(v, list) else v)
                     for k, v in params.items() if k != "token" and v is not None}
                q["token"] = token
                links.append({"rel": "next", "href": f"{base}{path}?{urlencode(q)}",
                              "method": "GET", "type": "application/geo+json"})
        return {"type": "FeatureCollection", "features": [self._serve_item(i) for i in page],
                "links": links, "numberMatched": len(matched), "numberReturned": len(page),
                "context": {"matched": len(matched), "returned": len(page), "limit": limit}}


class _NotFound(Exception):
    pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address) -> None:  # noqa: ARG002
        pass  # a client killed mid-transfer is expected in tests; stay quiet


def _get_params(qs: str) -> dict:
    """GET query string -> the same shape as a POST body."""
    raw = {k: v[-1] for k, v in parse_qs(qs, keep_blank_values=False).items()}
    p: dict = {}
    for k, v in raw.items():
        if k in ("collections", "ids"):
            p[k] = [x for x in v.split(",") if x]
        elif k == "bbox":
            try:
                p[k] = [float(x) for x in v.split(",")]
            except ValueError:
                raise _BadRequest(f"bad bbox {v!r}") from None
        elif k in ("query", "intersects"):
            try:
                p[k] = json.loads(v)
            except json.JSONDecodeError:
                raise _BadRequest(f"{k}: not JSON") from None
        else:
            p[k] = v
    return p


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    stac: StacServer  # set by StacServer.__enter__

    def log_message(self, format, *args) -> None:  # noqa: A002
        pass

    # ----------------------------------------------------------------- plumbing

    def do_GET(self) -> None:  # noqa: N802
        self._handle("GET")

    def do_HEAD(self) -> None:  # noqa: N802
        self._handle("HEAD")

    def do_POST(self) -> None:  # noqa: N802
        self._handle("POST")

    def _handle(self, method: str) -> None:
        parts = urlsplit(self.path)
        path = parts.path
        self._rec = {"method": method, "path": path, "range": self.headers.get("Range"),
                     "status": None, "bytes": 0, "query": parts.query,
                     "headers": dict(self.headers.items()), "body": None}
        with self.stac._lock:
            self.stac.in_flight += 1
        body = b""
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            body = self.rfile.read(n)
            self._rec["body"] = body.decode("utf-8", "replace")
        try:
            self._route(method, path, parts.query, body)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            self.close_connection = True
        finally:
            with self.stac._lock:
                self.stac.requests.append(self._rec)
                self.stac.in_flight -= 1

    def _send(self, status: int, payload: bytes, ctype: str, extra: dict | None = None,
              head: bool = False) -> None:
        self._rec["status"] = status
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(payload)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(payload)
            self._rec["bytes"] += len(payload)

    def _json(self, status: int, obj: dict, head: bool = False) -> None:
        ctype = "application/geo+json" if obj.get("type") == "FeatureCollection" else \
            "application/json"
        self._send(status, json.dumps(obj).encode(), ctype, head=head)

    def _error(self, status: int, msg: str, head: bool = False) -> None:
        self._json(status, {"code": str(status), "description": msg}, head=head)

    def _authorised(self) -> bool:
        s = self.stac
        if s.token is None:
            return True
        host = (self.headers.get("Host") or "").rpartition(":")[0]
        if s.token_hosts is not None and host not in s.token_hosts:
            return True
        if s.token_header.lower() == "authorization":
            return self.headers.get("Authorization") == f"Bearer {s.token}"
        return self.headers.get(s.token_header) == s.token

    # ----------------------------------------------------------------- routes

    def _route(self, method: str, path: str, qs: str, body: bytes) -> None:
        s = self.stac
        head = method == "HEAD"
        if path in s.redirects and not self.headers.get("Host", "").startswith("localhost"):
            self._send(302, b"", "text/plain", {"Location": s.redirects[path]}, head=head)
            return
        if not self._authorised():
            self._error(401, "missing or wrong credentials", head=head)
            return
        with s._lock:
            plan = s.fail_plan.get(path)
            fail = plan.pop(0) if plan else None
        if fail is not None:
            self._error(fail, f"planned failure {fail}", head=head)
            return
        if path in s.missing:
            self._error(404, f"{path} not found", head=head)
            return
        if path.startswith("/files/"):
            if method == "POST":
                self._error(405, "files are read-only")
            else:
                self._file(path, head)
            return
        try:
            with s._lock:
                obj = self._api(method, path, qs, body)
        except _BadRequest as e:
            self._error(400, str(e), head=head)
            return
        except _NotFound as e:
            self._error(404, str(e), head=head)
            return
        self._json(200, obj, head=head)

    def _api(self, method: str, path: str, qs: str, body: bytes) -> dict:
        s = self.stac
        p = path.rstrip("/") or "/"
        seg = [x for x in p.split("/") if x]
        if method == "POST" and p != "/search":
            raise _BadRequest(f"POST not supported on {p}")
        if p == "/":
            return s._landing()
        if p == "/conformance":
            return {"conformsTo": CONFORMS_TO}
        if p == "/search":
            if method == "POST":
                try:
                    params = json.loads(body or b"{}")
                except json.JSONDecodeError:
                    raise _BadRequest("POST /search: body is not JSON") from None
            else:
                params = _get_params(qs)
            return s._search(params, method, p)
        if seg[0] == "collections":
            if len(seg) == 1:
                cols = [s._collection(c) for c in s._collections]
                return {"collections": cols, "links": [
                    {"rel": "self", "href": f"{s.url}/collections", "type": "application/json"},
                    {"rel": "root", "href": f"{s.url}/", "type": "application/json"}]}
            cid = seg[1]
            if cid not in s._collections:
                raise _NotFound(f"collection {cid!r} not found")
            if len(seg) == 2:
                return s._collection(cid)
            if seg[2] == "items" and len(seg) == 3:
                params = _get_params(qs)
                params.pop("collections", None)
                return s._search(params, "GET", p, cid=cid)
            if seg[2] == "items" and len(seg) == 4:
                for it in s._items[cid]:
                    if it["id"] == seg[3]:
                        return s._serve_item(it)
                raise _NotFound(f"item {seg[3]!r} not found in {cid!r}")
        raise _NotFound(f"{p} not found")

    def _file(self, path: str, head: bool) -> None:
        base = (self.stac.root / "files").resolve()
        f = (self.stac.root / path.lstrip("/")).resolve()
        if base not in f.parents or not f.is_file():
            self._error(404, f"{path} not found", head=head)
            return
        size = f.stat().st_size
        st = f.stat()
        etag = f'"{st.st_mtime_ns:x}-{size:x}"'
        ctype = _TYPES.get(f.suffix.lower(), "application/octet-stream")
        start, end, status = 0, size - 1, 200
        rng = self.headers.get("Range")
        if rng and "," not in rng:  # several ranges: answer the whole file (RFC 9110 allows)
            parsed = _parse_range(rng, size)
            if parsed is None:
                self._rec["status"] = 416
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            start, end = parsed
            status = 206
        length = end - start + 1 if size else 0
        self._rec["status"] = status
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", etag)
        self.send_header("Content-Length", str(length))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if head or not length:
            return
        delay = self.stac.throttle.get(path, 0.0)
        with open(f, "rb") as fh:
            fh.seek(start)
            left = length
            while left > 0:
                block = fh.read(min(CHUNK, left))
                if not block:
                    break
                if delay:
                    time.sleep(delay)
                self.wfile.write(block)
                self.wfile.flush()
                self._rec["bytes"] += len(block)
                left -= len(block)


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """``bytes=a-b`` / ``a-`` / ``-n`` (a single range) -> inclusive (start, end), or None
    when unsatisfiable."""
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    a, _, b = spec.strip().partition("-")
    try:
        if a == "":
            n = int(b)
            if n <= 0:
                return None
            return max(0, size - n), size - 1
        start = int(a)
        end = int(b) if b else size - 1
    except ValueError:
        return None
    if start >= size or end < start:
        return None
    return start, min(end, size - 1)
