"""Performance targets as data: what each bench test measured, the ratio, and whether it met.

A bench test calls :func:`record` with a :class:`Target`; the target lands in the test's
pytest-benchmark ``extra_info`` and so in the JSON that ``--benchmark-autosave`` writes under
``results/bench/``. ``bench/summary.py`` reads that JSON back (this run and the previous one)
and prints one line per target. Every target is a ratio of two timings (or sizes) taken inside
one run, so a noisy machine shifts both sides alike.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

EXTRA_KEY = "s2d_targets"

#: Every target the dashboard knows, in print order, with how it is stated in issue 15.
TARGETS: dict[str, str] = {
    "generation-batch": "default model: batch 32 vs batch 1 generation tokens/s (text identical)",
    "llm-train-overhead": "smollm2-cpu step minus the vision side vs plain transformers+peft",
    "llm-generate-overhead": "smollm2-cpu generate minus the vision side vs plain generate",
    "padding-share": "padded share of the LLM input positions over a default run's batches",
    "data-share": "data loading + collation share of the default training step (torch.profiler)",
    "grid-overhead": "grid wall x jobs / sum of per-run train + generate + score time",
    "scoring-kept": "scoring a grid of runs from scratch vs with kept scorers (same numbers)",
    "rss-default": "peak RSS of a default run (train + generate), GiB",
    "rss-smollm2": "peak RSS of a smollm2-cpu run (train + generate), GiB",
    "main-job": "nox -s ablate from a fresh clone, minutes",
}

#: Why a target has no line of its own in a bench run.
NOT_MEASURED = {
    "main-job": "not measured by the bench: run `nox -s ablate` (it prints its wall time)",
}

#: Targets recorded in this process (the dashboard at the end of a pytest session reads them).
RECORDED: list[Target] = []


@dataclass(frozen=True)
class Target:
    """One measured target: ``ratio`` compared with ``limit`` in direction ``op``."""

    name: str
    ratio: float
    limit: float
    op: Literal["<=", ">="]
    figure: str  # the measured figures the ratio comes from, in words
    note: str = ""  # what the measurement covers (sizes, what was excluded)

    def __post_init__(self) -> None:
        if self.name not in TARGETS:
            raise ValueError(f"unknown target {self.name!r}; known: {', '.join(TARGETS)}")
        if self.op not in ("<=", ">="):
            raise ValueError(f"target {self.name}: op must be '<=' or '>=', got {self.op!r}")

    @property
    def met(self) -> bool:
        if not math.isfinite(self.ratio):
            return False
        return self.ratio <= self.limit if self.op == "<=" else self.ratio >= self.limit

    def line(self, previous: Target | None = None) -> str:
        """``name  ratio  (target op limit)  met|NOT MET  figure  [previous ratio]``."""
        verdict = "met" if self.met else "NOT MET"
        before = f"  (previous run {previous.ratio:.3g})" if previous is not None else ""
        return (
            f"{self.name:<22} {self.ratio:>8.3g}  (target {self.op} {self.limit:g})  "
            f"{verdict:<7}  {self.figure}{before}"
        )


def record(benchmark: Any, target: Target) -> Target:
    """Store ``target`` in the benchmark's ``extra_info`` (so in the saved JSON); print it."""
    rows = benchmark.extra_info.setdefault(EXTRA_KEY, [])
    rows.append(asdict(target))
    RECORDED.append(target)
    print(target.line())
    return target


def targets_of(report: dict[str, Any]) -> dict[str, Target]:
    """The targets recorded in one pytest-benchmark JSON report, by name."""
    found: dict[str, Target] = {}
    for bench in report.get("benchmarks", []):
        for row in bench.get("extra_info", {}).get(EXTRA_KEY, []):
            target = Target(**row)
            found[target.name] = target
    return found


def saved_runs(storage: Path) -> list[Path]:
    """pytest-benchmark JSON files under ``storage`` (any machine folder), oldest first.

    Autosaved names start with a zero-padded counter (``0007_<commit>_<date>.json``); the
    modification time breaks ties between machine folders.
    """
    files = [p for p in Path(storage).glob("*/*.json") if p.is_file()]
    return sorted(files, key=lambda p: (p.stat().st_mtime, p.name))


def load_report(path: Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable pytest-benchmark JSON file ({exc})") from exc
