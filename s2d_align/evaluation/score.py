"""Scoring a corpus: NLG, CE and grounded-finding metrics with CIs, per-sample scores, signature.

:func:`score_corpus` is the one entry point for a system's outputs; :func:`compare_corpora`
scores two systems on the same references (one METEOR process, one labeling of the references)
and adds a paired approximate-randomisation test per metric. Neither ever scores a partial
corpus: predictions must cover exactly the ids of the references (:func:`check_ids`).
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from s2d_align.chexpert import OBSERVATIONS
from s2d_align.config.schema import EvalConfig
from s2d_align.errors import DataError
from s2d_align.evaluation import ce, grounded
from s2d_align.evaluation.labelers.base import Labeler, Labels, get_labeler
from s2d_align.evaluation.nlg import (
    BLEU_STAT_COLUMNS,
    NLG_METRICS,
    NLGResult,
    NLGScorer,
    bleu_from_stats,
    nlg_versions,
)
from s2d_align.evaluation.profiles import Profile, get_profile
from s2d_align.evaluation.records import Comparison, Metric, ScoreReport
from s2d_align.evaluation.signature import format_signature, short_hash
from s2d_align.evaluation.stats import (
    AdditiveStatistic,
    PairedResult,
    bootstrap_intervals,
    mean_statistic,
    paired_randomization,
)
from s2d_align.utils.io import read_json, sha256_text, write_json

__all__ = [
    "BLEU_STAT_PREFIX",
    "Comparison",
    "Metric",
    "ScoreReport",
    "check_ids",
    "compare_corpora",
    "reference_labels",
    "score_corpus",
]


#: Per-sample keys of BLEU's sufficient statistics (``bleu_stat/testlen`` ...): stored with the
#: per-sample scores so that corpus BLEU can be resampled and tested from the results store.
BLEU_STAT_PREFIX = "bleu_stat/"


#: Metric name prefix of the per-observation support (positive references) of a scoring.
SUPPORT_PREFIX = "ce_support/"


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
class _Spec:
    """Metric names valued by one additive statistic, with the exact corpus values."""

    names: tuple[str, ...]
    stat: AdditiveStatistic
    values: tuple[float, ...]
    shift: bool = False  # CI of a proxy statistic, shifted onto the corpus value (METEOR)


def _specs(
    nlg: NLGResult,
    pred_labels: Sequence[Labels],
    ref_labels: Sequence[Labels],
    mapping: str,
    grounded_stat: AdditiveStatistic,
) -> list[_Spec]:
    bleu = tuple(nlg.corpus[f"BLEU_{k}"] for k in range(1, 5))
    specs = [
        _Spec(
            tuple(f"BLEU_{k}" for k in range(1, 5)),
            AdditiveStatistic(nlg.bleu_stats, lambda sums, _n: bleu_from_stats(sums)),
            bleu,
        )
    ]
    for name in ("METEOR", "ROUGE_L", "CIDEr"):
        specs.append(
            _Spec(
                (name,),
                mean_statistic(nlg.per_sample[name]),
                (nlg.corpus[name],),
                shift=name == "METEOR",
            )
        )
    for (m, labels, average), stat in ce.ce_statistics(pred_labels, ref_labels).items():
        names = tuple(ce.cell_name(m, labels, average, s) for s in ce.STATS)
        specs.append(_Spec(names, stat, tuple(float(v) for v in stat.value())))
    obs = ce.per_observation_statistic(pred_labels, ref_labels, mapping)
    specs.append(
        _Spec(tuple(f"ce_f1/{o}" for o in OBSERVATIONS), obs, tuple(map(float, obs.value())))
    )
    specs.append(
        _Spec(grounded.GROUNDED_METRICS, grounded_stat, tuple(map(float, grounded_stat.value())))
    )
    return specs


#: Metrics not bounded above by 1 (CIDEr-D is a scaled, summed cosine); every metric is >= 0.
UNBOUNDED_ABOVE = frozenset({"CIDEr"})


def clip_interval(name: str, low: float, high: float) -> tuple[float, float]:
    """A CI clipped to the metric's range: [0, 1] for BLEU, METEOR, ROUGE-L, CE and grounded
    cells, [0, inf) for CIDEr. METEOR's interval is shifted from the mean per-report score onto
    the corpus value, which can push it past the range (a punctuation-only prediction gave
    [0.660, 1.035])."""
    top = float("inf") if name in UNBOUNDED_ABOVE else 1.0
    return min(max(low, 0.0), top), min(max(high, 0.0), top)


def _metrics(specs: list[_Spec], cfg: EvalConfig) -> dict[str, Metric]:
    intervals = bootstrap_intervals(
        {i: s.stat for i, s in enumerate(specs)}, n_boot=cfg.bootstrap, seed=cfg.ci_seed
    )
    metrics: dict[str, Metric] = {}
    for i, spec in enumerate(specs):
        # METEOR: interval of the mean per-report score, moved onto the corpus value
        offset = (
            np.asarray(spec.values) - spec.stat.value() if spec.shift else np.zeros(len(spec.names))
        )
        for j, name in enumerate(spec.names):
            if i in intervals:
                low, high = intervals[i]
                metrics[name] = Metric(
                    spec.values[j],
                    *clip_interval(name, float(low[j] + offset[j]), float(high[j] + offset[j])),
                )
            else:
                metrics[name] = Metric(spec.values[j])
    ordered = [
        *NLG_METRICS,
        *ce.ce_cell_names(),
        *(f"ce_f1/{o}" for o in OBSERVATIONS),
        *grounded.GROUNDED_METRICS,
    ]
    return {name: metrics[name] for name in ordered}


def _per_sample(ids: list[str], nlg: NLGResult, specs: list[_Spec]) -> dict[str, dict[str, float]]:
    out = {
        name: dict(zip(ids, map(float, nlg.per_sample[name]), strict=True)) for name in NLG_METRICS
    }
    for k, column in enumerate(BLEU_STAT_COLUMNS):
        out[BLEU_STAT_PREFIX + column] = dict(
            zip(ids, map(float, nlg.bleu_stats[:, k]), strict=True)
        )
    for spec in specs:  # example-based CE is a per-report score
        if "/example/" in spec.names[0]:
            out[spec.names[2]] = dict(zip(ids, map(float, spec.stat.features[:, 2]), strict=True))
        elif spec.names == grounded.GROUNDED_METRICS:  # counts: micro scores are not means
            out.update(grounded.per_sample_counts(ids, spec.stat))
    return out


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
    mapping, labels, average, _ = ce.parse_headline(cfg.headline)
    ckpt = getattr(labeler, "checkpoint_sha256", None) or cfg.chexbert_sha256
    versions = nlg_versions()
    return format_signature(
        {
            "profile": profile.tag,
            "nlg": f"pycocoevalcap-{versions['pycocoevalcap']}",
            "tok": profile.tokenizer_tag,
            "meteor": versions["meteor"],
            "cider": "idf=refs",
            "ce": labeler.signature,
            "ckpt": short_hash(ckpt) if labeler.signature.startswith("chexbert") else "-",
            "umap": mapping,
            "labels": labels,
            "avg": average,
            "grounded": grounded.grounded_signature(),
            "ci": f"boot{cfg.bootstrap}-s{cfg.ci_seed}",
            "manifest": short_hash(manifest_hash),
        }
    )


def _evaluate(
    systems: Sequence[Mapping[str, str]],
    references: Mapping[str, str],
    cfg: EvalConfig,
    *,
    manifest_hash: str,
    cache_dir: Path | None,
    progress: bool,
    dataset: str,
    train_reports: Iterable[str] | None,
    labeler: Labeler | None,
    nlg_scorer: NLGScorer | None = None,
) -> list[tuple[ScoreReport, list[_Spec]]]:
    for k, preds in enumerate(systems):
        check_ids(
            preds, references, what="predictions" if len(systems) == 1 else f"system {'AB'[k]}"
        )
    mapping = ce.parse_headline(cfg.headline)[0]
    profile = get_profile(cfg.profile, dataset=dataset, train_reports=train_reports)
    ids = list(references)
    refs = profile.references(references)
    hyps = [profile.predictions({i: p[i] for i in ids}) for p in systems]
    bar = tqdm(
        total=3 + 4 * len(systems),  # labels, tokenize, 4 metrics per system, bootstrap
        desc="scoring",
        unit="step",
        disable=not (progress and sys.stderr.isatty()),
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
        scorer = nlg_scorer
        if scorer is None:
            scorer = stack.enter_context(NLGScorer(tokenize=profile.ptb))
        labeler = labeler or get_labeler(cfg, progress=progress)
        # CE labels and grounded findings read the same texts (raw for raw-v1)
        ce_refs = [(references if profile.ce_on_raw else refs)[i] for i in ids]
        ce_hyps = [
            [(raw if profile.ce_on_raw else prepared)[i] for i in ids]
            for raw, prepared in zip(systems, hyps, strict=True)
        ]
        ref_labels = reference_labels(labeler, ids, ce_refs, profile, manifest_hash, cache_dir)
        pred_labels = [_label(labeler, texts, "predictions") for texts in ce_hyps]
        grounded_stats = [grounded.grounded_statistic(texts, ce_refs) for texts in ce_hyps]
        step("labels")
        nlg_results = scorer.score(refs, hyps, tokenize=profile.ptb, on_step=step)
    signature = _signature(cfg, profile, labeler, manifest_hash)
    headline = "ce/" + "/".join(ce.parse_headline(cfg.headline))
    # Positive references per observation under the headline mapping: beside every
    # per-observation F1, so "absent from the test set" never reads as "missed".
    positives = ce.binarize(ref_labels, mapping, source="reference labels").sum(0)
    support = {
        f"{SUPPORT_PREFIX}{o}": Metric(float(n))
        for o, n in zip(OBSERVATIONS, positives, strict=True)
    }
    scored = []
    for nlg, labels, grounded_stat in zip(nlg_results, pred_labels, grounded_stats, strict=True):
        specs = _specs(nlg, labels, ref_labels, mapping, grounded_stat)
        metrics = {**_metrics(specs, cfg), **support}
        scored.append((metrics, _per_sample(ids, nlg, specs), specs))
    step("bootstrap")
    timings["total"] = time.perf_counter() - start
    return [
        (ScoreReport(metrics, per_sample, signature, headline, len(ids), dict(timings)), specs)
        for metrics, per_sample, specs in scored
    ]


def score_corpus(
    predictions: Mapping[str, str],
    references: Mapping[str, str],
    cfg: EvalConfig,
    *,
    manifest_hash: str,
    cache_dir: Path | None = None,
    progress: bool = False,
    dataset: str = "synthcxr",
    train_reports: Iterable[str] | None = None,
    labeler: Labeler | None = None,
    nlg_scorer: NLGScorer | None = None,
) -> ScoreReport:
    """Score one system. ``dataset`` and ``train_reports`` matter only for ``r2gen-legacy``
    (cleaning rules and ``<unk>`` vocabulary); ``labeler`` overrides ``get_labeler(cfg)``;
    ``nlg_scorer`` is an open :class:`NLGScorer` to reuse (its METEOR process outlives this call, which
    saves METEOR's start-up when many corpora are scored; the numbers are the same)."""
    return _evaluate(
        [predictions],
        references,
        cfg,
        manifest_hash=manifest_hash,
        cache_dir=cache_dir,
        progress=progress,
        dataset=dataset,
        train_reports=train_reports,
        labeler=labeler,
        nlg_scorer=nlg_scorer,
    )[0][0]


def compare_corpora(
    predictions_a: Mapping[str, str],
    predictions_b: Mapping[str, str],
    references: Mapping[str, str],
    cfg: EvalConfig,
    *,
    manifest_hash: str,
    trials: int = 10_000,
    seed: int = 0,
    cache_dir: Path | None = None,
    progress: bool = False,
    dataset: str = "synthcxr",
    train_reports: Iterable[str] | None = None,
    labeler: Labeler | None = None,
    nlg_scorer: NLGScorer | None = None,
) -> Comparison:
    """Score A and B and run paired approximate randomisation on every metric."""
    (a, specs_a), (b, specs_b) = _evaluate(
        [predictions_a, predictions_b],
        references,
        cfg,
        manifest_hash=manifest_hash,
        cache_dir=cache_dir,
        progress=progress,
        dataset=dataset,
        train_reports=train_reports,
        labeler=labeler,
        nlg_scorer=nlg_scorer,
    )
    results = paired_randomization(
        {i: (sa.stat, sb.stat) for i, (sa, sb) in enumerate(zip(specs_a, specs_b, strict=True))},
        trials=trials,
        seed=seed,
    )
    tests: dict[str, PairedResult] = {}
    for i, spec in enumerate(specs_a):
        res = results[i]
        for j, name in enumerate(spec.names):
            delta = a.metrics[name].value - b.metrics[name].value  # exact corpus difference
            tests[name] = PairedResult(np.array([delta]), np.array([res.p_value[j]]), trials)
    return Comparison(a, b, {name: tests[name] for name in a.metrics if name in tests}, trials)
