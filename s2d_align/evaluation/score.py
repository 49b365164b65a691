"""Scoring a corpus: every registered metric (:mod:`.metrics`) with CIs, per-sample scores and
the protocol signature.

:func:`score_corpus` is the one entry point for a system's outputs; :func:`compare_corpora`
scores two systems on the same references (one METEOR process, one labeling of the references)
and adds a paired approximate-randomisation test per metric. Neither ever scores a partial
corpus: predictions must cover exactly the ids of the references (:func:`check_ids`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from s2d_align.config.schema import EvalConfig
from s2d_align.errors import ConfigError, DataError
from s2d_align.evaluation import ce
from s2d_align.evaluation.labelers.base import Labeler, Labels, get_labeler
from s2d_align.evaluation.metrics import (
    NLG,
    SENTENCE_MEAN,
    Scores,
    ScoringInput,
    metric_spec,
    metric_specs,
    scored_families,
    scored_names,
)
from s2d_align.evaluation.nlg import NLGScorer
from s2d_align.evaluation.profiles import Profile, get_profile
from s2d_align.evaluation.records import Comparison, Metric, ScoreReport
from s2d_align.evaluation.signature import format_signature, short_hash
from s2d_align.evaluation.stats import PairedResult, bootstrap_intervals, paired_randomization
from s2d_align.utils.io import read_json, sha256_text, write_json
from s2d_align.utils.progress import progress_bar

__all__ = [
    "Comparison",
    "Metric",
    "ScoreReport",
    "ScoringContext",
    "check_ids",
    "compare_corpora",
    "reference_labels",
    "score_corpus",
]


def check_ids(
    predictions: Mapping[str, Any], references: Mapping[str, Any], *, what: str = "predictions"
) -> None:
    """Predictions must cover exactly the references' ids; a mismatch is an error with counts."""
    if not references:
        raise DataError("no references to score against (empty split?)")
    missing = [i for i in references if i not in predictions]
    extra = [i for i in predictions if i not in references]
    if missing or extra:
        parts = []
        if missing:
            parts.append(
                f"{len(missing)} of {len(references)} ids of the split have no prediction "
                f"(e.g. {', '.join(map(repr, missing[:3]))})"
            )
        if extra:
            parts.append(
                f"{len(extra)} predicted ids are not in the split "
                f"(e.g. {', '.join(map(repr, extra[:3]))})"
            )
        raise DataError(f"{what} do not match the references: " + "; ".join(parts))
    for key, text in predictions.items():
        if not isinstance(text, str):
            raise DataError(f"{what}: prediction for id {key!r} is {type(text).__name__}, not text")


@dataclass(frozen=True)
class ScoringContext:
    """Where and with what a corpus is scored; the protocol itself is the ``EvalConfig``.

    ``dataset`` and ``train_reports`` matter only for ``r2gen-legacy`` (cleaning rules and
    ``<unk>`` vocabulary); ``labeler`` overrides ``get_labeler(cfg)``; ``nlg_scorer`` is an open
    :class:`NLGScorer` to reuse (its METEOR process outlives the call, which saves METEOR's
    start-up when many corpora are scored; the numbers are the same); ``cache_dir`` keeps the
    reference labels (:func:`reference_labels`)."""

    manifest_hash: str
    cache_dir: Path | None = None
    progress: bool = False
    dataset: str = "synthcxr"
    train_reports: tuple[str, ...] | None = None
    labeler: Labeler | None = None
    nlg_scorer: NLGScorer | None = None

    def __post_init__(self) -> None:
        if self.train_reports is not None and not isinstance(self.train_reports, tuple):
            object.__setattr__(self, "train_reports", tuple(self.train_reports))


def clip_interval(name: str, low: float, high: float) -> tuple[float, float]:
    """A CI clipped to the metric's range (``MetricSpec.bounds``): [0, 1] for BLEU, METEOR,
    ROUGE-L, CE and grounded cells, [0, inf) for CIDEr. METEOR's interval is shifted from the
    mean per-report score onto the corpus value, which can push it past the range (a
    punctuation-only prediction gave [0.660, 1.035])."""
    bottom, top = metric_spec(name).bounds
    return min(max(low, bottom), top), min(max(high, bottom), top)


def _compute(inputs: ScoringInput, step: Callable[[str], None]) -> list[Scores]:
    """Every registered family's scores of one system, checked against the registry."""
    out: list[Scores] = []
    for head in scored_families():
        scores = list(head.compute(inputs))
        got = [n for s in scores for n in s.names]
        want = [s.name for s in metric_specs() if s.family == head.family and s.compute]
        if sorted(got) != sorted(want):
            raise ConfigError(
                f"metric family {head.family!r}: {head.compute.__name__} computed {got}, "
                f"but the registry lists {want}"
            )
        out += scores
        if head.family != NLG:  # the NLG scorer reported its steps as it ran
            for name in head.steps:
                step(name)
    return out


def _metrics(scores: list[Scores], cfg: EvalConfig) -> dict[str, Metric]:
    intervals = bootstrap_intervals(
        {i: s.statistic for i, s in enumerate(scores) if s.statistic is not None},
        n_boot=cfg.bootstrap,
        seed=cfg.ci_seed,
    )
    metrics: dict[str, Metric] = {}
    for i, group in enumerate(scores):
        specs = [metric_spec(name) for name in group.names]
        if i not in intervals:
            for name, value, spec in zip(group.names, group.values, specs, strict=True):
                metrics[name] = Metric(value, higher_is_better=spec.higher_is_better)
            continue
        low, high = intervals[i]
        offset = np.zeros(len(group.names))
        if any(spec.statistic == SENTENCE_MEAN for spec in specs):
            # interval of the mean per-report score, moved onto the corpus value (METEOR)
            offset = np.asarray(group.values) - group.statistic.value()
        for j, (name, spec) in enumerate(zip(group.names, specs, strict=True)):
            ci = clip_interval(name, float(low[j] + offset[j]), float(high[j] + offset[j]))
            metrics[name] = Metric(group.values[j], *ci, higher_is_better=spec.higher_is_better)
    return {name: metrics[name] for name in scored_names()}


def _label(labeler: Labeler, texts: list[str], what: str) -> list[Labels]:
    labels = labeler.label(texts)
    if len(labels) != len(texts):
        raise DataError(
            f"labeler {labeler.signature} returned {len(labels)} label sets for {len(texts)} {what}"
        )
    return labels


def reference_labels(
    labeler: Labeler,
    ids: list[str],
    texts: list[str],
    profile: Profile,
    manifest_hash: str,
    cache_dir: Path | None,
) -> list[Labels]:
    """Reference labels, cached under ``cache_dir`` by (manifest hash, labeler, profile).

    The entry also stores a hash of the labelled ids and texts and is recomputed when they differ,
    so a wrong manifest hash can cost time but never returns another split's labels.
    """
    if cache_dir is None:
        return _label(labeler, texts, "references")
    key = sha256_text(manifest_hash, labeler.signature, profile.tag)[:16]
    path = Path(cache_dir) / f"ref-labels-{short_hash(manifest_hash)}-{key}.json"
    content = sha256_text(*(f"{i}\t{t}" for i, t in zip(ids, texts, strict=True)))
    if path.is_file():
        try:
            cached = read_json(path)
        except DataError:  # a damaged cache entry is recomputed, never trusted
            cached = {}
        if isinstance(cached, dict) and cached.get("content_sha256") == content:
            return [cached["labels"][i] for i in ids]
    labels = _label(labeler, texts, "references")
    write_json(
        path,
        {
            "manifest_hash": manifest_hash,
            "labeler": labeler.signature,
            "profile": profile.tag,
            "content_sha256": content,
            "labels": dict(zip(ids, labels, strict=True)),
        },
        indent=None,
    )
    return labels


def _signature(cfg: EvalConfig, profile: Profile, labeler: Labeler, manifest_hash: str) -> str:
    """The profile, the fields each scored family fixes, the intervals and the test set."""
    fields: dict[str, object] = {"profile": profile.tag}
    for head in scored_families():
        if head.signature is not None:
            fields.update(head.signature(cfg, profile, labeler))
    fields["ci"] = f"boot{cfg.bootstrap}-s{cfg.ci_seed}"
    fields["manifest"] = short_hash(manifest_hash)
    return format_signature(fields)


def _steps_per_system() -> int:
    return sum(len(head.steps) for head in scored_families())


def _evaluate(
    systems: Sequence[Mapping[str, str]],
    references: Mapping[str, str],
    cfg: EvalConfig,
    context: ScoringContext,
) -> list[tuple[ScoreReport, list[Scores]]]:
    for k, preds in enumerate(systems):
        check_ids(
            preds, references, what="predictions" if len(systems) == 1 else f"system {'AB'[k]}"
        )
    mapping = ce.parse_headline(cfg.headline)[0]
    profile = get_profile(cfg.profile, dataset=context.dataset, train_reports=context.train_reports)
    ids = list(references)
    refs = profile.references(references)
    hyps = [profile.predictions({i: p[i] for i in ids}) for p in systems]
    bar = progress_bar(
        total=3 + _steps_per_system() * len(systems),  # labels, tokenize, per system, bootstrap
        desc="scoring",
        unit="step",
        wanted=context.progress,
    )
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def step(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = timings.get(name, 0.0) + now - clock
        clock = now
        bar.set_postfix_str(name)
        bar.update()

    start = clock
    with contextlib.ExitStack() as stack:
        stack.enter_context(bar)
        # a caller's scorer keeps its METEOR process across calls; ours starts now and loads
        # its JVM while we label
        scorer = context.nlg_scorer
        if scorer is None:
            scorer = stack.enter_context(NLGScorer(tokenize=profile.ptb))
        labeler = context.labeler or get_labeler(cfg, progress=context.progress)
        # CE labels and grounded findings read the same texts (raw for raw-v1)
        ce_refs = [(references if profile.ce_on_raw else refs)[i] for i in ids]
        ce_hyps = [
            [(raw if profile.ce_on_raw else prepared)[i] for i in ids]
            for raw, prepared in zip(systems, hyps, strict=True)
        ]
        ref_labels = reference_labels(
            labeler, ids, ce_refs, profile, context.manifest_hash, context.cache_dir
        )
        pred_labels = [_label(labeler, texts, "predictions") for texts in ce_hyps]
        step("labels")
        nlg_results = scorer.score(refs, hyps, tokenize=profile.ptb, on_step=step)
    signature = _signature(cfg, profile, labeler, context.manifest_hash)
    headline = "ce/" + "/".join(ce.parse_headline(cfg.headline))
    scored = []
    for nlg, texts, labels in zip(nlg_results, ce_hyps, pred_labels, strict=True):
        inputs = ScoringInput(
            tuple(ids), tuple(texts), tuple(ce_refs), nlg, labels, ref_labels, mapping
        )
        scores = _compute(inputs, step)
        per_sample = {col: dict(v) for s in scores for col, v in s.per_sample.items()}
        scored.append((_metrics(scores, cfg), per_sample, scores))
    step("bootstrap")
    timings["total"] = time.perf_counter() - start
    return [
        (ScoreReport(metrics, per_sample, signature, headline, len(ids), dict(timings)), scores)
        for metrics, per_sample, scores in scored
    ]


def score_corpus(
    predictions: Mapping[str, str],
    references: Mapping[str, str],
    cfg: EvalConfig,
    context: ScoringContext,
) -> ScoreReport:
    """Score one system: every metric of the registry (:mod:`.metrics`), with intervals."""
    return _evaluate([predictions], references, cfg, context)[0][0]


def compare_corpora(
    predictions_a: Mapping[str, str],
    predictions_b: Mapping[str, str],
    references: Mapping[str, str],
    cfg: EvalConfig,
    context: ScoringContext,
    *,
    trials: int = 10_000,
    seed: int = 0,
) -> Comparison:
    """Score A and B and run paired approximate randomisation on every metric with a statistic."""
    (a, scores_a), (b, scores_b) = _evaluate(
        [predictions_a, predictions_b], references, cfg, context
    )
    pairs = zip(scores_a, scores_b, strict=True)
    results = paired_randomization(
        {i: (sa.statistic, sb.statistic) for i, (sa, sb) in enumerate(pairs)
         if sa.statistic is not None and sb.statistic is not None},
        trials=trials,
        seed=seed,
    )  # fmt: skip
    tests: dict[str, PairedResult] = {}
    for i, group in enumerate(scores_a):
        if i not in results:
            continue
        for j, name in enumerate(group.names):
            delta = a.metrics[name].value - b.metrics[name].value  # exact corpus difference
            tests[name] = PairedResult(np.array([delta]), np.array([results[i].p_value[j]]), trials)
    return Comparison(a, b, {name: tests[name] for name in a.metrics if name in tests}, trials)
