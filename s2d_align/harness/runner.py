"""One run: variant x seed -> train -> generate -> score -> record, idempotently.

A run is identified by (preset, variant, seed, resolved-config hash). Its store record tells the
runner what is left to do (``harness.plan.run_state``): a ``complete`` run is skipped; a run
interrupted during training is handed back to ``run_fn`` (which resumes from the run dir's last
checkpoint); a split that was already scored is not scored again. The test split is scored at
most once per run and every test scoring is logged (the test-set lock); sweeps may not request
it at all. A run's per-run diagnostics (``RunArtifacts.diagnostics``) are recorded as
``diag/...`` metrics of their split; the test predictions made with permuted images (image
dependence) are scored in the same test evaluation, under the same lock check, before anything
of it is recorded, so the one logged test evaluation covers both and neither can be repeated.

Every run is claimed before it is touched (``harness.ownership``: a row in the store's claims
table, and ``RUN_DIR/.owner``), so grids started twice, or with overlapping runs, on one store
or one results folder train each run once: a run claimed by a live process is skipped and
listed in ``GridReport.claimed``; a stale claim (dead process, or no heartbeat for
``claim_timeout_s``) is taken over. Only the owner writes a run's status.

Planning a grid lives in ``harness.plan``, running it (in order or on a worker pool, Ctrl-C)
in ``harness.grid``; ``Runner.run_grid`` hands over to the latter. An ``ablate`` grid first
records its reference rows (``harness.references``), once per data.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from s2d_align.config.schema import DataConfig
from s2d_align.errors import ConfigError, S2DError
from s2d_align.harness.grid import GridReport, run_grid
from s2d_align.harness.ownership import (
    DEFAULT_CLAIM_TIMEOUT_S,
    Heartbeat,
    Owner,
    RunClaimedError,
    acquire_lock_file,
    heartbeat_interval,
    release_lock_file,
    touch_lock_file,
)
from s2d_align.harness.plan import missing_splits, run_state
from s2d_align.harness.provenance import environment, git_sha
from s2d_align.harness.records import now
from s2d_align.harness.spec import (
    NoHooks,
    RunArtifacts,
    RunFn,
    RunSpec,
    Scored,
    Scorer,
    SplitReferences,
)
from s2d_align.harness.store import Store
from s2d_align.training.cache import (
    SharedKey,
    prepare_shared,
    resolve_cache_root,
    shared_cache_key,
)
from s2d_align.utils.io import write_json, write_jsonl

#: Beside a run's config.yaml: ``{dotted key: default | preset | variant:NAME | override}``.
CONFIG_SOURCES_FILE = "config_sources.json"

log = logging.getLogger(__name__)


class TestSetLockError(S2DError):
    """Something asked for a test-split evaluation it is not allowed to make."""

    __test__ = False


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
        prepare_fn: Callable[..., None] | None = None,
        reference_source: Any = None,
        references: bool = True,
        claim_timeout_s: float = DEFAULT_CLAIM_TIMEOUT_S,
    ):
        """``reference_source`` makes the reference rows (``harness.references``); by default
        the real one when the real pipeline runs, none with injected fakes. ``references=False``
        records none. ``claim_timeout_s``: how long without a heartbeat before another
        process's claim on a run counts as abandoned."""
        if claim_timeout_s <= 0:
            raise ConfigError(f"claim timeout must be positive, got {claim_timeout_s:g} s")
        self.store = store
        self.claim_timeout_s = float(claim_timeout_s)
        self.owner = Owner.current()
        self.results_dir = Path(results_dir)
        self.cache_root = resolve_cache_root(cache_root, default=self.results_dir / "cache")
        self.progress = progress
        self.injected = (run_fn, scorer)  # what parallel workers rebuild their runner from
        if run_fn is None or scorer is None:
            from s2d_align.harness import real_run  # imports training: only when really needed

            run_fn = run_fn or real_run.train_and_generate
            scorer = scorer or real_run.CorpusScorer(self.cache_root)
            prepare_fn = prepare_fn or prepare_shared
        self.run_fn = run_fn
        self.scorer = scorer
        self.prepare_fn = prepare_fn
        self._refs: dict[tuple[DataConfig, str], SplitReferences] = {}
        self._prepared: set[SharedKey] = set()
        if reference_source is None and references and self.injected[1] is None:
            from s2d_align.harness.references import PipelineReferences

            reference_source = PipelineReferences(self.cache_root, progress=progress)
        self.reference_source = reference_source if references else None

    def warm_up(self) -> None:
        warm_up = getattr(self.scorer, "warm_up", None)
        if warm_up is not None:
            warm_up()

    def close(self) -> None:
        """Stop what the scorer keeps running (its METEOR process); the store stays open."""
        close = getattr(self.scorer, "close", None)
        if close is not None:
            close()

    # -- status --------------------------------------------------------------------------------
    def state(self, spec: RunSpec) -> str:
        """``complete`` (nothing to do), ``partial`` (something recorded) or ``pending``."""
        return run_state(self.store, spec)

    # -- one run -------------------------------------------------------------------------------
    def run_one(self, spec: RunSpec, hooks=None) -> str:
        """Bring one run to ``complete``; returns its id. Raises what ``run_fn`` raises, and
        ``RunClaimedError`` when another live process is working on the run."""
        self.attempt(spec, hooks)
        return spec.run_id

    def attempt(self, spec: RunSpec, hooks=None) -> str:
        """``executed``, or ``complete`` when there was nothing left to do."""
        if spec.purpose == "sweep" and "test" in spec.splits:
            raise TestSetLockError(f"{spec.run_id}: sweeps select on val only; test was requested")
        if self.state(spec) == "complete":
            return "complete"
        run_dir = spec.run_dir(self.results_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        with self.claimed(spec.run_id, run_dir):
            if self.state(spec) == "complete":  # its previous owner finished it meanwhile
                return "complete"
            self._execute(spec, run_dir, hooks)
        return "executed"

    @contextmanager
    def claimed(self, run_id: str, run_dir: Path):
        """Hold ``run_id`` (store claim + ``run_dir/.owner``) for the ``with`` block, with a
        heartbeat; ``RunClaimedError`` when a live process holds it."""
        held = self.store.claim_run(run_id, self.owner, timeout_s=self.claim_timeout_s)
        if held is not None:
            raise RunClaimedError(run_id, f"{held.host}:{held.pid}")
        try:
            holder = acquire_lock_file(run_dir, self.owner, self.claim_timeout_s)
            if holder is not None:
                raise RunClaimedError(run_id, holder)
            try:
                with Heartbeat(lambda: self._beat(run_id, run_dir), self._beat_every):
                    yield
            finally:
                release_lock_file(run_dir, self.owner)
        finally:
            self.store.release_claim(run_id, self.owner)

    @property
    def _beat_every(self) -> float:
        return heartbeat_interval(self.claim_timeout_s)

    def _beat(self, run_id: str, run_dir: Path) -> None:
        if not self.store.heartbeat_claim(run_id, self.owner):
            log.warning("run %s: this process (%s) no longer holds its claim", run_id,
                        self.owner.label)  # fmt: skip
        touch_lock_file(run_dir, self.owner)

    def _execute(self, spec: RunSpec, run_dir: Path, hooks) -> None:
        if spec.config_sources:  # where each value of config.yaml came from
            write_json(run_dir / CONFIG_SOURCES_FILE, dict(spec.config_sources))
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
        todo = missing_splits(self.store, spec)
        try:
            artifacts: RunArtifacts = self.run_fn(
                spec,
                run_dir,
                splits=tuple(todo),
                hooks=_ValScoringHooks(self, spec, hooks or NoHooks()),
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
                score_wall += self._score_split(
                    spec,
                    run_dir,
                    split,
                    artifacts.predictions[split],
                    diagnostics=artifacts.diagnostics.get(split),
                    permuted=artifacts.permuted_predictions.get(split),
                )
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            pruned = type(exc).__name__ == "TrialPruned"
            self._set_status(
                spec.run_id,
                status="pruned" if pruned else "failed",
                error=f"{type(exc).__name__}: {exc}",
                finished_at=now(),
            )
            raise
        self._set_status(
            spec.run_id,
            status="complete",
            generate_wall_s=artifacts.generate_wall_s,
            score_wall_s=score_wall,
            finished_at=now(),
        )

    def _set_status(self, run_id: str, **fields) -> None:
        if not self.store.update_owned_run(run_id, self.owner, **fields):
            log.warning("run %s: not writing status %r, its claim is no longer %s's", run_id,
                        fields.get("status"), self.owner.label)  # fmt: skip

    def prepare_shared(self, spec: RunSpec) -> None:
        """Build the caches ``spec`` shares with its grid (data, tokenizer, LM, vision tower)
        once per runner."""
        key = shared_cache_key(spec.config)
        if self.prepare_fn is not None and key not in self._prepared:
            self.prepare_fn(spec.config, self.cache_root, progress=self.progress)
            self._prepared.add(key)

    def reference_rows(self, specs: Sequence[RunSpec]) -> dict[str, str]:
        """Record the reference rows an ``ablate`` grid lacks (``harness.references``)."""
        if self.reference_source is None:
            return {}
        from s2d_align.harness.references import record_reference_rows

        return record_reference_rows(self, specs, self.reference_source)

    def references(self, spec: RunSpec, split: str) -> SplitReferences:
        key = (spec.config.data, split)
        if key not in self._refs:
            self._refs[key] = self.scorer.references(spec.config, split)
        return self._refs[key]

    def _score_split(
        self,
        spec: RunSpec,
        run_dir: Path,
        split: str,
        rows: list[dict],
        *,
        diagnostics: dict[str, float] | None = None,
        permuted: list[dict] | None = None,
    ) -> float:
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
        diag = dict(diagnostics or {})
        if permuted is not None:  # scored before anything is recorded: one evaluation covers both
            diag.update(self._image_dependence(spec, run_dir, split, permuted, refs, scored))
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
        if diag:
            from s2d_align.inference.diagnostics import higher_is_better

            directions = {name: higher_is_better(name) for name in diag}
            self.store.record_metrics(spec.run_id, split, diag, higher_is_better=directions)
        from s2d_align.training.tracking import open_tracking

        final = {name: float(m.value) for name, m in scored.report.metrics.items()} | diag
        with open_tracking(spec.config, run_dir) as tracking:  # train.report_to
            tracking.log_final(final, step=spec.config.train.total_steps, prefix=split)
        return wall

    def _image_dependence(
        self,
        spec: RunSpec,
        run_dir: Path,
        split: str,
        rows: list[dict],
        refs: SplitReferences,
        real: Scored,
    ) -> dict[str, float]:
        """Score the predictions made with permuted images like the real ones; the drop of the
        CE headline cell is the run's image dependence."""
        write_jsonl(run_dir / "predictions" / f"{split}.permuted.jsonl", rows)
        predictions = {str(r["id"]): str(r["prediction"]) for r in rows}
        permuted = self.scorer.score(spec.config, split, predictions, refs)
        headline = str(getattr(real.report, "headline", "") or "")
        if headline not in real.report.metrics or headline not in permuted.report.metrics:
            log.warning("%s: no CE headline %r to measure image dependence", spec.run_id, headline)
            return {}
        value = float(permuted.report.metrics[headline].value)
        return {
            "diag/image_dependence": float(real.report.metrics[headline].value) - value,
            f"diag/permuted/{headline}": value,
        }

    # -- the grid ------------------------------------------------------------------------------
    def run_grid(
        self, specs: Iterable[RunSpec], *, stop_on_error: bool = False, jobs: int = 1
    ) -> GridReport:
        """Run every spec that is not complete yet, ``jobs`` at a time (``harness.grid``)."""
        return run_grid(self, specs, stop_on_error=stop_on_error, jobs=jobs)


class _ValScoringHooks:
    """What ``run_fn`` gets as hooks: passes metrics through, and scores intermediate val
    predictions with the runner's scorer (same protocol as the final val score) first."""

    def __init__(self, runner: Runner, spec: RunSpec, inner) -> None:
        self.runner, self.spec, self.inner = runner, spec, inner

    def intermediate(self, step: int, metrics) -> None:
        self.inner.intermediate(step, metrics)

    def intermediate_predictions(self, step: int, rows: list[dict]) -> None:
        refs = self.runner.references(self.spec, "val")
        predictions = {str(r["id"]): str(r["prediction"]) for r in rows}
        scored = self.runner.scorer.score(self.spec.config, "val", predictions, refs)
        metrics = {name: float(m.value) for name, m in scored.report.metrics.items()}
        log.info("%s: step %d val %s", self.spec.run_id, step,
                 ", ".join(f"{k} {v:.4f}" for k, v in list(metrics.items())[:6]))  # fmt: skip
        # kept per step for the report's validation curves; a resumed run replaces the step's
        self.runner.store.record_val_scores(self.spec.run_id, step, metrics)
        from s2d_align.training.tracking import open_tracking

        run_dir = self.spec.run_dir(self.runner.results_dir)
        with open_tracking(self.spec.config, run_dir) as tracking:  # train.report_to
            tracking.log_metrics(metrics, step=step, prefix="val")
        self.inner.intermediate(step, metrics)
