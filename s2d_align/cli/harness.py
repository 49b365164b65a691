"""``s2d-align ablate|sweep|report|regress|results``: the ablation harness as commands.

Paths: ``--results`` is the results directory (store ``RESULTS/s2d.db``, runs ``RESULTS/runs/``,
caches ``RESULTS/cache/``) unless ``--storage URL`` names another database; ``--reports`` is where
tables and figures go. Every handler only parses, calls ``s2d_align.harness`` and prints.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from s2d_align.cli import harness_results
from s2d_align.cli.harness_results import add_store_args
from s2d_align.cli.harness_results import console as make_console
from s2d_align.cli.vocab import add_cache, add_jobs, command, option
from s2d_align.errors import ConfigError

DEFAULT_RESULTS = "results"
DEFAULT_REPORTS = "reports"
DEFAULT_SEEDS = "0,1,2"


def _csv(text: str | None) -> list[str] | None:
    if text is None:
        return None
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise ConfigError(f"empty list: {text!r}")
    return items


def _seeds(text: str | None) -> list[int] | None:
    items = _csv(text)
    if items is None:
        return None
    try:
        return [int(s) for s in items]
    except ValueError:
        raise ConfigError(f"--seeds must be comma-separated integers, got {text!r}") from None


def _progress(args: argparse.Namespace) -> bool:
    return not getattr(args, "no_progress", False)


def _open_store(args: argparse.Namespace, results_dir: str | None = None):
    from s2d_align.harness.store import Store, file_in_the_way, sqlite_path, storage_url

    if getattr(args, "dry_run", False):
        # A plan only reads: an existing store read-only, else an empty one in memory, so
        # that no folder or database is created.
        path = sqlite_path(storage_url(args.storage, results_dir or args.results))
        if path is not None and not path.exists() and file_in_the_way(path) is None:
            return Store("sqlite://")
        return Store.open_readonly(args.storage, results_dir or args.results)
    return Store.open(args.storage, results_dir or args.results)


def reports_dir(args: argparse.Namespace) -> str:
    """``--reports`` as given; else the repository's ``reports/`` for the default store, and
    ``RESULTS/reports`` when ``--results`` or ``--storage`` name another one (its reports must
    not overwrite those of the main results)."""
    if args.reports is not None:
        return args.reports
    if args.storage or Path(args.results) != Path(DEFAULT_RESULTS):
        return str(Path(args.results) / "reports")
    return DEFAULT_REPORTS


# -- ablate ------------------------------------------------------------------------------------
def cmd_ablate(args: argparse.Namespace) -> int:
    from s2d_align.harness.plan import plan_grid
    from s2d_align.harness.reports import build_reports
    from s2d_align.harness.runner import Runner
    from s2d_align.harness.variants import grid_variants, load_variants

    console = make_console()
    args.reports = reports_dir(args)
    claim_timeout_s = parse_claim_timeout(args.claim_timeout)
    variants = load_variants(_csv(args.variants) or grid_variants())
    specs = plan_grid(args.preset, variants, _seeds(args.seeds), overrides=args.overrides)
    store = _open_store(args)
    try:
        runner = Runner(store, args.results, cache_root=args.cache, progress=_progress(args),
                        references=not args.no_references,
                        claim_timeout_s=claim_timeout_s)  # fmt: skip
        jobs = parse_jobs(args.jobs, specs)
        if args.dry_run:
            print_plan(console, runner, specs, jobs)
            return 0
        started = time.perf_counter()
        try:
            grid = runner.run_grid(specs, jobs=jobs)
        except KeyboardInterrupt:
            print(
                "interrupted: finished runs are kept in the store; run the same command again "
                "to resume",
                file=sys.stderr,
            )
            return 130
        claimed = f"{len(grid.claimed)} being trained by another process, " if grid.claimed else ""
        console.print(
            f"grid: {len(grid.executed)} run(s) executed, {len(grid.skipped)} already complete, "
            f"{claimed}{len(grid.failed)} failed, in {_duration(time.perf_counter() - started)} "
            f"({jobs} at a time)"
        )
        for run_id, holder in grid.claimed.items():
            console.print(
                f"[yellow]skipped[/] {run_id}: being trained by {holder}; "
                "run ablate again once it is done to include it"
            )
        for run_id, outcome in grid.references.items():
            if not outcome.startswith("failed"):
                console.print(f"reference row {run_id}: {outcome}")
        for run_id, err in grid.failed.items():
            console.print(f"[red]failed[/] {run_id}: {err}")
        written = build_reports(store, args.reports)
        table = Path(args.reports) / specs[0].preset / "ablation.md"
        if table.is_file():
            print(table.read_text(encoding="utf-8"))  # plain: rich would re-wrap the Markdown
        console.print(f"reports: {len(written)} file(s) under {args.reports}/")
        return 0 if grid.ok else 1
    finally:
        store.close()


def print_plan(console: Console, runner, specs, jobs: int = 1) -> None:
    from s2d_align.harness.plan import estimate

    rows, source = estimate(runner.store, specs)
    table = Table(title=f"plan: {len(rows)} run(s), preset {specs[0].preset}")
    for col in ("run", "variant", "seed", "stages", "steps", "state", "estimate"):
        table.add_column(col, justify="right" if col in ("seed", "steps", "estimate") else "left")
    for r in rows:
        table.add_row(r["run_id"], r["variant"], str(r["seed"]), r["stages"], str(r["steps"]),
                      r["state"], _duration(r["est_s"]))  # fmt: skip
    console.print(table)
    todo = [r for r in rows if r["state"] != "complete"]
    total = sum(r["est_s"] for r in rows)
    console.print(
        f"{len(todo)} run(s) to do, {sum(r['steps'] for r in todo):,} optimizer steps, "
        f"estimated {_duration(total / jobs)} with {jobs} run(s) at a time "
        f"(from {source}; first runs also pre-train the tiny LM)"
    )


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, sec = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{sec:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


# -- sweep -------------------------------------------------------------------------------------
def cmd_sweep(args: argparse.Namespace) -> int:
    from s2d_align.harness.space import load_space
    from s2d_align.harness.store import storage_url
    from s2d_align.harness.sweep import (
        SweepJob,
        best_variant,
        default_study_name,
        export_variant,
        run_sweep,
    )

    space = load_space(args.space)
    url = storage_url(args.storage, args.results)
    study_name = args.study or default_study_name(args.preset, space)
    job = SweepJob(
        preset=args.preset,
        space=space,
        storage_url=url,
        study_name=study_name,
        results_dir=str(args.results),
        overrides=tuple(args.overrides),
        cache_root=str(args.cache) if args.cache else None,
    )
    study = run_sweep(job, args.trials, args.jobs, progress=_progress(args))
    states: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        states[t.state.name] = states.get(t.state.name, 0) + 1
    console = make_console()
    console.print(
        f"study {study_name} ({url}): " + ", ".join(f"{n} {s}" for s, n in states.items())
    )
    variant = best_variant(study, space)
    path = export_variant(variant, args.export or Path(args.results) / "sweeps" / study_name)
    best = study.best_trial
    console.print(
        f"best trial #{best.number}: val {space.metric} = {best.value:.4f} "
        f"params {best.params} run {best.user_attrs.get('run_id')}"
    )
    console.print(f"best parameters exported as variant: {path}")
    return 0


# -- report ------------------------------------------------------------------------------------
def cmd_report(args: argparse.Namespace) -> int:
    from s2d_align.harness.bundle import opened_results
    from s2d_align.harness.reports import build_reports

    # read-only: a report never writes the store; a bundle file is unbundled to a temp folder
    with opened_results(args.storage, args.results) as store:
        written = build_reports(store, args.reports)
    make_console().print(f"reports: {len(written)} file(s) under {args.reports}/")
    return 0


# -- regress -----------------------------------------------------------------------------------
def cmd_regress(args: argparse.Namespace) -> int:
    from s2d_align.harness.regress import baseline_path, diff_table, failed, run_regression

    console = make_console()
    baseline = Path(args.baseline) if args.baseline else baseline_path(args.results, args.preset)
    with tempfile.TemporaryDirectory(prefix="s2d-regress-") as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        result = run_regression(
            args.preset,
            baseline,
            work,
            update=args.update_baseline,
            variants=_csv(args.variants),
            seeds=_seeds(args.seeds),
            cache_root=args.cache,
            progress=_progress(args),
            jobs=args.jobs if args.jobs == "auto" else parse_jobs(args.jobs, []),
        )
    if result.updated:
        console.print(f"baseline written: {result.baseline_file}")
        return 0
    console.print(diff_table(result.diffs))
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}")
    if result.baseline_signature and result.baseline_signature != result.signature:
        console.print(
            "[yellow]note:[/] the protocol signature changed since the baseline:\n"
            f"  baseline: {result.baseline_signature}\n  now:      {result.signature}"
        )
    bad = failed(result.diffs)
    if bad:
        console.print(f"[bold red]{len(bad)} regression(s)[/] against {result.baseline_file}")
        return 1
    console.print(f"no regression against {result.baseline_file}")
    return 0


# -- registration ------------------------------------------------------------------------------
def _common_run_args(p: argparse.ArgumentParser) -> None:
    add_cache(p, "data, tokenizers, tiny LMs, reference labels", "RESULTS/cache", "--cache-root")
    _no_progress_arg(p)
    p.add_argument(
        "overrides", nargs="*", metavar="key=value", help="config overrides for every run"
    )


def _preset_arg(p: argparse.ArgumentParser, **kwargs) -> None:
    p.add_argument("--preset", help="preset name or YAML path", **kwargs)


def _no_progress_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _jobs_arg(p: argparse.ArgumentParser) -> None:
    add_jobs(
        p,
        "runs at a time, each in its own process; 'auto': one per GPU (each worker pinned to its "
        "device), else CPU cores / train.num_threads, at most 4",
        default="auto",
    )


def parse_claim_timeout(text: str) -> float:
    """``--claim-timeout``: seconds, or a number with s, m or h."""
    units = {"s": 1.0, "m": 60.0, "h": 3600.0}
    value, scale = (text[:-1], units[text[-1]]) if text and text[-1] in units else (text, 1.0)
    try:
        seconds = float(value) * scale
    except ValueError:
        seconds = -1.0
    if not seconds > 0 or seconds == float("inf"):
        raise ConfigError(
            f"--claim-timeout must be a positive duration such as 3600, 90m or 6h, got {text!r}"
        )
    return seconds


def parse_jobs(text: str, specs) -> int:
    from s2d_align.harness.grid import auto_jobs

    if text == "auto":
        return auto_jobs(specs)
    try:
        jobs = int(text)
    except ValueError:
        raise ConfigError(f"--jobs must be a positive integer or 'auto', got {text!r}") from None
    if jobs < 1:
        raise ConfigError(f"--jobs must be a positive integer or 'auto', got {text!r}")
    return jobs


def register(sub: argparse._SubParsersAction) -> None:
    _register_ablate(sub)
    _register_sweep(sub)
    _register_report(sub)
    _register_regress(sub)
    harness_results.register(sub)


def _register_ablate(sub: argparse._SubParsersAction) -> None:
    p = command(
        sub,
        "ablate",
        help="run a variant x seed grid, then write the reports",
        example=[
            "s2d-align ablate --preset smoke --variants sft,s2d --seeds 0,1 --jobs 2 "
            "--results results/smoke",
            "s2d-align ablate --preset smoke --dry-run   # the plan and a time estimate",
        ],
    )
    _preset_arg(p, default="default")
    p.add_argument(
        "--variants",
        help="comma-separated variants (default: every file in s2d_align/ablations/variants/, by 'order:')",
    )
    p.add_argument("--seeds", default=DEFAULT_SEEDS, help="comma-separated seeds")
    add_store_args(p)
    p.add_argument(
        "--reports",
        metavar="DIR",
        help=f"reports directory (default: {DEFAULT_REPORTS}/ for the default store; "
        "RESULTS/reports when --results or --storage name another store, so its reports stay "
        "beside its results)",
    )
    p.add_argument("--dry-run", action="store_true", help="print the plan with a time estimate")
    p.add_argument(
        "--no-references",
        action="store_true",
        help="do not record the reference rows (all-normal, nn-retrieval, oracle-paraphrase)",
    )
    p.add_argument(
        "--claim-timeout",
        default="6h",
        metavar="DURATION",
        help="a run claimed by a process on another machine that has shown no sign of life for "
        "this long (seconds, or e.g. 90m, 6h) is taken over; a dead process on this machine is "
        "taken over at once",
    )
    _jobs_arg(p)
    _common_run_args(p)
    p.set_defaults(handler=cmd_ablate)


def _register_sweep(sub: argparse._SubParsersAction) -> None:
    p = command(
        sub,
        "sweep",
        help="Optuna sweep over a space in s2d_align/ablations/sweeps (val only)",
        example="s2d-align sweep --preset default --space memory --trials 12 --jobs 2",
    )
    _preset_arg(p, required=True)
    p.add_argument(
        "--space", required=True, help="space name (s2d_align/ablations/sweeps) or YAML path"
    )
    p.add_argument(
        "--trials", type=int, required=True, help="new Optuna trials to run (over all jobs)"
    )
    add_jobs(p, "worker processes sharing the study", "--workers", type=int, default=1)
    p.add_argument("--study", help="study name (default: PRESET.SPACE.vVERSION)")
    p.add_argument(
        "--export",
        metavar="DIR",
        help="folder for the best-parameters variant YAML (default: RESULTS/sweeps/STUDY)",
    )
    add_store_args(p)
    _common_run_args(p)
    p.set_defaults(handler=cmd_sweep)


def _register_report(sub: argparse._SubParsersAction) -> None:
    p = command(
        sub,
        "report",
        help="rebuild tables and figures from the results store",
        description="Rebuild the tables and figures of every preset the store holds (opened "
        "read-only); the index keeps the entries of presets already under --reports. "
        "--results also takes a bundle file (`results bundle`).",
        example=[
            "s2d-align report --results results/mimic --reports reports/mimic",
            "s2d-align report --results default.bundle.jsonl.gz --reports reports",
        ],
    )
    option(
        p,
        "--reports",
        "--out",
        default=DEFAULT_REPORTS,
        metavar="DIR",
        help="reports directory to write",
    )
    add_store_args(p, old=())  # --out was always the reports here
    p.set_defaults(handler=cmd_report)


def _register_regress(sub: argparse._SubParsersAction) -> None:
    p = command(
        sub,
        "regress",
        help="rerun the smoke grid and compare with the baseline",
        example=[
            "s2d-align regress --preset smoke",
            "s2d-align regress --preset smoke --update-baseline   # then commit the baseline",
        ],
    )
    _preset_arg(p, default="smoke")
    p.add_argument("--update-baseline", action="store_true", help="write the baseline instead")
    p.add_argument(
        "--baseline", metavar="FILE", help="baseline JSON (default: RESULTS/baselines/PRESET.json)"
    )
    p.add_argument("--variants", help="comma-separated variants (default: the baseline's)")
    p.add_argument("--seeds", help="comma-separated seeds (default: the baseline's)")
    option(
        p,
        "--results",
        "--out",
        default=DEFAULT_RESULTS,
        metavar="DIR",
        help="results directory holding baselines/",
    )
    p.add_argument(
        "--work", metavar="DIR", help="keep the rerun's runs and store here (default: a temp dir)"
    )
    add_cache(p, "data and tiny LMs", "a fresh one, so nothing is reused", "--cache-root")
    _jobs_arg(p)
    _no_progress_arg(p)
    p.set_defaults(handler=cmd_regress)
