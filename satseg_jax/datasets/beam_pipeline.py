"""Example generation with Apache Beam for the tfds builders (``satseg build --beam-runner``).

Why Beam: reading and decoding the patch GeoTIFFs dominates a build, and one machine
takes hours over thousands of scenes. tfds runs a ``GeneratorBasedBuilder`` under Beam
when its ``_split_generators`` returns a ``beam.PTransform`` per split instead of a
Python generator: tfds applies every split's transform to one pipeline, encodes the
examples, orders them by the same hashed keys as its plain writer and writes the shards
from the workers, on the runner named in ``tfds.download.DownloadConfig(beam_runner=...,
beam_options=...)`` (DirectRunner here and in tests; Dataflow, Flink, Spark on a cluster).

One split's transform (``PatchExamples``), WORK being a folder inside the temporary
output folder::

    Create([WORK/<split>.index.jsonl]) -> FlatMap(its rows) -> Reshuffle
        -> Map(read + check one patch) -> (patch_id, example)     (to tfds's writer)
              |
              +-> CombineGlobally(DatasetStats) -> Map(write WORK/<split>.stats.json)

- Why the rows go through a file: ``beam.Create(rows)`` would embed every row in the
  pipeline graph, and remote runners cap the graph's size (Dataflow's job request is
  limited to tens of MB, which the index of a very large build exceeds); the file keeps
  the graph the same size whatever the number of patches.
- Why ``Reshuffle``: runners fuse the steps after a ``Create``, so without a shuffle
  boundary one worker would read every patch of the split.
- Why the statistics are a branch of the pipeline: a plain build counts the examples in
  its own process as tfds writes them (the builder's ``on_example`` callback); under
  Beam the examples exist only on the workers. The branch combines the very examples the
  writer encodes (partial ``DatasetStats`` per bundle, merged with Chan's update), and
  ``build_dataset`` reads the one small JSON per split back. Counts are exact; mean/std
  equal a sequential pass up to float rounding (the merge order is the runner's).
- Why only module-level functions and classes go to the workers: the runner pickles
  what runs there, and a module-level name pickles by reference (never the builder).

Paths (patches folder, output folder) must be readable/writable by the workers: on a
cluster, a filesystem every worker mounts.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from satseg_jax.datasets.classification_folder import example_for
from satseg_jax.datasets.patches_folder import PatchLayout, check_example, read_patch
from satseg_jax.datasets.statistics import DatasetStats
from satseg_jax.datasets.tfenv import import_beam
from satseg_jax.errors import SatsegError

beam = import_beam()



# ----------------------------------------------------------------------------- settings


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def pipeline_runner(name: str):
    """The Beam runner called ``name`` (e.g. DirectRunner, DataflowRunner, or the dotted
    path of a PipelineRunner subclass), or a one-line SatsegError saying what to use."""
    from apache_beam.options.pipeline_options import StandardOptions
    from apache_beam.runners.runner import PipelineRunner, create_runner

    known = ", ".join(StandardOptions.KNOWN_RUNNER_NAMES)
    name = (name or "").strip()
    if not name:
        raise SatsegError(f"--beam-runner: empty; use one of {known}")
    try:
        runner = create_runner(name)
    except ImportError as e:
        raise SatsegError(f"--beam-runner {name}: cannot be loaded ({_one_line(e)}); install "
                          "the runner's dependencies (e.g. pip install \"apache-beam[gcp]\" "
                          "for DataflowRunner) or use DirectRunner") from None
    except ValueError:
        raise SatsegError(f"--beam-runner {name}: not a Beam runner; use one of {known}, or "
                          "the dotted path of a PipelineRunner subclass") from None
    except (AttributeError, TypeError) as e:
        raise SatsegError(f"--beam-runner {name}: not a Beam runner ({_one_line(e)}); use "
                          f"one of {known}, or the dotted path of a PipelineRunner "
                          "subclass") from None
    if not isinstance(runner, PipelineRunner):
        raise SatsegError(f"--beam-runner {name}: {type(runner).__name__} is not a Beam "
                          f"PipelineRunner; use one of {known}")
    return runner


def pipeline_options(text: str | None):
    """``--beam-options`` (one string of Beam flags, shell-quoted) as PipelineOptions.

    Malformed values (``--direct_num_workers=two``) are a one-line SatsegError here, not
    argparse's usage dump and exit in the middle of the pipeline. Flags Beam does not know
    are left to Beam, which warns about them ("Did you mean ...") and, for portable
    runners, forwards them to the job server that may know them.
    """
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

    try:
        flags = shlex.split(text or "")
    except ValueError as e:
        raise SatsegError(f"--beam-options {text!r}: {e}; quote it as one argument, e.g. "
                          "--beam-options \"--direct_num_workers=2 "
                          "--direct_running_mode=multi_processing\"") from None
    options = PipelineOptions(flags)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            options.get_all_options(display_warnings=True)
            runner = options.view_as(StandardOptions).runner
    except SystemExit:
        lines = [x for x in err.getvalue().splitlines() if "error:" in x]
        why = lines[-1].split("error:", 1)[1].strip() if lines else _one_line(err.getvalue())
        raise SatsegError(f"--beam-options {text!r}: {why}; fix the value (see Beam's "
                          "pipeline options for the runner)") from None
    if runner is not None:
        raise SatsegError(f"--beam-options {text!r}: names a runner ({runner}); give it with "
                          "--beam-runner instead")
    return options


def download_config_kwargs(runner: str, options: str | None = None) -> dict[str, Any]:
    """``beam_runner``/``beam_options`` for ``tfds.download.DownloadConfig``, checked.

    Beam's own checks for the runner (DataflowRunner's project, region, temp_location...)
    run here too: Beam would run them only when the pipeline starts, inside the build.
    """
    from apache_beam.options.pipeline_options_validator import PipelineOptionsValidator

    beam_runner, beam_options = pipeline_runner(runner), pipeline_options(options)
    problems = PipelineOptionsValidator(beam_options, beam_runner).validate()
    if problems:
        raise SatsegError(f"--beam-runner {runner}: {' '.join(map(_one_line, problems))} Give "
                          "the missing options with --beam-options, e.g. \"--project=P "
                          "--region=R --temp_location=gs://BUCKET/tmp\" for DataflowRunner")
    return {"beam_runner": beam_runner, "beam_options": beam_options}


# ----------------------------------------------------------------------------- errors

_STEP = re.compile(r"\s*\[while running '[^']*'\]")
_SATSEG_LINE = re.compile(r"SatsegError: (.+)")


def _satseg_message(exc: BaseException) -> str | None:
    """The user-facing message of a SatsegError raised on a worker, if that is the cause.

    Runners re-raise worker errors in their own ways: the same type with the step name
    appended (`` [while running 'train/Read']``), wrapped in another exception, or as text
    holding the worker's traceback (remote runners). All three are recognised.
    """
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    while stack:
        e = stack.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, SatsegError):
            first = str(e).splitlines()[0] if str(e) else ""
            return _STEP.sub("", first).strip()
        stack += [x for x in (e.__cause__, e.__context__) if x is not None]
    for line in reversed(str(exc).splitlines()):
        m = _SATSEG_LINE.search(line)
        if m:
            return _STEP.sub("", m.group(1)).strip()
    return None


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn a SatsegError raised inside the pipeline back into the one-line SatsegError.

    Anything else (a bug) keeps its traceback. Why Beam's loggers are silenced meanwhile:
    the runners also *log* every failing element's traceback (once per step and worker
    thread) before raising it, which would bury the one-line message a user can act on;
    what they log about a failure is in the exception they raise. (Worker *processes*,
    ``--direct_running_mode=multi_processing``, log on their own: quiet them with
    ``--default_sdk_harness_log_level=CRITICAL``.)
    """
    import logging

    log = logging.getLogger("apache_beam")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    except Exception as e:
        msg = _satseg_message(e)
        if msg is None:
            raise
        raise SatsegError(msg) from None
    finally:
        log.setLevel(level)


# ----------------------------------------------------------------------------- workers


def patch_example(record: tuple[str, int, int], root: str, layout: PatchLayout
                  ) -> tuple[str, dict]:
    """(patch_id, example) of one index row: the plain build's ``read_patch`` and check."""
    pid, row, col = record
    example = read_patch(root, pid, row, col)
    check_example(example, layout, Path(root))
    return pid, example


def scene_example(item: tuple[str, int, str]) -> tuple[str, dict]:
    """(example id, example) of one classification image, as the plain build makes it."""
    eid, cid, path = item
    return eid, example_for(eid, cid, Path(path))


class SplitStats(beam.CombineFn):
    """Combines a split's (patch_id, example) pairs into its :class:`DatasetStats` (JSON)."""

    def __init__(self, split: str, num_bands: int, num_classes: int,
                 nodata: float | int | None, masks_dir: str):
        super().__init__()
        self.split, self.num_bands, self.num_classes = split, num_bands, num_classes
        self.nodata, self.masks_dir = nodata, masks_dir

    def create_accumulator(self) -> DatasetStats:
        return DatasetStats(self.num_bands, self.num_classes, self.nodata)

    def add_input(self, acc: DatasetStats, key_example: tuple[str, dict]) -> DatasetStats:
        pid, ex = key_example
        acc.add(self.split, ex["image"], ex["mask"], where=f"{self.masks_dir}/{pid}.tif")
        return acc

    def merge_accumulators(self, accs: Iterable[DatasetStats]) -> DatasetStats:
        it = iter(accs)
        first = next(it)
        for other in it:
            first.merge(other)
        return first

    def extract_output(self, acc: DatasetStats) -> dict:
        return acc.to_json()


def write_json(value: dict, path: str) -> None:
    """Write one split's statistics where ``build_dataset`` reads them back."""
    Path(path).write_text(json.dumps(value))


def read_stats(work_dir: str | Path, into: DatasetStats) -> DatasetStats:
    """Merge the per-split statistics files a Beam build wrote into ``into``; return it."""
    for f in sorted(Path(work_dir).glob(f"*{STATS_SUFFIX}")):
        into.merge(DatasetStats.from_json(json.loads(f.read_text())))
    return into


def write_rows(rows: Iterable[Sequence], path: str | Path) -> str:
    """One JSON list per line: the index rows a split's pipeline reads (see module doc)."""
    with open(path, "w") as fh:
        for row in rows:
            fh.write(json.dumps(list(row)) + "\n")
    return str(path)


def read_rows(path: str) -> Iterator[tuple]:
    """The rows of :func:`write_rows`, as tuples, on a worker."""
    with open(path) as fh:
        for line in fh:
            yield tuple(json.loads(line))


# ----------------------------------------------------------------------------- transforms


INDEX_SUFFIX = ".index.jsonl"
STATS_SUFFIX = ".stats.json"


def _rows(pbegin, rows_path: str):
    """The rows of one split's index file, spread over the workers."""
    return (pbegin
            | "IndexFile" >> beam.Create([rows_path])
            | "Index" >> beam.FlatMap(read_rows)
            | "Spread" >> beam.Reshuffle())


class PatchExamples(beam.PTransform):
    """One split of a patches folder as (patch_id, example), plus its statistics file.

    ``records``: the split's (patch_id, row, col), written to ``WORK/<split>.index.jsonl``
    now; the statistics go to ``WORK/<split>.stats.json`` when the pipeline runs.
    """

    def __init__(self, root: str | Path, records: Iterable[tuple[str, int, int]],
                 layout: PatchLayout, split: str, num_classes: int, work_dir: str | Path):
        super().__init__()
        work = Path(work_dir)
        self._rows = write_rows(records, work / f"{split}{INDEX_SUFFIX}")
        self._stats_path = str(work / f"{split}{STATS_SUFFIX}")
        self._root, self._layout = str(root), layout
        self._split, self._num_classes = split, num_classes

    def expand(self, pbegin):
        examples = (_rows(pbegin, self._rows)
                    | "Read" >> beam.Map(patch_example, root=self._root, layout=self._layout))
        _ = (examples
             | "Statistics" >> beam.CombineGlobally(SplitStats(
                 self._split, len(self._layout.bands), self._num_classes,
                 self._layout.nodata, f"{self._root}/masks"))
             | "WriteStatistics" >> beam.Map(write_json, path=self._stats_path))
        return examples


class SceneExamples(beam.PTransform):
    """One split of a classification folder as (example id, example).

    ``items``: the split's (example id, class id, path), written to
    ``WORK/<split>.index.jsonl`` now.
    """

    def __init__(self, items: Iterable[tuple[str, int, str]], split: str,
                 work_dir: str | Path):
        super().__init__()
        self._rows = write_rows(items, Path(work_dir) / f"{split}{INDEX_SUFFIX}")

    def expand(self, pbegin):
        return _rows(pbegin, self._rows) | "Read" >> beam.Map(scene_example)
