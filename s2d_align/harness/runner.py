"""The grid runner: variant x seed -> train -> generate -> score -> record, idempotently.

A run is identified by (preset, variant, seed, resolved-config hash). Its store record tells the
runner what is left to do: a ``complete`` run is skipped; a run interrupted during training is
handed back to ``run_fn`` (which resumes from the run dir's last checkpoint); a split that was
already scored is not scored again. The test split is scored at most once per run and every
test scoring is logged (the test-set lock); sweeps may not request it at all. A run's per-run
diagnostics (``RunArtifacts.diagnostics``) are recorded as ``diag/...`` metrics of their split;
the test predictions made with permuted images (image dependence) are scored in the same test
evaluation, under the same lock check, before anything of it is recorded, so the one logged
test evaluation covers both and neither can be repeated.

``run_grid(jobs=N)`` runs N grid cells at a time in spawned worker processes, each with its own
store connection and scorer (one METEOR process per worker for its whole life) and, with CUDA,
its own GPU (worker k sees only visible device k mod #GPUs). The one-time
caches (data, tokenizer, tiny-LM pre-training) are built once in this process first. A run's
result does not depend on ``jobs``: every run trains in one process from its own seed.

Every run is claimed before it is touched (``harness.ownership``: a row in the store's claims
table, and ``RUN_DIR/.owner``), so grids started twice, or with overlapping runs, on one store
or one results folder train each run once: a run claimed by a live process is skipped and
listed in ``GridReport.claimed``; a stale claim (dead process, or no heartbeat for
``claim_timeout_s``) is taken over. Only the owner writes a run's status.

Ctrl-C stops the grid once: the first one interrupts the runs in progress (in this process or
in every worker, which then starts nothing more), and the claims are given back before
``KeyboardInterrupt`` leaves ``run_grid``; more Ctrl-C while that happens are ignored, so they
cannot cut it short. A worker that has not stopped within ``STOP_TIMEOUT_S`` is terminated and
leaves its claim to a dead process, taken over at once by the next grid on this machine.

An ``ablate`` grid first records its reference rows (``harness.references``: all-normal,
nn-retrieval, oracle-paraphrase), in this process, after the shared caches, once per data.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from s2d_align.errors import ConfigError, S2DError
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
    preset_label,
)
from s2d_align.harness.store import Store
from s2d_align.harness.variants import Variant, resolve_with_provenance
from s2d_align.utils.io import write_json, write_jsonl

#: Beside a run's config.yaml: ``{dotted key: default | preset | variant:NAME | override}``.
CONFIG_SOURCES_FILE = "config_sources.json"

log = logging.getLogger(__name__)

#: Dry-run estimate when the store holds no finished run of the preset yet (CPU, tiny presets).
DEFAULT_SECONDS_PER_STEP = 0.5
DEFAULT_EVAL_SECONDS = 30.0
#: After Ctrl-C, how long parallel workers get to stop their runs and give back their claims.
STOP_TIMEOUT_S = 60.0


class TestSetLockError(S2DError):
    """Something asked for a test-split evaluation it is not allowed to make."""

    __test__ = False


@dataclass
class GridReport:
    executed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    claimed: dict[str, str] = field(default_factory=dict)  # run id -> "host:pid" training it
    references: dict[str, str] = field(default_factory=dict)  # reference row id -> outcome

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
        self.cache_root = Path(cache_root) if cache_root is not None else self.results_dir / "cache"
        self.progress = progress
        self._injected = (run_fn, scorer)  # what parallel workers rebuild their runner from
        if run_fn is None or scorer is None:
            from s2d_align.harness import real_run  # imports training: only when really needed

            run_fn = run_fn or real_run.train_and_generate
            scorer = scorer or real_run.CorpusScorer(self.cache_root)
            prepare_fn = prepare_fn or real_run.prepare_shared
        self.run_fn = run_fn
        self.scorer = scorer
        self.prepare_fn = prepare_fn
        self._refs: dict[tuple[str, str], SplitReferences] = {}
        self._prepared: set[str] = set()
        if reference_source is None and references and self._injected[1] is None:
            from s2d_align.harness.references import PipelineReferences

            reference_source = PipelineReferences(self.cache_root, progress=progress)
        self.reference_source = reference_source if references else None

    def _warm_up(self) -> None:
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
        """Bring one run to ``complete``; returns its id. Raises what ``run_fn`` raises, and
        ``RunClaimedError`` when another live process is working on the run."""
        self._attempt(spec, hooks)
        return spec.run_id

    def _attempt(self, spec: RunSpec, hooks=None) -> str:
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
        todo = self._missing_splits(spec)
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
        cfg = spec.config  # what the caches depend on: data, towers, prompts, the labeler
        key = repr((cfg.data, cfg.model.llm, cfg.model.vision, cfg.prompt, cfg.eval))
        if self.prepare_fn is not None and key not in self._prepared:
            self.prepare_fn(spec, self.cache_root, progress=self.progress)
            self._prepared.add(key)

    def reference_rows(self, specs: Sequence[RunSpec]) -> dict[str, str]:
        """Record the reference rows an ``ablate`` grid lacks (``harness.references``)."""
        if self.reference_source is None:
            return {}
        from s2d_align.harness.references import record_reference_rows

        return record_reference_rows(self, specs, self.reference_source)

    def references(self, spec: RunSpec, split: str) -> SplitReferences:
        key = (spec.config.data.__repr__(), split)
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
        """Run every spec that is not complete yet, ``jobs`` at a time; failures are recorded
        and the rest of the grid still runs (unless ``stop_on_error``)."""
        specs = list(specs)
        if jobs < 1:
            raise ConfigError(f"jobs must be >= 1, got {jobs}")
        report = GridReport()
        todo = []
        for spec in specs:
            if self.state(spec) == "complete":
                report.skipped.append(spec.run_id)
            else:
                todo.append(spec)
        bar = _grid_bar(len(specs), self.progress)
        bar.update(len(report.skipped))
        with _interrupt_once() as interrupt:
            try:
                report.references = self.reference_rows(specs)  # once per grid, before training
                for run_id, outcome in report.references.items():
                    if outcome.startswith("failed: "):
                        report.failed[run_id] = outcome[len("failed: ") :]
                        if stop_on_error:
                            raise S2DError(f"reference row {run_id} {outcome}")
                if jobs > 1 and len(todo) > 1:
                    jobs = min(jobs, len(todo))
                    self._run_parallel(todo, jobs, report, bar, stop_on_error, interrupt)
                else:
                    if todo:
                        self._warm_up()
                    for spec in todo:
                        bar.set_postfix_str(spec.run_id)
                        self._run_recorded(spec, report, stop_on_error)
                        bar.update(1)
            finally:
                bar.close()
                self.close()
        return report

    def _run_recorded(self, spec: RunSpec, report: GridReport, stop_on_error: bool) -> None:
        try:
            _note_outcome(report, spec.run_id, self._attempt(spec))
        except RunClaimedError as exc:
            _note_outcome(report, spec.run_id, ("claimed", exc.holder))
        except Exception as exc:  # recorded as failed; the rest of the grid still runs
            _record_failure(report, spec.run_id, exc)
            if stop_on_error:
                raise

    def _run_parallel(
        self,
        todo: list[RunSpec],
        jobs: int,
        report: GridReport,
        bar,
        stop_on_error: bool,
        interrupt: _InterruptOnce,
    ) -> None:
        for spec in todo:  # build shared caches once, before the workers race for them
            self.prepare_shared(spec)
        ctx = mp.get_context("spawn")  # safe with torch and CUDA; fork is not
        gpus = _visible_gpus()
        devices = None
        if gpus:  # pin worker k to GPU k (round robin when there are more workers than GPUs)
            devices = ctx.Queue()
            for k in range(jobs):
                devices.put(gpus[k % len(gpus)])
        run_fn, scorer = self._injected
        init = (
            self.store.url,
            str(self.results_dir),
            str(self.cache_root),
            run_fn,
            scorer,
            logging.getLogger().getEffectiveLevel(),
            devices,
            self.claim_timeout_s,
        )
        log.info("grid: %d run(s) on %d parallel worker(s)%s", len(todo), jobs,
                 f", GPUs {', '.join(gpus)}" if gpus else "")  # fmt: skip
        pool = ProcessPoolExecutor(
            max_workers=jobs, mp_context=ctx, initializer=_init_worker, initargs=init
        )
        futures: dict[Future, RunSpec] = {}
        try:
            futures.update((pool.submit(_run_in_worker, s), s) for s in todo)
            pending = set(futures)
            while pending:
                done, pending = wait(pending, timeout=2.0, return_when=FIRST_COMPLETED)
                # the call queue is FIFO: the earliest started futures are the executing ones
                running = [spec.run_id for f, spec in futures.items() if f.running()][:jobs]
                bar.set_postfix_str("running: " + ", ".join(running) if running else "")
                for future in done:
                    spec = futures[future]
                    exc = future.exception()
                    if isinstance(exc, KeyboardInterrupt):  # a worker was interrupted: stop all
                        raise KeyboardInterrupt
                    if exc is None:
                        _note_outcome(report, spec.run_id, future.result())
                    else:
                        _record_failure(report, spec.run_id, exc)
                        if stop_on_error:
                            raise exc
                    bar.update(1)
        except KeyboardInterrupt:
            interrupt.stopping = True  # also when it came from a worker: ignore Ctrl-C from now
            _stop_workers(pool)
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

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


class _InterruptOnce:
    """A SIGINT handler: ``KeyboardInterrupt`` on the first Ctrl-C, then only a count, so that
    giving the runs back (claims, lock files, workers joined) cannot be cut short."""

    def __init__(self) -> None:
        self.stopping = False
        self.ignored = 0

    def __call__(self, _signum, _frame) -> None:
        if self.stopping:
            self.ignored += 1
            return
        self.stopping = True
        raise KeyboardInterrupt


@contextmanager
def _interrupt_once():
    """Install ``_InterruptOnce`` for the block, where Python's own Ctrl-C handler is in place
    (main thread, no handler of the caller's); the caller's handler is back afterwards."""
    interrupt = _InterruptOnce()
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield interrupt
        return
    previous = signal.signal(signal.SIGINT, interrupt)
    try:
        yield interrupt
    finally:
        signal.signal(signal.SIGINT, previous)
        if interrupt.ignored:
            log.info("Ctrl-C again while stopping (%d time(s)): ignored until the runs were given "
                     "back", interrupt.ignored)  # fmt: skip


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """After Ctrl-C: no new runs; every worker interrupts its run (the signal may have reached
    this process alone), gives its claim back and exits. Workers still there after
    ``STOP_TIMEOUT_S`` are terminated: their claims stay behind as a dead process's."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    for proc in processes:
        with contextlib.suppress(OSError):
            os.kill(proc.pid, signal.SIGINT)
    log.info("interrupted: stopping %d worker(s); each gives its run back (at most %g s)",
             len(processes), STOP_TIMEOUT_S)  # fmt: skip

    def terminate() -> None:
        log.warning("workers did not stop within %g s: terminated; the next grid on this "
                    "machine takes their runs over at once", STOP_TIMEOUT_S)  # fmt: skip
        for proc in processes:
            with contextlib.suppress(OSError, ValueError):
                proc.terminate()

    watchdog = threading.Timer(STOP_TIMEOUT_S, terminate)
    watchdog.daemon = True
    watchdog.start()
    try:
        pool.shutdown(wait=True, cancel_futures=True)
    finally:
        watchdog.cancel()


def _note_outcome(report: GridReport, run_id: str, outcome) -> None:
    if outcome == "executed":
        report.executed.append(run_id)
    elif outcome == "complete":  # finished by another process while this grid waited
        report.skipped.append(run_id)
    else:
        report.claimed[run_id] = outcome[1]
        log.warning("run %s is being trained by %s; skipped", run_id, outcome[1])


def _record_failure(report: GridReport, run_id: str, exc: BaseException) -> None:
    report.failed[run_id] = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, S2DError):
        log.error("run %s failed: %s", run_id, exc)
    else:
        log.error("run %s failed", run_id, exc_info=exc)


def auto_jobs(specs: Sequence[RunSpec], limit: int = 4) -> int:
    """Parallel runs that suit this machine: one per visible GPU (each worker is pinned to its
    own device), otherwise the usable cores divided by the runs' torch threads, at most
    ``limit`` (each worker also holds a METEOR JVM); never more than the number of runs."""
    if not specs:
        return 1
    gpus = _visible_gpus()
    if gpus:
        return max(1, min(len(gpus), len(specs)))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = max(max(1, s.config.train.num_threads) for s in specs)
    return max(1, min(limit, (cores or 1) // threads, len(specs)))


def _visible_gpus() -> list[str]:
    """CUDA device names as ``CUDA_VISIBLE_DEVICES`` would list them ([] without CUDA)."""
    import torch

    if not torch.cuda.is_available():
        return []
    count = torch.cuda.device_count()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    names = [v.strip() for v in visible.split(",") if v.strip()] if visible else []
    return names[:count] if len(names) >= count else [str(i) for i in range(count)]


# -- parallel workers (spawned processes) ------------------------------------------------------
_WORKER: Runner | None = None


def _init_worker(
    url: str,
    results_dir: str,
    cache_root: str,
    run_fn: RunFn | None,
    scorer: Scorer | None,
    log_level: int,
    devices: Any = None,
    claim_timeout_s: float = DEFAULT_CLAIM_TIMEOUT_S,
) -> None:
    from multiprocessing import util

    global _WORKER
    # Ctrl-C reaches every process of the terminal's group: a worker stops the run it is
    # working on (the parent reports the interruption) but never dies with a traceback idle.
    signal.signal(signal.SIGINT, _worker_sigint)
    if devices is not None:  # before anything in this process initialises CUDA
        os.environ["CUDA_VISIBLE_DEVICES"] = str(devices.get(timeout=60))
    logging.basicConfig(
        level=log_level, format=f"%(levelname)s [worker {os.getpid()}] %(name)s: %(message)s"
    )
    store = Store(url)
    _WORKER = Runner(
        store,
        results_dir,
        run_fn=run_fn,
        scorer=scorer,
        cache_root=cache_root,
        progress=False,
        claim_timeout_s=claim_timeout_s,
    )

    def close() -> None:
        _WORKER.close()
        store.close()

    util.Finalize(_WORKER, close, exitpriority=10)  # runs when the worker process exits
    _WORKER._warm_up()


_BUSY = False
_STOPPING = False


def _worker_sigint(_signum, _frame) -> None:
    """The first Ctrl-C stops the worker for good: its run is interrupted (the claim is given
    back on the way out), later Ctrl-C are ignored so that cannot be cut short, and it starts
    no other run (an interrupt can leave C extensions in a state unfit to go on)."""
    global _STOPPING
    _STOPPING = True
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if _BUSY:
        raise KeyboardInterrupt


def _run_in_worker(spec: RunSpec):
    """The run's outcome for ``_note_outcome`` (a claimed run is an outcome, not an error)."""
    global _BUSY
    assert _WORKER is not None, "worker not initialised"
    _BUSY = True  # before looking at _STOPPING: a Ctrl-C in between then raises
    try:
        if _STOPPING:
            raise KeyboardInterrupt
        return _WORKER._attempt(spec)
    except RunClaimedError as exc:
        return ("claimed", exc.holder)
    finally:
        _BUSY = False


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
