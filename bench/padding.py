"""Padding arithmetic for the step-profile bench: padded positions of fixed-order batches, and
what length-aware batching (rows sorted by length within pools of batches) would leave."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def padding(lengths: Sequence[np.ndarray]) -> tuple[int, int]:
    """``(padded positions, all positions)`` when each batch is padded to its longest row."""
    padded = sum(int(len(b) * b.max() - b.sum()) for b in lengths)
    return padded, sum(int(len(b) * b.max()) for b in lengths)


def length_aware(lengths: Sequence[np.ndarray], pool: int) -> list[np.ndarray]:
    """The same rows re-batched: within each pool of ``pool`` consecutive batches, sorted by
    length and cut into batches of the same size (so every step keeps its sample count)."""
    out = []
    for k in range(0, len(lengths), pool):
        group = lengths[k : k + pool]
        flat = np.sort(np.concatenate(group))
        size = len(group[0])
        out.extend(flat[i : i + size] for i in range(0, len(flat), size))
    return out
