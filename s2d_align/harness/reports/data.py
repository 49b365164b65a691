"""Read what a report needs out of the store into pandas frames (nothing else is read)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from s2d_align.errors import ConfigError
from s2d_align.harness.references import is_reference, order_references
from s2d_align.harness.store import Run, Store
from s2d_align.harness.variants import REFERENCE_VARIANT, sort_by_order


@dataclass
class PresetResults:
    """The ablation runs of one preset: run table, metric rows, signatures, headline metric."""

    preset: str
    runs: pd.DataFrame  # one row per complete run
    metrics: pd.DataFrame  # run_id, variant, seed, split, metric, value, ci_low, ci_high, hib
    signatures: dict[str, list[str]]  # split -> distinct protocol signatures
    headline: str  # the CE headline metric name ScoreReport named
    manifest_hashes: dict[str, list[str]]
    datasets: tuple[str, ...] = ()  # data.dataset of the runs (selects the CE caveats)

    @property
    def variants(self) -> list[str]:
        return order_variants(self.runs["variant"].unique())

    def run_ids(self, variant: str) -> list[str]:
        return list(self.runs.loc[self.runs["variant"] == variant, "run_id"])

    def seeds_of(self, variant: str) -> dict[int, str]:
        rows = self.runs[self.runs["variant"] == variant]
        return dict(zip(rows["seed"].astype(int), rows["run_id"], strict=False))


def order_variants(names: Sequence[str]) -> list[str]:
    """Variants with a file in the variants folder in the grid's ``order:`` (s2d has order 0),
    then any others sorted (the reference variant first when it has no file), then reference
    rows (``ref:...``, made without training) last."""
    rows = [n for n in set(names) if is_reference(n)]
    names = [n for n in set(names) if not is_reference(n)]
    try:
        known = sort_by_order(names)
    except ConfigError:  # a broken variant file must not stop a report; ``ablate`` names it
        known = []
    others = sorted(set(names) - set(known))
    if REFERENCE_VARIANT in others:
        others.remove(REFERENCE_VARIANT)
        known.insert(0, REFERENCE_VARIANT)
    return known + others + order_references(rows)


def presets_in(store: Store, purpose: str = "ablate") -> list[str]:
    return sorted({r.preset for r in store.runs(status="complete", purpose=purpose)})


def _latest_per_cell(runs: list[Run]) -> list[Run]:
    """If a (variant, seed) was rerun with a changed config, the latest finished run wins."""
    cells: dict[tuple[str, int], Run] = {}
    for run in sorted(runs, key=lambda r: r.finished_at or r.created_at):
        cells[(run.variant, run.seed)] = run
    return list(cells.values())


def load_preset(store: Store, preset: str, purpose: str = "ablate") -> PresetResults:
    runs = _latest_per_cell(store.runs(preset=preset, status="complete", purpose=purpose))
    run_frame = pd.DataFrame(
        [
            {
                "run_id": r.id,
                "variant": r.variant,
                "variant_version": r.variant_version,
                "seed": r.seed,
                "steps": r.steps,
                "tokens_seen": r.tokens_seen,
                "train_wall_s": r.train_wall_s,
                "generate_wall_s": r.generate_wall_s,
                "score_wall_s": r.score_wall_s,
                "git_sha": r.git_sha,
                "config_hash": r.config_hash,
            }
            for r in runs
        ],
        columns=[
            "run_id", "variant", "variant_version", "seed", "steps", "tokens_seen",
            "train_wall_s", "generate_wall_s", "score_wall_s", "git_sha", "config_hash",
        ],
    )  # fmt: skip
    ids = [r.id for r in runs]
    metrics = pd.DataFrame(
        store.metric_rows(ids),
        columns=[
            "run_id", "variant", "preset", "seed", "purpose", "split", "metric", "value",
            "ci_low", "ci_high", "higher_is_better",
        ],
    )  # fmt: skip
    signatures: dict[str, set[str]] = {}
    manifests: dict[str, set[str]] = {}
    headlines: list[str] = []
    for ev in store.evaluations(ids):
        signatures.setdefault(ev.split, set()).add(ev.signature)
        manifests.setdefault(ev.split, set()).add(ev.manifest_hash)
        if ev.headline:
            headlines.append(ev.headline)
    return PresetResults(
        preset=preset,
        runs=run_frame,
        metrics=metrics,
        signatures={k: sorted(v) for k, v in signatures.items()},
        headline=max(set(headlines), key=headlines.count) if headlines else "",
        manifest_hashes={k: sorted(v) for k, v in manifests.items()},
        datasets=tuple(sorted({str(r.config.get("data", {}).get("dataset")) for r in runs})),
    )
