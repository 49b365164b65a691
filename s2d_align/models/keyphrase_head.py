"""Key-phrase head (stage 3): multi-label classifier over the K most frequent train phrases.

It reads the memory-augmented visual tokens (what the LLM sees), mean-pooled over the valid
views, so the key-phrase loss shapes the same features that ground the report.
"""

from __future__ import annotations

import torch
from torch import nn


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``tokens [B, T, d]`` over positions where ``mask [B, T]`` is True."""
    weights = mask.to(tokens.dtype)[..., None]
    return (tokens * weights).sum(1) / weights.sum(1).clamp_min(1.0)


class KeyphraseHead(nn.Module):
    def __init__(self, dim: int, num_phrases: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.classifier = nn.Linear(dim, num_phrases)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, K]`` (apply a sigmoid for probabilities)."""
        return self.classifier(self.norm(masked_mean(tokens, mask)))
