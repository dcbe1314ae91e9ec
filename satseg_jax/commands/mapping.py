"""``satseg map``: many scenes mapped with one run, restartable, divided among processes,
then mosaicked."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from satseg_jax.commands.common import add_commands, library_default, print_wrote, show_progress
from satseg_jax.commands.model import TTA_HELP, add_ema_argument, add_tiling_arguments
from satseg_jax.io_utils import refuse_overwriting_inputs

MAP = ("satseg_jax.mapping.scene_maps", "map_scenes")
MAX_STATUS = 100


def add_date_arguments(p: argparse.ArgumentParser) -> None:
    """--dates, --date-pattern: each scene's date (the manifest's, with --items)."""
    p.add_argument("--dates", metavar="DATES.csv", default=None,
                   help="CSV with the columns id,date (YYYY-MM-DD): each scene's date")
    p.add_argument("--date-pattern", metavar="PATTERN", default=None,
                   help="read each date from the file name: YYYY, MM, DD tokens, * for "
                   "anything, e.g. 'S2_YYYYMMDD_*'")


def add_map_arguments(m: argparse.ArgumentParser) -> None:
    m.add_argument("--workdir", required=True, help="training run")
    m.add_argument("--scenes", metavar="GLOB|DIR|scenes.txt", default=None,
                   help="the scenes: a folder, a quoted glob, or a text file with one path "
                   "per line")
    m.add_argument("--items", metavar="manifest.json", default=None,
                   help="instead of --scenes: the manifest of 'satseg download' (the item id "
                   "is the scene id, its datetime the date)")
    m.add_argument("--asset", default=None, help="with --items: the asset that holds each "
                   "scene, when an item has several")
    m.add_argument("--out", required=True, metavar="MAPDIR",
                   help="MAPDIR/scenes/<id>.tif (COG) and <id>.json (done marker) per scene, "
                   "map.json, mosaic.vrt")
    add_date_arguments(m)
    m.add_argument("--checkpoint", default=library_default(*MAP, "checkpoint"),
                   help="best | latest | a step (default: %(default)s)")
    add_tiling_arguments(m, MAP)
    m.add_argument("--tta", action="store_true", help=TTA_HELP)
    add_ema_argument(m, MAP)
    m.add_argument("--process-index", type=int, default=None, metavar="I",
                   help="this process's share (default: from SATSEG_PROCESS_ID, a SLURM "
                   "array or job step, a TPU VM; else 0)")
    m.add_argument("--process-count", type=int, default=None, metavar="N",
                   help="number of processes sharing the scenes (default: as --process-index)")
    m.add_argument("--mosaic-crs", default=None, metavar="CRS",
                   help="CRS of mosaic.vrt (default: the most common CRS of the scenes)")
    m.add_argument("--cog", action="store_true",
                   help="also write MAPDIR/mosaic.tif, one COG with overviews, once every "
                   "scene is mapped or failed")


def cmd_map(args: argparse.Namespace) -> int:
    """Predict every scene into MAPDIR/scenes/<id>.tif with the tiled predictor (one
    restore and compile per process). A scene already done (its marker, map hash and
    source agree) is skipped, so a rerun after a crash or SIGKILL maps only what is
    missing. Several processes divide the scenes by sorted id (process i maps every n-th)
    and write only their own. A failed scene is reported by id and the others go on; the
    exit status is the number of failed scenes of this process (at most 100). Overlaps in
    mosaic.vrt: the latest date is drawn on top."""
    from tqdm import tqdm

    from satseg_jax.mapping.scene_maps import map_scenes
    from satseg_jax.mapping.scenes import list_scenes, process_share, with_dates

    refuse_overwriting_inputs({"--out": args.out}, {"--workdir": args.workdir,
                                                    "--scenes": args.scenes,
                                                    "--items": args.items},
                              folders=("--out",))
    scenes = with_dates(list_scenes(args.scenes, args.items, args.asset), args.dates,
                        args.date_pattern)
    index, count = process_share(index=args.process_index, count=args.process_count)

    def report(scene, message: str) -> None:
        tqdm.write(f"satseg: error: scene {scene.id}: {message}", file=sys.stderr)

    r = map_scenes(args.workdir, scenes, args.out, checkpoint=args.checkpoint,
                   tile=args.tile, overlap=args.overlap, blend=args.blend, batch=args.batch,
                   tta=args.tta, ema=args.ema, index=index, count=count,
                   progress=show_progress(), on_error=report)
    n_bad = len(r["failed"])
    who = f"process {index + 1} of {count}: " if count > 1 else ""
    print(f"{who}mapped {len(r['mapped'])}, already done {len(r['skipped'])}, failed {n_bad} "
          f"of {r['share']} scene(s) ({r['km2']:.1f} km² mapped) in {r['seconds']:.1f} s")
    print_wrote(_mosaic(args, scenes))
    return min(n_bad, MAX_STATUS)


def _mosaic(args: argparse.Namespace, scenes) -> list[str]:
    """mosaic.vrt over every finished scene; mosaic.tif with --cog once none is missing."""
    from satseg_jax.mapping.mosaic import build_vrt, write_cog
    from satseg_jax.mapping.scene_maps import done_records, failed_records, read_card

    mapdir = Path(args.out)
    done = done_records(mapdir)
    if not (mapdir / "map.json").exists():
        return []
    vrt = build_vrt(mapdir, done, read_card(mapdir)["classes"], args.mosaic_crs)
    if vrt is None:
        return []
    written = [f"{vrt} ({len(done)} scene map(s))"]
    settled = {r["id"] for r in done} | {r["id"] for r in failed_records(mapdir)}
    missing = [s.id for s in scenes if s.id not in settled]
    if args.cog and missing:
        print(f"satseg: note: --cog: {len(missing)} scene(s) are not mapped yet (first: "
              f"{missing[0]}); mosaic.tif is written by the run that finishes the last one",
              file=sys.stderr)
    elif args.cog:
        written.append(f"{write_cog(vrt, mapdir / 'mosaic.tif')} (COG)")
    return written


def add_parser(sub: argparse._SubParsersAction) -> None:
    """map."""
    add_commands(sub, [
        ("map", add_map_arguments, cmd_map,
         "map many scenes with one run: restartable, shared among processes, mosaicked"),
    ])

