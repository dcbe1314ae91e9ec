"""Pretrained encoder weights: PyTorch state dicts (torchvision, timm, torchgeo, any
torchvision-layout checkpoint) converted strictly into the Flax encoders of
``models/encoders``, stored as an encoder directory (Orbax variables + a JSON card of
bands and normalisation) that ``config.model.encoder_weights`` takes.

Modules: ``files`` (read .pth/.safetensors), ``convert`` (names and layouts, strict),
``store`` (the encoder directory), ``importer`` (``satseg weights import``),
``download`` (through the owning library), ``torch_libs`` (importing torchvision/timm
next to a CPU torch), ``adapt`` (pretrained weights onto a dataset's bands).
"""
