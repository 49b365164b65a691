"""Projector: an MLP from the vision width to the LLM width (LLaVA-style)."""

from __future__ import annotations

from torch import nn

from s2d_align.errors import ConfigError


def build_projector(in_dim: int, out_dim: int, layers: int) -> nn.Sequential:
    """``layers`` linear maps with GELU in between; ``layers=1`` is a single linear map."""
    if layers < 1:
        raise ConfigError(f"model.projector_layers must be >= 1, got {layers}")
    modules: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
    for _ in range(layers - 1):
        modules += [nn.GELU(), nn.Linear(out_dim, out_dim)]
    return nn.Sequential(*modules)
