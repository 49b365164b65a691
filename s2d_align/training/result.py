"""What a finished training run reports: :class:`TrainResult` (``run_dir/train_result.json``)."""

from __future__ import annotations

import resource
import sys
from dataclasses import asdict, dataclass, field
from typing import Any


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


@dataclass
class TrainResult:
    """What a finished training run reports (also ``run_dir/train_result.json``)."""

    run_dir: str
    config_hash: str
    total_steps: int
    tokens_seen: int  # target tokens (the LM loss's tokens) over all processes
    input_tokens_seen: int  # prompt + target tokens fed, without padding
    samples_seen: int
    wall_time_s: float  # this call, including data, tokenizer and pre-training
    train_time_s: float  # optimizer steps only
    samples_per_s: float
    peak_rss_mb: float
    processes: int
    stages: list[dict[str, Any]] = field(default_factory=list)
    final_loss: float | None = None
    resumed_from_step: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainResult:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})
