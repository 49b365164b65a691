"""Result records of a scoring: :class:`Metric`, :class:`ScoreReport`, :class:`Comparison`.

``to_dict`` gives the JSON that ``s2d-align score --out`` writes and the results store keeps;
``from_dict`` reads it back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from s2d_align.chexpert import OBSERVATIONS
from s2d_align.evaluation.ce import ce_cell_names
from s2d_align.evaluation.metrics import CE_F1_PREFIX
from s2d_align.evaluation.signature import parse_signature
from s2d_align.evaluation.stats import PairedResult

__all__ = ["Comparison", "Metric", "ScoreReport"]


@dataclass(frozen=True)
class Metric:
    """One number with its 95% bootstrap interval."""

    value: float
    ci_low: float | None = None
    ci_high: float | None = None
    higher_is_better: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "higher_is_better": self.higher_is_better,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Metric:
        return cls(
            float(data["value"]),
            data.get("ci_low"),
            data.get("ci_high"),
            bool(data.get("higher_is_better", True)),
        )


@dataclass
class ScoreReport:
    """Everything one scoring produced. ``per_sample``: metric -> id -> value."""

    metrics: dict[str, Metric]
    per_sample: dict[str, dict[str, float]]
    signature: str
    headline: str
    n: int
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def signature_fields(self) -> dict[str, str]:
        return parse_signature(self.signature)

    def ce_matrix(self) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
        """``{mapping: {labels: {average: {stat: value}}}}`` from the ``ce/...`` metrics."""
        out: dict[str, Any] = {}
        for name in ce_cell_names():
            _, mapping, labels, average, stat = name.split("/")
            out.setdefault(mapping, {}).setdefault(labels, {}).setdefault(average, {})[stat] = (
                self.metrics[name].value
            )
        return out

    def per_observation_f1(self) -> dict[str, float]:
        return {obs: self.metrics[f"{CE_F1_PREFIX}{obs}"].value for obs in OBSERVATIONS}

    def to_dict(self) -> dict[str, Any]:
        return {
            "signature": self.signature,
            "signature_fields": self.signature_fields,
            "headline": self.headline,
            "n": self.n,
            "metrics": {k: m.to_dict() for k, m in self.metrics.items()},
            "ce_matrix": self.ce_matrix(),
            "per_observation_f1": self.per_observation_f1(),
            "per_sample": self.per_sample,
            "timings": self.timings,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ScoreReport:
        return cls(
            metrics={k: Metric.from_dict(v) for k, v in data["metrics"].items()},
            per_sample={k: dict(v) for k, v in data.get("per_sample", {}).items()},
            signature=data["signature"],
            headline=data["headline"],
            n=int(data["n"]),
            timings=dict(data.get("timings", {})),
        )


@dataclass
class Comparison:
    """Two systems scored on the same references, and a paired test per metric (A minus B)."""

    a: ScoreReport
    b: ScoreReport
    tests: dict[str, PairedResult]  # per metric name; delta/p_value arrays of length 1
    trials: int

    def rows(self) -> list[dict[str, Any]]:
        return [
            {
                "metric": name,
                "a": self.a.metrics[name].value,
                "b": self.b.metrics[name].value,
                "delta": float(t.delta[0]),
                "p_value": float(t.p_value[0]),
            }
            for name, t in self.tests.items()
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "signature": self.a.signature,
            "trials": self.trials,
            "tests": self.rows(),
            "a": self.a.to_dict(),
            "b": self.b.to_dict(),
        }
