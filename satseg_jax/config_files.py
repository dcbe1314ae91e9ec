"""Load a ``get_config()`` Python file by path (configs are files, not a package)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from satseg_jax.errors import SatsegError


def load_config_file(path: str | Path):
    path = Path(path)
    if not path.exists():
        raise SatsegError(f"{path}: config file not found")
    spec = importlib.util.spec_from_file_location(f"satseg_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise SatsegError(f"{path}: defines no get_config()")
    return module.get_config()
