"""The metric registry: every metric the suite reports, its direction, statistic and audience.

In the manner of lm-evaluation-harness's metric registry. Scoring (:mod:`.score`) computes the
registered metrics in registry order and signs them with the fields their families declare; the
ablation tables show the entries marked ``shown_in_tables``, under their ``label``, and test them
on their ``statistic``; regression tracking follows ``tracked_by_regress``; every stored
:class:`~.records.Metric` carries its entry's direction.
Adding a metric is one entry plus its compute function::

    def length_ratio(s: ScoringInput) -> list[Scores]:
        ratios = [len(p.split()) / max(1, len(r.split()))
                  for p, r in zip(s.predictions, s.references, strict=True)]
        return [mean_scores("length_ratio", s.ids, ratios)]

    register(MetricSpec("length_ratio", "length", higher_is_better=False, statistic=CORPUS,
                        shown_in_tables=True, compute=length_ratio, bounds=(0.0, math.inf),
                        label="length ratio"))

Entries of one family share one compute function, which returns the values of all of them (the
36 CE cells come from 12 statistics). A name ending in ``*`` is a pattern: it gives the
direction of names recorded outside scoring (per-run diagnostics) and has no compute function.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from s2d_align.chexpert import OBSERVATIONS
from s2d_align.config.schema import EvalConfig
from s2d_align.errors import ConfigError
from s2d_align.evaluation import ce, grounded
from s2d_align.evaluation.labelers.base import Labeler, Labels
from s2d_align.evaluation.nlg import (
    BLEU_STAT_COLUMNS,
    BLEU_STAT_PREFIX,
    NLG_METRICS,
    NLG_STEPS,
    NLGResult,
    bleu_from_stats,
    nlg_versions,
)
from s2d_align.evaluation.profiles import Profile
from s2d_align.evaluation.signature import short_hash
from s2d_align.evaluation.stats import AdditiveStatistic, mean_statistic

__all__ = [
    "CE_F1_PREFIX",
    "CORPUS",
    "COUNT",
    "DEFAULT_CE",
    "PER_RUN",
    "SENTENCE_MEAN",
    "MetricSpec",
    "Scores",
    "ScoringInput",
    "family_of",
    "find_spec",
    "mean_scores",
    "metric_spec",
    "metric_specs",
    "register",
    "scored_families",
    "scored_names",
    "table_names",
    "unregister",
]

# What a metric's interval and paired test resample (``MetricSpec.statistic``):
CORPUS = "corpus"  # an additive statistic whose value is the reported corpus value: exact
SENTENCE_MEAN = "sentence-mean"  # the mean per-report score, its interval shifted onto the value
COUNT = "count"  # a count about the test set: no interval, no test
PER_RUN = "per-run"  # measured once per run outside scoring (diagnostics): no interval

#: Family names of the built-in metrics.
NLG, CE, CE_F1, GROUNDED, CE_SUPPORT, DIAG = "nlg", "ce", "ce_f1", "grounded", "ce_support", "diag"
#: Name prefixes of the per-observation F1 and support (positive references) of a scoring.
CE_F1_PREFIX = "ce_f1/"
SUPPORT_PREFIX = "ce_support/"
#: (mapping, label set) of the default headline: the CE cells a bare "CE micro-F1" label means.
DEFAULT_CE = tuple(ce.parse_headline(EvalConfig.headline)[:2])


@dataclass(frozen=True)
class ScoringInput:
    """What a compute function reads: one system's outputs against the references, in id order.

    ``predictions`` and ``references`` are the texts the CE labeler reads (raw under ``raw-v1``);
    ``nlg`` holds pycocoevalcap's scores and the tokenized texts."""

    ids: tuple[str, ...]
    predictions: tuple[str, ...]
    references: tuple[str, ...]
    nlg: NLGResult
    pred_labels: Sequence[Labels]
    ref_labels: Sequence[Labels]
    mapping: str  # the headline's uncertainty mapping


@dataclass(frozen=True)
class Scores:
    """Corpus values of ``names`` and, when intervals and paired tests apply, the additive
    statistic valued as them; ``per_sample`` columns (``{column: {id: value}}``) are stored too."""

    names: tuple[str, ...]
    values: tuple[float, ...]
    statistic: AdditiveStatistic | None = None
    per_sample: Mapping[str, Mapping[str, float]] = field(default_factory=dict)


Compute = Callable[[ScoringInput], Sequence[Scores]]
SignatureFields = Callable[[EvalConfig, Profile, Labeler], Mapping[str, object]]


@dataclass(frozen=True)
class MetricSpec:
    """One metric name (or a ``prefix*`` pattern) and how the suite treats it."""

    name: str
    family: str  # the metrics computed together by one compute function
    higher_is_better: bool
    statistic: str  # CORPUS, SENTENCE_MEAN, COUNT or PER_RUN: what its interval resamples
    shown_in_tables: bool = False  # a column of the ablation table (the CE headline always is)
    tracked_by_regress: bool = False  # compared with the committed baseline by `regress`
    compute: Compute | None = None  # None: recorded outside score_corpus
    bounds: tuple[float, float] = (0.0, 1.0)  # the range its interval is clipped to
    steps: tuple[str, ...] = ()  # progress-bar steps, per system, of the family's computation
    signature: SignatureFields | None = None  # the protocol signature fields the family fixes
    label: str = ""  # how reports print it; default: the name with its slashes as spaces

    def __post_init__(self) -> None:
        if not self.label:
            object.__setattr__(self, "label", self.name.replace("/", " "))

    @property
    def is_pattern(self) -> bool:
        return self.name.endswith("*")

    def matches(self, name: str) -> bool:
        return name.startswith(self.name[:-1]) if self.is_pattern else name == self.name


def mean_scores(name: str, ids: Sequence[str], per_report: Sequence[float]) -> Scores:
    """Scores of a metric that is the mean of a per-report score (kept per sample)."""
    values = np.asarray(per_report, dtype=np.float64)
    if values.shape != (len(ids),):
        raise ValueError(f"{name}: {values.shape} per-report scores for {len(ids)} reports")
    stat = mean_statistic(values)
    per = {name: dict(zip(ids, map(float, values), strict=True))}
    return Scores((name,), (float(stat.value()[0]),), stat, per)


# -- compute functions of the built-in families -------------------------------------------------
def _nlg_scores(s: ScoringInput) -> list[Scores]:
    nlg = s.nlg
    bleu = tuple(n for n in NLG_METRICS if n.startswith("BLEU_"))
    # stored in pycocoevalcap's metric order, then BLEU's sufficient statistics
    per_sample = {
        name: dict(zip(s.ids, map(float, nlg.per_sample[name]), strict=True))
        for name in NLG_METRICS
    }
    for k, column in enumerate(BLEU_STAT_COLUMNS):
        per_sample[BLEU_STAT_PREFIX + column] = dict(
            zip(s.ids, map(float, nlg.bleu_stats[:, k]), strict=True)
        )
    bleu_stat = AdditiveStatistic(nlg.bleu_stats, lambda sums, _n: bleu_from_stats(sums))
    out = [Scores(bleu, tuple(nlg.corpus[n] for n in bleu), bleu_stat, per_sample)]
    for name in NLG_METRICS[len(bleu) :]:
        stat = mean_statistic(nlg.per_sample[name])
        out.append(Scores((name,), (nlg.corpus[name],), stat))
    return out


def _ce_scores(s: ScoringInput) -> list[Scores]:
    out = []
    for (mapping, labels, average), stat in ce.ce_statistics(s.pred_labels, s.ref_labels).items():
        names = tuple(ce.cell_name(mapping, labels, average, x) for x in ce.STATS)
        per = {}
        if average == "example":  # a per-report score: its F1 is kept per sample
            per[names[2]] = dict(zip(s.ids, map(float, stat.features[:, 2]), strict=True))
        out.append(Scores(names, tuple(float(v) for v in stat.value()), stat, per))
    return out


def _ce_f1_scores(s: ScoringInput) -> list[Scores]:
    stat = ce.per_observation_statistic(s.pred_labels, s.ref_labels, s.mapping)
    names = tuple(f"{CE_F1_PREFIX}{o}" for o in OBSERVATIONS)
    return [Scores(names, tuple(map(float, stat.value())), stat)]


def _grounded_scores(s: ScoringInput) -> list[Scores]:
    stat = grounded.grounded_statistic(s.predictions, s.references)
    values = tuple(map(float, stat.value()))
    # counts, not means: micro scores are rebuilt from them
    return [
        Scores(grounded.GROUNDED_METRICS, values, stat, grounded.per_sample_counts(s.ids, stat))
    ]


def _support_scores(s: ScoringInput) -> list[Scores]:
    """Positive references per observation under the headline mapping: beside every
    per-observation F1, so "absent from the test set" never reads as "missed"."""
    positives = ce.binarize(s.ref_labels, s.mapping, source="reference labels").sum(0)
    names = tuple(f"{SUPPORT_PREFIX}{o}" for o in OBSERVATIONS)
    return [Scores(names, tuple(float(n) for n in positives))]


def _nlg_signature(_cfg: EvalConfig, profile: Profile, _labeler: Labeler) -> dict[str, object]:
    versions = nlg_versions()
    return {
        "nlg": f"pycocoevalcap-{versions['pycocoevalcap']}",
        "tok": profile.tokenizer_tag,
        "meteor": versions["meteor"],
        "cider": "idf=refs",
    }


def _ce_signature(cfg: EvalConfig, _profile: Profile, labeler: Labeler) -> dict[str, object]:
    mapping, labels, average, _ = ce.parse_headline(cfg.headline)
    ckpt = getattr(labeler, "checkpoint_sha256", None) or cfg.chexbert_sha256
    return {
        "ce": labeler.signature,
        "ckpt": short_hash(ckpt) if labeler.signature.startswith("chexbert") else "-",
        "umap": mapping,
        "labels": labels,
        "avg": average,
    }


def _grounded_signature(*_: object) -> dict[str, object]:
    return {"grounded": grounded.grounded_signature()}


# -- the built-in entries ------------------------------------------------------------------------
_STAT_LABELS = {"p": "P", "r": "R", "f1": "F1"}
_AVERAGE_LABELS = {"micro": "micro", "macro": "macro", "example": "example-based"}


def _ce_label(name: str) -> str:
    """``ce/u0/14/micro/f1`` -> "CE micro-F1"; ``ce/u1/5/macro/p`` -> "CE macro-P (u1, 5 obs.)"."""
    _, mapping, labels, average, stat = name.split("/")
    label = f"CE {_AVERAGE_LABELS[average]}-{_STAT_LABELS[stat]}"
    return label if (mapping, labels) == DEFAULT_CE else f"{label} ({mapping}, {labels} obs.)"


def _grounded_label(name: str) -> str:
    rest = name.split("/", 1)[1]
    return "ungrounded F1" if rest == "ungrounded_f1" else f"grounded {_STAT_LABELS[rest]}"


def _builtin() -> list[MetricSpec]:
    nlg = {"family": NLG, "higher_is_better": True, "tracked_by_regress": True,
           "compute": _nlg_scores, "steps": NLG_STEPS, "signature": _nlg_signature}  # fmt: skip
    specs = [
        MetricSpec("BLEU_1", statistic=CORPUS, shown_in_tables=True, label="BLEU-1", **nlg),
        MetricSpec("BLEU_2", statistic=CORPUS, label="BLEU-2", **nlg),
        MetricSpec("BLEU_3", statistic=CORPUS, label="BLEU-3", **nlg),
        MetricSpec("BLEU_4", statistic=CORPUS, shown_in_tables=True, label="BLEU-4", **nlg),
        # METEOR pools its alignments in Java: its interval is the per-report mean's
        MetricSpec("METEOR", statistic=SENTENCE_MEAN, shown_in_tables=True, **nlg),
        MetricSpec("ROUGE_L", statistic=CORPUS, shown_in_tables=True, label="ROUGE-L", **nlg),
        # CIDEr-D is a scaled, summed cosine: not bounded above by 1
        MetricSpec("CIDEr", statistic=CORPUS, shown_in_tables=True, bounds=(0.0, math.inf), **nlg),
    ]
    specs += [  # the full CE matrix; regress tracks every F1 cell
        MetricSpec(
            name,
            CE,
            True,
            CORPUS,
            tracked_by_regress=name.endswith("/f1"),
            compute=_ce_scores,
            signature=_ce_signature,
            label=_ce_label(name),
        )
        for name in ce.ce_cell_names()
    ]
    specs += [MetricSpec(f"{CE_F1_PREFIX}{o}", CE_F1, True, CORPUS, compute=_ce_f1_scores,
                         label=f"CE F1: {o}") for o in OBSERVATIONS]  # fmt: skip
    specs += [
        MetricSpec(
            name,
            GROUNDED,
            True,
            CORPUS,
            compute=_grounded_scores,
            signature=_grounded_signature,
            label=_grounded_label(name),
        )
        for name in grounded.GROUNDED_METRICS
    ]
    # a count of the test set, not a score: its direction is never used
    specs += [
        MetricSpec(
            f"{SUPPORT_PREFIX}{o}",
            CE_SUPPORT,
            True,
            COUNT,
            compute=_support_scores,
            bounds=(0.0, math.inf),
        )
        for o in OBSERVATIONS
    ]
    # per-run diagnostics (s2d_align.inference.diagnostics): a lower alignment loss vs chance and
    # a lower CE with wrong images (more image dependence) are the desirable ones; an open gate
    # counts as better (the memory contributes)
    specs += [
        MetricSpec("diag/align_vs_chance*", DIAG, False, PER_RUN),
        MetricSpec("diag/permuted/*", DIAG, False, PER_RUN),
        MetricSpec("diag/*", DIAG, True, PER_RUN, bounds=(-math.inf, math.inf)),
    ]
    return specs


_REGISTRY: dict[str, MetricSpec] = {}


def register(*specs: MetricSpec) -> None:
    """Add entries after the registered ones (their metrics come last in a report)."""
    for spec in specs:
        if spec.name in _REGISTRY:
            raise ConfigError(f"metric {spec.name!r} is already registered")
        if spec.is_pattern and spec.compute is not None:
            raise ConfigError(f"metric pattern {spec.name!r} cannot have a compute function")
        kin = next((s for s in _REGISTRY.values() if s.family == spec.family and s.compute), None)
        if spec.compute is not None and kin is not None and kin.compute is not spec.compute:
            raise ConfigError(
                f"metric {spec.name!r}: family {spec.family!r} is computed by "
                f"{kin.compute.__name__}, not {spec.compute.__name__}"
            )
        _REGISTRY[spec.name] = spec


def unregister(*names: str) -> None:
    for name in names:
        if _REGISTRY.pop(name, None) is None:
            raise ConfigError(f"metric {name!r} is not registered")


def metric_specs() -> list[MetricSpec]:
    """Every entry, in registry order."""
    return list(_REGISTRY.values())


def find_spec(name: str) -> MetricSpec | None:
    """The entry of ``name``: its own, else the first pattern that matches; None if neither."""
    spec = _REGISTRY.get(name)
    if spec is not None:
        return spec
    return next((s for s in _REGISTRY.values() if s.is_pattern and s.matches(name)), None)


def family_of(name: str) -> str | None:
    """The family of ``name``'s entry (its own or a matching pattern); None without one."""
    spec = find_spec(name)
    return None if spec is None else spec.family


def metric_spec(name: str) -> MetricSpec:
    spec = find_spec(name)
    if spec is None:
        raise ConfigError(
            f"metric {name!r} has no entry in the metric registry (s2d_align.evaluation.metrics)"
        )
    return spec


def scored_names() -> list[str]:
    """The metrics ``score_corpus`` reports, in report order."""
    return [s.name for s in _REGISTRY.values() if s.compute is not None]


def scored_families() -> list[MetricSpec]:
    """The first entry of each computed family, in registry order: one call of its compute."""
    first: dict[str, MetricSpec] = {}
    for spec in _REGISTRY.values():
        if spec.compute is not None:
            first.setdefault(spec.family, spec)
    return list(first.values())


def table_names() -> list[str]:
    """The metrics the ablation table shows when present, in column order."""
    return [s.name for s in _REGISTRY.values() if s.shown_in_tables]


register(*_builtin())
