"""``satseg download``: fetch chosen assets of STAC items, whole or only an area of interest.

Why this shape:
- **Area-of-interest reads.** A 20 km study area inside a CBERS-4A scene is a few MB of
  a 1 GB band file. With ``aoi`` the file is opened over HTTP (GDAL ``/vsicurl/``, range
  requests on a Cloud-Optimised GeoTIFF), the AOI is reprojected to the asset's CRS and
  only the covering window (whole pixels, rounded outwards) is read and written.
- **Resumable.** Files are written under a hidden ``.<name>.part`` and renamed when
  complete and verified, so a final name always means a complete file and a rerun skips
  it. A whole-file download that was cut resumes with an HTTP ``Range`` request from the
  bytes already on disk.
- **Verified.** The size (``file:size`` or Content-Length) and, when the catalogue gives
  one, ``file:checksum`` (multihash) are checked before the rename; a mismatch deletes
  the partial file and fetches it again once, then fails.
- **Robust.** Connection errors, 5xx and 429 answers are retried with exponential
  backoff; any other 4xx is permanent and names the item and asset. A failed file leaves
  no partial file behind (only a killed process leaves a ``.part`` to resume from).
- **Credentials** (``headers``) go only to the catalogue's origin and ``auth_hosts``
  (:mod:`satseg_jax.catalog.trust`: asset hosts and redirects elsewhere get none) and
  are removed from every message, log line and the manifest
  (:mod:`satseg_jax.catalog.auth`).
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from satseg_jax.catalog.auth import public_url, redact
from satseg_jax.catalog.items import common_names
from satseg_jax.catalog.manifest import (
    Manifest,
    file_sha256,
    multihash_sha256,
    parse_multihash,
)
from satseg_jax.catalog.trust import (
    RefusedError,
    Trust,
    catalog_roots,
    final_url,
    headers_for,
    refused,
    trusted_session,
)
from satseg_jax.errors import SatsegError

CHUNK = 1 << 20
RETRY_STATUS = {429, 500, 502, 503, 504}


@dataclass(frozen=True)
class Job:
    """One asset of one item to fetch."""

    item: str
    asset: str
    href: str
    common_name: str | None
    size: int | None
    checksum: str | None
    datetime: str | None
    dest: Path


class PermanentError(Exception):
    pass


class RetryableError(Exception):
    pass


def select_assets(item: dict, wanted: list[str]) -> list[tuple[str, dict]]:
    """(key, asset) for each wanted name: an asset key, else a unique eo:common_name."""
    assets = item.get("assets", {})
    out = []
    for w in wanted:
        if w in assets:
            out.append((w, assets[w]))
            continue
        hits = [k for k, a in assets.items() if w.lower() in (n.lower() for n in
                                                               common_names(a))]
        if len(hits) == 1:
            out.append((hits[0], assets[hits[0]]))
            continue
        have = ", ".join(f"{k}({'/'.join(common_names(a)) or '-'})"
                         for k, a in sorted(assets.items()))
        why = f"matches assets {', '.join(hits)} by common name" if hits else "matches no asset"
        raise SatsegError(f"item {item.get('id')}: --assets {w!r} {why}; available: {have}. "
                          "Name asset keys (or eo:common_name values)")
    return out


def _dest_name(key: str, href: str) -> str:
    suffix = Path(urlparse(href).path).suffix.lower()
    return key + (suffix if suffix in (".tif", ".tiff", ".jp2", ".png", ".jpg") else ".tif")


def plan(items: list[dict], wanted: list[str], out_dir: Path) -> list[Job]:
    """Jobs for every item × wanted asset (selection errors raised before any fetch)."""
    jobs = []
    for it in items:
        iid = str(it.get("id"))
        if not iid or "/" in iid or iid.startswith("."):
            raise SatsegError(f"item id {iid!r} cannot name a folder")
        for key, a in select_assets(it, wanted):
            names = common_names(a)
            jobs.append(Job(
                item=iid, asset=key, href=a["href"],
                common_name=names[0] if len(names) == 1 else None,
                size=a.get("file:size"), checksum=a.get("file:checksum"),
                datetime=(it.get("properties") or {}).get("datetime"),
                dest=out_dir / iid / _dest_name(key, a["href"])))
    return jobs


def _part(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.part")


def _aoi_part(dest: Path) -> Path:
    """AOI reads get their own temporary name: a killed AOI run's small GeoTIFF must
    never be taken for the first bytes of the whole remote file."""
    return dest.with_name(f".{dest.name}.aoi.part")


def _validator(part: Path) -> Path:
    return part.with_name(part.name + ".json")


def is_local(href: str) -> bool:
    return "://" not in href or href.startswith("file://")


def _local_path(href: str) -> Path:
    from urllib.parse import unquote

    return Path(unquote(urlparse(href).path)) if href.startswith("file://") else Path(href)


# ----------------------------------------------------------------------------- whole files


def _copy_local(job: Job, bar) -> None:
    """A static catalogue on disk: copy the asset file (then verified like a download)."""
    import shutil

    src = _local_path(job.href)
    if not src.is_file():
        raise PermanentError(f"file {src} not found")
    if bar is not None:
        bar.reset(total=src.stat().st_size)
    shutil.copyfile(src, _part(job.dest))
    if bar is not None:
        bar.update(src.stat().st_size)


def _fetch_whole(job: Job, headers: dict, bar, trust: Trust) -> None:
    """GET ``job.href`` into the .part file, resuming from its length with Range.

    A resume is only trusted when the server answers 206 from exactly the bytes on disk
    and (through ``If-Range`` with the ETag / Last-Modified saved when the part was
    started) for the same version of the file; anything else restarts from zero.
    """
    import json

    import requests

    part, meta = _part(job.dest), _validator(_part(job.dest))
    have = part.stat().st_size if part.exists() else 0
    saved = {}
    if have and meta.exists():
        try:
            saved = json.loads(meta.read_text())
        except json.JSONDecodeError:
            saved = {}
    h = dict(headers)
    if have:
        h["Range"] = f"bytes={have}-"
        if saved.get("etag") or saved.get("last_modified"):
            h["If-Range"] = saved.get("etag") or saved.get("last_modified")
    try:
        with trusted_session(headers, trust) as s, \
                s.get(job.href, headers=h, stream=True, timeout=60) as r:
            if r.status_code == 416 and have:
                total = r.headers.get("Content-Range", "").rpartition("/")[2]
                if total.isdigit() and int(total) == have:
                    return  # the .part already holds the whole file
                part.unlink(missing_ok=True)
                raise RetryableError("HTTP 416 for a partial file; starting over")
            if r.status_code in RETRY_STATUS:
                raise RetryableError(f"HTTP {r.status_code}")
            if r.status_code in (401, 403):
                raise refused(r.status_code, r.url, trust, headers)
            if r.status_code >= 400:
                raise PermanentError(f"HTTP {r.status_code}")
            start = r.headers.get("Content-Range", "").removeprefix("bytes ").split("-")[0]
            resume = bool(have) and r.status_code == 206 and start == str(have)
            if not resume:
                have = 0
                meta.write_text(json.dumps({"etag": r.headers.get("ETag"),
                                            "last_modified": r.headers.get("Last-Modified")}))
            length = r.headers.get("Content-Length")
            total = int(length) + have if length else job.size
            if bar is not None:
                bar.reset(total=total)
                bar.update(have)
            with open(part, "ab" if resume else "wb") as fh:
                for block in r.iter_content(CHUNK):
                    fh.write(block)
                    if bar is not None:
                        bar.update(len(block))
            got = part.stat().st_size
            if total is not None and got != total:
                raise RetryableError(f"connection closed after {got} of {total} bytes")
    except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
            requests.exceptions.InvalidSchema) as e:
        raise PermanentError(f"unusable URL ({type(e).__name__})") from None
    except requests.RequestException as e:  # dropped connections, timeouts, cut bodies
        raise RetryableError(type(e).__name__) from None


def _verify(job: Job, path: Path) -> str:
    """Check size and checksum; return the file's sha256 hex."""
    size = path.stat().st_size
    if job.size is not None and size != int(job.size):
        raise RetryableError(f"size {size} bytes, the catalogue says {job.size}")
    digest = file_sha256(path)
    if job.checksum:
        algo, want = parse_multihash(job.checksum)
        got = digest if algo == "sha256" else _hash(path, algo)
        if got != want:
            raise RetryableError(f"{algo} checksum mismatch")
    return digest


def _hash(path: Path, algo: str) -> str:
    import hashlib

    h = hashlib.new(algo)
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------- AOI windows


@contextmanager
def gdal_http_env(headers: dict):
    """rasterio.Env for /vsicurl/ with our headers in a private temporary header file
    (never in the environment or on a command line), and GDAL's own HTTP retries."""
    import rasterio

    fd, path = tempfile.mkstemp(prefix="satseg_hdr_", suffix=".txt")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write("".join(f"{k}: {v}\n" for k, v in headers.items()))
        with rasterio.Env(GDAL_HTTP_HEADER_FILE=path if headers else None,
                          GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR",
                          CPL_VSIL_CURL_USE_HEAD="YES", GDAL_HTTP_MAX_RETRY="3",
                          GDAL_HTTP_RETRY_DELAY="0.5", VSI_CACHE="TRUE"):
            yield
    finally:
        os.unlink(path)


def aoi_window(ds, aoi_bounds_wgs84: tuple[float, float, float, float]):
    """The pixel window of ``ds`` covering the AOI (reprojected, rounded outwards)."""
    import math

    from rasterio.warp import transform_bounds
    from rasterio.windows import Window, from_bounds

    if ds.crs is None:
        raise SatsegError("asset has no CRS; an --aoi cannot be placed on it")
    b = transform_bounds("EPSG:4326", ds.crs, *aoi_bounds_wgs84, densify_pts=21)
    w = from_bounds(*b, transform=ds.transform)
    c0, r0 = math.floor(w.col_off + 1e-9), math.floor(w.row_off + 1e-9)
    c1 = math.ceil(w.col_off + w.width - 1e-9)
    r1 = math.ceil(w.row_off + w.height - 1e-9)
    c0, r0, c1, r1 = max(c0, 0), max(r0, 0), min(c1, ds.width), min(r1, ds.height)
    if c1 <= c0 or r1 <= r0:
        return None
    return Window(c0, r0, c1 - c0, r1 - r0)


def _fetch_window(job: Job, aoi_bounds, headers: dict, trust: Trust) -> tuple[str, list[int]]:
    """Read the AOI window of the remote COG into the .part file (a tiled GeoTIFF)."""
    import rasterio
    from rasterio.errors import RasterioIOError
    from rasterio.windows import transform as win_transform

    part = _aoi_part(job.dest)
    url = job.href if is_local(job.href) else final_url(job.href, headers, trust)
    href = str(_local_path(url)) if is_local(url) else "/vsicurl/" + url
    try:
        with gdal_http_env(headers_for(url, headers, trust)), rasterio.open(href) as src:
            win = aoi_window(src, aoi_bounds)
            if win is None:
                raise PermanentError("the --aoi does not overlap this asset")
            data = src.read(window=win)
            profile = {"driver": "GTiff", "width": int(win.width), "height": int(win.height),
                       "count": src.count, "dtype": src.dtypes[0], "crs": src.crs,
                       "transform": win_transform(win, src.transform), "nodata": src.nodata,
                       "compress": "deflate", "tiled": True, "blockxsize": 256,
                       "blockysize": 256}
            crs = src.crs.to_string()
            descriptions = src.descriptions
        with rasterio.open(part, "w", **profile) as dst:
            dst.write(data)
            if any(descriptions):
                dst.descriptions = descriptions
    except RasterioIOError as e:
        text = str(e)
        code = re.search(r"HTTP (?:response )?code:? ?(\d{3})", text)
        if code and code.group(1) in ("401", "403"):
            raise refused(int(code.group(1)), url, trust, headers) from None
        if code and code.group(1) in ("400", "404", "410"):
            raise PermanentError(f"HTTP {code.group(1)}") from None
        if code is None and is_local(job.href):
            raise PermanentError(text) from None
        raise RetryableError(text) from None
    return crs, [int(win.col_off), int(win.row_off), int(win.width), int(win.height)]


def _file_crs(path: Path) -> str | None:
    import rasterio

    try:
        with rasterio.open(path) as ds:
            return ds.crs.to_string() if ds.crs else None
    except Exception:  # a non-raster asset (e.g. metadata) has no CRS
        return None


# ----------------------------------------------------------------------------- driver


def _run_job(job: Job, manifest: Manifest, headers: dict, aoi_bounds, retries: int,
             backoff: float, bars, trust: Trust) -> dict:
    """Fetch one job with retries; record it in the manifest; return its entry."""
    job.dest.parent.mkdir(parents=True, exist_ok=True)
    part = _part(job.dest) if aoi_bounds is None else _aoi_part(job.dest)
    where = f"item {job.item} asset {job.asset} ({public_url(job.href)})"
    attempt = 0
    restarted = False

    def clean() -> None:
        part.unlink(missing_ok=True)
        _validator(part).unlink(missing_ok=True)

    while True:
        try:
            window = None
            if aoi_bounds is not None:
                crs, window = _fetch_window(job, aoi_bounds, headers, trust)
                digest = file_sha256(part)
            else:
                with bars.file(job) as bar:
                    if is_local(job.href):
                        _copy_local(job, bar)
                    else:
                        _fetch_whole(job, headers, bar, trust)
                try:
                    digest = _verify(job, part)
                except RetryableError:
                    if restarted:
                        raise PermanentError("verification failed twice") from None
                    clean()  # a corrupt resume: start over, once
                    restarted = True
                    raise
                crs = _file_crs(part)
            part.replace(job.dest)  # replaces an older version only now, when complete
            _validator(part).unlink(missing_ok=True)
            break
        except RetryableError as e:
            attempt += 1
            if attempt > retries:
                clean()
                raise SatsegError(redact(f"{where}: failed after {retries} retries "
                                         f"({e}); check the network and rerun (complete "
                                         "files are kept)", headers)) from None
            time.sleep(backoff * 2 ** (attempt - 1))
        except RefusedError as e:
            clean()
            raise SatsegError(redact(f"{where}: {e}", headers)) from None
        except PermanentError as e:
            clean()
            raise SatsegError(redact(f"{where}: {e}; check the item/asset (or credentials: "
                                     "SATSEG_STAC_TOKEN, --header)", headers)) from None
    entry = {"item": job.item, "asset": job.asset, "common_name": job.common_name,
             "path": job.dest.relative_to(manifest.root).as_posix(),
             "url": public_url(job.href), "bytes": job.dest.stat().st_size,
             "checksum": multihash_sha256(digest), "source_checksum": job.checksum,
             "datetime": job.datetime, "crs": crs, "window": window,
             "aoi": list(aoi_bounds) if aoi_bounds is not None else None}
    manifest.record(entry)
    return entry


class _Bars:
    """tqdm: one overall bar (files) and one bar per file in flight."""

    def __init__(self, total: int, enable: bool) -> None:
        from tqdm import tqdm

        self.enable = enable
        self.overall = tqdm(total=total, desc="download", unit="file", disable=not enable)

    @contextmanager
    def file(self, job: Job):
        from tqdm import tqdm

        bar = tqdm(total=job.size, desc=f"{job.item}/{job.asset}", unit="B",
                   unit_scale=True, leave=False, disable=not self.enable)
        try:
            yield bar
        finally:
            bar.close()


def download_items(items: list[dict], assets: list[str], out_dir: str | Path,
                   aoi_bounds: tuple[float, float, float, float] | None = None,
                   headers: dict | None = None, workers: int = 4, retries: int = 5,
                   backoff: float = 0.5, catalog: str | None = None,
                   progress: bool = True, auth_hosts: list[str] | None = None,
                   token_header: str | None = None) -> dict:
    """Fetch ``assets`` (keys or eo:common_name) of every item into ``out_dir``.

    ``aoi_bounds``: (W, S, E, N) in WGS84 degrees; only the covering window of each
    asset is read. Returns a summary: files fetched, skipped (complete from an earlier
    run), bytes written. Raises SatsegError naming the item and asset on a permanent
    failure; files completed before it are kept (and listed in the manifest).
    Credential headers go only to ``catalog``'s origin (without one: the items' agreed
    ``root`` link) and ``auth_hosts`` (``HOST[:PORT]``); ``token_header``: the name
    ``SATSEG_STAC_TOKEN`` is sent as, a credential whatever it is called.
    """
    headers = dict(headers or {})
    roots = catalog_roots(items) if catalog is None else {catalog}
    trust = Trust.build(roots if len(roots) == 1 else (), auth_hosts, token_header)
    if not items:
        raise SatsegError("no items to download (the search matched nothing?)")
    if workers < 1:
        raise SatsegError(f"--workers {workers}: must be 1 or more")
    out_dir = Path(out_dir)
    jobs = plan(items, assets, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(out_dir, public_url(catalog) if catalog else None)
    todo, skipped = [], []
    for j in jobs:
        e = manifest.entry(j.item, j.asset)
        want = list(aoi_bounds) if aoi_bounds is not None else None
        # complete = on disk under its final name, recorded, and read for the same AOI
        # (or whole); otherwise fetched again, replacing the old file only on success
        if j.dest.exists() and e is not None and e.get("aoi") == want:
            skipped.append(j)
        else:
            todo.append(j)
    bars = _Bars(len(jobs), progress)
    bars.overall.update(len(skipped))
    fetched = []
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max(1, min(workers, len(todo) or 1))) as pool:
        futures = {pool.submit(_run_job, j, manifest, headers, aoi_bounds, retries, backoff,
                               bars, trust): j for j in todo}
        try:
            for f in as_completed(futures):
                fetched.append(f.result())
                bars.overall.update(1)
        except BaseException:
            for f in futures:
                f.cancel()
            raise
        finally:
            bars.overall.close()
    return {"out": str(out_dir), "files": len(jobs), "fetched": len(fetched),
            "skipped_complete": len(skipped),
            "bytes_written": sum(e["bytes"] for e in fetched),
            "seconds": round(time.perf_counter() - t0, 2),
            "manifest": str(manifest.path)}
