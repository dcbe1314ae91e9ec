"""satseg search against a local STAC API (tests/helpers/stac_server.py) and a static
catalog on disk: each filter excludes exactly one of two generated items, paging,
--out, --list-collections, credentials kept out of every output, clear errors.

Why a local server: the real catalogues (INPE's DGI, the Brazil Data Cube) need network
access and change; here the items, and every request the client makes, are known.
"""

from __future__ import annotations

import json
import socket

import pytest

from satseg_jax.catalog.auth import public_url, redact, request_headers
from satseg_jax.catalog.search import search_items
from satseg_jax.cli import main
from satseg_jax.errors import SatsegError
from tests.helpers.stac_data import COLLECTION, make_items
from tests.helpers.stac_server import StacServer

TOKEN = "tok-3f9a1c77e2b4d5"


@pytest.fixture(scope="module")
def stac_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("stac")
    return root, make_items(root, n=2, size=512)


@pytest.fixture(scope="module")
def server(stac_files):
    root, items = stac_files
    with StacServer(root) as srv:
        srv.add_collection(COLLECTION, "CBERS-4A WFI level 4 (test)")
        srv.add_collection("LANDSAT_EMPTY", "No items here")
        for it in items:
            srv.add_item(it)
        yield srv


@pytest.fixture()
def ids(stac_files):
    return [it["id"] for it in stac_files[1]]


def _pad(b, d=0.01):
    return f"{b[0] - d},{b[1] - d},{b[2] + d},{b[3] + d}"


def _run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


# ----------------------------------------------------------------------------- filters


@pytest.mark.parametrize("kw,want", [
    ({}, [0, 1]),
    ({"bbox": 0}, [0]),
    ({"bbox": 1}, [1]),
    ({"datetime": "2023-01-01/2023-06-30"}, [0]),
    ({"datetime": "2023-06-01/.."}, [1]),
    ({"datetime": "2023-03-10"}, [0]),
    ({"max_cloud": 20}, [0]),
    ({"max_cloud": 40}, [0, 1]),
])
def test_search_filters(server, stac_files, ids, kw, want):
    items = stac_files[1]
    if "bbox" in kw:
        kw["bbox"] = items[kw["bbox"]]["bbox"]
    res = search_items(server.url, COLLECTION, **kw)
    assert [it["id"] for it in res.items] == [ids[i] for i in want]
    for it in res.items:  # asset hrefs are absolute URLs on the server
        assert it["assets"]["B13"]["href"].startswith(f"{server.url}/files/")


def test_max_cloud_sent_as_query_extension(server):
    n = len(server.requests)
    res = search_items(server.url, COLLECTION, max_cloud=20)
    assert res.server_cloud_filter
    bodies = [json.loads(r["body"]) for r in server.requests[n:]
              if r["path"] == "/search" and r["body"]]
    assert bodies and bodies[0]["query"] == {"eo:cloud_cover": {"lte": 20}}


def test_cli_table_and_negative_bbox(server, stac_files, ids, capsys):
    b = stac_files[1][0]["bbox"]
    rc, out, err = _run(capsys, "search", "--catalog", server.url, "--collection", COLLECTION,
                        "--bbox", _pad(b), "--datetime", "2023-01-01/2023-12-31",
                        "--max-cloud", "20")
    assert rc == 0, err
    assert ids[0] in out and ids[1] not in out
    assert "B13(blue) B14(green) B15(red) B16(nir) thumbnail" in out
    assert "2023-03-10 13:20" in out and "5.0" in out
    assert "1 item(s)" in out


def test_paging_and_limit(server, ids):
    n = len(server.requests)
    res = search_items(server.url, COLLECTION, page_size=1)
    pages = [r for r in server.requests[n:] if r["path"] == "/search"]
    assert [it["id"] for it in res.items] == ids
    assert len(pages) == 2 and json.loads(pages[1]["body"]).get("token")

    n = len(server.requests)
    res = search_items(server.url, COLLECTION, limit=1)
    assert [it["id"] for it in res.items] == ids[:1]
    assert len([r for r in server.requests[n:] if r["path"] == "/search"]) == 1


def test_out_writes_item_collection(server, ids, tmp_path, capsys):
    import pystac

    out = tmp_path / "sub" / "items.json"
    rc, stdout, err = _run(capsys, "search", "--catalog", server.url, "--collection",
                           COLLECTION, "--out", out)
    assert rc == 0, err
    ic = pystac.ItemCollection.from_file(str(out))
    assert [it.id for it in ic] == ids
    assert ic.items[0].assets["B14"].href.startswith(server.url)
    assert ic.items[0].assets["B14"].extra_fields["file:checksum"].startswith("1220")
    assert sorted(p.name for p in out.parent.iterdir()) == ["items.json"]  # no temp left


def test_list_collections(server, capsys):
    rc, out, err = _run(capsys, "search", "--catalog", server.url, "--list-collections")
    assert rc == 0, err
    assert COLLECTION in out and "CBERS-4A WFI level 4 (test)" in out
    assert "LANDSAT_EMPTY" in out and "No items here" in out


# ----------------------------------------------------------------------------- credentials


@pytest.mark.parametrize("token_header", [None, "X-Api-Key"])
def test_token_from_env_sent_never_printed(stac_files, ids, tmp_path, capsys, monkeypatch,
                                           token_header):
    root, items = stac_files
    with StacServer(root, token=TOKEN, token_header=token_header or "Authorization") as srv:
        for it in items:
            srv.add_item(it)
        extra = ["--token-header", token_header] if token_header else []
        argv = ["search", "--catalog", srv.url, "--collection", COLLECTION, *extra]

        monkeypatch.delenv("SATSEG_STAC_TOKEN", raising=False)
        rc, out, err = _run(capsys, *argv[:5])
        assert rc == 2 and "HTTP 401" in err and "SATSEG_STAC_TOKEN" in err
        assert len(err.strip().splitlines()) == 1

        monkeypatch.setenv("SATSEG_STAC_TOKEN", "wrong-token-value")
        rc, out, err = _run(capsys, *argv)
        assert rc == 2 and "HTTP 401" in err and "wrong-token-value" not in out + err

        monkeypatch.setenv("SATSEG_STAC_TOKEN", TOKEN)
        rc, out, err = _run(capsys, *argv, "--out", tmp_path / "items.json")
        assert rc == 0, err
        assert ids[0] in out and ids[1] in out
        assert TOKEN not in out + err
        assert TOKEN not in (tmp_path / "items.json").read_text()
        ok = [r for r in srv.requests if r["status"] == 200]
        name = token_header or "Authorization"
        want = TOKEN if token_header else f"Bearer {TOKEN}"
        assert ok and all(r["headers"].get(name) == want for r in ok)


def test_auth_helpers(monkeypatch):
    monkeypatch.setenv("SATSEG_STAC_TOKEN", TOKEN)
    h = request_headers(None, ["X-Extra: abc-secret-1", "Accept: application/json"])
    assert h["Authorization"] == f"Bearer {TOKEN}" and h["X-Extra"] == "abc-secret-1"
    text = (f"GET https://user:pw@ex.com/a.tif?sig={TOKEN}&x=1 failed; header "
            f"Authorization: Bearer {TOKEN} abc-secret-1")
    red = redact(text, h)
    assert TOKEN not in red and "abc-secret-1" not in red and "pw@" not in red
    assert "https://***@ex.com/a.tif?***" in red
    assert public_url("https://u:p@ex.com:8443/stac/a.tif?token=x#f") == \
        "https://ex.com:8443/stac/a.tif"
    assert public_url("/data/catalog.json") == "/data/catalog.json"
    with pytest.raises(SatsegError, match="--header"):
        request_headers(None, ["no-colon-here"])
    monkeypatch.delenv("SATSEG_STAC_TOKEN")
    with pytest.raises(SatsegError, match="SATSEG_STAC_TOKEN is not set"):
        request_headers("X-Api-Key", [])


# ----------------------------------------------------------------------------- errors


def test_unknown_collection(server, capsys):
    rc, out, err = _run(capsys, "search", "--catalog", server.url, "--collection",
                        "CBERS4A_WFI_L4")
    assert rc == 2
    assert "--collection CBERS4A_WFI_L4: not in catalogue" in err
    assert COLLECTION in err and "--list-collections" in err


@pytest.mark.parametrize("bbox,msg", [
    ("1,2,3", "four numbers"),
    ("a,b,c,d", "four numbers"),
    ("10,0,5,1", "west must be < east"),
    ("0,10,1,5", "south < north"),
    ("0,0,200,1", "outside"),
])
def test_bad_bbox(server, capsys, bbox, msg):
    rc, out, err = _run(capsys, "search", "--catalog", server.url, "--collection",
                        COLLECTION, f"--bbox={bbox}")
    assert rc == 2 and "--bbox" in err and msg in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("argv,msg", [
    (["--datetime", "2023-13-45"], "--datetime"),
    (["--datetime", "2023-12-31/2023-01-01"], "start is after the end"),
    (["--max-cloud", "150"], "--max-cloud 150"),
    (["--limit", "0"], "--limit 0"),
])
def test_bad_options(server, capsys, argv, msg):
    rc, out, err = _run(capsys, "search", "--catalog", server.url, "--collection",
                        COLLECTION, *argv)
    assert rc == 2 and msg in err


@pytest.fixture()
def no_backoff(monkeypatch):
    import satseg_jax.catalog.search as search_mod

    monkeypatch.setattr(search_mod, "RETRY_BACKOFF", 0.0)


def test_unreachable_catalogue(capsys, caplog, no_backoff):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rc, out, err = _run(capsys, "search", "--catalog", f"http://127.0.0.1:{port}/stac?key=abc",
                        "--collection", COLLECTION)
    assert rc == 2 and f"catalogue http://127.0.0.1:{port}/stac:" in err
    assert "key=abc" not in err + caplog.text and "network" in err


def test_server_errors_retried_then_reported(server, ids, capsys, no_backoff):
    server.fail_plan["/search"] = [503, 500]
    res = search_items(server.url, COLLECTION)
    assert [it["id"] for it in res.items] == ids and not server.fail_plan["/search"]

    server.fail_plan["/"] = [500] * 10
    try:
        rc, out, err = _run(capsys, "search", "--catalog", server.url, "--collection",
                            COLLECTION)
    finally:
        server.fail_plan.pop("/")
    assert rc == 2 and f"catalogue {server.url}: HTTP 500" in err and "retry later" in err


def test_missing_catalog_path(tmp_path, capsys):
    rc, out, err = _run(capsys, "search", "--catalog", tmp_path / "nope.json",
                        "--collection", COLLECTION)
    assert rc == 2 and "not a preset" in err


# ----------------------------------------------------------------------------- static catalog


def _static_catalog(dest, items, root):
    """Write a self-contained static catalog of ``items`` (+ one without cloud cover)
    under ``dest``, asset hrefs pointing at the files under ``root``."""
    import copy

    import pystac

    cat = pystac.Catalog("local", "a static catalog")
    col = pystac.Collection(COLLECTION, "test", pystac.Extent(
        pystac.SpatialExtent([[-180, -90, 180, 90]]),
        pystac.TemporalExtent([[None, None]])))
    cat.add_child(col)
    nocloud = copy.deepcopy(items[0])
    nocloud["id"] = "NO_CLOUD_COVER"
    del nocloud["properties"]["eo:cloud_cover"]
    for d in [*copy.deepcopy(items), nocloud]:
        for a in d["assets"].values():
            a["href"] = str(root / a["href"])
        col.add_item(pystac.Item.from_dict(d))
    cat.normalize_hrefs(str(dest))
    cat.save(pystac.CatalogType.SELF_CONTAINED)
    return dest / "catalog.json"


def test_static_catalog_on_disk(stac_files, ids, tmp_path, capsys):
    root, items = stac_files
    path = _static_catalog(tmp_path / "cat", items, root)

    res = search_items(str(path), COLLECTION, bbox=items[1]["bbox"])
    assert [it["id"] for it in res.items] == [ids[1]]
    res = search_items(str(tmp_path / "cat"), COLLECTION, datetime="2023-01-01/2023-06-30")
    assert sorted(it["id"] for it in res.items) == sorted([ids[0], "NO_CLOUD_COVER"])
    assert res.items[0]["assets"]["B13"]["href"] == str(root / "files" / ids[0] / "B13.tif")

    rc, out, err = _run(capsys, "search", "--catalog", path, "--collection", COLLECTION,
                        "--max-cloud", "20")
    assert rc == 0, err
    assert ids[0] in out and ids[1] not in out and "NO_CLOUD_COVER" not in out
    assert "1 item(s) without eo:cloud_cover left out" in out

    rc, out, err = _run(capsys, "search", "--catalog", path, "--collection", "NOPE")
    assert rc == 2 and COLLECTION in err


def test_static_catalog_over_http(server, stac_files, ids, capsys):
    """A catalog.json at a URL (no item search): walked and filtered locally."""
    root, items = stac_files
    _static_catalog(root / "files" / "static", items, root)
    rc, out, err = _run(capsys, "search", "--catalog", f"{server.url}/files/static/catalog.json",
                        "--collection", COLLECTION, "--datetime", "2023-06-01/..")
    assert rc == 0, err
    assert ids[1] in out and ids[0] not in out and "no item search" in out
    assert "Warning" not in err


@pytest.mark.parametrize("text", ['{"hello": 1}', "<html>", None])
def test_not_a_catalogue(stac_files, tmp_path, capsys, text):
    f = tmp_path / "x.json"
    if text is None:  # an Item, not a catalog
        f.write_text(json.dumps({**stac_files[1][0], "links": []}))
    else:
        f.write_text(text)
    rc, out, err = _run(capsys, "search", "--catalog", f, "--collection", COLLECTION)
    assert rc == 2 and "not a STAC catalogue or API" in err


# ----------------------------------------------------------------------------- COG over HTTP


def test_served_cog_window_over_vsicurl(server, stac_files):
    """Sanity for windowed downloads: GDAL reads a window with HEAD + a few range GETs."""
    import numpy as np
    import rasterio
    from rasterio.windows import Window

    root, items = stac_files
    href = items[0]["assets"]["B15"]["href"]
    path = "/" + href
    before = server.bytes_sent(path)
    win = Window(300, 200, 64, 64)
    with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"):
        with rasterio.open(f"/vsicurl/{server.url}{path}") as ds:
            got = ds.read(1, window=win)
            assert ds.profile["blockxsize"] == 256 and ds.overviews(1)
    with rasterio.open(root / href) as ds:
        want = ds.read(1, window=win)
    np.testing.assert_array_equal(got, want)
    ranged = [r for r in server.requests if r["path"] == path and r["method"] == "GET"]
    assert ranged and all(r["status"] == 206 and r["range"] for r in ranged)
    assert server.bytes_sent(path) - before < (root / href).stat().st_size


@pytest.mark.parametrize("token_header", [None, "X-Api-Key"])
def test_next_page_on_another_host_gets_no_token(stac_files, ids, capsys, monkeypatch,
                                                 token_header):
    """A ``next`` link to another host (issue 29) is followed without the credentials,
    unless --auth-host names that host."""
    root, items = stac_files
    monkeypatch.setenv("SATSEG_STAC_TOKEN", TOKEN)
    with StacServer(root, token=TOKEN, token_header=token_header or "Authorization") as srv:
        srv.token_hosts, srv.next_on_alt = {"127.0.0.1"}, True
        for it in items:
            srv.add_item(it)
        alt = srv.alt_url.removeprefix("http://")
        extra = ["--token-header", token_header] if token_header else []
        argv = ["search", "--catalog", srv.url, "--collection", COLLECTION,
                "--page-size", "1", *extra]

        def carried(host: str) -> list[bool]:
            return [any(TOKEN in str(v) for v in r["headers"].values())
                    for r in srv.requests_to(host) if r["path"] == "/search"]

        rc, out, err = _run(capsys, *argv)
        assert rc == 0, err
        assert ids[0] in out and ids[1] in out and TOKEN not in out + err
        assert carried("127.0.0.1") == [True] and carried("localhost") == [False]
        srv.requests.clear()
        rc, out, err = _run(capsys, *argv, "--auth-host", alt)
        assert rc == 0, err
        assert carried("127.0.0.1") == [True] and carried("localhost") == [True]


def test_auth_host_parsing_and_credential_rule():
    from satseg_jax.catalog.trust import Trust, is_credential, parse_auth_host

    assert parse_auth_host("Data.Example.org") == ("data.example.org", None)
    assert parse_auth_host("cdn.example.org:8443") == ("cdn.example.org", 8443)
    assert parse_auth_host("[::1]:9000") == ("::1", 9000)
    assert parse_auth_host("https://x.org:444/a?sig=1") == ("x.org", 444)
    with pytest.raises(SatsegError, match="--auth-host"):
        parse_auth_host("bad host/")
    t = Trust.build(["https://stac.example.org/v1"], ["cdn.example.org", "s3.example.org:9000"])
    assert t.allows("https://stac.example.org/files/a.tif")
    assert t.allows("https://stac.example.org:443/x")
    assert not t.allows("http://stac.example.org/x")  # another scheme: another origin
    assert not t.allows("https://stac.example.org:8443/x")
    assert not t.allows("https://evil.example.org/x")
    assert t.allows("http://cdn.example.org:8080/a") and t.allows("https://s3.example.org:9000/")
    assert not t.allows("https://s3.example.org/") and not t.allows("file:///etc/passwd")
    up = Trust.build(["http://stac.example.org/"])  # an https upgrade keeps the token
    assert up.allows("https://stac.example.org/x") and not up.allows("http://cdn.example.org/")
    assert not Trust.build(["https://stac.example.org/"]).allows("http://stac.example.org/")
    assert all(is_credential(n) for n in ("Authorization", "X-Api-Key", "Cookie",
                                          "X-Auth-Token", "Proxy-Authorization"))
    assert not any(is_credential(n) for n in ("User-Agent", "Accept", "X-Trace"))
    assert is_credential("X-Custom", token_header="x-custom")


def test_next_page_refused_by_another_host_names_it(stac_files, capsys, monkeypatch):
    root, items = stac_files
    monkeypatch.setenv("SATSEG_STAC_TOKEN", TOKEN)
    with StacServer(root, token=TOKEN) as srv:
        srv.next_on_alt = True  # and every host wants the token
        for it in items:
            srv.add_item(it)
        alt = srv.alt_url.removeprefix("http://")
        argv = ["search", "--catalog", srv.url, "--collection", COLLECTION, "--page-size", "1"]
        rc, out, err = _run(capsys, *argv)
        assert rc == 2 and len(err.strip().splitlines()) == 1, err
        assert err.startswith("satseg: error:") and "HTTP 401" in err
        assert f"from {alt}" in err and f"--auth-host {alt}" in err
        assert "cannot reach" not in err  # ours, not pystac-client's wrapper
        assert TOKEN not in out + err and "token=" not in err
        rc, out, err = _run(capsys, *argv, "--auth-host", alt)
        assert rc == 0, err
