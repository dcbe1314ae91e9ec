"""The tensorflow-datasets builder over a ``satseg patches`` folder (sharded TFRecords).

Importing this module registers the builder as ``satseg_patches`` with tfds.

Features of every example:

- ``image``: (S, S, C) in the source dtype (uint8/uint16/float32...), stored as raw
  bytes, so pixels (NaN payloads included) come back bit for bit;
- ``mask``: (S, S) uint8 class ids, 255 = ignore, raw bytes;
- ``patch_id``: ``r{row:06d}_c{col:06d}``; ``row``/``col``: int32 pixel offsets of the
  patch in the scene;
- ``crs``: WKT of the patch's CRS, or "" when it has none;
- ``transform``: float64 (6,) affine coefficients ``(a, b, c, d, e, f)`` in rasterio
  order (``x = a*col + b*row + c``, ``y = d*col + e*row + f``), stored as raw bytes
  because a plain tf.train float feature would round them to float32.

Why the features come from the constructor: S, C and the dtype depend on the patches
folder, so ``build_dataset`` passes a :class:`PatchLayout`. When tfds constructs the
class itself (``tfds.load("satseg_patches", data_dir=DATA)``) there is no layout, and
the features are restored from the ``features.json`` tfds wrote next to the records.

Why raw bytes and not zlib: deflating a 256×256×4 uint16 patch costs ~40 ms (a build of
a few thousand patches would take minutes) and inflating it ~3 ms at every read in
training, for about a third less disk on noisy imagery.

Why the reads are threaded: GeoTIFF decoding (deflate) dominates a build and rasterio
releases the GIL while it decodes, so a few reader threads keep the (sequential) tfds
writer busy; the order of examples is unchanged.

Why a second way to generate (``beam_work_dir``): to spread a large build over a Beam
runner's workers the split generators become Beam transforms (``beam_pipeline``); they
call the same ``read_patch`` and ``check_example``, so both ways write the same examples.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from satseg_jax.datasets.patches_folder import (
    PatchLayout,
    check_example,
    read_patch,
    read_patches_folder,
)
from satseg_jax.datasets.splits import SPLITS
from satseg_jax.datasets.tfenv import import_tfds
from satseg_jax.errors import SatsegError

tfds = import_tfds()

NAME = "satseg_patches"
VERSION = "1.0.0"

# on_example(split, example): how build_dataset sees every example as it is written.
ExampleCallback = Callable[[str, dict], None]


def features_for(layout: PatchLayout):
    """The tfds FeaturesDict of a patches dataset with this layout."""
    s, c = int(layout.size), len(layout.bands)
    enc = tfds.features.Encoding
    return tfds.features.FeaturesDict({
        "image": tfds.features.Tensor(shape=(s, s, c), dtype=np.dtype(layout.dtype),
                                      encoding=enc.BYTES),
        "mask": tfds.features.Tensor(shape=(s, s), dtype=np.uint8, encoding=enc.BYTES),
        "patch_id": tfds.features.Text(),
        "crs": tfds.features.Text(),
        "transform": tfds.features.Tensor(shape=(6,), dtype=np.float64, encoding=enc.BYTES),
        "row": tfds.features.Scalar(dtype=np.int32),
        "col": tfds.features.Scalar(dtype=np.int32),
    })


def _saved_features_dir(data_dir) -> Path | None:
    """The version folder holding features.json under ``data_dir`` (tfds's default data
    dirs when None), if the dataset was built there."""
    from tensorflow_datasets.core.utils import file_utils

    for root in file_utils.list_data_dirs(given_data_dir=data_dir):
        root = Path(os.fspath(root)).expanduser()
        for d in (root / NAME / VERSION, root):
            if (d / "features.json").is_file():
                return d
    return None


class SatsegPatches(tfds.core.GeneratorBasedBuilder):
    """Image/mask patches of a scene, with their georeference (see module doc)."""

    VERSION = tfds.core.Version(VERSION)
    RELEASE_NOTES = {str(VERSION): "image, mask, patch_id, crs, transform, row, col."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Pass the folder written by `satseg patches` as the manual dir; `satseg build "
        "--patches DIR --out DATA` does it for you.")

    def __init__(self, *, layout: PatchLayout | None = None,
                 assignment: Mapping[str, str] | None = None,
                 on_example: ExampleCallback | None = None,
                 num_readers: int | None = None, progress: bool = True,
                 beam_work_dir: str | Path | None = None, **kwargs):
        """``layout`` and ``assignment`` (patch id -> split) are needed to *build*;
        reading an existing dataset needs only ``data_dir``. ``on_example`` sees each
        example (after it is read, before tfds encodes it).

        ``beam_work_dir``: generate the examples with an Apache Beam pipeline (the runner
        comes from ``download_and_prepare``'s DownloadConfig, see ``beam_pipeline``); the
        folder (the workers must see it) receives each split's index rows and, from the
        pipeline, its statistics (``<split>.stats.json``). It excludes ``on_example``:
        under Beam the examples are read on the workers, never here.
        """
        if beam_work_dir is not None and (on_example is not None or layout is None):
            raise ValueError("beam_work_dir needs a layout and excludes on_example (the "
                             "statistics are computed in the pipeline)")
        self._layout = layout
        if layout is not None:
            self._features = features_for(layout)
        else:
            saved = _saved_features_dir(kwargs.get("data_dir"))
            if saved is None:
                raise SatsegError(
                    f"{NAME}: no built dataset under data_dir={kwargs.get('data_dir')!r}; "
                    "build one with `satseg build --patches PATCHES --out DATA`, then load "
                    f"it with tfds.load('{NAME}', data_dir=DATA) or "
                    f"tfds.builder_from_directory('DATA/{NAME}/{VERSION}')")
            self._features = tfds.features.FeatureConnector.from_config(str(saved))
        self._assignment = dict(assignment or {})
        self._on_example = on_example
        self._num_readers = num_readers or min(8, os.cpu_count() or 1)
        self._progress = progress
        self._beam_work_dir = beam_work_dir
        super().__init__(**kwargs)

    # tfds prints "Downloading and preparing ... to <dir>" and "... prepared to <dir>" on
    # stdout; the directory is build_dataset's temporary one, and the CLI prints its own
    # summary, so both messages would only mislead.
    def _log_download_bytes(self) -> None:
        pass

    def _log_download_done(self) -> None:
        pass

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description="Satellite image patches with per-pixel class masks, written by "
                        "`satseg build` (satseg-jax) from a `satseg patches` folder.",
            features=self._features,
            supervised_keys=("image", "mask"),
        )

    def _split_generators(self, dl_manager):
        folder = read_patches_folder(Path(dl_manager.manual_dir))
        index = {p.patch_id: p for p in folder.patches}
        unknown = sorted(set(self._assignment) - set(index))
        unassigned = sorted(set(index) - set(self._assignment))
        if unknown or unassigned or not index:
            raise SatsegError(
                f"{folder.root}/index.csv and the split assignment differ ("
                f"{len(unknown)} assigned patch(es) not in the index, e.g. {unknown[:2]}; "
                f"{len(unassigned)} indexed patch(es) without a split, e.g. "
                f"{unassigned[:2]}); assign every patch of the index to a split")
        bad = sorted({s for s in self._assignment.values() if s not in SPLITS})
        if bad:
            raise SatsegError(f"split assignment: unknown split(s) {bad}; use {SPLITS}")
        by_split: dict[str, list] = {s: [] for s in SPLITS}
        for pid in sorted(self._assignment):
            by_split[self._assignment[pid]].append(index[pid])
        # tfds cannot write an empty split; a zero fraction simply has no split.
        if self._beam_work_dir is not None:
            from satseg_jax.datasets.beam_pipeline import PatchExamples

            return {s: PatchExamples(folder.root, ((r.patch_id, r.row, r.col) for r in recs),
                                     self._layout, s, folder.classes.num_classes,
                                     self._beam_work_dir)
                    for s, recs in by_split.items() if recs}
        return {s: self._generate_examples(folder.root, recs, s)
                for s, recs in by_split.items() if recs}

    def _generate_examples(self, root: Path, records: list, split: str
                           ) -> Iterator[tuple[str, dict]]:
        from tqdm import tqdm

        with ThreadPoolExecutor(self._num_readers) as pool, \
                tqdm(total=len(records), desc=f"{split}: reading patches", unit="patch",
                     disable=not self._progress, leave=False) as bar:
            pending: deque = deque()
            it = iter(records)
            for rec in it:  # keep a bounded number of reads in flight, in order
                pending.append(pool.submit(read_patch, root, rec.patch_id, rec.row, rec.col))
                if len(pending) >= 2 * self._num_readers:
                    break
            while pending:
                ex = pending.popleft().result()
                if self._layout is not None:
                    check_example(ex, self._layout, root)
                nxt = next(it, None)
                if nxt is not None:
                    pending.append(pool.submit(read_patch, root, nxt.patch_id, nxt.row,
                                               nxt.col))
                if self._on_example is not None:
                    self._on_example(split, ex)
                bar.update()
                yield ex["patch_id"], ex
