"""Running tfds's generation for ``satseg build``: offline, optionally under Apache Beam,
into the temporary output folder.

Why apart from ``build``: how a builder is prepared (tfds's progress bars, its download
config without network, Beam's runner settings and work folder) is the same for the
segmentation and the classification build, and has nothing to do with what either
build checks or writes in satseg_dataset.json.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

from satseg_jax.errors import SatsegError


@contextlib.contextmanager
def tfds_progress(tfds, enable: bool) -> Iterator[None]:
    """Set tfds's own progress bars for the duration of a build, then restore them.

    Ours (one per split, with totals) replace tfds's, which do not know the totals.
    """
    from tensorflow_datasets.core.utils import tqdm_utils

    was = getattr(tqdm_utils, "_active", True)
    tfds.display_progress_bar(enable)
    try:
        yield
    finally:
        tfds.display_progress_bar(was)


def prepare(builder, tfds, tmp: Path, manual_dir: Path | None,
             beam: dict | None = None) -> None:
    """Run tfds's generation into ``tmp`` without network access, then tidy up.

    ``beam``: DownloadConfig's ``beam_runner``/``beam_options`` (see :func:`beam_config`);
    a SatsegError raised on a Beam worker comes back as the same one-line SatsegError.
    """
    config = {"manual_dir": str(manual_dir)} if manual_dir is not None else {}
    errors = contextlib.nullcontext()
    if beam:
        from satseg_jax.datasets.beam_pipeline import user_errors

        errors = user_errors()
    with errors:
        builder.download_and_prepare(
            download_dir=str(tmp / ".downloads"),
            download_config=tfds.download.DownloadConfig(
                **config, try_download_gcs=False, **(beam or {})),
            file_format="tfrecord",
        )
    shutil.rmtree(tmp / ".downloads", ignore_errors=True)  # tfds's (empty) download cache


def beam_config(runner: str | None, options: str | None) -> dict | None:
    """Checked DownloadConfig settings for a Beam build, or None for a plain build.

    Checked before anything is read or written, so a misspelt runner or a missing Beam
    install is a one-line error that leaves no output behind.
    """
    if runner is None:
        if options:
            raise SatsegError("--beam-options needs --beam-runner (e.g. --beam-runner "
                              "DirectRunner); without a runner the build does not use Beam")
        return None
    from satseg_jax.datasets.tfenv import import_beam

    import_beam()  # a SatsegError naming the install command when Beam is missing
    from satseg_jax.datasets.beam_pipeline import download_config_kwargs

    return download_config_kwargs(runner, options)


def beam_work_dir(tmp: Path) -> Path:
    """Where a Beam build's index rows and statistics files go: inside the temporary
    output folder, so the workers see it when they see the output, and a failed build
    removes it with the rest."""
    work = tmp / ".beam"
    work.mkdir()
    return work
