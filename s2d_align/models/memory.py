"""Memory adapter shared across the three stages, and the InfoNCE alignment loss.

A learnable bank ``M`` (S slots x d) is read by the projected visual tokens with multi-head
cross-attention (queries from the tokens, keys and values from ``M``) and added back through a
gate: ``X' = X + tanh(g) * Attn(X, M, M)``. ``g`` starts at ``gate_init`` (0 by default, so at
initialisation the adapter is the identity and a pretrained LLM sees exactly the projector's
tokens). With ``gate=False`` the
factor is the constant 1 (a plain residual add, the read is felt from the first step).

With ``topk > 0`` every query (per head) attends to its k highest-scoring slots only: the other
slots' scores are set to -inf before the softmax, so their weights are exactly zero.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from s2d_align.errors import ConfigError


class MemoryAdapter(nn.Module):
    def __init__(
        self,
        dim: int,
        slots: int,
        num_heads: int,
        *,
        topk: int = 0,
        gate: bool = True,
        gate_init: float = 0.0,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ConfigError(
                f"model.memory.num_heads={num_heads} must divide the memory width {dim} "
                "(the LLM hidden size)"
            )
        if not 0 <= topk <= slots:
            raise ConfigError(f"model.memory.topk={topk} must be in [0, slots={slots}]")
        self.dim, self.slots, self.num_heads, self.topk = dim, slots, num_heads, topk
        self.head_dim = dim // num_heads
        self.bank = nn.Parameter(torch.empty(slots, dim))
        self.query_norm = nn.LayerNorm(dim)
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.o_proj = nn.Linear(dim, dim)
        # gate=False: no parameter at all, the factor is the constant 1 (see module docstring).
        self.gate = nn.Parameter(torch.full((1,), float(gate_init))) if gate else None
        self.reset()

    @torch.no_grad()
    def reset(self, generator: torch.Generator | None = None) -> None:
        """Re-initialise the bank and the read (norm, projections): fresh memory content.

        The gate keeps its value: a reset tests "memory not carried over", so the fresh memory
        must be read as strongly as the old one was, not switched off.
        """
        nn.init.normal_(self.bank, mean=0.0, std=1.0, generator=generator)
        for lin in (self.q_proj, self.k_proj, self.v_proj, self.o_proj):
            nn.init.kaiming_uniform_(lin.weight, a=math.sqrt(5), generator=generator)
            bound = 1.0 / math.sqrt(lin.in_features)
            nn.init.uniform_(lin.bias, -bound, bound, generator=generator)
        self.query_norm.reset_parameters()

    def gate_factor(self) -> torch.Tensor | float:
        return 1.0 if self.gate is None else torch.tanh(self.gate)

    def read(
        self, x: torch.Tensor, *, return_weights: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``Attn(x, M, M)`` for queries ``x`` of shape ``[..., T, d]`` or ``[B, d]``.

        With ``return_weights`` also returns the attention weights ``[B, heads, T, S]``.
        """
        squeeze = x.dim() == 2
        if squeeze:
            x = x[:, None, :]
        batch, length, _ = x.shape
        heads, hd = self.num_heads, self.head_dim
        q = self.q_proj(self.query_norm(x)).view(batch, length, heads, hd).transpose(1, 2)
        k = self.k_proj(self.bank).view(self.slots, heads, hd).transpose(0, 1)  # [H, S, hd]
        v = self.v_proj(self.bank).view(self.slots, heads, hd).transpose(0, 1)
        scores = torch.einsum("bhtd,hsd->bhts", q, k) / math.sqrt(hd)
        if 0 < self.topk < self.slots:
            top = scores.topk(self.topk, dim=-1).indices
            keep = torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, top, True)
            scores = scores.masked_fill(~keep, float("-inf"))
        weights = scores.softmax(dim=-1)
        out = torch.einsum("bhts,hsd->bhtd", weights, v)
        out = self.o_proj(out.transpose(1, 2).reshape(batch, length, self.dim))
        if squeeze:
            out = out[:, 0]
        return (out, weights) if return_weights else out

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(x + gate * read, read)``; the raw read feeds the alignment loss."""
        read = self.read(x)
        return x + self.gate_factor() * read, read


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE over the batch: row i of ``a`` should match row i of ``b``.

    Cosine similarities divided by ``temperature``; the mean of the a->b and b->a
    cross-entropies. Needs at least 2 rows to be informative (1 row gives 0).
    """
    if a.shape != b.shape or a.dim() != 2:
        raise ValueError(
            f"info_nce needs two [B, d] tensors, got {tuple(a.shape)}, {tuple(b.shape)}"
        )
    logits = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / temperature
    target = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
