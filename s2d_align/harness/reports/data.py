"""Read what a report needs out of the store into pandas frames (nothing else is read)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from s2d_align.config import identity_fields
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
    # variant -> {seed-free config hash: seeds} for variants whose seeds ran different configs
    mixed_configs: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    mixed_keys: dict[str, list[str]] = field(default_factory=dict)  # variant -> differing keys

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


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: json.dumps(data, sort_keys=True, default=str)}


def setting_hash(config: dict[str, Any]) -> str:
    """Hash of a run's config without its seed: the seeds of one table row should share it."""
    blob = json.dumps(
        {k: v for k, v in identity_fields(config).items() if k != "seed"},
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _mixed_configs(runs: list[Run]) -> tuple[dict[str, dict[str, list[int]]], dict[str, list]]:
    """Variants whose runs differ in more than the seed, with the config keys that differ."""
    by_variant: dict[str, list[Run]] = {}
    for run in runs:
        by_variant.setdefault(run.variant, []).append(run)
    mixes: dict[str, dict[str, list[int]]] = {}
    keys: dict[str, list[str]] = {}
    for variant, group in by_variant.items():
        hashes: dict[str, list[int]] = {}
        for run in group:
            hashes.setdefault(setting_hash(run.config or {}), []).append(int(run.seed))
        if len(hashes) < 2:
            continue
        mixes[variant] = {h: sorted(seeds) for h, seeds in hashes.items()}
        flats = [
            _flat({k: v for k, v in identity_fields(r.config or {}).items() if k != "seed"})
            for r in group
        ]
        names = set().union(*flats)
        keys[variant] = sorted(n for n in names if len({f.get(n) for f in flats}) > 1)
    return mixes, keys


def mixed_config_notes(results: PresetResults) -> list[str]:
    """Table footnotes flagging rows that average runs of different configs."""
    notes = []
    for variant, hashes in sorted(results.mixed_configs.items()):
        groups = "; ".join(
            f"`{h}`: seed(s) {', '.join(map(str, seeds))}" for h, seeds in sorted(hashes.items())
        )
        differ = results.mixed_keys.get(variant) or []
        shown = ", ".join(differ[:6]) + (" ..." if len(differ) > 6 else "")
        notes.append(
            f"WARNING: variant `{variant}` mixes runs of {len(hashes)} different configs "
            f"(config hash without the seed: {groups}; they differ in {shown or 'unknown keys'}); "
            "its row averages unlike runs."
        )
    return notes


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
    mixes, mixed_keys = _mixed_configs(runs)
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
        mixed_configs=mixes,
        mixed_keys=mixed_keys,
    )
