"""The grid runner: variant x seed -> train -> generate -> score -> record, idempotently.

A run is identified by (preset, variant, seed, resolved-config hash). Its store record tells the
runner what is left to do: a ``complete`` run is skipped; a run interrupted during training is
handed back to ``run_fn`` (which resumes from the run dir's last checkpoint); a split that was
already scored is not scored again. The test split is scored at most once per run and every
test scoring is logged (the test-set lock); sweeps may not request it at all.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from s2d_align.errors import ConfigError, S2DError
from s2d_align.harness.provenance import environment, git_sha
from s2d_align.harness.records import now
from s2d_align.harness.spec import (
    NoHooks,
    RunArtifacts,
    RunFn,
    RunSpec,
    Scorer,
    SplitReferences,
    preset_label,
)
from s2d_align.harness.store import Store
from s2d_align.harness.variants import Variant
from s2d_align.utils.io import write_jsonl

log = logging.getLogger(__name__)

#: Dry-run estimate when the store holds no finished run of the preset yet (CPU, tiny presets).
DEFAULT_SECONDS_PER_STEP = 0.5
DEFAULT_EVAL_SECONDS = 30.0


class TestSetLockError(S2DError):
    """Something asked for a test-split evaluation it is not allowed to make."""

    __test__ = False


@dataclass
class GridReport:
    executed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed


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
    specs = []
    budgets = set()
    for variant in variants:
        for seed in seeds:
            cfg = variant.config(preset, seed, overrides)
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
                )
            )
    if len(budgets) > 1:  # only possible through a bug: variants may not touch the budget
        raise ConfigError(f"variants of one grid resolved to different step budgets: {budgets}")
    return specs


class Runner:
    """Runs specs against one store and one results directory."""

    def __init__(
        self,
        store: Store,
        results_dir: str | Path,
        *,
        run_fn: RunFn | None = None,
        scorer: Scorer | None = None,
        cache_root: str | Path | None = None,
        progress: bool = True,
    ):
        self.store = store
        self.results_dir = Path(results_dir)
        self.cache_root = Path(cache_root) if cache_root is not None else self.results_dir / "cache"
        self.progress = progress
        if run_fn is None or scorer is None:
            from s2d_align.harness import pipeline  # imports training: only when really needed

            run_fn = run_fn or pipeline.train_and_generate
            scorer = scorer or pipeline.CorpusScorer(self.cache_root)
        self.run_fn = run_fn
        self.scorer = scorer
        self._refs: dict[tuple[str, str], SplitReferences] = {}

    # -- status --------------------------------------------------------------------------------
    def state(self, spec: RunSpec) -> str:
        """``complete`` (nothing to do), ``partial`` (something recorded) or ``pending``."""
        run = self.store.get_run(spec.run_id)
        if run is None:
            return "pending"
        if run.status == "complete" and not self._missing_splits(spec):
            return "complete"
        return "partial"

    def _missing_splits(self, spec: RunSpec) -> list[str]:
        done = {e.split for e in self.store.evaluations([spec.run_id])}
        return [s for s in spec.splits if s not in done]

    # -- one run -------------------------------------------------------------------------------
    def run_one(self, spec: RunSpec, hooks=None) -> str:
        """Bring one run to ``complete``; returns its id. Raises what ``run_fn`` raises."""
        if spec.purpose == "sweep" and "test" in spec.splits:
            raise TestSetLockError(f"{spec.run_id}: sweeps select on val only; test was requested")
        if self.state(spec) == "complete":
            return spec.run_id
        run_dir = spec.run_dir(self.results_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        self.store.create_run(
            id=spec.run_id,
            variant=spec.variant.name,
            variant_version=spec.variant.version,
            preset=spec.preset,
            seed=spec.seed,
            purpose=spec.purpose,
            config_hash=spec.config_hash,
            config=spec.config_dict(),
            git_sha=git_sha(),
            environment=environment(),
            run_dir=str(run_dir),
            splits=list(spec.splits),
        )
        todo = self._missing_splits(spec)
        try:
            artifacts: RunArtifacts = self.run_fn(
                spec,
                run_dir,
                splits=tuple(todo),
                hooks=hooks or NoHooks(),
                progress=self.progress,
                cache_root=self.cache_root,
            )
            self.store.record_training(
                spec.run_id,
                steps=artifacts.train.steps,
                tokens_seen=artifacts.train.tokens_seen,
                wall_s=artifacts.train.wall_s,
                log_rows=artifacts.train.log_rows,
            )
            score_wall = 0.0
            for split in todo:
                score_wall += self._score_split(spec, run_dir, split, artifacts.predictions[split])
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            pruned = type(exc).__name__ == "TrialPruned"
            self.store.update_run(
                spec.run_id,
                status="pruned" if pruned else "failed",
                error=f"{type(exc).__name__}: {exc}",
                finished_at=now(),
            )
            raise
        self.store.update_run(
            spec.run_id,
            status="complete",
            generate_wall_s=artifacts.generate_wall_s,
            score_wall_s=score_wall,
            finished_at=now(),
        )
        return spec.run_id

    def references(self, spec: RunSpec, split: str) -> SplitReferences:
        key = (spec.config.data.__repr__(), split)
        if key not in self._refs:
            self._refs[key] = self.scorer.references(spec.config, split)
        return self._refs[key]

    def _score_split(self, spec: RunSpec, run_dir: Path, split: str, rows: list[dict]) -> float:
        if split == "test":
            if spec.purpose == "sweep":
                raise TestSetLockError(f"{spec.run_id}: a sweep tried to score the test split")
            if self.store.test_evaluations(spec.run_id):
                raise TestSetLockError(f"{spec.run_id}: the test split was already scored once")
        write_jsonl(run_dir / "predictions" / f"{split}.jsonl", rows)
        refs = self.references(spec, split)
        predictions = {str(r["id"]): str(r["prediction"]) for r in rows}
        start = time.perf_counter()
        scored = self.scorer.score(spec.config, split, predictions, refs)
        wall = time.perf_counter() - start
        self.store.record_predictions(spec.run_id, split, rows, scored.prediction_labels)
        self.store.record_references(
            refs.manifest_hash, split, refs.reports, refs.images, scored.reference_labels
        )
        self.store.record_scores(
            spec.run_id,
            split,
            scored.report,
            manifest_hash=refs.manifest_hash,
            n_samples=len(predictions),
            wall_s=wall,
            purpose=spec.purpose,
        )
        return wall

    # -- the grid ------------------------------------------------------------------------------
    def run_grid(self, specs: Iterable[RunSpec], *, stop_on_error: bool = False) -> GridReport:
        specs = list(specs)
        report = GridReport()
        bar = _grid_bar(len(specs), self.progress)
        try:
            for spec in specs:
                bar.set_postfix_str(spec.run_id)
                if self.state(spec) == "complete":
                    report.skipped.append(spec.run_id)
                    bar.update(1)
                    continue
                try:
                    self.run_one(spec)
                    report.executed.append(spec.run_id)
                except Exception as exc:  # recorded as failed; the rest of the grid still runs
                    report.failed[spec.run_id] = f"{type(exc).__name__}: {exc}"
                    if isinstance(exc, S2DError):
                        log.error("run %s failed: %s", spec.run_id, exc)
                    else:
                        log.exception("run %s failed", spec.run_id)
                    if stop_on_error:
                        raise
                bar.update(1)
        finally:
            bar.close()
        return report

    # -- dry run -------------------------------------------------------------------------------
    def estimate(self, specs: Sequence[RunSpec]) -> tuple[list[dict], str]:
        """Per-run plan rows (state, steps, estimated seconds) and where the estimate came from."""
        rows = []
        sources = set()
        for spec in specs:
            timing = self.store.timing_per_step(spec.preset)
            if timing is None:
                per_step, per_eval = DEFAULT_SECONDS_PER_STEP, DEFAULT_EVAL_SECONDS
                sources.add(
                    f"constant guess ({DEFAULT_SECONDS_PER_STEP:g} s/step + "
                    f"{DEFAULT_EVAL_SECONDS:g} s evaluation per run)"
                )
            else:
                per_step, per_eval = timing
                sources.add(f"timings of previous {spec.preset} runs in the store")
            state = self.state(spec)
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


class _NullBar:
    def set_postfix_str(self, text: str) -> None:
        pass

    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _grid_bar(total: int, progress: bool):
    if not progress or not sys.stderr.isatty():
        return _NullBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="grid", unit="run", position=0, leave=True)
