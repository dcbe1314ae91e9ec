"""What every command module shares: argument types, library defaults, output helpers.

Nothing here imports the heavy libraries (JAX, TF, rasterio): the parsers of every
command are built for ``satseg --help``, which must start fast.
"""

from __future__ import annotations

import argparse
import ast
import functools
import importlib.util
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from satseg_jax.errors import SatsegError

Handler = Callable[[argparse.Namespace], int]


def floats(text: str) -> tuple[float, ...]:
    """``0.7,0.15,0.15`` -> (0.7, 0.15, 0.15); an argparse error otherwise."""
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        msg = f"expected comma-separated numbers, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None


def names(text: str) -> list[str]:
    """``red, green,,blue`` -> ['red', 'green', 'blue']."""
    return [x.strip() for x in text.split(",") if x.strip()]


@functools.cache
def _module_source(module: str) -> str:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ImportError(f"no module {module}")
    return Path(spec.origin).read_text()


def _signature(source: str, function: str) -> ast.FunctionDef:
    """The ``def function(...)`` line(s) of ``source`` parsed alone: parsing only the
    signature, not the whole module, keeps ``satseg --help`` fast."""
    m = re.search(rf"^def {re.escape(function)}\(", source, re.MULTILINE)
    if m is None:
        raise LookupError(f"no top-level def {function}()")
    lines = source[m.start():].splitlines()
    for n, line in enumerate(lines, 1):
        if line.rstrip().endswith(":"):
            try:
                tree = ast.parse("\n".join(lines[:n]) + "\n    pass\n")
            except SyntaxError:
                continue
            return tree.body[0]  # type: ignore[return-value]
    raise LookupError(f"cannot read the signature of {function}()")


def _module_constant(source: str, name: str) -> Any:
    m = re.search(rf"^{re.escape(name)}\s*(?::[^=]+)?=(.+)$", source, re.MULTILINE)
    if m is not None:
        return ast.literal_eval(m.group(1).split("#")[0].strip())
    # Not assigned here: follow a ``from satseg_jax.x import NAME`` to where it is.
    for node in ast.parse(source).body:
        if (isinstance(node, ast.ImportFrom) and (node.module or "").startswith("satseg_jax")
                and any(a.name == name and a.asname is None for a in node.names)):
            return _module_constant(_module_source(node.module), name)
    raise LookupError(f"no module constant {name}")


def library_default(module: str, function: str, parameter: str) -> Any:
    """The default of ``module.function(parameter=...)``, read from its source.

    Why from the source: the library function is where the default is declared (one
    declaration, so the CLI, the data_prep scripts and Python callers cannot drift
    apart), and importing it would pull JAX or rasterio into ``satseg --help``. A default
    naming a module constant (``max_files=DEFAULT_MAX_FILES``) is looked up in the same
    module. tests/test_cli.py checks every value against ``inspect.signature``.
    """
    source = _module_source(module)
    a = _signature(source, function).args
    positional = a.posonlyargs + a.args
    pairs = list(zip(positional[len(positional) - len(a.defaults):], a.defaults))
    pairs += [(k, d) for k, d in zip(a.kwonlyargs, a.kw_defaults) if d is not None]
    for arg, default in pairs:
        if arg.arg == parameter:
            if isinstance(default, ast.Name):
                return _module_constant(source, default.id)
            return ast.literal_eval(default)
    raise LookupError(f"{module}.{function} has no default for {parameter}")


def show_progress() -> bool:
    """Progress bars only on a terminal: redirected to a file (``> log 2>&1``), tqdm's
    carriage-return redraws would run into the next line of the log."""
    return sys.stderr.isatty()


def print_wrote(paths: Iterable[Path | str]) -> None:
    """One ``wrote PATH`` line per path: every command ends by naming what it wrote."""
    for p in paths:
        print(f"wrote {p}")


def print_table(rows: Sequence[tuple[str, Any]]) -> None:
    """``label: value`` lines with the labels right-aligned, for a readable summary; a
    blank label continues the row above."""
    width = max((len(k) for k, _ in rows), default=0)
    for k, v in rows:
        print(f"{k:>{width}}: {v}" if k else f"{'':>{width}}  {v}")


def run_script(add_arguments: Callable[[argparse.ArgumentParser], None], handler: Handler,
               doc: str, argv: Sequence[str] | None = None) -> int:
    """Run a data_prep script: the CLI subcommand's own arguments and handler.

    Why: the scripts show the library calls stage by stage; declaring their options
    again would let their defaults drift from ``satseg``'s.
    """
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return handler(args)
    except SatsegError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def add_command(sub: argparse._SubParsersAction, name: str,
                add_arguments: Callable[[argparse.ArgumentParser], None],
                handler: Callable[[argparse.Namespace], int], help: str,
                description: str | None = None, **defaults: Any) -> argparse.ArgumentParser:
    """One subcommand: its options (``add_arguments``, shared with the data_prep scripts)
    and the handler ``main`` runs; ``defaults`` are extra attributes of its namespace.
    The ``--help`` description is the handler's docstring unless one is given."""
    import inspect

    description = description or inspect.cleandoc(handler.__doc__ or help)
    parser = sub.add_parser(name, help=help, description=description)
    add_arguments(parser)
    parser.set_defaults(func=handler, **defaults)
    return parser


def add_commands(sub: argparse._SubParsersAction,
                 table: Sequence[tuple[str, Callable, Callable, str]]) -> None:
    """``add_command`` for each (name, add_arguments, handler, help) of ``table``."""
    for name, add_arguments, handler, help in table:
        add_command(sub, name, add_arguments, handler, help=help)
