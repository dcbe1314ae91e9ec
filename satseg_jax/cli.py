"""The ``satseg`` command: assembles the subcommands of satseg_jax/commands/, runs one,
prints its result.

No logic of its own lives here. Heavy modules are imported inside each handler so that
``satseg --help`` starts fast, and errors a user can cause (SatsegError, and argparse's
own usage errors) are printed on one line with exit status 2.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from typing import NoReturn

from satseg_jax.errors import SatsegError


def _join_negative_values(argv: list[str]) -> list[str]:
    """``--bbox -47.9,-15.9,-47.7,-15.7`` -> ``--bbox=-47.9,...``: argparse would read a
    value starting with '-' as an option, and western/southern coordinates are negative."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--bbox" and i + 1 < len(argv) and re.match(r"^-\d", argv[i + 1]):
            out.append(f"{a}={argv[i + 1]}")
            i += 2
            continue
        out.append(a)
        i += 1
    return out


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are SatsegErrors: one line and exit status 2
    from ``main`` (instead of a usage block and SystemExit), like every other error a
    user can cause. Subparsers inherit the class."""

    def error(self, message: str) -> NoReturn:
        raise SatsegError(f"{self.prog}: {message} (see '{self.prog} --help')")


def build_parser() -> argparse.ArgumentParser:
    """``satseg`` and every subcommand of satseg_jax.commands.MODULES."""
    from satseg_jax.commands import MODULES

    p = Parser(
        prog="satseg",
        description="Satellite image segmentation with JAX/Flax: sample -> compose -> patches "
        "-> build -> train -> evaluate. Run 'satseg COMMAND --help' for each command.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for module in MODULES:
        module.add_parser(sub)
    return p


def _quiet_libraries() -> None:
    """Keep the console for our progress lines and for real warnings.

    TensorFlow (the input pipeline, tfds) prints start-up lines on import that say
    nothing about the user's work: ``oneDNN custom operations are on ...`` (logged by
    absl before logging is initialised, so ``TF_CPP_MIN_LOG_LEVEL`` cannot stop it, and
    preceded by absl's ``WARNING: All log messages before absl::InitializeLog() ...``)
    and the CPU-instructions notice. TF's oneDNN graph rewrites only concern its own
    convolutions and matrix products, which satseg never runs in TF (the model is JAX;
    tf.data here casts, normalises, flips and crops), so switching them off
    (``TF_ENABLE_ONEDNN_OPTS=0``) removes the line and changes no result.
    ``TF_CPP_MIN_LOG_LEVEL=1`` drops TF's C++ INFO lines and keeps its warnings and
    errors; Python warnings are untouched. A value the user set is kept. Only the CLI
    calls this: importing satseg_jax changes no environment variable.
    """
    import logging
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    # absl/TF Python logging (tfds, Orbax chatter) at WARNING: show it only for errors.
    logging.getLogger("absl").setLevel(logging.ERROR)
    # urllib3's retry warnings print request paths with their query strings (signed URLs,
    # API keys); our own errors say what failed, redacted.
    logging.getLogger("urllib3").setLevel(logging.ERROR)


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that every ``finally`` (the removal of
    atomic_path/atomic_dir temporaries) runs before the exit. A BaseException, like
    KeyboardInterrupt, so that no ``except Exception`` swallows it."""


def _raise_terminated(signum, frame) -> NoReturn:
    raise Terminated()


# Delay before a swallowed SIGTERM is delivered again: long enough for the unraisable hook
# (and the callback that swallowed it) to return, short against any command's run.
REDELIVER_AFTER_S = 0.05


def _redeliver_swallowed_termination(previous_hook):
    """A ``sys.unraisablehook`` that sends SIGTERM again when :class:`Terminated` was
    raised where Python cannot propagate it.

    Why: a signal handler runs at whatever bytecode the main thread is at, and that can be
    a garbage-collection callback (jax registers one) or a ``__del__``; Python then prints
    "Exception ignored" and carries on, so the command would finish as if never asked to
    stop (a real ``satseg build`` exited 0 that way). A timer thread signals the main
    thread again shortly after, so the handler runs once more after the hook has
    returned (signalled from the hook itself, it would run inside the hook, where it is
    swallowed too); if
    that lands in such a context again, the same happens until it propagates. Other
    unraisable exceptions go to the previous hook.
    """
    import _thread
    import signal
    import threading

    def hook(unraisable) -> None:
        if unraisable.exc_type is not None and issubclass(unraisable.exc_type, Terminated):
            again = threading.Timer(REDELIVER_AFTER_S, _thread.interrupt_main,
                                    args=(signal.SIGTERM,))
            again.daemon = True
            again.start()
        else:
            previous_hook(unraisable)

    return hook


# train (and benchmark, which trains) handle SIGTERM themselves: they save a checkpoint.
_OWN_SIGTERM = ("train", "benchmark")


def run_command(args: argparse.Namespace) -> int:
    """``args.func(args)``, with SIGTERM turned into :class:`Terminated` for the commands
    that do not handle it themselves (the previous handler is restored afterwards)."""
    import signal
    import threading

    if args.command in _OWN_SIGTERM or threading.current_thread() is not threading.main_thread():
        return args.func(args)
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    previous_hook = sys.unraisablehook
    sys.unraisablehook = _redeliver_swallowed_termination(previous_hook)
    try:
        return args.func(args)
    finally:
        signal.signal(signal.SIGTERM, previous)
        sys.unraisablehook = previous_hook


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # CPU speed settings before JAX starts (XLA_FLAGS defaults; malloc for the XLA
    # commands): the CLI applies them, importing satseg_jax does not.
    from satseg_jax import cpu

    cpu.setup_for_command(argv[0] if argv else None)
    _quiet_libraries()
    try:
        parser = build_parser()
        # Unrecognised arguments reach only the commands that take them (train's
        # --config.KEY=VALUE overrides); for the others they are argparse's error.
        args, extra = parser.parse_known_args(_join_negative_values(argv))
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        if extra and not getattr(args, "takes_extra", False):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.extra = extra
        return run_command(args)
    except SatsegError as e:
        print(f"satseg: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("satseg: interrupted (SIGINT)", file=sys.stderr)
        return 130
    except Terminated:
        print("satseg: terminated (SIGTERM)", file=sys.stderr)
        return 143


if __name__ == "__main__":
    sys.exit(main())
