"""Planning a grid: which runs, in what state, and about how long they will take.

``plan_grid`` resolves every (variant, seed) config before anything trains, so a bad variant
fails at once. ``run_state`` reads from the store what is left to do for a run, and
``estimate`` turns that into the dry-run table. Nothing here trains, scores or writes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from s2d_align.errors import ConfigError
from s2d_align.harness.spec import RunSpec, preset_label
from s2d_align.harness.store import Store
from s2d_align.harness.variants import Variant, resolve_with_provenance
from s2d_align.training.collate import check_signal_names

#: Dry-run estimate when the store holds no finished run of the preset yet (CPU, tiny presets).
DEFAULT_SECONDS_PER_STEP = 0.5
DEFAULT_EVAL_SECONDS = 30.0


def plan_grid(
    preset: str | Path,
    variants: Sequence[Variant],
    seeds: Sequence[int],
    *,
    overrides: Sequence[str] = (),
    purpose: str = "ablate",
    splits: tuple[str, ...] = ("val", "test"),
) -> list[RunSpec]:
    """Resolve every (variant, seed) config up front, so a bad variant fails before any training."""
    if not variants:
        raise ConfigError("the grid is empty: no variants given")
    if not seeds:
        raise ConfigError("the grid is empty: no seeds given")
    repeated = sorted({int(s) for s in seeds if list(map(int, seeds)).count(int(s)) > 1})
    if repeated:  # one run folder trained by two workers at once otherwise
        raise ConfigError(f"seed {repeated[0]} is listed twice")
    specs = []
    budgets = set()
    for variant in variants:
        for seed in seeds:
            cfg, sources = resolve_with_provenance(
                preset, variant, [*overrides, f"seed={int(seed)}"]
            )
            try:  # context and align_with name registered signals: a typo fails before training
                check_signal_names(cfg)
            except ConfigError as exc:
                raise ConfigError(f"variant {variant.name!r}: {exc}") from exc
            budgets.add((cfg.train.total_steps, cfg.train.batch_size, cfg.train.grad_accum))
            specs.append(
                RunSpec(
                    preset=preset_label(preset),
                    variant=variant,
                    seed=int(seed),
                    config=cfg,
                    purpose=purpose,
                    splits=splits,
                    overrides=tuple(overrides),
                    config_sources=tuple(sorted(sources.items())),
                )
            )
    if len(budgets) > 1:  # only possible through a bug: variants may not touch the budget
        raise ConfigError(f"variants of one grid resolved to different step budgets: {budgets}")
    return specs


def missing_splits(store: Store, spec: RunSpec) -> list[str]:
    """The splits of ``spec`` that have no evaluation in the store yet."""
    done = {e.split for e in store.evaluations([spec.run_id])}
    return [s for s in spec.splits if s not in done]


def run_state(store: Store, spec: RunSpec) -> str:
    """``complete`` (nothing to do), ``partial`` (something recorded) or ``pending``."""
    run = store.get_run(spec.run_id)
    if run is None:
        return "pending"
    if run.status == "complete" and not missing_splits(store, spec):
        return "complete"
    return "partial"


def estimate(store: Store, specs: Sequence[RunSpec]) -> tuple[list[dict], str]:
    """Per-run plan rows (state, steps, estimated seconds) and where the estimate came from."""
    rows = []
    sources = set()
    for spec in specs:
        timing = store.timing_per_step(spec.preset)
        if timing is None:
            per_step, per_eval = DEFAULT_SECONDS_PER_STEP, DEFAULT_EVAL_SECONDS
            sources.add(
                f"constant guess ({DEFAULT_SECONDS_PER_STEP:g} s/step + "
                f"{DEFAULT_EVAL_SECONDS:g} s evaluation per run)"
            )
        else:
            per_step, per_eval = timing
            sources.add(f"timings of previous {spec.preset} runs in the store")
        state = run_state(store, spec)
        seconds = 0.0 if state == "complete" else per_step * spec.total_steps + per_eval
        rows.append(
            {
                "run_id": spec.run_id,
                "variant": spec.variant.name,
                "seed": spec.seed,
                "steps": spec.total_steps,
                "stages": "/".join(s.name for s in spec.config.stages),
                "state": state,
                "est_s": seconds,
            }
        )
    return rows, "; ".join(sorted(sources))
