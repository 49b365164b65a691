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

import itertools
import math
from dataclasses import dataclass

import torch
from torch import nn

from s2d_align.config.schema import VisionConfig
from s2d_align.errors import ConfigError

#: Part of the vision pre-training cache key: bump it whenever the layers below change.
ARCH_VERSION = 4


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
        halvings = round(math.log2(cfg.patch_size))
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
        for c_in, c_out in itertools.pairwise(widths):
            layers += [_block(c_in, c_out, 2), _block(c_out, c_out, 1)]
        self.features = nn.Sequential(*layers)
        self.token_norm = nn.LayerNorm(cfg.hidden_size)
        # Per grid position and channel: the train images' token mean and sd, set once after
        # pre-training (``standardise_from``). Every chest film shows the same anatomy at the
        # same place, so raw tokens are mostly that shared picture; standardised, a token says
        # how this study differs from the typical one there, which is what a report describes.
        tokens = (image_size // cfg.patch_size) ** 2
        self.register_buffer("token_mean", torch.zeros(tokens, cfg.hidden_size))
        self.register_buffer("token_std", torch.ones(tokens, cfg.hidden_size))

    def raw_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        grid = self.features(pixel_values)  # [N, D, S/p, S/p]
        return self.token_norm(grid.flatten(2).transpose(1, 2))  # [N, T, D], row-major

    def forward(self, pixel_values: torch.Tensor) -> CNNOutput:
        tokens = (self.raw_tokens(pixel_values) - self.token_mean) / self.token_std
        return CNNOutput(last_hidden_state=tokens)

    @torch.no_grad()
    def standardise_from(self, pixel_values: torch.Tensor, batch_size: int = 128) -> None:
        """Set the token statistics from normalised backbone inputs ``[N, 1, S, S]``."""
        chunks = [
            self.raw_tokens(pixel_values[i : i + batch_size])
            for i in range(0, len(pixel_values), batch_size)
        ]
        tokens = torch.cat(chunks)
        self.token_mean.copy_(tokens.mean(0))
        self.token_std.copy_(tokens.std(0).clamp_min(1e-3))
