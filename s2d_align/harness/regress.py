"""Metric regression tracking against a committed baseline (``results/baselines/PRESET.json``).

The baseline holds, per variant and test metric, the mean and the sd over the fixed seeds of a
reference run of the grid. A new run regresses on a metric when its mean is worse than the
baseline mean by more than ``max(k * sd, floor)`` in the metric's direction: the tolerance
grows with seed noise, and the floor keeps a perfectly deterministic metric (sd 0) from
flagging floating-point jitter. Improvements beyond the tolerance are reported too (the
baseline is then stale), but only regressions fail.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from s2d_align.errors import ConfigError
from s2d_align.harness.provenance import git_sha
from s2d_align.harness.spec import preset_label
from s2d_align.utils.io import read_json, write_json

BASELINE_FORMAT = 1
#: Tolerance = max(K_SD * sd over seeds, ABS_FLOOR) unless the baseline file says otherwise.
K_SD = 3.0
ABS_FLOOR = 0.01
#: Metrics tracked: the NLG metrics and every CE F1 cell (not P/R, not the noisy per-observation F1).
TRACKED_PREFIXES = ("BLEU_", "METEOR", "ROUGE_L", "CIDEr")
#: The grid rerun when neither the baseline nor the command line says otherwise.
DEFAULT_VARIANTS = ("sft", "s2d")
DEFAULT_SEEDS = (0, 1)


@dataclass(frozen=True)
class MetricDiff:
    variant: str
    metric: str
    baseline: float
    current: float | None
    tolerance: float
    higher_is_better: bool

    @property
    def delta(self) -> float | None:
        return None if self.current is None else self.current - self.baseline

    @property
    def status(self) -> str:
        if self.current is None:
            return "missing"
        worse = -self.delta if self.higher_is_better else self.delta
        if worse > self.tolerance:
            return "REGRESSION"
        if -worse > self.tolerance:
            return "improved"
        return "ok"


def tracked(metric: str) -> bool:
    return metric.startswith(TRACKED_PREFIXES) or (
        metric.startswith("ce/") and metric.endswith("/f1")
    )


def summarise(rows: Iterable[Mapping[str, Any]], split: str = "test") -> dict[str, dict[str, dict]]:
    """Per variant and metric: mean, sd over seeds, per-seed values, direction."""
    values: dict[tuple[str, str], dict[int, float]] = defaultdict(dict)
    direction: dict[str, bool] = {}
    for r in rows:
        if r["split"] != split or not tracked(r["metric"]):
            continue
        values[(r["variant"], r["metric"])][int(r["seed"])] = float(r["value"])
        direction[r["metric"]] = bool(r["higher_is_better"])
    out: dict[str, dict[str, dict]] = defaultdict(dict)
    for (variant, metric), by_seed in sorted(values.items()):
        vals = [by_seed[s] for s in sorted(by_seed)]
        out[variant][metric] = {
            "mean": statistics.fmean(vals),
            "sd": statistics.stdev(vals) if len(vals) > 1 else 0.0,
            "values": vals,
            "seeds": sorted(by_seed),
            "higher_is_better": direction[metric],
        }
    return dict(out)


def make_baseline(
    preset: str,
    variants: Sequence[str],
    seeds: Sequence[int],
    summary: Mapping[str, Any],
    signature: str,
    *,
    k: float = K_SD,
    floor: float = ABS_FLOOR,
) -> dict[str, Any]:
    return {
        "format": BASELINE_FORMAT,
        "preset": preset,
        "variants": list(variants),
        "seeds": list(seeds),
        "split": "test",
        "tolerance": {"k_sd": k, "abs_floor": floor},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git_sha": git_sha(),
        "signature": signature,
        "metrics": summary,
    }


def baseline_path(results_dir: str | Path, preset: str) -> Path:
    return Path(results_dir) / "baselines" / f"{preset_label(preset)}.json"


def load_baseline(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"no baseline at {path}; write one with `s2d-align regress --preset PRESET "
            "--update-baseline`"
        )
    data = read_json(path)
    if not isinstance(data, dict) or data.get("format") != BASELINE_FORMAT or "metrics" not in data:
        raise ConfigError(f"{path}: not a baseline file of format {BASELINE_FORMAT}")
    return data


def write_baseline(data: Mapping[str, Any], path: str | Path) -> Path:
    return write_json(path, dict(data))


def compare(baseline: Mapping[str, Any], current: Mapping[str, Any]) -> list[MetricDiff]:
    """One diff per (variant, metric) of the baseline; a metric absent now is 'missing'."""
    tol = baseline.get("tolerance", {})
    k, floor = float(tol.get("k_sd", K_SD)), float(tol.get("abs_floor", ABS_FLOOR))
    diffs = []
    for variant, metrics in baseline["metrics"].items():
        for metric, base in metrics.items():
            now = current.get(variant, {}).get(metric)
            diffs.append(
                MetricDiff(
                    variant=variant,
                    metric=metric,
                    baseline=float(base["mean"]),
                    current=None if now is None else float(now["mean"]),
                    tolerance=max(k * float(base.get("sd", 0.0)), floor),
                    higher_is_better=bool(base.get("higher_is_better", True)),
                )
            )
    return diffs


def failed(diffs: Iterable[MetricDiff]) -> list[MetricDiff]:
    return [d for d in diffs if d.status in ("REGRESSION", "missing")]


def diff_table(diffs: Sequence[MetricDiff]):
    """A rich Table of the comparison (regressions in red, improvements in green)."""
    from rich.table import Table

    table = Table(title="regression check (test split, mean over seeds)")
    for col in ("variant", "metric", "baseline", "current", "delta", "tolerance", "status"):
        table.add_column(col, justify="left" if col in ("variant", "metric", "status") else "right")
    style = {"REGRESSION": "bold red", "missing": "bold red", "improved": "green", "ok": ""}
    for d in diffs:
        table.add_row(
            d.variant,
            d.metric,
            f"{d.baseline:.4f}",
            "-" if d.current is None else f"{d.current:.4f}",
            "-" if d.delta is None else f"{d.delta:+.4f}",
            f"{d.tolerance:.4f}",
            f"[{style[d.status]}]{d.status}[/]" if style[d.status] else d.status,
        )
    return table


@dataclass
class RegressionResult:
    baseline_file: Path
    summary: dict[str, Any]  # the new run's per-variant metric summary
    diffs: list[MetricDiff]  # empty when the baseline was (re)written
    updated: bool
    signature: str
    baseline_signature: str | None = None

    @property
    def ok(self) -> bool:
        return self.updated or not failed(self.diffs)


def run_regression(
    preset: str,
    baseline_file: str | Path,
    work_dir: str | Path,
    *,
    update: bool = False,
    variants: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    cache_root: str | Path | None = None,
    run_fn: Any = None,
    scorer: Any = None,
    progress: bool = True,
    jobs: int | str = 1,
) -> RegressionResult:
    """Rerun the grid from scratch in ``work_dir`` (its own store) and compare or update.

    ``jobs``: runs at a time (``"auto"``: :func:`~s2d_align.harness.runner.auto_jobs`); the
    numbers do not depend on it."""
    from s2d_align.harness.runner import Runner, auto_jobs, plan_grid
    from s2d_align.harness.store import Store
    from s2d_align.harness.variants import load_variants

    baseline_file = Path(baseline_file)
    baseline = None if update else load_baseline(baseline_file)
    variants = list(variants or (baseline["variants"] if baseline else DEFAULT_VARIANTS))
    seeds = [int(s) for s in (seeds or (baseline["seeds"] if baseline else DEFAULT_SEEDS))]
    if update and len(seeds) < 2:
        raise ConfigError("a baseline needs >= 2 seeds: its tolerances come from the sd over seeds")
    store = Store.open(None, work_dir)
    try:
        if store.run_ids():
            raise ConfigError(f"{work_dir} already holds runs; regress needs a fresh directory")
        runner = Runner(store, work_dir, run_fn=run_fn, scorer=scorer, cache_root=cache_root,
                        progress=progress)  # fmt: skip
        specs = plan_grid(preset, load_variants(variants), seeds, purpose="regress")
        grid = runner.run_grid(specs, jobs=auto_jobs(specs) if jobs == "auto" else int(jobs))
        if not grid.ok:
            raise ConfigError(
                "regression grid failed: "
                + "; ".join(f"{rid}: {err}" for rid, err in grid.failed.items())
            )
        summary = summarise(store.metric_rows([s.run_id for s in specs]))
        sigs = sorted({e.signature for e in store.evaluations() if e.split == "test"})
    finally:
        store.close()
    signature = " | ".join(sigs)
    if update:
        data = make_baseline(preset_label(preset), variants, seeds, summary, signature)
        write_baseline(data, baseline_file)
        return RegressionResult(baseline_file, summary, [], True, signature)
    return RegressionResult(
        baseline_file, summary, compare(baseline, summary), False, signature,
        baseline.get("signature"),
    )  # fmt: skip
