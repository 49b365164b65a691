"""What one run of the grid is (``RunSpec``) and what running it produces (``RunArtifacts``).

The runner only talks to the model through two injectable callables, so the harness logic
(idempotency, resume, test-set lock, recording) is tested with cheap fakes and run for real
with the training pipeline (``s2d_align.harness.real_run``):

- ``run_fn(spec, run_dir, *, splits, hooks, progress, cache_root) -> RunArtifacts``: train
  (resuming from the run dir's checkpoint if there is one) and generate predictions for ``splits``;
- a ``Scorer`` with ``references(cfg, split) -> SplitReferences`` and
  ``score(cfg, split, predictions, refs) -> Scored``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from s2d_align.config import Config, config_hash, to_dict
from s2d_align.harness.variants import Variant

SPLITS = ("val", "test")
PURPOSES = ("ablate", "sweep", "regress")


def preset_label(preset: str | Path | None) -> str:
    """What the store calls a preset: its name, or the stem of a preset file path."""
    if preset is None:
        return "defaults"
    text = str(preset)
    return Path(text).stem if text.endswith((".yaml", ".yml")) else text


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9+._-]+", "_", text).strip("_") or "x"


@dataclass(frozen=True)
class RunSpec:
    """One cell of the grid: a preset, a variant, a seed and any extra overrides."""

    preset: str  # preset label (file stem) as recorded in the store
    variant: Variant
    seed: int
    config: Config
    purpose: str = "ablate"
    splits: tuple[str, ...] = SPLITS
    overrides: tuple[str, ...] = ()
    # (dotted key, source) for every leaf of ``config``: default / preset / variant:NAME / override
    config_sources: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.purpose not in PURPOSES:
            raise ValueError(f"purpose must be one of {PURPOSES}, got {self.purpose!r}")
        bad = [s for s in self.splits if s not in SPLITS]
        if bad:
            raise ValueError(f"unknown split(s) {bad}; expected a subset of {SPLITS}")

    @property
    def config_hash(self) -> str:
        return config_hash(self.config)

    @property
    def run_id(self) -> str:
        """Stable id: the same preset, variant, seed and resolved config give the same run."""
        return (
            f"{_slug(self.preset)}.{_slug(self.variant.name)}.s{self.seed}.{self.config_hash[:8]}"
        )

    def run_dir(self, results_dir: Path) -> Path:
        return (
            Path(results_dir)
            / "runs"
            / _slug(self.preset)
            / _slug(self.variant.name)
            / f"s{self.seed}-{self.config_hash[:8]}"
        )

    @property
    def total_steps(self) -> int:
        return self.config.train.total_steps

    def config_dict(self) -> dict[str, Any]:
        return to_dict(self.config)


@dataclass
class TrainSummary:
    steps: int
    tokens_seen: int
    wall_s: float
    log_rows: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class RunArtifacts:
    """What ``run_fn`` returns: the training summary and predictions per requested split."""

    train: TrainSummary
    predictions: dict[str, list[dict[str, Any]]]
    generate_wall_s: float = 0.0  # generation of every split, diagnostics' included
    # Per split: ``diag/...`` values measured by run_fn (``s2d_align.inference.diagnostics``),
    # and the split's predictions with images permuted across studies, which the runner scores
    # with the same scorer (image dependence). Both optional: fakes and sweeps leave them empty.
    diagnostics: dict[str, dict[str, float]] = field(default_factory=dict)
    permuted_predictions: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


@dataclass
class SplitReferences:
    """Ground truth of one split: the report per id, image paths per id, and the manifest hash."""

    reports: dict[str, str]
    images: dict[str, list[str]]
    manifest_hash: str


Labels = dict[str, "int | None"]


@dataclass
class Scored:
    """A ScoreReport plus the CE labels behind it (kept for exact paired tests on CE cells)."""

    report: Any  # s2d_align.evaluation.records.ScoreReport (or a test double)
    prediction_labels: dict[str, Labels] | None = None  # id -> 14 labels
    reference_labels: dict[str, Labels] | None = None


class NoHooks:
    """Hooks that ignore every intermediate value (a run outside a sweep).

    ``run_fn`` calls ``hooks.intermediate(step, metrics)`` with metrics it has (the real
    pipeline: stage-end training loss), or, when it generated val predictions mid-run
    (``train.eval_every``), ``hooks.intermediate_predictions(step, rows)``: the runner scores
    those with the grid's scorer and passes the val metrics on to ``intermediate``.
    """

    def intermediate(self, step: int, metrics: Mapping[str, float]) -> None:
        return None


class Scorer(Protocol):
    def references(self, cfg: Config, split: str) -> SplitReferences: ...

    def score(
        self, cfg: Config, split: str, predictions: dict[str, str], refs: SplitReferences
    ) -> Scored: ...


RunFn = Callable[..., RunArtifacts]
