"""Metric regression tracking against a committed baseline (``results/baselines/PRESET.json``).

The baseline holds, per variant and test metric, the value of every fixed seed, their mean and
sd, and the platform that produced them (torch version, CPU or GPU, Python, machine). Two levels:

1. **Per (variant, seed)**, on the same platform: with fixed seeds the same code gives the same
   numbers, so each seed's value must match the baseline within a declared per-metric absolute
   tolerance (``seed_tolerance`` in the file, :data:`DEFAULT_SEED_TOLERANCE` by default: near-exact).
   Any change beyond it fails, better or worse: one changed token in one prediction shows here.
2. **Across seeds**, always: a mean worse than the baseline mean by more than
   ``max(k * sd, floor)`` in the metric's direction regresses. Improvements beyond that
   tolerance are reported (the baseline is then stale) but do not fail.

On another platform (GPU kernels, another torch) the same seed need not give the same numbers,
so only level 2 applies, and the result says so; likewise for a format-1 baseline, which
recorded no platform. GPU training is not bit-reproducible everywhere: a baseline written on a
GPU may need a wider ``seed_tolerance``.
"""

from __future__ import annotations

import platform as _platform
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from s2d_align.errors import ConfigError
from s2d_align.evaluation.metrics import find_spec
from s2d_align.harness.provenance import git_sha
from s2d_align.harness.spec import preset_label
from s2d_align.utils.io import read_json, write_json

BASELINE_FORMAT = 2
#: Formats :func:`load_baseline` reads (format 1 has no platform: across-seed level only).
READABLE_FORMATS = (1, 2)
#: Across-seed tolerance = max(K_SD * sd over seeds, ABS_FLOOR) unless the baseline says otherwise.
K_SD = 3.0
ABS_FLOOR = 0.01
#: Per-(variant, seed) absolute tolerance on the same platform; written into every new baseline
#: per metric, where it can be edited. Scoring is deterministic double-precision arithmetic, so
#: only float noise needs absorbing.
DEFAULT_SEED_TOLERANCE = 1e-6
#: The grid rerun when neither the baseline nor the command line says otherwise.
DEFAULT_VARIANTS = ("sft", "s2d")
DEFAULT_SEEDS = (0, 1)


@dataclass(frozen=True)
class MetricDiff:
    """One comparison: of a seed's value (``seed`` set) or of the mean over seeds (None)."""

    variant: str
    metric: str
    baseline: float
    current: float | None
    tolerance: float
    higher_is_better: bool
    seed: int | None = None

    @property
    def level(self) -> str:
        return "mean" if self.seed is None else "seed"

    @property
    def delta(self) -> float | None:
        return None if self.current is None else self.current - self.baseline

    @property
    def status(self) -> str:
        if self.current is None:
            return "missing"
        if self.seed is not None:  # same seed, same platform: any change is a change
            return "CHANGED" if abs(self.delta) > self.tolerance else "ok"
        worse = -self.delta if self.higher_is_better else self.delta
        if worse > self.tolerance:
            return "REGRESSION"
        if -worse > self.tolerance:
            return "improved"
        return "ok"


def platform_info() -> dict[str, str]:
    """What decides whether a fixed seed reproduces its numbers exactly: the torch version,
    the device the runs train on (a GPU when one is visible, as the pipeline picks), Python and
    the machine architecture."""
    import torch

    device = f"cuda ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "cpu"
    return {
        "torch": str(torch.__version__),
        "device": device,
        "python": _platform.python_version(),
        "machine": _platform.machine(),
    }


def tracked(metric: str) -> bool:
    """Whether the metric registry marks ``metric`` for regression tracking (the NLG metrics and
    every CE F1 cell by default; names it does not know are not tracked)."""
    spec = find_spec(metric)
    return spec is not None and spec.tracked_by_regress


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
    platform: Mapping[str, str] | None = None,
    k: float = K_SD,
    floor: float = ABS_FLOOR,
) -> dict[str, Any]:
    metrics = sorted({m for by_metric in summary.values() for m in by_metric})
    return {
        "format": BASELINE_FORMAT,
        "preset": preset,
        "variants": list(variants),
        "seeds": list(seeds),
        "split": "test",
        "platform": dict(platform if platform is not None else platform_info()),
        "tolerance": {"k_sd": k, "abs_floor": floor},
        "seed_tolerance": dict.fromkeys(metrics, DEFAULT_SEED_TOLERANCE),
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
    if not isinstance(data, dict) or data.get("format") not in READABLE_FORMATS:
        raise ConfigError(f"{path}: not a baseline file of format {list(READABLE_FORMATS)}")
    if "metrics" not in data:
        raise ConfigError(f"{path}: baseline without 'metrics'")
    return data


def write_baseline(data: Mapping[str, Any], path: str | Path) -> Path:
    return write_json(path, dict(data))


def compare(baseline: Mapping[str, Any], current: Mapping[str, Any]) -> list[MetricDiff]:
    """The across-seed level: one diff per (variant, metric) of the baseline, on the mean over
    seeds; a metric absent now is 'missing'."""
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


def compare_seeds(baseline: Mapping[str, Any], current: Mapping[str, Any]) -> list[MetricDiff]:
    """One diff per (variant, seed, metric) of the baseline, each with the metric's declared
    tolerance; a seed or metric absent now is 'missing'."""
    tolerances = baseline.get("seed_tolerance", {})
    diffs = []
    for variant, metrics in baseline["metrics"].items():
        for metric, base in metrics.items():
            now = current.get(variant, {}).get(metric) or {}
            now_by_seed = dict(zip(now.get("seeds", []), now.get("values", []), strict=True))
            for seed, value in zip(base["seeds"], base["values"], strict=True):
                current_value = now_by_seed.get(seed)
                diffs.append(
                    MetricDiff(
                        variant=variant,
                        metric=metric,
                        baseline=float(value),
                        current=None if current_value is None else float(current_value),
                        tolerance=float(tolerances.get(metric, DEFAULT_SEED_TOLERANCE)),
                        higher_is_better=bool(base.get("higher_is_better", True)),
                        seed=int(seed),
                    )
                )
    return diffs


def seed_level_applies(
    baseline: Mapping[str, Any], platform: Mapping[str, str]
) -> tuple[bool, str | None]:
    """Whether the per-seed level applies (same platform), and if not, the note saying why."""
    recorded = baseline.get("platform")
    if not recorded:
        return False, (
            f"the baseline (format {baseline.get('format')}) records no platform: per-(variant, "
            "seed) check skipped, only the across-seed tolerance applies; refresh it with "
            "--update-baseline"
        )
    differ = sorted(k for k in set(recorded) | set(platform) if recorded.get(k) != platform.get(k))
    if differ:
        what = ", ".join(f"{k} {recorded.get(k, '-')} -> {platform.get(k, '-')}" for k in differ)
        return False, (
            f"another platform than the baseline's ({what}): per-(variant, seed) check skipped, "
            "only the across-seed tolerance applies"
        )
    return True, None


def check(
    baseline: Mapping[str, Any], current: Mapping[str, Any], platform: Mapping[str, str]
) -> tuple[list[MetricDiff], list[str]]:
    """Both levels where they apply: per-seed diffs (same platform only), then across-seed
    diffs; plus the notes to show (why a level was skipped)."""
    tight, note = seed_level_applies(baseline, platform)
    diffs = (compare_seeds(baseline, current) if tight else []) + compare(baseline, current)
    return diffs, [] if note is None else [note]


def failed(diffs: Iterable[MetricDiff]) -> list[MetricDiff]:
    return [d for d in diffs if d.status in ("REGRESSION", "CHANGED", "missing")]


def diff_table(diffs: Sequence[MetricDiff]):
    """A rich Table of the comparison: per-seed values that changed (every per-seed value when
    few), then every mean over seeds (failures in red, improvements in green)."""
    from rich.table import Table

    seeds = [d for d in diffs if d.seed is not None]
    shown_seeds = seeds if len(seeds) <= 12 else [d for d in seeds if d.status != "ok"]
    caption = None
    if seeds:
        bad = sum(d.status != "ok" for d in seeds)
        caption = f"per (variant, seed): {len(seeds) - bad} of {len(seeds)} values within tolerance"
    table = Table(title="regression check (test split)", caption=caption)
    columns = ("variant", "seed", "metric", "baseline", "current", "delta", "tolerance", "status")
    for col in columns:
        left = col in ("variant", "seed", "metric", "status")
        table.add_column(col, justify="left" if left else "right")
    style = {"REGRESSION": "bold red", "CHANGED": "bold red", "missing": "bold red",
             "improved": "green", "ok": ""}  # fmt: skip
    for d in [*shown_seeds, *(d for d in diffs if d.seed is None)]:
        digits = 4 if d.seed is None else 8
        table.add_row(
            d.variant,
            "mean" if d.seed is None else str(d.seed),
            d.metric,
            f"{d.baseline:.{digits}f}",
            "-" if d.current is None else f"{d.current:.{digits}f}",
            "-" if d.delta is None else f"{d.delta:+.{digits}f}",
            f"{d.tolerance:.{digits}g}",
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
    platform: dict[str, str] = field(default_factory=dict)  # where this run ran
    notes: list[str] = field(default_factory=list)  # e.g. why the per-seed level was skipped

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

    ``jobs``: runs at a time (``"auto"``: :func:`~s2d_align.harness.grid.auto_jobs`); the
    numbers do not depend on it."""
    from s2d_align.harness.grid import auto_jobs
    from s2d_align.harness.plan import plan_grid
    from s2d_align.harness.runner import Runner
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
    here = platform_info()
    if update:
        data = make_baseline(preset_label(preset), variants, seeds, summary, signature,
                             platform=here)  # fmt: skip
        write_baseline(data, baseline_file)
        return RegressionResult(baseline_file, summary, [], True, signature, platform=here)
    diffs, notes = check(baseline, summary, here)
    return RegressionResult(
        baseline_file, summary, diffs, False, signature, baseline.get("signature"),
        platform=here, notes=notes,
    )  # fmt: skip
