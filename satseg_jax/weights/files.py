"""Read a PyTorch weight file into ``{key: numpy array}``: ``.safetensors`` without torch,
``.pth`` / ``.pt`` / ``.bin`` through ``torch.load(weights_only=True)``.

Why ``weights_only``: a ``.pth`` is a pickle, and unpickling runs code; weights from the
internet should only ever be read as tensors. Checkpoints that wrap the state dict
(``{'state_dict': ...}``, ``{'model': ...}``, as Lightning and many SSL repos save them)
are unwrapped, and the log says which wrapper was taken.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from satseg_jax.errors import SatsegError

SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
WRAPPERS = ("state_dict", "model", "model_state_dict", "module")


def _unwrap(obj: Any, path: Path) -> tuple[dict[str, Any], str | None]:
    """The tensor dict inside a loaded checkpoint, and the wrapper key it was under."""
    if isinstance(obj, dict) and obj and all(hasattr(v, "shape") for v in obj.values()):
        return obj, None
    if isinstance(obj, dict):
        for key in WRAPPERS:
            inner = obj.get(key)
            if isinstance(inner, dict) and inner and all(hasattr(v, "shape")
                                                         for v in inner.values()):
                return inner, key
    raise SatsegError(f"{path}: not a state dict (a mapping of names to tensors, or one "
                      f"under {list(WRAPPERS)}); save the model's state_dict() instead")


def read_state_dict(path: str | Path) -> tuple[dict[str, np.ndarray], str | None]:
    """``{key: float/int numpy array}`` of a weight file, and the wrapper key it was under
    (None for a plain state dict). Unreadable files raise SatsegError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise SatsegError(f"{path}: no such weight file")
    if path.suffix not in SUFFIXES:
        raise SatsegError(f"{path}: unknown weight file type; expected one of {SUFFIXES}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.numpy import load_file

            return dict(load_file(str(path))), None
        try:
            import torch
        except ImportError:
            raise SatsegError(f"{path}: reading .pth files needs PyTorch: pip install -e "
                              "'.[weights]', or convert the file to .safetensors") from None
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except SatsegError:
        raise
    except Exception as e:  # torch/safetensors raise many types for a damaged file
        raise SatsegError(f"{path}: cannot read the weights ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else 'corrupt file'})") from None
    tensors, wrapper = _unwrap(obj, path)
    return {k: v.detach().cpu().numpy() for k, v in tensors.items()}, wrapper
