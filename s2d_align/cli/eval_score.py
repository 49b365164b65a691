"""``s2d-align score`` and ``s2d-align compare``: the evaluation protocol on prediction files.

``score`` prints NLG metrics, the CE headline, the CE matrix and per-observation F1 with 95%
bootstrap intervals, then the protocol signature; ``--out`` writes the same as JSON (with
per-sample scores). ``compare`` scores two prediction files on the same split and runs a paired
approximate-randomisation test per metric.

Predictions are JSONL lines ``{"id", "prediction"}``; they must cover the split exactly.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.table import Table

from s2d_align.chexpert import OBSERVATIONS
from s2d_align.cli.vocab import CACHE_ENV, add_cache, command, env_cache, option
from s2d_align.config.schema import EvalConfig
from s2d_align.data.audit import manifest_hash
from s2d_align.data.r2gen import DATASETS, SPLITS, load_annotation
from s2d_align.errors import ConfigError, DataError
from s2d_align.evaluation.ce import AVERAGES, LABEL_SETS, MAPPINGS, parse_headline
from s2d_align.evaluation.metrics import (
    CE,
    CE_F1,
    CE_F1_PREFIX,
    CE_SUPPORT,
    GROUNDED,
    SUPPORT_PREFIX,
    find_spec,
)
from s2d_align.evaluation.profiles import PROFILES
from s2d_align.evaluation.records import Comparison, ScoreReport
from s2d_align.evaluation.score import ScoringContext, check_ids, compare_corpora, score_corpus
from s2d_align.utils.io import check_output_path, iter_jsonl_lines, write_json
from s2d_align.utils.progress import progress_enabled


def _add_eval_options(p: argparse.ArgumentParser, out_help: str) -> None:
    defaults = EvalConfig()
    p.add_argument("--ann", required=True, type=Path, help="R2Gen annotation.json (references)")
    p.add_argument("--split", default="test", choices=SPLITS, help="split to score")
    p.add_argument("--images", type=Path, help="image root (default: the annotation's folder)")
    p.add_argument("--dataset", choices=DATASETS, help="dataset rules (needed by r2gen-legacy)")
    p.add_argument("--group-by-study", action="store_true", help="fold MIMIC per-image rows")
    p.add_argument(
        "--profile", default=defaults.profile, choices=PROFILES, help="evaluation profile"
    )
    p.add_argument(
        "--labeler", default=defaults.labeler, choices=("rules", "chexbert"), help="CE labeler"
    )
    p.add_argument("--chexbert-ckpt", type=Path, help="chexbert.pth (labeler chexbert)")
    p.add_argument("--chexbert-sha256", help="expected SHA-256 of the checkpoint (checked)")
    p.add_argument("--vocab", type=Path, help="bert-base-uncased vocab.txt (labeler chexbert)")
    p.add_argument(
        "--headline",
        default=defaults.headline,
        help="CE headline cell, MAPPING/LABELS/AVERAGE/METRIC",
    )
    p.add_argument(
        "--bootstrap",
        type=int,
        default=defaults.bootstrap,
        help="bootstrap replicates of the 95%% CIs (0: no intervals)",
    )
    p.add_argument("--ci-seed", type=int, default=defaults.ci_seed, help="bootstrap seed")
    add_cache(
        p,
        "reference labels, kept in its eval/ folder",
        f"${CACHE_ENV}, else .s2d-cache/ beside --out, else none",
        "--cache-dir",
    )
    p.add_argument("--no-cache", action="store_true", help="do not cache reference labels")
    p.add_argument("--out", type=Path, metavar="FILE.json", help=out_help)


def register(sub: argparse._SubParsersAction) -> None:
    p = command(
        sub,
        "score",
        help="score predictions: NLG + CE with CIs and a signature",
        example="s2d-align score --pred pred.jsonl --ann data/iu/annotation.json --split test "
        "--out metrics.json",
    )
    p.add_argument("--pred", required=True, type=Path, help='JSONL lines {"id", "prediction"}')
    _add_eval_options(p, "write the scores (with per-sample scores) to this JSON file")
    p.set_defaults(handler=_score)

    p = command(
        sub,
        "compare",
        help="paired test of two prediction files on one split",
        example="s2d-align compare a.jsonl b.jsonl --ann data/iu/annotation.json "
        "--resamples 10000 --out compare.json",
    )
    p.add_argument("pred_a", type=Path, metavar="A.jsonl", help="predictions of system A")
    p.add_argument("pred_b", type=Path, metavar="B.jsonl", help="predictions of system B")
    option(
        p,
        "--resamples",
        "--trials",
        type=int,
        default=10_000,
        metavar="N",
        help="approximate-randomisation trials of the paired test",
    )
    p.add_argument("--seed", type=int, default=0, help="randomisation seed")
    _add_eval_options(p, "write the comparison to this JSON file")
    p.set_defaults(handler=_compare)


def read_predictions(path: Path) -> dict[str, str]:
    """``{id: prediction}`` from a predictions JSONL; bad or duplicate entries name the file, the
    entry and (where blank lines make them differ) its line."""
    out: dict[str, str] = {}
    for index, (lineno, row) in enumerate(iter_jsonl_lines(path), 1):
        where = f"{path}: entry {index}" + (f" (line {lineno})" if lineno != index else "")
        missing = [k for k in ("id", "prediction") if k not in row]
        if missing:
            raise DataError(
                f"{where}: needs 'id' and 'prediction' keys, missing {', '.join(missing)} "
                f"(got keys {sorted(row)})"
            )
        key, text = row["id"], row["prediction"]
        if key is None:
            raise DataError(f"{where}: 'id' is null")
        if text is None:
            raise DataError(f'{where} (id {key!r}): prediction is null; write "" for an empty one')
        if not isinstance(text, str):
            raise DataError(
                f"{where} (id {key!r}): prediction must be a string, got {type(text).__name__}"
            )
        key = str(key)
        if key in out:
            raise DataError(f"{where}: duplicate id {key!r}")
        out[key] = text
    return out


def _check_out(args: argparse.Namespace, predictions: dict[str, Path]) -> None:
    """``--out`` must not be one of the files the command reads."""
    if args.out is not None:
        extra = {"--ann": args.ann, "--chexbert-ckpt": args.chexbert_ckpt, "--vocab": args.vocab}
        check_output_path(args.out, {**predictions, **extra})


def _config(args: argparse.Namespace) -> EvalConfig:
    parse_headline(args.headline)  # a ConfigError names the valid cells
    if args.bootstrap < 0:
        raise ConfigError("--bootstrap must be >= 0")
    if args.profile == "r2gen-legacy" and args.dataset is None:
        raise ConfigError("--profile r2gen-legacy needs --dataset (iu_xray, mimic_cxr or synthcxr)")
    return EvalConfig(
        profile=args.profile,
        labeler=args.labeler,
        chexbert_checkpoint=str(args.chexbert_ckpt) if args.chexbert_ckpt else None,
        chexbert_sha256=args.chexbert_sha256,
        vocab=str(args.vocab) if args.vocab else None,
        headline=args.headline,
        bootstrap=args.bootstrap,
        ci_seed=args.ci_seed,
    )


def _cache_dir(args: argparse.Namespace) -> Path | None:
    if args.no_cache:
        return None
    root = args.cache if args.cache is not None else env_cache()
    if root is not None:
        return Path(root) / "eval"  # the folder the grid's scorer uses in the same cache
    # Nothing is written outside what the user named: cache beside --out, or not at all.
    out = getattr(args, "out", None)
    return Path(out).parent / ".s2d-cache" / "ref-labels" if out else None


def _references(args: argparse.Namespace) -> tuple[dict[str, str], ScoringContext]:
    ann = load_annotation(
        args.ann, args.images, dataset=args.dataset, group_by_study=args.group_by_study
    )
    references = ann.reports(args.split)
    train = [s.report for s in ann.splits.get("train", [])]
    context = ScoringContext(
        manifest_hash=manifest_hash(ann, args.split),
        cache_dir=_cache_dir(args),
        progress=progress_enabled(True),
        dataset=args.dataset or "synthcxr",
        train_reports=tuple(train) if (args.profile == "r2gen-legacy" and train) else None,
    )
    return references, context


def _score(args: argparse.Namespace) -> int:
    cfg = _config(args)
    _check_out(args, {"--pred": args.pred})
    predictions = read_predictions(args.pred)
    references, context = _references(args)
    check_ids(predictions, references, what=f"predictions in {args.pred} (split {args.split!r})")
    report = score_corpus(predictions, references, cfg, context)
    console = Console(soft_wrap=True)
    print_report(report, console)
    _print_text_notes(report, predictions, references, args.dataset, console)
    if args.out:
        data = {"predictions": str(args.pred), "annotation": str(args.ann), "split": args.split}
        write_json(args.out, {**data, **report.to_dict()})
        console.print(f"wrote {args.out}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    cfg = _config(args)
    _check_out(args, {"A.jsonl": args.pred_a, "B.jsonl": args.pred_b})
    pred_a, pred_b = read_predictions(args.pred_a), read_predictions(args.pred_b)
    references, context = _references(args)
    for path, preds in ((args.pred_a, pred_a), (args.pred_b, pred_b)):
        check_ids(preds, references, what=f"predictions in {path} (split {args.split!r})")
    comparison = compare_corpora(
        pred_a, pred_b, references, cfg, context, trials=args.resamples, seed=args.seed
    )
    console = Console(soft_wrap=True)
    print_comparison(comparison, str(args.pred_a), str(args.pred_b), console)
    if args.out:
        data = {"a": str(args.pred_a), "b": str(args.pred_b), "split": args.split}
        write_json(args.out, {"files": data, **comparison.to_dict()})
        console.print(f"wrote {args.out}")
    return 0


def _ci(report: ScoreReport, name: str) -> str:
    m = report.metrics[name]
    return "" if m.ci_low is None else f"[{m.ci_low:.4f}, {m.ci_high:.4f}]"


def _print_text_notes(
    report: ScoreReport,
    predictions: dict[str, str],
    references: dict[str, str],
    dataset: str | None,
    console: Console,
) -> None:
    """How many reports lost sections or all their text to the analyser, and the rules
    labeler's comparability warning on real data."""
    from s2d_align.evaluation.analyser import analyse, count_sections
    from s2d_align.evaluation.labelers.rules import comparability_note

    for what, texts in (("references", references), ("predictions", predictions)):
        counts = count_sections(analyse(t) for t in texts.values())
        console.print(f"{what}: {counts.describe()}", markup=False, highlight=False)
    ce_field = dict(p.split(":", 1) for p in report.signature.split("|") if ":" in p).get("ce")
    note = comparability_note(ce_field or "", dataset)
    if note:
        console.print(f"note: {note}", markup=False, highlight=False, soft_wrap=True)


def _family(name: str) -> str | None:
    spec = find_spec(name)  # a report written by another version may hold unknown names
    return None if spec is None else spec.family


def print_report(report: ScoreReport, console: Console) -> None:
    """NLG + headline table, CE matrix (F1 with P/R), per-observation F1, then the signature."""
    table = Table(title=f"scores (n={report.n}, 95% bootstrap CI)")
    for col in ("metric", "value", "95% CI"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    # the families without a table of their own (NLG, and any added metric), then the headline
    own_table = (CE, CE_F1, CE_SUPPORT, GROUNDED)
    first = [n for n in report.metrics if _family(n) not in own_table]
    for name in (*first, report.headline):
        style = "bold" if name == report.headline else None
        table.add_row(name, f"{report.metrics[name].value:.4f}", _ci(report, name), style=style)
    console.print(table)

    matrix = Table(title="CE matrix (u0: uncertain -> 0, u1: uncertain -> 1)")
    for col in ("mapping", "labels", "average", "P", "R", "F1"):
        matrix.add_column(col, justify="right" if len(col) <= 2 else "left")
    for mapping in MAPPINGS:
        for labels in LABEL_SETS:
            for average in AVERAGES:
                name = f"ce/{mapping}/{labels}/{average}"
                values = [f"{report.metrics[f'{name}/{s}'].value:.4f}" for s in ("p", "r", "f1")]
                bold = report.headline.startswith(name + "/")
                matrix.add_row(
                    mapping,
                    labels,
                    average,
                    *values,
                    style="bold" if bold else None,
                )
    console.print(matrix)

    per_obs = Table(title=f"per-observation F1 ({report.headline.split('/')[1]})")
    per_obs.add_column("observation")
    per_obs.add_column("F1", justify="right")
    per_obs.add_column("95% CI", justify="right")
    per_obs.add_column("n (positive refs)", justify="right")
    for obs in OBSERVATIONS:
        name = f"{CE_F1_PREFIX}{obs}"
        support = report.metrics.get(f"{SUPPORT_PREFIX}{obs}")
        n = int(support.value) if support is not None else None
        f1 = "absent" if n == 0 else f"{report.metrics[name].value:.4f}"
        per_obs.add_row(obs, f1, _ci(report, name) if n else "", "-" if n is None else str(n))
    console.print(per_obs)
    console.print(f"signature: {report.signature}", markup=False, highlight=False, soft_wrap=True)


def print_comparison(comparison: Comparison, name_a: str, name_b: str, console: Console) -> None:
    """One row per metric: A, B, A - B and the paired test's p-value (* p < 0.05)."""
    console.print(f"A = {name_a}\nB = {name_b}", markup=False, highlight=False, soft_wrap=True)
    table = Table(title=f"paired approximate randomisation, {comparison.trials} resamples")
    table.add_column("metric", no_wrap=True)
    for col in ("A", "B", "A - B", "p", ""):
        table.add_column(col, justify="right", no_wrap=True)
    for row in comparison.rows():
        if _family(row["metric"]) == CE_F1:
            continue  # per-observation rows are in --out; the table stays readable
        mark = "*" if row["p_value"] < 0.05 else ""
        table.add_row(
            row["metric"],
            f"{row['a']:.4f}",
            f"{row['b']:.4f}",
            f"{row['delta']:+.4f}",
            f"{row['p_value']:.4f}",
            mark,
        )
    console.print(table)
    console.print("* p < 0.05 (two-sided, not corrected for multiple comparisons)")
    console.print(
        f"signature: {comparison.a.signature}", markup=False, highlight=False, soft_wrap=True
    )
