"""``s2d-align results list|show RUN|compare RUN_A RUN_B``: read the results store."""

from __future__ import annotations

import argparse
import json
import sys

from rich.console import Console
from rich.table import Table

from s2d_align.cli.vocab import command, option
from s2d_align.errors import ConfigError
from s2d_align.evaluation.metrics import CE_F1_PREFIX

DEFAULT_RESULTS = "results"
#: Run statuses in the store (``results list --status``).
STATUSES = ("created", "trained", "complete", "failed", "pruned")


def console() -> Console:
    """Rich console; when piped (CI logs, tests) wide enough that run ids are not cut."""
    return Console() if sys.stdout.isatty() else Console(width=200)


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}s"


def _store(args: argparse.Namespace):
    from s2d_align.harness.store import Store

    return Store.open_readonly(args.storage, args.results)  # reading never creates or changes it


def _iso(value) -> str | None:
    return value.isoformat(timespec="seconds") if value is not None else None


def _run_json(r) -> dict:
    """A run as plain JSON types (``--json``)."""
    return {
        "run_id": r.id, "variant": r.variant, "variant_version": r.variant_version,
        "preset": r.preset, "seed": r.seed, "purpose": r.purpose, "status": r.status,
        "config_hash": r.config_hash, "git_sha": r.git_sha, "run_dir": r.run_dir,
        "steps": r.steps, "tokens_seen": r.tokens_seen, "train_wall_s": r.train_wall_s,
        "generate_wall_s": r.generate_wall_s, "score_wall_s": r.score_wall_s, "error": r.error,
        "created_at": _iso(r.created_at), "finished_at": _iso(r.finished_at),
    }  # fmt: skip


def add_store_args(p: argparse.ArgumentParser, old: tuple[str, ...] = ("--out",)) -> None:
    """``--results DIR`` (deprecated spellings ``old``) and ``--storage URL``."""
    option(
        p,
        "--results",
        *old,
        default=DEFAULT_RESULTS,
        metavar="DIR",
        help="results directory: its store RESULTS/s2d.db and its runs/",
    )
    p.add_argument(
        "--storage", metavar="URL", help="database URL (default: sqlite:///RESULTS/s2d.db)"
    )


def cmd_list(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        runs = store.runs(preset=args.preset, status=args.status, purpose=args.purpose)
    finally:
        store.close()
    if args.json:
        print(json.dumps([_run_json(r) for r in runs], indent=2))
        return 0
    table = Table(title=f"{len(runs)} run(s) in {store.url}")
    for col in (
        "run",
        "variant",
        "seed",
        "purpose",
        "status",
        "steps",
        "tokens",
        "train s",
        "finished",
    ):
        table.add_column(col)
    for r in runs:
        table.add_row(
            r.id, r.variant, str(r.seed), r.purpose, r.status,
            str(r.steps or "-"), f"{r.tokens_seen:,}" if r.tokens_seen else "-",
            f"{r.train_wall_s:.1f}" if r.train_wall_s else "-",
            r.finished_at.isoformat(timespec="seconds") if r.finished_at else "-",
        )  # fmt: skip
    console().print(table)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        run = store.require_run(args.run)
        evals = store.evaluations([run.id])
        metrics = {e.split: store.metrics(run.id, e.split) for e in evals}
        tests = store.test_evaluations(run.id)
    finally:
        store.close()
    if args.json:
        doc = _run_json(run) | {"config": run.config, "environment": run.environment or {}}
        doc["evaluations"] = [
            {
                "split": ev.split, "n_samples": ev.n_samples, "signature": ev.signature,
                "headline": ev.headline, "manifest_hash": ev.manifest_hash,
                "metrics": {
                    name: {"value": m.value, "ci_low": m.ci_low, "ci_high": m.ci_high,
                           "higher_is_better": m.higher_is_better}
                    for name, m in metrics[ev.split].items()
                    if args.all or not name.startswith(CE_F1_PREFIX)
                },
            }
            for ev in evals
        ]  # fmt: skip
        doc["test_evaluations"] = len(tests)
        print(json.dumps(doc, indent=2, default=str))
        return 0
    out = console()
    out.print(
        f"[bold]{run.id}[/]  variant {run.variant} v{run.variant_version}, preset {run.preset}, "
        f"seed {run.seed}, purpose {run.purpose}, status {run.status}"
    )
    out.print(
        f"config {run.config_hash}  git {run.git_sha}  steps {run.steps}  tokens {run.tokens_seen}"
        f"  train {_secs(run.train_wall_s)}  generate {_secs(run.generate_wall_s)}"
        f"  score {_secs(run.score_wall_s)}"
    )
    out.print(f"run dir: {run.run_dir}")
    if run.error:
        out.print(f"[red]error:[/] {run.error}")
    env = run.environment or {}
    out.print(
        "environment: "
        + json.dumps(
            {k: env.get(k) for k in ("python", "torch", "transformers", "platform", "gpu")}
        )
    )
    for ev in evals:
        table = Table(title=f"{ev.split} ({ev.n_samples} samples)")
        for col in ("metric", "value", "95% CI"):
            table.add_column(col, justify="left" if col == "metric" else "right")
        for name, m in metrics[ev.split].items():
            if args.all or not name.startswith(CE_F1_PREFIX):
                ci = "-" if m.ci_low is None else f"[{m.ci_low:.4f}, {m.ci_high:.4f}]"
                table.add_row(name, f"{m.value:.4f}", ci)
        out.print(table)
        out.print(f"signature: {ev.signature}")
    out.print(f"test evaluations logged: {len(tests)}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from s2d_align.harness.reports.significance import PairedTests, RunPair

    store = _store(args)
    try:
        a, b = store.require_run(args.run_a), store.require_run(args.run_b)
        ma, mb = store.metrics(a.id, args.split), store.metrics(b.id, args.split)
        if not ma or not mb:
            raise ConfigError(f"both runs need scores on the {args.split} split")
        names = [n for n in ma if n in mb and (args.all or not n.startswith(CE_F1_PREFIX))]
        manifests = {
            e.manifest_hash for e in store.evaluations([a.id, b.id]) if e.split == args.split
        }
        if len(manifests) > 1:
            raise ConfigError(f"{a.id} and {b.id} were scored on different {args.split} sets")
        tests = PairedTests(store, args.split, sorted(manifests))
        pvalues = tests.p_values(names, [RunPair(0, b.id, a.id)], trials=args.resamples)
    finally:
        store.close()
    table = Table(title=f"A = {a.id}  vs  B = {b.id}  ({args.split})")
    for col in ("metric", "A", "B", "B - A", "p (paired AR)"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for name in names:
        va, vb, p = ma[name].value, mb[name].value, pvalues.get(name)
        table.add_row(
            name, f"{va:.4f}", f"{vb:.4f}", f"{vb - va:+.4f}", "-" if p is None else f"{p:.4f}"
        )
    console().print(table)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from s2d_align.harness import export
    from s2d_align.harness.store import Store, sqlite_path, storage_url
    from s2d_align.utils.io import check_output_path

    db = sqlite_path(storage_url(args.storage, args.results))
    check_output_path(args.out, {"--results/--storage": db})
    export.check_format(args.format)  # a missing pyarrow fails before any reading
    store = Store.open_readonly(args.storage, args.results)
    try:
        run_ids = [store.require_run(r).id for r in args.run] if args.run else None
        build = export.sample_frame if args.per_sample else export.metric_frame
        frame = build(store, run_ids)
    finally:
        store.close()
    path = export.write_frame(frame, args.out, args.format)
    print(f"wrote {len(frame)} row(s) to {path}", file=sys.stderr)
    return 0


def cmd_bundle(args: argparse.Namespace) -> int:
    from s2d_align.harness.bundle import write_bundle
    from s2d_align.harness.store import sqlite_path, storage_url
    from s2d_align.utils.io import check_output_path

    db = sqlite_path(storage_url(args.storage, args.results))
    check_output_path(args.out, {"--results/--storage": db})
    done = write_bundle(args.storage, args.results, args.out, tuple(args.strip))
    what = "wrote" if done.changed else "unchanged:"
    print(f"{what} {done.path} ({sum(done.rows.values())} rows in {len(done.rows)} tables, "
          f"{done.size / 1e6:.2f} MB)", file=sys.stderr)  # fmt: skip
    return 0


def cmd_unbundle(args: argparse.Namespace) -> int:
    from s2d_align.harness.bundle import unbundle

    path = unbundle(args.inp, args.results)
    print(f"wrote {path}", file=sys.stderr)
    return 0


def _all_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--all", action="store_true", help="include per-observation CE F1")


def register(sub: argparse._SubParsersAction) -> None:
    parser = command(
        sub,
        "results",
        help="list, show, compare, export and bundle runs in the results store",
        example=[
            "s2d-align results list --status complete --results results",
            "s2d-align results show RUN_ID --json",
        ],
    )
    group = parser.add_subparsers(
        dest="results_command", metavar="RESULTS_COMMAND", required=True, help="what to do"
    )
    _register_list(group)
    _register_show(group)
    _register_compare(group)
    _register_export(group)
    _register_bundle(group)
    _register_unbundle(group)


def _register_list(group: argparse._SubParsersAction) -> None:
    p = command(
        group,
        "list",
        help="runs with status, steps, tokens and timings",
        example="s2d-align results list --preset smoke --status failed",
    )
    add_store_args(p)
    p.add_argument("--preset", help="only runs of this preset (default: all)")
    p.add_argument("--status", choices=STATUSES, help="only runs with this status (default: all)")
    p.add_argument(
        "--purpose",
        choices=["ablate", "sweep", "regress"],
        help="only runs made for this (default: all)",
    )
    p.add_argument("--json", action="store_true", help="print the runs as a JSON list")
    p.set_defaults(handler=cmd_list)


def _register_show(group: argparse._SubParsersAction) -> None:
    p = command(
        group,
        "show",
        help="one run: provenance, metrics with CIs, signatures",
        example="s2d-align results show default.s2d.v1.s0 --all",
    )
    add_store_args(p)
    p.add_argument("run", metavar="RUN_ID", help="run id (see `results list`)")
    _all_arg(p)
    p.add_argument("--json", action="store_true", help="print the run and its metrics as JSON")
    p.set_defaults(handler=cmd_show)


def _register_compare(group: argparse._SubParsersAction) -> None:
    p = command(
        group,
        "compare",
        help="two runs side by side with paired tests",
        example="s2d-align results compare default.sft.v1.s0 default.s2d.v1.s0 --split test",
    )
    add_store_args(p)
    p.add_argument("run_a", metavar="RUN_A", help="run id of A")
    p.add_argument("run_b", metavar="RUN_B", help="run id of B")
    p.add_argument("--split", default="test", choices=["val", "test"], help="split to compare")
    p.add_argument(
        "--resamples",
        type=int,
        default=10_000,
        metavar="N",
        help="approximate-randomisation trials of the paired test",
    )
    _all_arg(p)
    p.set_defaults(handler=cmd_compare)


def _register_export(group: argparse._SubParsersAction) -> None:
    p = command(
        group,
        "export",
        help="metrics (or per-sample scores) as a CSV, Parquet or JSONL file",
        example="s2d-align results export --format csv --out metrics.csv --results results",
    )
    add_store_args(p, old=())
    p.add_argument("--out", required=True, metavar="FILE", help="file to write")
    p.add_argument(
        "--format", required=True, choices=["csv", "parquet", "jsonl"], help="file format"
    )
    p.add_argument(
        "--per-sample", action="store_true", help="one row per sample score, not per metric"
    )
    p.add_argument(
        "--run",
        action="append",
        default=[],
        metavar="RUN_ID",
        help="export only this run (repeatable; default: every run)",
    )
    p.set_defaults(handler=cmd_export)


def _register_bundle(group: argparse._SubParsersAction) -> None:
    p = command(
        group,
        "bundle",
        help="the whole store as one small deterministic file that `report --results` reads",
        example=[
            "s2d-align results bundle --results results --out default.bundle.jsonl.gz",
            "s2d-align report --results default.bundle.jsonl.gz --reports reports",
        ],
    )
    add_store_args(p, old=())
    p.add_argument("--out", required=True, metavar="FILE", help="bundle file to write (.jsonl.gz)")
    p.add_argument(
        "--strip",
        action="append",
        default=[],
        metavar="FOLDER",
        help="a folder to cut from the paths the store records (run folders, images), so a "
        "bundle to commit names no folder of this machine; repeatable, e.g. the results folder "
        "and the grid's --cache (default: the store is copied exactly)",
    )
    p.set_defaults(handler=cmd_bundle)


def _register_unbundle(group: argparse._SubParsersAction) -> None:
    p = command(
        group,
        "unbundle",
        help="rebuild a results store from a bundle file",
        example="s2d-align results unbundle --in default.bundle.jsonl.gz --results restored",
    )
    p.add_argument("--in", dest="inp", required=True, metavar="FILE", help="bundle file to read")
    p.add_argument(
        "--results",
        required=True,
        metavar="DIR",
        help="results folder to create the store RESULTS/s2d.db in (must hold none yet)",
    )
    p.set_defaults(handler=cmd_unbundle)
