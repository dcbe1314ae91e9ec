"""Atomic writes: a failed command leaves nothing behind.

Everything a command writes goes to a temporary name in the target's folder (same
filesystem, so the final ``os.replace``/rename is atomic) and is renamed at the end;
on any exception the temporary is removed.

A full disk (or quota) while writing is an error the user can fix, not a bug: it is
re-raised as :class:`DiskFullError`, a SatsegError naming the output (so the CLI prints
one line and exits 2) that is also an OSError (so code catching OSError still does).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import glob
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from satseg_jax.errors import SatsegError

_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# How the libraries that write for us word it when they do not keep the errno:
# TensorFlow's file system (TFRecords), GDAL (GeoTIFFs), the C library.
_DISK_FULL_TEXT = ("no space left on device", "disk quota exceeded",
                   "free disk space available is")


class DiskFullError(SatsegError, OSError):
    """The disk (or quota) filled up while writing an output; nothing was left behind."""


def is_disk_full(exc: BaseException) -> bool:
    """True when ``exc`` (or an exception it was raised from) reports a full disk/quota.

    By errno when there is one (ENOSPC, EDQUOT), else by the wording of the message,
    since TensorFlow and GDAL report it as their own exception types.
    """
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _DISK_FULL_ERRNOS:
            return True
        text = str(e).lower()
        if any(t in text for t in _DISK_FULL_TEXT):
            return True
        e = e.__cause__ or e.__context__
    return False


def _disk_full(target: Path, exc: BaseException) -> DiskFullError:
    detail = " ".join(str(exc).split()) or type(exc).__name__
    return DiskFullError(
        f"{target}: disk full while writing it ({detail}); nothing was left behind. Free "
        f"space on the disk of {target.parent.absolute()} (or choose an output on another "
        "disk) and run the command again")


class NotWritableError(SatsegError, OSError):
    """The output's folder cannot be written (read-only file system, no permission)."""


_NOT_WRITABLE = {errno.EROFS: "the file system is read-only",
                 errno.EACCES: "permission denied", errno.EPERM: "operation not permitted"}
# GDAL's write errors (TIFFAppendToStrip, CPLE_FileIO) do not say why they failed.
_GDAL_WRITE_TEXT = ("write failed", "tiffappendtostrip", "cple_", "failed to write")


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def _little_space(folder: Path) -> bool:
    """Less than 1 MiB left for us on the disk of ``folder``."""
    try:
        st = os.statvfs(folder)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 1 << 20


def _write_error(target: Path, exc: BaseException) -> SatsegError | None:
    """``exc`` as the one-line error of a failed write of ``target``, or None when it is
    not a write failure of the output (an unreadable input, a bug)."""
    if is_disk_full(exc):
        return _disk_full(target, exc)
    chain = list(_chain(exc))
    if (any(t in str(e).lower() for e in chain for t in _GDAL_WRITE_TEXT)
            and _little_space(target.parent)):
        return _disk_full(target, exc)
    folder = target.parent.absolute()
    for e in chain:
        if (isinstance(e, OSError) and e.errno in _NOT_WRITABLE and e.filename is not None
                and Path(os.fsdecode(e.filename)).absolute().is_relative_to(folder)):
            return NotWritableError(
                f"{target}: cannot write it: {_NOT_WRITABLE[e.errno]} ({folder}); nothing "
                "was left behind. Choose an output in a folder you can write to")
    return None


@contextlib.contextmanager
def workdir_writes(workdir: Path, label: str = "--workdir") -> Iterator[None]:
    """A run folder that cannot be created or written (read-only file system, no
    permission, full disk) becomes one SatsegError naming it and the cause.

    Why apart from :func:`_reported`: a run folder is not an output replaced whole, so
    there is no "nothing was left behind" to promise; what exists there is untouched.
    """
    try:
        yield
    except OSError as e:
        if isinstance(e, SatsegError):
            raise
        if is_disk_full(e):
            raise DiskFullError(f"{label} {workdir}: disk full ({e.strerror}); free space "
                                "and run the same command again") from e
        if e.errno in _NOT_WRITABLE:
            where = os.fsdecode(e.filename) if e.filename is not None else workdir
            raise NotWritableError(f"{label} {workdir}: cannot write it: "
                                   f"{_NOT_WRITABLE[e.errno]} ({where}); choose a {label} "
                                   "in a folder you can write to") from e
        raise


@contextlib.contextmanager
def _reported(target: Path) -> Iterator[None]:
    """A failed write of ``target`` (full disk, read-only or forbidden folder) becomes a
    SatsegError naming it; other exceptions pass unchanged."""
    try:
        yield
    except Exception as e:
        err = None if isinstance(e, SatsegError) else _write_error(target, e)
        if err is None:
            raise
        raise err from e


@contextlib.contextmanager
def _cleaned_up(target: Path, tmp: Path, remove) -> Iterator[None]:
    """Whatever happens inside, ``tmp`` does not outlive it; a full disk or a folder that
    cannot be written is reported naming ``target`` (not the temporary)."""
    try:
        with _reported(target):
            yield
    finally:
        if tmp.exists():
            remove(tmp)


# The random part of a temporary name: 8 characters, as tempfile's mkstemp/mkdtemp make.
_RANDOM = r"[a-z0-9_]{8}"


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def sweep_leftovers(target: Path) -> list[Path]:
    """Remove the temporaries an earlier, killed run left beside ``target`` (return them).

    Only names this module makes for ``target``: ``.NAME.XXXXXXXX.tmp`` (mkstemp/mkdtemp,
    8 random characters), the same + ``.cog``/``.png`` (a map's rewrite, killed midway)
    and atomic_dir's ``.NAME.old``; nothing else is touched. A second
    run writing the same output at the same time would lose its temporary: one output,
    one writer.
    """
    # ``.tmp.cog`` / ``.tmp.png``: the COG/PNG rewrite of a map (raster.map_files)
    made = re.compile(re.escape(f".{target.name}.") + _RANDOM + r"\.tmp(\.cog|\.png)?")
    swept = []
    if target.parent.is_dir():
        for p in target.parent.iterdir():
            if made.fullmatch(p.name) or p.name == f".{target.name}.old":
                _remove(p)
                swept.append(p)
    return swept


def temporary_name(target: Path) -> Path:
    """``.NAME.XXXXXXXX.tmp`` beside ``target``: the name atomic_path would use, for a
    writer of many small files that renames each one itself (no mkstemp, no sweep per
    file); :func:`sweep_folder_leftovers` removes those a killed run left."""
    import secrets

    return target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")


def sweep_folder_leftovers(folder: Path, suffix: str) -> list[Path]:
    """Remove every ``.NAME.XXXXXXXX.tmp`` in ``folder`` whose NAME ends with ``suffix``
    (the :func:`temporary_name` of an output ``*SUFFIX`` a killed run left); one listing
    of the folder for all its outputs. Nothing else is touched."""
    made = re.compile(r"\..+" + re.escape(suffix) + r"\." + _RANDOM + r"\.tmp")
    swept = []
    if folder.is_dir():
        for p in folder.iterdir():
            if made.fullmatch(p.name):
                _remove(p)
                swept.append(p)
    return swept


@contextlib.contextmanager
def atomic_path(target: str | Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary file path beside ``target``; rename it onto ``target`` on success."""
    target = Path(target)
    if target.exists() and not overwrite:
        raise SatsegError(f"{target}: already exists; remove it or choose another output")
    with _reported(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        sweep_leftovers(target)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp",
                                   dir=target.parent)
    os.close(fd)
    os.unlink(tmp)
    tmp_path = Path(tmp)
    with _cleaned_up(target, tmp_path, Path.unlink):
        yield tmp_path
        os.replace(tmp_path, target)


def _umask() -> int:
    """The process's umask (read by setting it, so set it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_dir(target: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside ``target``; rename it onto ``target`` on success.

    With ``overwrite`` an existing ``target`` is replaced only after the new one is
    complete, so an interrupted run never destroys a good previous output.
    """
    target = Path(target)
    if target.exists() and not overwrite:
        if target.is_dir() and not any(target.iterdir()):
            target.rmdir()
        else:
            raise SatsegError(
                f"{target}: output folder already exists and is not empty; "
                "remove it, choose another --out, or pass --overwrite"
            )
    with _reported(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        sweep_leftovers(target)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp",
                                    dir=target.parent))
    with _cleaned_up(target, tmp, functools.partial(shutil.rmtree, ignore_errors=True)):
        yield tmp
        # mkdtemp makes the folder 0700; give the output the mode mkdir would have.
        os.chmod(tmp, 0o777 & ~_umask())
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)


PathArg = str | os.PathLike | None


def _named_paths(named: dict[str, PathArg | list[PathArg]]) -> Iterator[tuple[str, Path]]:
    """(option, path) for every path given; a list gives one pair per entry and a quoted
    glob (``--images 'LoveDA/*/images_png'``) one per match."""
    for label, value in named.items():
        for v in value if isinstance(value, list | tuple) else [value]:
            if v is None or str(v) == "":
                continue
            if glob.has_magic(str(v)):
                yield from ((label, Path(m)) for m in sorted(glob.glob(str(v))))
            else:
                yield label, Path(v)


def _same_file(a: Path, b: Path) -> bool:
    """``a`` and ``b`` are one file: the same path after following links, or (hard links,
    bind mounts) the same inode."""
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


def refuse_unwritable_outputs(outputs: dict[str, PathArg | list[PathArg]],
                              folders: tuple[str, ...] = ()) -> None:
    """Raise a SatsegError for an output path that cannot be written as named: below a
    file (``--out notes.txt/map.tif``), a file output naming a folder, or a folder output
    naming a file. Outputs named in ``folders`` are folders, the others files."""
    for label, path in _named_paths(outputs):
        for above in path.absolute().parents:
            if above.exists():
                if not above.is_dir():
                    raise SatsegError(f"{label} {path}: {above} is a file, not a folder; "
                                      f"choose an {label} in a folder")
                break
        if label in folders and path.exists() and not path.is_dir():
            raise SatsegError(f"{label} {path} is a file, and the output is a folder; "
                              f"choose another {label}")
        if label not in folders and path.is_dir():
            raise SatsegError(f"{label} {path} is a folder, and the output is a file; name "
                              f"the file, e.g. {label} {path / 'NAME'}")


def refuse_overwriting_inputs(outputs: dict[str, PathArg | list[PathArg]],
                              inputs: dict[str, PathArg | list[PathArg]],
                              folders: tuple[str, ...] = ()) -> None:
    """Raise a SatsegError, before any work, when writing ``outputs`` would destroy one of
    ``inputs``.

    ``outputs`` and ``inputs`` map the option that names them (``"--out"``) to a path (or
    a list of paths, or a glob). An output is refused when it is the same file as an
    input after following links (symlinks, hard links); an output named in ``folders``
    is a folder the command creates or replaces as a whole, so it is also refused when it
    is or contains an input. Two outputs naming one file are refused too, and so is an
    output that cannot be written where it is named (:func:`refuse_unwritable_outputs`).
    """
    refuse_unwritable_outputs(outputs, folders)
    outs = list(_named_paths(outputs))
    ins = list(_named_paths(inputs))
    for out_label, out in outs:
        for in_label, inp in ins:
            if out_label in folders and (inp.resolve().is_relative_to(out.resolve())
                                         or _same_file(out, inp)):
                raise SatsegError(
                    f"{out_label} {out} is or contains {in_label} {inp}: writing that "
                    f"folder would destroy the input; choose an {out_label} folder outside it")
            if _same_file(out, inp):
                raise SatsegError(
                    f"{out_label} {out} is the same file as {in_label} {inp}: writing it "
                    f"would destroy the input; choose another {out_label}")
    for i, (label_a, a) in enumerate(outs):
        for label_b, b in outs[i + 1:]:
            if _same_file(a, b):
                raise SatsegError(f"{label_a} {a} and {label_b} {b} are the same file; "
                                  "give each output its own path")


# ----------------------------------------------------------------------------- library chatter


class _LogSink:
    """A text stream appending to ``path``, opened on the first write (no empty log when
    nothing was said). Write errors are dropped, never raised: the log usually sits on
    the disk whose failure is being logged."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fh = None
        self.failed = False

    def write(self, text: str) -> int:
        if not self.failed:
            try:
                if self.fh is None:
                    self.fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
                self.fh.write(text)
                self.fh.flush()
            except OSError:
                self.failed = True
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    def close(self) -> None:
        """Close the file; remove it when nothing could be written (a full disk)."""
        if self.fh is not None:
            with contextlib.suppress(OSError):
                self.fh.close()
            with contextlib.suppress(OSError):
                if self.path.stat().st_size == 0:
                    self.path.unlink()


@contextlib.contextmanager
def library_output_to(path: Path) -> Iterator[_LogSink]:
    """Send what libraries print or log while inside (``logging`` records of every
    logger that reaches the root, ``warnings``, tracebacks their threads print to
    ``sys.stderr``) to the file ``path`` instead of the terminal.

    Why: a checkpoint save that fails on a full disk makes Orbax, asyncio and
    tensorstore report the same error from every writer thread, about a thousand lines
    around the one line the user needs. Kept in a file, the details stay available;
    the file is created only when something is written. The failed writers' futures are
    collected before leaving (their "exception was never retrieved" complaints are made
    at garbage collection), so those land in the file too.
    """
    import gc
    import logging
    import sys

    sink = _LogSink(Path(path))
    handler = logging.StreamHandler(sink)  # type: ignore[arg-type]
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    saved_handlers, saved_stderr = root.handlers[:], sys.stderr
    root.handlers = [handler]
    sys.stderr = sink  # type: ignore[assignment]
    try:
        yield sink
    except BaseException:
        gc.collect()
        raise
    finally:
        sys.stderr = saved_stderr
        root.handlers = saved_handlers
        sink.close()
