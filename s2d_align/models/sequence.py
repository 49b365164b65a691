"""Building the LLM input: ``[visual tokens ; text embeddings]`` per sample, left-padded.

Padded views and padded text positions are dropped before concatenation, so a sample's
sequence does not depend on how much padding its batch needed: a study with one real view
padded to two gives the same sequence (and the same positions) as the study alone. The batch
is then left-padded, the layout HF ``generate`` expects, and positions are counted over the
attention mask exactly as ``generate`` counts them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from s2d_align.errors import DataError

IGNORE_INDEX = -100


@dataclass
class Assembled:
    embeds: torch.Tensor  # [B, L, d]
    attention_mask: torch.Tensor  # [B, L] long
    position_ids: torch.Tensor  # [B, L] long
    labels: torch.Tensor | None  # [B, L] long, IGNORE_INDEX off the target tokens


def position_ids_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Positions as transformers' ``generate`` derives them from a left-padded mask."""
    positions = mask.long().cumsum(-1) - 1
    return positions.masked_fill(mask == 0, 0)


def assemble(
    visual: torch.Tensor,
    visual_mask: torch.Tensor,
    text: torch.Tensor,
    text_mask: torch.Tensor,
    labels: torch.Tensor | None = None,
) -> Assembled:
    """Concatenate valid visual tokens and valid text embeddings per sample, left-pad the batch.

    ``labels`` (aligned with ``text``) get IGNORE_INDEX on the visual part, so the LM loss only
    ever sees target tokens.
    """
    batch, _, dim = text.shape
    text_keep = text_mask.to(torch.bool)
    visual_keep = visual_mask.to(torch.bool)
    if labels is not None:
        stray = (labels != IGNORE_INDEX) & ~text_keep
        if bool(stray.any()):
            row = int(stray.any(dim=1).nonzero()[0])
            raise DataError(f"batch row {row}: labels set on positions where attention_mask is 0")
    pieces, label_pieces = [], []
    for i in range(batch):
        vis = visual[i][visual_keep[i]]
        pieces.append(torch.cat([vis.to(text.dtype), text[i][text_keep[i]]], dim=0))
        if labels is not None:
            vis_labels = labels.new_full((vis.shape[0],), IGNORE_INDEX)
            label_pieces.append(torch.cat([vis_labels, labels[i][text_keep[i]]]))
    length = max(p.shape[0] for p in pieces)
    embeds = text.new_zeros(batch, length, dim)
    mask = torch.zeros(batch, length, dtype=torch.long, device=text.device)
    out_labels = (
        torch.full((batch, length), IGNORE_INDEX, dtype=torch.long, device=text.device)
        if labels is not None
        else None
    )
    for i, piece in enumerate(pieces):
        n = piece.shape[0]
        embeds[i, length - n :] = piece
        mask[i, length - n :] = 1
        if out_labels is not None:
            out_labels[i, length - n :] = label_pieces[i]
    return Assembled(embeds, mask, position_ids_from_mask(mask), out_labels)
