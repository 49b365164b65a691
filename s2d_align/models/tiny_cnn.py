"""A small convolutional vision tower whose last feature map is the visual token grid.

Report generators in the R2Gen line read the patch features of a CNN (ResNet-101's 7 x 7 grid);
this is the CPU-sized counterpart for the tiny presets: an ``S x S`` image becomes an
``(S / patch_size)^2`` grid of ``hidden_size``-wide tokens.
GroupNorm (not BatchNorm): a frozen tower must not drift through running statistics while the
rest of the model trains, and results must not depend on the batch composition.

It answers like a Hugging Face vision model where the encoder needs it: ``forward(pixel_values=)``
returns an object with ``last_hidden_state`` ``[N, T, D]``, and ``config`` carries
``num_channels``, ``image_size`` and ``hidden_size``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from s2d_align.config.schema import VisionConfig
from s2d_align.errors import ConfigError

#: Part of the vision pre-training cache key: bump it whenever the layers below change.
ARCH_VERSION = 3


@dataclass
class TinyCNNConfig:
    num_channels: int
    image_size: int
    hidden_size: int
    patch_size: int


@dataclass
class CNNOutput:
    last_hidden_state: torch.Tensor


def _block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    groups = math.gcd(8, c_out)
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.GroupNorm(groups, c_out),
        nn.GELU(),
    )


class TinyCNN(nn.Module):
    """A stride-2 stem, then stride-2 stages (a strided and a plain 3 x 3 block each) whose
    widths double up to ``hidden_size``; ``log2(patch_size)`` halvings in all."""

    def __init__(self, cfg: VisionConfig, image_size: int) -> None:
        super().__init__()
        halvings = int(round(math.log2(cfg.patch_size)))
        if cfg.patch_size < 2 or 2**halvings != cfg.patch_size:
            raise ConfigError(
                f"model.vision.patch_size={cfg.patch_size}: the CNN tower needs a power of 2 >= 2"
            )
        if image_size % cfg.patch_size:
            raise ConfigError(
                f"model.vision.patch_size={cfg.patch_size} must divide data.image_size={image_size}"
            )
        self.config = TinyCNNConfig(1, image_size, cfg.hidden_size, cfg.patch_size)
        widths = [max(8, cfg.hidden_size >> (halvings - 1 - i)) for i in range(halvings)]
        layers: list[nn.Module] = [_block(1, widths[0], 2)]
        for c_in, c_out in zip(widths[:-1], widths[1:], strict=True):
            layers += [_block(c_in, c_out, 2), _block(c_out, c_out, 1)]
        self.features = nn.Sequential(*layers)
        self.token_norm = nn.LayerNorm(cfg.hidden_size)

    def forward(self, pixel_values: torch.Tensor) -> CNNOutput:
        grid = self.features(pixel_values)  # [N, D, S/p, S/p]
        tokens = grid.flatten(2).transpose(1, 2)  # [N, T, D], row-major over the grid
        return CNNOutput(last_hidden_state=self.token_norm(tokens))
