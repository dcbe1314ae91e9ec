"""``satseg weights import --download NAME``: fetch weights through the library that owns
them, into that library's cache, and return the file.

Why through the library: the weight enums of torchvision and torchgeo carry the URL and
checksum of each release, and timm resolves its names on the Hugging Face hub; copying
URLs here would rot. The libraries are optional (``pip install -e '.[weights]'``) and the
network may be absent: both cases end in one line saying what to do instead (download
elsewhere, then ``--file``).
"""

from __future__ import annotations

from pathlib import Path

from satseg_jax.errors import SatsegError


def _offline(source: str, name: str, error: BaseException) -> SatsegError:
    reason = str(error).splitlines()[0][:160] if str(error) else type(error).__name__
    return SatsegError(f"--download {name}: could not fetch it through {source} ({reason}); "
                       "without a network, download the file where one is reachable and pass "
                       "it with --file")


def _needs(module: str, source: str) -> SatsegError:
    return SatsegError(f"--from {source} --download needs the {module} package: pip install "
                       "-e '.[weights]' (or download the file elsewhere and pass --file)")


def _from_enum(source: str, name: str) -> Path:
    """torchvision / torchgeo: the enum's URL, into torch hub's checkpoint cache."""
    try:
        import torch

        from satseg_jax.weights.torch_libs import import_torch_library

        library = import_torch_library("torchvision" if source == "torchvision"
                                       else "torchgeo.models")
        get_weight = (library.models if source == "torchvision" else library).get_weight
    except ImportError:
        raise _needs(source, source) from None
    try:
        weight = get_weight(name)
    except (KeyError, ValueError, AttributeError) as e:
        raise SatsegError(f"--download {name}: not a {source} weight name ({e}); e.g. "
                          "ResNet34_Weights.IMAGENET1K_V1") from None
    target = Path(torch.hub.get_dir()) / "checkpoints" / Path(weight.url).name
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(weight.url, str(target), progress=True)
        except Exception as e:  # urllib, ssl and socket errors alike
            raise _offline(source, name, e) from None
    return target


def _from_timm(name: str) -> Path:
    """timm: ``create_model(pretrained=True)`` (Hugging Face hub), saved as safetensors."""
    try:
        import torch
        from safetensors.torch import save_file

        from satseg_jax.weights.torch_libs import import_torch_library

        timm = import_torch_library("timm")
    except ImportError:
        raise _needs("timm", "timm") from None
    target = Path(torch.hub.get_dir()) / "satseg-timm" / f"{name}.safetensors"
    if not target.is_file():
        try:
            model = timm.create_model(name, pretrained=True)
        except RuntimeError as e:
            if "Unknown model" in str(e):
                raise SatsegError(f"--download {name}: not a timm model name") from None
            raise _offline("timm", name, e) from None
        except Exception as e:
            raise _offline("timm", name, e) from None
        target.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(target))
    return target


def download_weights(source: str, name: str) -> Path:
    """The local file of weight ``name`` of ``source``, downloaded if not cached."""
    if source in ("torchvision", "torchgeo"):
        return _from_enum(source, name)
    if source == "timm":
        return _from_timm(name)
    raise SatsegError(f"--from {source} has no downloads (it names no library); pass --file")
