"""PyTorch twin of satseg-jax's same-padded ``unet`` model, for speed comparisons only.

Why it exists: "is our JAX train step fast?" only has an answer next to a reference
that does the same arithmetic on the same machine. This module mirrors
``satseg_jax/models/unet.py`` + ``blocks.py`` with ``norm='batch'``,
``upsample='transpose'``, no dropout, layer for layer:

- level block = 2 × (3×3 'same' conv *without* bias → BatchNorm → ReLU);
- 2×2 max-pool down, 2×2 stride-2 transposed conv up (with bias), halving the width;
- skip concatenated *before* the up-sampled tensor (``concat([skip, x])``);
- 1×1 conv head with bias → class logits.

BatchNorm uses Flax's defaults (eps 1e-5, momentum 0.9 in Flax = 0.1 in PyTorch), so the
parameter count equals the Flax model's exactly (asserted by :func:`check_param_count`:
7,763,494 for 4 bands, 6 classes, base 32, depth 4). Numerics are not meant to match
bit for bit (initialisers differ); the FLOPs, shapes and memory traffic are.

PyTorch is a benchmark-only dependency (the ``bench`` extra pins ``torch==2.13.0``);
nothing in ``satseg_jax`` imports this file.
"""

from __future__ import annotations

import torch
from torch import nn

# Flax's nn.BatchNorm defaults: epsilon=1e-5, momentum=0.9 (weight of the old running
# statistics); PyTorch's momentum is the weight of the new batch, i.e. 1 - 0.9.
BN_EPS = 1e-5
BN_MOMENTUM_TORCH = 0.1


class ConvBlock(nn.Module):
    """Two (3×3 conv → BatchNorm → ReLU); the conv has no bias, as in ``blocks.ConvBlock``
    (a bias before a normalisation with its own shift is redundant)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(2):
            layers += [
                nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout, eps=BN_EPS, momentum=BN_MOMENTUM_TORCH),
                nn.ReLU(inplace=True),
            ]
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class TorchUNet(nn.Module):
    """Same-padded U-Net identical in structure and parameter count to satseg's ``unet``."""

    def __init__(self, in_channels: int, num_classes: int, base_width: int = 32,
                 depth: int = 4) -> None:
        super().__init__()
        widths = [base_width * 2**i for i in range(depth + 1)]
        self.depth = depth
        self.down = nn.ModuleList()
        cin = in_channels
        for w in widths[:depth]:
            self.down.append(ConvBlock(cin, w))
            cin = w
        self.bottleneck = ConvBlock(widths[depth - 1], widths[depth])
        self.ups = nn.ModuleList()
        self.up_blocks = nn.ModuleList()
        for level in reversed(range(depth)):
            w = widths[level]
            self.ups.append(nn.ConvTranspose2d(widths[level + 1], w, 2, stride=2))
            self.up_blocks.append(ConvBlock(2 * w, w))
        self.head = nn.Conv2d(widths[0], num_classes, 1)
        self.pool = nn.MaxPool2d(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for up, block, skip in zip(self.ups, self.up_blocks, reversed(skips)):
            x = up(x)
            x = block(torch.cat([skip, x], dim=1))
        return self.head(x)


def expected_param_count(in_channels: int, num_classes: int, base_width: int = 32,
                         depth: int = 4) -> int:
    """Parameters of satseg's ``unet`` (batch norm, transpose up) in closed form.

    Why closed form: the benchmark asserts equality without importing the Flax model, so a
    drift in either implementation is caught even where only one framework is installed.
    Per level block with widths (a -> b): 9ab + 9b² conv weights + 4b BatchNorm
    scale/shift; per up-conv (2b -> b): 4·2b·b + b; head: c·k + k.
    """
    widths = [base_width * 2**i for i in range(depth + 1)]

    def block(a: int, b: int) -> int:
        return 9 * a * b + 9 * b * b + 4 * b

    total, cin = 0, in_channels
    for w in widths[:depth]:
        total += block(cin, w)
        cin = w
    total += block(widths[depth - 1], widths[depth])
    for level in range(depth):
        w = widths[level]
        total += 4 * widths[level + 1] * w + w  # 2×2 transposed conv + bias
        total += block(2 * w, w)
    total += widths[0] * num_classes + num_classes  # 1×1 head + bias
    return total


def param_count(model: nn.Module) -> int:
    """Trainable parameters (BatchNorm running statistics are buffers, not counted,
    just as Flax keeps them in ``batch_stats`` outside ``params``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def check_param_count(model: TorchUNet, in_channels: int, num_classes: int, base_width: int,
                      depth: int) -> int:
    """Raise if the torch model's size differs from satseg's ``unet``; return the count."""
    got = param_count(model)
    want = expected_param_count(in_channels, num_classes, base_width, depth)
    if got != want:
        raise AssertionError(f"torch U-Net has {got:,} parameters, satseg's unet {want:,}: "
                             "the two implementations have drifted apart")
    return got


def build(in_channels: int = 4, num_classes: int = 6, base_width: int = 32, depth: int = 4,
          channels_last: bool = True) -> TorchUNet:
    """The reference model, checked against satseg's parameter count, in channels_last
    memory format (NHWC in memory, like the JAX model; oneDNN's fastest CPU path)."""
    model = TorchUNet(in_channels, num_classes, base_width, depth)
    check_param_count(model, in_channels, num_classes, base_width, depth)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


if __name__ == "__main__":
    m = build()
    print(f"TorchUNet(4 bands, 6 classes, base 32, depth 4): {param_count(m):,} parameters")
