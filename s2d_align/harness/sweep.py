"""Optuna sweeps over a space from ``s2d_align/ablations/sweeps/``: TPE, median pruning, val-only objective.

Each trial is one run of the base variant with the trial's parameters as overrides, recorded in
the results store like any other run (purpose ``sweep``, splits ``val`` only) and linked to the
trial with ``set_user_attr("run_id", ...)``. The study lives in the same database URL as the
store, so several worker processes (or hosts) share it through ``load_if_exists``.
The test split is never generated nor scored during a sweep: the runner refuses it.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from s2d_align.config.loader import apply_overrides, save_yaml
from s2d_align.errors import ConfigError, S2DError
from s2d_align.harness.runner import Runner
from s2d_align.harness.space import Space
from s2d_align.harness.spec import RunSpec, preset_label
from s2d_align.harness.store import Store, engine_kwargs
from s2d_align.harness.variants import Variant, variant_to_yaml_dict
from s2d_align.utils.progress import progress_bar

log = logging.getLogger(__name__)


def optuna_storage(url: str) -> optuna.storages.RDBStorage:
    return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs(url))


def default_study_name(preset: str, space: Space) -> str:
    return f"{preset_label(preset)}.{space.name}.v{space.version}"


class PruningHooks:
    """Reports intermediate values to the trial; raises ``TrialPruned`` when told to.

    The value is the objective's val metric when the run provides it; otherwise the stage's
    training loss (the real pipeline's stage-end report), signed so that better is in the
    study's direction. Every trial of a study gets the same kind of value, so the median
    pruner compares like with like.
    """

    def __init__(self, trial: Any, metric: str, direction: str = "maximize"):
        self.trial = trial
        self.metric = metric
        self.sign = 1.0 if direction == "minimize" else -1.0  # applied to a loss

    def intermediate(self, step: int, metrics: Mapping[str, float]) -> None:
        if self.metric in metrics:
            value = float(metrics[self.metric])
        elif "train_loss" in metrics:
            value = self.sign * float(metrics["train_loss"])
        else:
            return
        self.trial.report(value, int(step))
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step}")


class SweepObjective:
    """``objective(trial) -> val metric``; usable with ``optuna.trial.FixedTrial`` in tests."""

    def __init__(
        self, runner: Runner, space: Space, preset: str | Path, overrides: Sequence[str] = ()
    ):
        self.runner = runner
        self.space = space
        self.preset = preset
        self.overrides = tuple(overrides)

    def spec_for(self, values: Mapping[str, Any]) -> RunSpec:
        extra = [*self.overrides, *self.space.overrides(values)]
        cfg = self.space.base_variant.config(self.preset, self.space.seed, extra)
        return RunSpec(
            preset=preset_label(self.preset),
            variant=self.space.base_variant,
            seed=self.space.seed,
            config=cfg,
            purpose="sweep",
            splits=("val",),  # the test-set lock: selection sees val only
            overrides=tuple(extra),
        )

    def __call__(self, trial: Any) -> float:
        values = {p.name: p.suggest(trial) for p in self.space.params}
        spec = self.spec_for(values)
        trial.set_user_attr("run_id", spec.run_id)
        run_id = self.runner.run_one(
            spec, hooks=PruningHooks(trial, self.space.metric, self.space.direction)
        )
        metrics = self.runner.store.metrics(run_id, "val")
        if self.space.metric not in metrics:
            raise ConfigError(
                f"sweep {self.space.name}: val metric {self.space.metric!r} not produced; "
                f"available: {', '.join(sorted(metrics)[:20])}"
            )
        return float(metrics[self.space.metric].value)


@dataclass(frozen=True)
class SweepJob:
    """Everything a worker process needs (picklable: no open connections)."""

    preset: str
    space: Space
    storage_url: str
    study_name: str
    results_dir: str
    overrides: tuple[str, ...] = ()
    cache_root: str | None = None
    run_fn: Any = None
    scorer: Any = None


def _sampler(space: Space, worker: int) -> optuna.samplers.TPESampler:
    # Distinct seeds per worker: identical startup proposals in every worker would waste trials.
    return optuna.samplers.TPESampler(seed=space.seed * 1000 + worker)


def _pruner(space: Space) -> optuna.pruners.MedianPruner:
    return optuna.pruners.MedianPruner(**{"n_startup_trials": 2, **space.pruner})


def create_study(job: SweepJob, worker: int = 0) -> optuna.Study:
    return optuna.create_study(
        storage=optuna_storage(job.storage_url),
        study_name=job.study_name,
        direction=job.space.direction,
        sampler=_sampler(job.space, worker),
        pruner=_pruner(job.space),
        load_if_exists=True,
    )


def _run_worker(job: SweepJob, n_trials: int, worker: int, progress: bool) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = create_study(job, worker)
    store = Store(job.storage_url)
    try:
        runner = Runner(
            store,
            job.results_dir,
            run_fn=job.run_fn,
            scorer=job.scorer,
            cache_root=job.cache_root,
            progress=progress,
        )
        objective = SweepObjective(runner, job.space, job.preset, job.overrides)
        # S2D errors (bad data, NaN loss) fail one trial, recorded as FAIL; bugs stop the worker.
        try:
            study.optimize(objective, n_trials=n_trials, catch=(S2DError,))
        finally:
            runner.close()  # its scorer's METEOR process served every trial of this worker
    finally:
        store.close()


def _shares(trials: int, workers: int) -> list[int]:
    """Split ``trials`` over workers exactly: the total is ``trials``, no more, no fewer."""
    return [trials // workers + (1 if i < trials % workers else 0) for i in range(workers)]


def prepare_caches(job: SweepJob, progress: bool = False) -> None:
    """Data, tokenizer and tiny-LM pre-training of the job's base config, in the cache that its
    workers' runners use (``cache_root``, else ``results_dir/cache``)."""
    from s2d_align.training.cache import prepare_shared, resolve_cache_root

    cfg = job.space.base_variant.config(job.preset, job.space.seed, job.overrides)
    cache = resolve_cache_root(job.cache_root, default=Path(job.results_dir) / "cache")
    prepare_shared(cfg, cache, progress=progress)


def run_sweep(job: SweepJob, trials: int, workers: int = 1, progress: bool = True) -> optuna.Study:
    """Run ``trials`` new trials over ``workers`` processes sharing the job's storage."""
    if trials < 1 or workers < 1:
        raise ConfigError("--trials and --jobs must be >= 1")
    workers = min(workers, trials)
    Path(job.results_dir).mkdir(parents=True, exist_ok=True)
    Store(job.storage_url).close()  # create the results tables once, before workers race to
    study = create_study(job)  # the same for the study
    study.set_user_attr("objective", job.space.metric)  # the sweep report's axis label
    if workers == 1:
        _run_worker(job, trials, 0, progress)
        return study
    if job.run_fn is None:  # the real pipeline: build the shared caches once, not once per worker
        prepare_caches(job, progress)
    ctx = mp.get_context("spawn")  # safe with torch and CUDA; fork is not
    procs = [
        ctx.Process(target=_run_worker, args=(job, share, i, False), name=f"sweep-worker-{i}")
        for i, share in enumerate(_shares(trials, workers))
    ]
    before = len(study.get_trials(deepcopy=False))
    for p in procs:
        p.start()
    _wait(procs, study, before, trials, progress)
    failed = [p.name for p in procs if p.exitcode != 0]
    if failed:
        raise S2DError(f"sweep worker(s) {', '.join(failed)} exited with an error (see above)")
    return study


def _wait(procs: list, study: optuna.Study, before: int, trials: int, progress: bool) -> None:
    bar = progress_bar(total=trials, wanted=progress, desc="trials", unit="trial")
    done = 0
    while any(p.is_alive() for p in procs):
        time.sleep(1.0)
        if not bar.disable:  # no trial queries without a bar
            finished = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
            now = max(0, len(finished) - before)
            bar.update(now - done)
            done = now
    for p in procs:
        p.join()
    bar.close()


def best_variant(study: optuna.Study, space: Space) -> Variant:
    """The base variant with the best trial's parameters written into its overrides."""
    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not completed:
        raise S2DError(f"study {study.study_name!r} has no completed trial to export")
    best = study.best_trial
    data = apply_overrides(dict(space.base_variant.overrides), space.overrides(best.params))
    return Variant(
        name=f"{space.base_variant.name}-{space.name}-best",
        version=1,
        description=(
            f"Best trial #{best.number} of study {study.study_name} (space {space.name} "
            f"v{space.version}, val {space.metric} = {best.value:.4f}, run "
            f"{best.user_attrs.get('run_id', '?')}); base variant {space.base_variant.name}."
        ),
        overrides=data,
    )


def export_variant(variant: Variant, out_dir: str | Path) -> Path:
    """Write ``out_dir/NAME.yaml``; it loads back with ``load_variant`` (checked here)."""
    from s2d_align.harness.variants import load_variant

    path = save_yaml(variant_to_yaml_dict(variant), Path(out_dir) / f"{variant.name}.yaml")
    load_variant(path)  # what we export must load
    return path
