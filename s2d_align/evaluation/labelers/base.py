"""The labeler protocol and the factory that builds one from ``EvalConfig``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from s2d_align.config.schema import EvalConfig
from s2d_align.errors import ConfigError

Labels = dict[str, int | None]


@runtime_checkable
class Labeler(Protocol):
    """Maps report texts to CheXpert-14 labels (1 positive, 0 negative, -1 uncertain, None blank).

    ``signature`` identifies the labeler and everything that can change its output (rules version,
    checkpoint and vocab hashes); cached reference labels are keyed by it.
    """

    name: str
    signature: str

    def label(self, reports: Sequence[str]) -> list[Labels]: ...


def get_labeler(
    cfg: EvalConfig,
    *,
    batch_size: int = 16,
    device: str | None = None,
    progress: bool = False,
) -> Labeler:
    """Build the labeler named by ``cfg.labeler`` (``rules`` or ``chexbert``)."""
    if cfg.labeler == "rules":
        from s2d_align.evaluation.labelers.rules import RulesLabeler

        return RulesLabeler()
    if cfg.labeler == "chexbert":
        from s2d_align.evaluation.labelers.chexbert import CheXbertLabeler

        if not cfg.chexbert_checkpoint:
            raise ConfigError(
                "eval.labeler=chexbert needs eval.chexbert_checkpoint: the path of a CheXbert "
                "chexbert.pth that you supply (it is never downloaded); or use eval.labeler=rules"
            )
        return CheXbertLabeler(
            cfg.chexbert_checkpoint,
            vocab=cfg.vocab,
            expected_sha256=cfg.chexbert_sha256,
            batch_size=batch_size,
            device=device,
            progress=progress,
        )
    raise ConfigError(f"eval.labeler: unknown labeler {cfg.labeler!r}; valid: rules, chexbert")
