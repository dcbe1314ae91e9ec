"""``satseg search`` and ``satseg download``: scenes from a STAC catalogue.

Both take the same catalogue, filter and credential options (``add_stac_arguments``);
credentials are redacted from everything printed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from satseg_jax.commands.common import library_default, names, show_progress
from satseg_jax.errors import SatsegError
from satseg_jax.io_utils import refuse_overwriting_inputs

SEARCH = ("satseg_jax.catalog.search", "search_items")
DOWNLOAD = ("satseg_jax.catalog.download", "download_items")


def add_stac_arguments(p: argparse.ArgumentParser) -> None:
    """Catalogue, search filters and credentials: shared by search and download."""
    p.add_argument("--catalog", default="inpe-dgi", metavar="inpe-dgi|inpe-bdc|URL|PATH",
                   help="inpe-dgi (default: https://www.dgi.inpe.br/lgi-stac), inpe-bdc "
                   "(https://data.inpe.br/bdc/stac/v1/), any STAC API URL, or a static "
                   "catalog.json")
    p.add_argument("--collection", default=None, metavar="ID",
                   help="collection id, e.g. CBERS4A_WPM_L4_DN (see --list-collections)")
    p.add_argument("--bbox", default=None, metavar="W,S,E,N",
                   help="area in WGS84 degrees, e.g. -47.9,-15.9,-47.7,-15.7")
    p.add_argument("--aoi", default=None, metavar="AOI.geojson",
                   help="area of interest as GeoJSON (WGS84), instead of --bbox")
    p.add_argument("--datetime", default=None, metavar="START/END",
                   help="date or interval, e.g. 2023-01-01/2023-12-31, 2023-06, 2023-01-01/..")
    p.add_argument("--max-cloud", type=float, default=None, metavar="PCT",
                   help="keep items with eo:cloud_cover <= PCT; items reporting no cloud "
                   "cover are then left out (and counted)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="at most N items")
    p.add_argument("--header", action="append", default=[], metavar="'NAME: VALUE'",
                   help="extra HTTP header for catalogue and file requests (repeatable)")
    p.add_argument("--token-header", default=None, metavar="NAME",
                   help="send SATSEG_STAC_TOKEN as this header instead of Authorization")
    p.add_argument("--auth-host", action="append", default=[], metavar="HOST[:PORT]",
                   help="also send credentials to this host (repeatable; no port: any "
                   "port). By default SATSEG_STAC_TOKEN and credential --headers (names "
                   "with auth, token, key, secret, password, session or cookie) go only "
                   "to the catalogue's own scheme://host:port, never to asset hosts "
                   "(CDNs, object stores) or redirects elsewhere")


def cmd_search(args: argparse.Namespace) -> int:
    from satseg_jax.catalog import search as stac
    from satseg_jax.catalog.aoi import parse_bbox, read_aoi
    from satseg_jax.catalog.auth import redact, request_headers

    refuse_overwriting_inputs({"--out": args.out}, {"--aoi": args.aoi, "--catalog": args.catalog})
    headers = request_headers(args.token_header, args.header)
    if args.list_collections:
        print(stac.format_collections(stac.list_collections(
            args.catalog, headers, args.auth_host, args.token_header)))
        return 0
    if args.bbox and args.aoi:
        raise SatsegError("give --bbox or --aoi, not both")
    result = stac.search_items(
        args.catalog, args.collection, bbox=parse_bbox(args.bbox) if args.bbox else None,
        intersects=read_aoi(args.aoi)[1] if args.aoi else None, datetime=args.datetime,
        max_cloud=args.max_cloud, limit=args.limit, page_size=args.page_size,
        headers=headers, auth_hosts=args.auth_host, token_header=args.token_header)
    if result.items:
        print(stac.format_table(result.items))
    for note in result.notes:
        print(f"note: {note}")
    print(redact(f"{len(result.items)} item(s) in {result.collection} at {result.catalog}"
                 + ("" if result.items else "; widen --bbox/--aoi, --datetime or "
                    "--max-cloud"), headers))
    if args.out:
        out = stac.write_item_collection(result.items, args.out)
        print(f"wrote {out} (STAC ItemCollection; satseg download --items {out})")
    return 0


def _items_from_file(path: Path) -> list[dict]:
    """The features of a STAC ItemCollection written by ``satseg search --out``."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise SatsegError(f"{path}: items file not found (write one with satseg search "
                          "--out)") from None
    except json.JSONDecodeError as e:
        raise SatsegError(f"{path}: not valid JSON ({e})") from None
    items = data.get("features", []) if isinstance(data, dict) else data
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise SatsegError(f"{path}: expected a STAC ItemCollection (satseg search --out)")
    return items


def format_download_summary(summary: dict) -> str:
    """Aligned lines instead of the summary's JSON (manifest.json holds the details)."""
    mb = summary["bytes_written"] / 1e6
    rows = [("files", f"{summary['files']} ({summary['fetched']} fetched, "
                      f"{summary['skipped_complete']} already complete)"),
            ("written", f"{mb:.1f} MB in {summary['seconds']:.1f} s"),
            ("folder", summary["out"])]
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:>{width}}: {v}" for k, v in rows]
    return "\n".join([*lines, f"wrote {summary['manifest']}"])


def cmd_download(args: argparse.Namespace) -> int:
    from satseg_jax.catalog.aoi import parse_bbox, read_aoi
    from satseg_jax.catalog.auth import redact, request_headers
    from satseg_jax.catalog.download import download_items

    # The folder is resumed (never replaced whole); what download writes over is its
    # manifest.json, so an input may sit in the folder but must not be that file.
    refuse_overwriting_inputs({"--out": args.out}, {}, folders=("--out",))
    refuse_overwriting_inputs({"--out": Path(args.out) / "manifest.json"},
                              {"--items": args.items, "--aoi": args.aoi})
    headers = request_headers(args.token_header, args.header)
    aoi_bounds, aoi_geom = read_aoi(args.aoi) if args.aoi else (None, None)
    catalog = None if args.items else args.catalog  # items from a file: their own hrefs
    if args.items:
        if args.collection:
            raise SatsegError("give --items FILE or search options (--collection ...), not both")
        items = _items_from_file(Path(args.items))
    else:
        if not args.collection:
            raise SatsegError("satseg download needs --items items.json or --collection ID "
                              "(with the search options of satseg search)")
        from satseg_jax.catalog.search import search_items

        res = search_items(catalog, args.collection,
                           bbox=parse_bbox(args.bbox) if args.bbox else None,
                           intersects=aoi_geom, datetime=args.datetime,
                           max_cloud=args.max_cloud, limit=args.limit, headers=headers,
                           auth_hosts=args.auth_host, token_header=args.token_header)
        items, catalog = res.items, res.catalog
        print(f"{len(items)} item(s) found in {args.collection}")
    summary = download_items(items, names(args.assets), Path(args.out),
                             aoi_bounds=aoi_bounds, headers=headers, workers=args.workers,
                             retries=args.retries, backoff=args.retry_backoff,
                             catalog=catalog, progress=show_progress(),
                             auth_hosts=args.auth_host, token_header=args.token_header)
    print(redact(format_download_summary(summary), headers))
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """search, download."""
    se = sub.add_parser(
        "search", help="find scenes in a STAC catalogue (INPE's DGI by default)",
        description="Search a STAC API (or a static STAC catalog on disk) for the items of a "
        "collection over an area and dates; print id, date, cloud cover and assets (with "
        "eo:common_name), and with --out write them as a STAC ItemCollection for 'satseg "
        "download --items'. Credentials: SATSEG_STAC_TOKEN (sent as 'Authorization: Bearer "
        "...' or as --token-header NAME) and --header; sent only to the catalogue's host "
        "and --auth-host hosts; never printed. Needs network access "
        "(except for a catalog on disk).")
    add_stac_arguments(se)
    se.add_argument("--page-size", type=int, metavar="N",
                    default=library_default(*SEARCH, "page_size"),
                    help="items per request to the API (default %(default)s)")
    se.add_argument("--out", default=None, metavar="items.json",
                    help="write the matches as a STAC ItemCollection")
    se.add_argument("--list-collections", action="store_true",
                    help="list the catalogue's collections (id, title) and exit")
    se.set_defaults(func=cmd_search)

    dl = sub.add_parser(
        "download", help="fetch assets of STAC items (whole files, or only an --aoi window)",
        description="Fetch the chosen assets of STAC items into OUT/<item id>/<asset>.tif "
        "and write OUT/manifest.json. Items come from 'satseg search --out items.json' or "
        "from the same search options given here. With --aoi only the window covering the "
        "area is read (HTTP range requests on Cloud-Optimised GeoTIFFs). Resumable (a rerun "
        "skips complete files and continues partial ones), verified (size, file:checksum), "
        "retried with backoff. Credentials: SATSEG_STAC_TOKEN (sent as 'Authorization: "
        "Bearer ...' or as --token-header NAME) and --header; sent only to the catalogue's "
        "host (with --items: the items' root link) and --auth-host hosts, never to other "
        "asset hosts or redirects elsewhere; never printed or written.")
    dl.add_argument("--items", default=None, help="STAC ItemCollection from satseg search --out")
    add_stac_arguments(dl)
    dl.add_argument("--assets", required=True,
                    help="comma-separated asset keys or eo:common_name values, e.g. "
                    "red,green,blue,nir or BAND13,BAND14")
    dl.add_argument("--out", required=True, help="download folder")
    dl.add_argument("--workers", type=int, default=library_default(*DOWNLOAD, "workers"),
                    help="files fetched in parallel (default: %(default)s)")
    dl.add_argument("--retries", type=int, default=library_default(*DOWNLOAD, "retries"),
                    help="retries per file on network errors, 5xx and 429 (backoff doubles; "
                    "default: %(default)s)")
    dl.add_argument("--retry-backoff", type=float,
                    default=library_default(*DOWNLOAD, "backoff"),
                    help="seconds before the first retry (default: %(default)s)")
    dl.set_defaults(func=cmd_download)
