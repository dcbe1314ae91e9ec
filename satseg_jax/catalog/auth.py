"""Credentials for STAC catalogues and keeping them out of everything we print or write.

Why here: ``satseg search`` and ``satseg download`` send the same headers (INPE's and
other catalogues may require an access token) and must both guarantee that a secret
never reaches stdout, stderr, an error message or manifest.json. The token comes from
the environment (``SATSEG_STAC_TOKEN``), not a command-line flag, so it does not land
in shell history or ``ps`` output either.
"""

from __future__ import annotations

import os
import re
from urllib.parse import urlsplit, urlunsplit

from satseg_jax.errors import SatsegError

TOKEN_ENV = "SATSEG_STAC_TOKEN"
MASK = "***"
# Shorter header values are not masked in free text: replacing every "1" or "no" in a
# message would make it unreadable, and such values are not secrets.
_MIN_SECRET_LEN = 4
_URL = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^/\s@?#]+@)?"
                  r"(?P<rest>[^\s?#'\"<>]*)(?P<query>\?[^\s#'\"<>()]*)?")
# a query string after a bare path (e.g. urllib3's "/stac?key=..." in retry messages)
_QUERY = re.compile(r"(?<=[\w/.~-])\?[^\s#'\"<>()?]*=[^\s#'\"<>()]*")


def request_headers(token_header: str | None, extra: list[str] | None) -> dict:
    """HTTP headers for catalogue and asset requests.

    ``SATSEG_STAC_TOKEN`` (when set) is sent as ``Authorization: Bearer <token>``, or as
    ``<token_header>: <token>`` when ``token_header`` names another header (e.g.
    ``X-Api-Key``). ``extra``: ``"Name: value"`` strings (``--header``), added last (so
    they win). Error messages name the offending header, never its value.
    """
    headers: dict[str, str] = {}
    token = os.environ.get(TOKEN_ENV, "").strip()
    if token_header is not None and not token_header.strip():
        raise SatsegError("--token-header: give a header name, e.g. X-Api-Key")
    if token:
        name = (token_header or "Authorization").strip()
        _check_name(name, "--token-header")
        headers[name] = f"Bearer {token}" if name.lower() == "authorization" else token
    elif token_header:
        raise SatsegError(f"--token-header {token_header} given but {TOKEN_ENV} is not set; "
                          f"export {TOKEN_ENV}=<your token> (or drop --token-header)")
    for h in extra or []:
        name, sep, value = str(h).partition(":")
        name, value = name.strip(), value.strip()
        if not sep or not name or not value:
            shown = name if sep else "(no ':')"
            raise SatsegError(f"--header {shown}: expected 'Name: value', e.g. "
                              "--header 'X-Api-Key: ...'")
        _check_name(name, "--header")
        for k in [k for k in headers if k.lower() == name.lower()]:
            del headers[k]
        headers[name] = value
    return headers


def _check_name(name: str, flag: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+", name):
        raise SatsegError(f"{flag} {name!r}: not a valid HTTP header name")


def _secrets(headers: dict | None) -> list[str]:
    vals = set()
    token = os.environ.get(TOKEN_ENV, "").strip()
    if token:
        vals.add(token)
    for v in (headers or {}).values():
        v = str(v).strip()
        vals.add(v)
        scheme, _, rest = v.partition(" ")
        if scheme.lower() in ("bearer", "basic", "token") and rest.strip():
            vals.add(rest.strip())
    # longest first, so "Bearer abc" is masked whole before "abc"
    return sorted((v for v in vals if len(v) >= _MIN_SECRET_LEN), key=len, reverse=True)


def redact(text: str, headers: dict | None = None) -> str:
    """``text`` with every header value (and the environment token) replaced by ``***``,
    and every URL's userinfo and query string masked (signed URLs carry their secrets
    there). Use on anything printed, logged, raised or written."""
    text = str(text)
    for s in _secrets(headers):
        text = text.replace(s, MASK)

    def _url(m: re.Match) -> str:
        user = f"{MASK}@" if m.group("userinfo") else ""
        query = f"?{MASK}" if m.group("query") else ""
        return f"{m.group('scheme')}{user}{m.group('rest')}{query}"

    return _QUERY.sub(f"?{MASK}", _URL.sub(_url, text))


def public_url(url: str) -> str:
    """``url`` without its query string, fragment and userinfo (``user:pass@``): what may
    be shown or recorded. Local paths are returned unchanged."""
    url = str(url)
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        return url
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = f"{host}:{port}" if port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
