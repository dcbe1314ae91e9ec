"""``satseg download`` and ``satseg compose --item`` against a local STAC API (issue 12).

The server (tests/helpers/stac_server.py) serves two items whose assets are
Cloud-Optimised GeoTIFFs generated on the fly, answers HTTP Range requests, counts the
bytes it sends, and can fail, throttle or demand a token.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio

from satseg_jax.cli import main
from tests.helpers.stac_data import make_items
from tests.helpers.stac_server import StacServer

REPO = Path(__file__).resolve().parents[1]
TOKEN = "s3cr3t-t0ken-for-tests"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("stac")
    items = make_items(root, n=2)
    return root, items


def _start(root, items, token=None):
    srv = StacServer(root, token=token)
    srv.__enter__()
    for cid in sorted({it["collection"] for it in items}):
        srv.add_collection(cid, "test collection")
    for it in items:
        srv.add_item(it)
    return srv


def _items_file(srv: StacServer, tmp_path: Path, capsys) -> Path:
    """items.json as ``satseg search --out`` writes it (searched with the token if set)."""
    from satseg_jax.catalog.auth import request_headers
    from satseg_jax.catalog.search import search_items, write_item_collection

    items = []
    for cid in sorted(srv._collections):
        items += search_items(srv.url, cid, headers=request_headers(None, [])).items
    return write_item_collection(items, tmp_path / "items.json")


def _url_path(root: Path, item: dict, key: str) -> str:
    """The server path (``/files/...``) of an item's asset, as the request log shows it."""
    return "/files/" + _served_file(root, item, key).relative_to(root / "files").as_posix()


def _served_file(root: Path, item: dict, key: str) -> Path:
    href = item["assets"][key]["href"]
    return root / href.split("/files/", 1)[-1] if "/files/" in href else root / href


def test_download_whole_files_bit_identical_with_token(served, tmp_path, capsys, monkeypatch):
    root, items = served
    monkeypatch.setenv("SATSEG_STAC_TOKEN", TOKEN)
    with _start(root, items, token=TOKEN) as srv:
        items_json = _items_file(srv, tmp_path, capsys)
        out = tmp_path / "dl"
        assert main(["download", "--items", str(items_json), "--assets", "blue,B16",
                     "--out", str(out), "--workers", "2"]) == 0
    cap = capsys.readouterr()
    manifest_text = (out / "manifest.json").read_text()
    for text in (cap.out, cap.err, manifest_text):
        assert TOKEN not in text
    manifest = json.loads(manifest_text)
    assert len(manifest["files"]) == 4
    for it in items:
        for key in ("B13", "B16"):
            got = out / it["id"] / f"{key}.tif"
            assert _sha(got) == _sha(_served_file(root, it, key))
            e = next(e for e in manifest["files"] if (e["item"], e["asset"]) == (it["id"], key))
            assert e["checksum"] == it["assets"][key]["file:checksum"]
            assert e["bytes"] == got.stat().st_size and e["window"] is None
            assert e["url"].startswith("http://127.0.0.1") and "?" not in e["url"]
            assert e["crs"] and e["datetime"] == it["properties"]["datetime"]
    assert {e["common_name"] for e in manifest["files"]} == {"blue", "nir"}
    assert not list(out.rglob(".*.part"))


def test_aoi_reads_only_the_covering_window(served, tmp_path, capsys):
    root, items = served
    it = items[0]
    w, s, e, n = it["bbox"]
    aoi = {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [[
        [w + 0.40 * (e - w), s + 0.40 * (n - s)], [w + 0.55 * (e - w), s + 0.40 * (n - s)],
        [w + 0.55 * (e - w), s + 0.55 * (n - s)], [w + 0.40 * (e - w), s + 0.55 * (n - s)],
        [w + 0.40 * (e - w), s + 0.40 * (n - s)]]]}}
    (tmp_path / "aoi.geojson").write_text(json.dumps(aoi))
    with _start(root, [it]) as srv:
        items_json = _items_file(srv, tmp_path, capsys)
        before = srv.bytes_sent()
        out = tmp_path / "dl"
        assert main(["download", "--items", str(items_json), "--assets", "red",
                     "--aoi", str(tmp_path / "aoi.geojson"), "--out", str(out)]) == 0
        sent = srv.bytes_sent() - before
    src_path = _served_file(root, it, "B15")
    assert sent < 0.3 * src_path.stat().st_size, (sent, src_path.stat().st_size)
    entry = json.loads((out / "manifest.json").read_text())["files"][0]
    col, row, width, height = entry["window"]
    assert 0 < width < 400 and 0 < height < 400
    from rasterio.windows import Window

    with rasterio.open(src_path) as src, rasterio.open(out / it["id"] / "B15.tif") as got:
        want = src.read(window=Window(col, row, width, height))
        np.testing.assert_array_equal(got.read(), want)
        assert got.crs == src.crs
        assert got.transform == src.window_transform(Window(col, row, width, height))


def test_retry_then_success_and_404_leaves_nothing(served, tmp_path, capsys):
    root, items = served
    it = items[1]
    with _start(root, [it]) as srv:
        items_json = _items_file(srv, tmp_path, capsys)
        path = _url_path(root, it, "B14")
        srv.fail_plan[path] = [500, 500]
        out = tmp_path / "dl"
        assert main(["download", "--items", str(items_json), "--assets", "green",
                     "--out", str(out), "--retry-backoff", "0.01"]) == 0
        assert [r["status"] for r in srv.requests if r["path"] == path][:3] == [500, 500, 200]
        assert _sha(out / it["id"] / "B14.tif") == _sha(_served_file(root, it, "B14"))
        missing = _url_path(root, it, "B13")
        srv.missing.add(missing)
        capsys.readouterr()
        rc = main(["download", "--items", str(items_json), "--assets", "blue",
                   "--out", str(out), "--retry-backoff", "0.01"])
    err = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert rc == 2 and err.startswith("satseg: error:")
    assert it["id"] in err and "B13" in err and "404" in err
    assert not (out / it["id"] / "B13.tif").exists()
    assert not list(out.rglob(".*.part"))
    # the complete file from before is kept and still recorded
    assert [e["asset"] for e in json.loads((out / "manifest.json").read_text())["files"]] == \
        ["B14"]


def test_killed_download_resumes_without_refetching(served, tmp_path, capsys):
    root, items = served
    it = items[0]
    with _start(root, [it]) as srv:
        items_json = _items_file(srv, tmp_path, capsys)
        first = _url_path(root, it, "B13")
        second = _url_path(root, it, "B16")
        srv.throttle[second] = 0.05
        out = tmp_path / "dl"
        cmd = [sys.executable, "-m", "satseg_jax.cli", "download", "--items", str(items_json),
               "--assets", "B13,B16", "--out", str(out), "--workers", "1"]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        part = out / it["id"] / ".B16.tif.part"
        deadline = time.time() + 60
        while time.time() < deadline and not (part.exists() and part.stat().st_size > 65536 * 2):
            time.sleep(0.05)
        proc.kill()
        proc.wait()
        assert (out / it["id"] / "B13.tif").exists(), "first file should be complete"
        assert part.exists() and 0 < part.stat().st_size < _served_file(
            root, it, "B16").stat().st_size
        have = part.stat().st_size
        del srv.throttle[second]
        n_first = sum(r["method"] == "GET" and r["path"] == first for r in srv.requests)
        assert main(["download", "--items", str(items_json), "--assets", "B13,B16",
                     "--out", str(out)]) == 0
        assert sum(r["method"] == "GET" and r["path"] == first for r in srv.requests) == n_first
        # (the killed run's own GET may be logged late: its handler thread only notices
        # the dead client after a throttled write, so look for the resume by its Range)
        resumed = [r for r in srv.requests if r["path"] == second and r["method"] == "GET"
                   and r["range"] == f"bytes={have}-"]
        assert len(resumed) == 1 and resumed[0]["status"] == 206, srv.requests
        assert resumed[0]["bytes"] == _served_file(root, it, "B16").stat().st_size - have
    for key in ("B13", "B16"):
        assert _sha(out / it["id"] / f"{key}.tif") == _sha(_served_file(root, it, key))
    assert not part.exists()


def test_compose_item_equals_compose_by_file_names(served, tmp_path, capsys):
    root, items = served
    it = items[0]
    with _start(root, [it]) as srv:
        items_json = _items_file(srv, tmp_path, capsys)
        out = tmp_path / "dl"
        assert main(["download", "--items", str(items_json), "--assets", "B13,B14,B15,B16",
                     "--out", str(out)]) == 0
    d = out / it["id"]
    assert main(["compose", "--item", str(d), "--bands", "red,green,blue,nir",
                 "--out", str(tmp_path / "a.tif")]) == 0
    assert main(["compose", "--bands", str(d / "B15.tif"), str(d / "B14.tif"),
                 str(d / "B13.tif"), str(d / "B16.tif"), "--out", str(tmp_path / "b.tif")]) == 0
    with rasterio.open(tmp_path / "a.tif") as a, rasterio.open(tmp_path / "b.tif") as b:
        np.testing.assert_array_equal(a.read(), b.read())
        assert a.profile == b.profile and a.descriptions == b.descriptions
    capsys.readouterr()
    assert main(["compose", "--item", str(d), "--bands", "swir16",
                 "--out", str(tmp_path / "c.tif")]) == 2
    assert "swir16" in capsys.readouterr().err


def _box(item: dict, f0: float, f1: float) -> dict:
    w, s, e, n = item["bbox"]
    x0, x1 = w + f0 * (e - w), w + f1 * (e - w)
    y0, y1 = s + f0 * (n - s), s + f1 * (n - s)
    return {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1],
                                                [x0, y0]]]}


def test_other_aoi_refetches_and_local_hrefs_are_copied(served, tmp_path, capsys):
    """A rerun with another --aoi must not keep the old window; a static catalogue on
    disk (plain file paths as hrefs) downloads by copying, verified like HTTP."""
    from satseg_jax.catalog.download import download_items

    root, items = served
    it = items[0]
    out = tmp_path / "dl"
    windows = []
    for f0, f1 in ((0.1, 0.2), (0.6, 0.8)):
        (tmp_path / "aoi.geojson").write_text(json.dumps(_box(it, f0, f1)))
        local = json.loads(json.dumps(it))
        for a in local["assets"].values():
            a["href"] = str(_served_file(root, it, next(
                k for k, v in it["assets"].items() if v["href"] == a["href"])))
        from satseg_jax.catalog.aoi import read_aoi

        s = download_items([local], ["red"], out, aoi_bounds=read_aoi(
            tmp_path / "aoi.geojson")[0], progress=False)
        assert s["fetched"] == 1
        windows.append(json.loads((out / "manifest.json").read_text())["files"][0]["window"])
    assert windows[0] != windows[1]
    s = download_items([local], ["red"], out, progress=False)  # whole file, local copy
    assert s["fetched"] == 1
    assert _sha(out / it["id"] / "B15.tif") == _sha(_served_file(root, it, "B15"))
    entry = json.loads((out / "manifest.json").read_text())["files"][0]
    assert entry["window"] is None and entry["checksum"] == it["assets"]["B15"][
        "file:checksum"]


def test_download_with_search_options_instead_of_items_file(served, tmp_path, capsys):
    root, items = served
    with _start(root, items) as srv:
        out = tmp_path / "dl"
        assert main(["download", "--catalog", srv.url, "--collection",
                     items[0]["collection"], "--max-cloud", "10", "--assets", "nir",
                     "--out", str(out)]) == 0
    assert "1 item(s) found" in capsys.readouterr().out
    files = json.loads((out / "manifest.json").read_text())["files"]
    low = min(items, key=lambda it: it["properties"]["eo:cloud_cover"])
    assert [(e["item"], e["asset"]) for e in files] == [(low["id"], "B16")]
    assert json.loads((out / "manifest.json").read_text())["catalog"] == srv.url


# ----------------------------------------------------------------- credentials per host (29)


def _two_hosts(root, items, token_header="Authorization", token_hosts=("127.0.0.1",)):
    """Catalogue at http://127.0.0.1:PORT demanding the token; asset hrefs at
    http://localhost:PORT (another host, same server) that, by default, need none."""
    srv = StacServer(root, token=TOKEN, token_header=token_header)  # started by `with`
    srv.assets_on_alt = True
    srv.token_hosts = set(token_hosts) if token_hosts is not None else None
    for cid in sorted({it["collection"] for it in items}):
        srv.add_collection(cid, "test collection")
    for it in items:
        srv.add_item(it)
    return srv


def _leaked(reqs: list[dict]) -> list[dict]:
    """Requests that carried the token in any header."""
    return [r for r in reqs if any(TOKEN in str(v) for v in r["headers"].values())]


def _no_token_anywhere(out: Path, capsys) -> str:
    cap = capsys.readouterr()
    for text in (cap.out, cap.err, *(p.read_text() for p in out.rglob("manifest.json"))):
        assert TOKEN not in text
    return cap.err.replace("\r", "\n").strip().splitlines()[-1] if cap.err.strip() else ""


@pytest.mark.parametrize("token_header", ["Authorization", "X-Api-Key"])
def test_token_stays_on_the_catalogue_host_unless_auth_host(served, tmp_path, capsys,
                                                            monkeypatch, token_header):
    root, items = served
    it = items[0]
    monkeypatch.setenv("SATSEG_STAC_TOKEN", TOKEN)
    th = [] if token_header == "Authorization" else ["--token-header", token_header]
    with _two_hosts(root, [it], token_header) as srv:
        alt = srv.alt_url.removeprefix("http://")
        args = ["download", "--collection", it["collection"], "--catalog", srv.url,
                "--assets", "blue", "--header", "X-Trace: t-1", *th]
        assert main([*args, "--out", str(tmp_path / "a")]) == 0
        to_alt = srv.requests_to("localhost")
        assert to_alt and not _leaked(to_alt)  # fetched without the token
        assert all(r["headers"].get("X-Trace") == "t-1" for r in to_alt)  # plain header
        assert _leaked(srv.requests_to("127.0.0.1"))  # the catalogue did get it
        _no_token_anywhere(tmp_path / "a", capsys)
        srv.requests.clear()
        assert main([*args, "--out", str(tmp_path / "b"), "--auth-host", alt]) == 0
        to_alt = srv.requests_to("localhost")
        assert to_alt and len(_leaked(to_alt)) == len(to_alt)
        _no_token_anywhere(tmp_path / "b", capsys)
    assert _sha(tmp_path / "a" / it["id"] / "B13.tif") == _sha(_served_file(root, it, "B13"))


def test_redirect_to_another_host_drops_every_credential(served, tmp_path, capsys,
                                                         monkeypatch):
    root, items = served
    it = items[1]
    monkeypatch.setenv("SATSEG_STAC_TOKEN", TOKEN)
    with _two_hosts(root, [it], "X-Api-Key") as srv:
        srv.assets_on_alt = False  # hrefs on the catalogue, which redirects elsewhere
        path = _url_path(root, it, "B14")
        srv.redirects[path] = srv.alt_url + path
        items_json = tmp_path / "items.json"
        assert main(["search", "--catalog", srv.url, "--collection", it["collection"],
                     "--token-header", "X-Api-Key", "--out", str(items_json)]) == 0
        srv.requests.clear()
        assert main(["download", "--items", str(items_json), "--assets", "green",
                     "--token-header", "X-Api-Key", "--header", "Cookie: c00kie-value",
                     "--out", str(tmp_path / "dl")]) == 0
        first = [r for r in srv.requests_to("127.0.0.1") if r["path"] == path]
        assert first and first[0]["status"] == 302 and _leaked(first)
        assert first[0]["headers"].get("Cookie") == "c00kie-value"
        to_alt = srv.requests_to("localhost")
        assert to_alt and not _leaked(to_alt)
        assert not [r for r in to_alt if "Cookie" in r["headers"]]
    _no_token_anywhere(tmp_path / "dl", capsys)
    assert _sha(tmp_path / "dl" / it["id"] / "B14.tif") == _sha(_served_file(root, it, "B14"))


def test_refusal_from_another_host_names_it_and_auth_host(served, tmp_path, capsys,
                                                          monkeypatch):
    root, items = served
    it = items[0]
    monkeypatch.setenv("SATSEG_STAC_TOKEN", TOKEN)
    with _two_hosts(root, [it], token_hosts=None) as srv:  # the asset host wants it too
        alt = srv.alt_url.removeprefix("http://")
        args = ["download", "--collection", it["collection"], "--catalog", srv.url,
                "--assets", "blue", "--retry-backoff", "0.01"]
        assert main([*args, "--out", str(tmp_path / "a")]) == 2
        err = _no_token_anywhere(tmp_path / "a", capsys)
        assert err.startswith("satseg: error:") and "HTTP 401" in err
        assert f"from {alt}" in err and f"--auth-host {alt}" in err and "?" not in err
        assert not _leaked(srv.requests_to("localhost"))
        assert not list((tmp_path / "a").rglob(".*.part"))
        assert main([*args, "--out", str(tmp_path / "b"), "--auth-host", "localhost"]) == 0
        _no_token_anywhere(tmp_path / "b", capsys)


def test_aoi_window_reads_get_no_token_on_another_host(served, tmp_path, capsys, monkeypatch):
    root, items = served
    it = items[0]
    w, s, e, n = it["bbox"]
    aoi = {"type": "Polygon", "coordinates": [[[w, s], [(w + e) / 2, s], [(w + e) / 2, n],
                                               [w, n], [w, s]]]}
    (tmp_path / "aoi.geojson").write_text(json.dumps(aoi))
    monkeypatch.setenv("SATSEG_STAC_TOKEN", TOKEN)
    with _two_hosts(root, [it]) as srv:
        assert main(["download", "--collection", it["collection"], "--catalog", srv.url,
                     "--assets", "red", "--aoi", str(tmp_path / "aoi.geojson"),
                     "--out", str(tmp_path / "dl")]) == 0
        to_alt = srv.requests_to("localhost")
        assert to_alt and not _leaked(to_alt)
    _no_token_anywhere(tmp_path / "dl", capsys)


def test_aoi_read_redirected_to_another_host_drops_custom_header(served, tmp_path, capsys,
                                                                 monkeypatch):
    """GDAL keeps X-Api-Key across redirects; it is given the final URL instead."""
    root, items = served
    it = items[1]
    w, s, e, n = it["bbox"]
    aoi = {"type": "Polygon", "coordinates": [[[w, s], [(w + e) / 2, s], [(w + e) / 2, n],
                                               [w, n], [w, s]]]}
    (tmp_path / "aoi.geojson").write_text(json.dumps(aoi))
    monkeypatch.setenv("SATSEG_STAC_TOKEN", TOKEN)
    with _two_hosts(root, [it], "X-Api-Key") as srv:
        srv.assets_on_alt = False
        path = _url_path(root, it, "B15")
        srv.redirects[path] = srv.alt_url + path
        assert main(["download", "--collection", it["collection"], "--catalog", srv.url,
                     "--token-header", "X-Api-Key", "--assets", "red",
                     "--aoi", str(tmp_path / "aoi.geojson"),
                     "--out", str(tmp_path / "dl")]) == 0
        to_alt = srv.requests_to("localhost")
        assert to_alt and not _leaked(to_alt)
        assert [r for r in srv.requests_to("127.0.0.1") if r["path"] == path]
    _no_token_anywhere(tmp_path / "dl", capsys)
