"""Import torchvision (and timm, smp, which import it) next to a CPU build of torch.

Why this exists: the only torchvision 0.28.0 wheel on the package registry (the release
matching ``torch==2.13.0``) is the CUDA build; its compiled operators (``nms``,
``roi_align``…) cannot load against the CPU torch the project pins, and torchvision's
``__init__`` then fails while registering fake kernels for ``nms``/``qnms``. Nothing
here needs those operators (only the ResNet/ConvNeXt module code and the weight enums),
so when they are absent their two schemas are declared first, and torchvision imports
with its models intact; calling ``torchvision.ops.nms`` would still fail loudly.
"""

from __future__ import annotations

import importlib
from types import ModuleType

_SCHEMAS = ("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
            "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
_LIBRARIES: list = []  # keeps the declared schemas alive for the process


def _declare_missing_ops() -> None:
    import torch

    try:
        torch.ops.torchvision.nms  # noqa: B018 - present when torchvision's _C loaded
        return
    except (AttributeError, RuntimeError):
        pass
    lib = torch.library.Library("torchvision", "FRAGMENT")
    for schema in _SCHEMAS:
        lib.define(schema)
    _LIBRARIES.append(lib)


def import_torch_library(name: str) -> ModuleType:
    """``importlib.import_module(name)`` for torchvision, timm or
    segmentation_models_pytorch, working around a CUDA torchvision beside a CPU torch."""
    try:
        return importlib.import_module(name)
    except RuntimeError as e:
        if "torchvision::" not in str(e):
            raise
    import sys

    for mod in [m for m in sys.modules if m.split(".")[0] in ("torchvision", "timm",
                                                                "segmentation_models_pytorch")]:
        del sys.modules[mod]  # the failed, half-run imports
    _declare_missing_ops()
    return importlib.import_module(name)
