"""Which hosts may receive the user's credentials (issue 29).

Why: a STAC item's asset hrefs often point away from the catalogue (a CDN, an object
store, another institution's server). Sending ``SATSEG_STAC_TOKEN`` there hands the
user's credential to a third party. So credential headers go only to the catalogue's
own origin (scheme, host, port) and to hosts the user names with ``--auth-host
HOST[:PORT]``; every other request (a direct href, a ``next`` page link, or a redirect)
goes without them. One check in :meth:`TrustedSession.send` covers all three, because
requests sends every redirect hop through ``Session.send`` too.

Which headers are credentials: the token header (``Authorization`` or
``--token-header NAME``) and any ``--header`` whose name looks like one
(:func:`is_credential`: Authorization, Proxy-Authorization, Cookie, or a name containing
auth, token, key, secret, password, session or cookie). Other ``--header`` values (e.g.
``User-Agent``, ``Accept``) still go everywhere, as before.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from satseg_jax.errors import SatsegError

_DEFAULT_PORTS = {"http": 80, "https": 443}
_CREDENTIAL_WORDS = ("auth", "token", "key", "secret", "password", "session", "cookie")


def is_credential(name: str, token_header: str | None = None) -> bool:
    """True for header names that carry a secret (module docstring: the rule)."""
    n = name.strip().lower()
    if token_header and n == token_header.strip().lower():
        return True
    return any(w in n for w in _CREDENTIAL_WORDS)


def origin(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an http(s) URL, the port defaulted; None otherwise."""
    try:
        parts = urlsplit(str(url))
        scheme = parts.scheme.lower()
        host = (parts.hostname or "").lower()
        port = parts.port or _DEFAULT_PORTS.get(scheme)
    except ValueError:
        return None
    if scheme not in _DEFAULT_PORTS or not host:
        return None
    return scheme, host, port


def host_label(url: str) -> str:
    """``host`` or ``host:port`` as the user would pass it to ``--auth-host``."""
    o = origin(url)
    if o is None:
        return "?"
    scheme, host, port = o
    host = f"[{host}]" if ":" in host else host
    return host if port == _DEFAULT_PORTS[scheme] else f"{host}:{port}"


def parse_auth_host(spec: str) -> tuple[str, int | None]:
    """``HOST`` or ``HOST:PORT`` (``[v6]:PORT`` for IPv6) -> (host, port or None)."""
    text = str(spec).strip().lower()
    if "://" in text:  # a pasted URL: take its host (and explicit port)
        parts = urlsplit(text)
        text = parts.netloc.rpartition("@")[2]
    m = re.fullmatch(r"\[([0-9a-f:.]+)\](?::(\d{1,5}))?|([a-z0-9._-]+)(?::(\d{1,5}))?", text)
    if not m:
        raise SatsegError(f"--auth-host {spec!r}: expected HOST or HOST:PORT, e.g. "
                          "--auth-host data.example.org")
    host = m.group(1) or m.group(3)
    port = m.group(2) or m.group(4)
    return host, int(port) if port else None


@dataclass(frozen=True)
class Trust:
    """The origins credentials may go to: the catalogue's, plus ``--auth-host`` hosts
    (a host without a port is trusted on every port and scheme)."""

    origins: frozenset = field(default_factory=frozenset)
    hosts: frozenset = field(default_factory=frozenset)
    token_header: str | None = None  # --token-header: a credential whatever its name

    @classmethod
    def build(cls, catalogs: Iterable[str | None] = (),
              auth_hosts: Iterable[str] | None = None,
              token_header: str | None = None) -> Trust:
        origins = {o for o in (origin(c) for c in catalogs if c) if o}
        # http://host -> https://host on the default ports is an upgrade, not a new party
        origins |= {("https", h, 443) for s, h, p in origins if (s, p) == ("http", 80)}
        return cls(frozenset(origins),
                   frozenset(parse_auth_host(h) for h in auth_hosts or []), token_header)

    def allows(self, url: str) -> bool:
        o = origin(url)
        if o is None:
            return False
        if o in self.origins:
            return True
        return any(h == o[1] and p in (None, o[2]) for h, p in self.hosts)

    def with_catalog(self, catalog: str | None) -> Trust:
        o = origin(catalog) if catalog else None
        return Trust(self.origins | {o}, self.hosts, self.token_header) if o else self


def split_headers(headers: dict | None, token_header: str | None = None) \
        -> tuple[dict, dict]:
    """(plain, credential) headers: the credential ones are sent only where trusted."""
    plain, secret = {}, {}
    for k, v in (headers or {}).items():
        (secret if is_credential(k, token_header) else plain)[k] = v
    return plain, secret


def headers_for(url: str, headers: dict | None, trust: Trust | None) -> dict:
    """``headers`` for a request to ``url``: credential headers only if ``trust`` allows
    the URL's origin (``trust`` None: the old behaviour, everything everywhere)."""
    if trust is None or trust.allows(url):
        return dict(headers or {})
    return split_headers(headers, trust.token_header)[0]


def final_url(url: str, headers: dict | None, trust: Trust) -> str:
    """Where ``url`` ends up after redirects, found with a 1-byte request that carries
    credentials only while trusted. Why: GDAL (``/vsicurl/``, AOI reads) follows
    redirects itself and keeps custom headers such as X-Api-Key across hosts, so it
    is given the final URL and only the headers that URL's origin may receive."""
    import requests

    if not trust.allows(url) or not split_headers(headers, trust.token_header)[1]:
        return url  # nothing secret would be sent: let GDAL follow as it likes
    try:
        with trusted_session(headers, trust) as s, \
                s.get(url, headers={"Range": "bytes=0-0"}, stream=True, timeout=60) as r:
            return r.url or url
    except requests.RequestException:
        return url  # GDAL reports the failure (and retries) itself


def trusted_session(headers: dict | None, trust: Trust | None, stop_refused: bool = False):
    """A requests Session that adds credential headers only for trusted origins.

    ``stop_refused``: a 401/403 from a host that was not sent the credentials raises
    the one-line SatsegError of :func:`refused` (pystac-client's own error would not
    say which URL refused, e.g. a ``next`` page link on another host)."""
    import requests

    class TrustedSession(requests.Session):
        """Credentials re-decided for every request and every redirect hop."""

        def send(self, request, **kwargs):  # noqa: ANN001, ANN003, ANN201
            for k in [k for k in request.headers if is_credential(k, token_header)]:
                del request.headers[k]
            allowed = trust is None or trust.allows(request.url)
            if allowed:
                request.headers.update(secret)
            r = super().send(request, **kwargs)
            if stop_refused and secret and not allowed and r.status_code in (401, 403):
                from satseg_jax.catalog.auth import public_url, redact

                e = refused(r.status_code, request.url, trust, headers)
                raise SatsegError(redact(f"{public_url(request.url)}: {e}", headers))
            return r

        def rebuild_auth(self, prepared_request, response) -> None:  # noqa: ANN001
            """No netrc or URL userinfo credentials on redirects; send() decides."""
            prepared_request.headers.pop("Authorization", None)

    token_header = trust.token_header if trust is not None else None
    plain, secret = split_headers(headers, token_header)
    s = TrustedSession()
    s.headers.update(plain)
    return s


class RefusedError(Exception):
    """A 401/403 for an asset: the message is complete (host and fix), one line."""


def refused(status: int, url: str, trust: Trust | None, headers: dict | None) -> RefusedError:
    """Why ``url``'s host answered 401/403 and how to fix it; never the token or query."""
    h = host_label(url)
    token_header = trust.token_header if trust is not None else None
    held = bool(split_headers(headers, token_header)[1])
    if held and trust is not None and not trust.allows(url):
        return RefusedError(f"HTTP {status} from {h}, which was not sent your credentials "
                            "(they go only to the catalogue's host and --auth-host hosts); "
                            f"if you trust {h}, rerun with --auth-host {h}")
    if held:
        return RefusedError(f"HTTP {status} from {h}: your credentials were refused; check "
                            "SATSEG_STAC_TOKEN (and --token-header) or --header")
    return RefusedError(f"HTTP {status} from {h}: it needs credentials; export "
                        f"SATSEG_STAC_TOKEN=<token> (and --auth-host {h} if it is not the "
                        "catalogue's host)")


def catalog_roots(items: list[dict]) -> set[str]:
    """The catalogue URLs items name as their ``root`` link (items read from a file):
    the catalogue a ``satseg search --out`` file came from."""
    roots = set()
    for it in items:
        for link in it.get("links") or []:
            if isinstance(link, dict) and link.get("rel") == "root" and link.get("href"):
                roots.add(str(link["href"]))
    return roots
