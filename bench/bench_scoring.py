"""Scoring speed: 1,000 report pairs, all NLG metrics and ``rules`` CE, reference labels cached.

Run with ``pytest bench/bench_scoring.py`` (not part of ``nox -s tests``). Target: under 30 s on
2 CPU cores, METEOR's JVM start-up included (it loads in the background while the labeler runs).

The pairs are SynthCXR reports: each reference and its "prediction" are written from the same
planned findings with two different random streams (paraphrases, reordering, hedges), and one
prediction in four is written from another study's findings (a wrong report), so the metrics see
realistic overlap rather than identical or unrelated texts.
"""

from __future__ import annotations

import numpy as np

from s2d_align.config.schema import EvalConfig
from s2d_align.data.synth.findings import plan_studies
from s2d_align.data.synth.grammar import write_report
from s2d_align.evaluation.labelers import get_labeler
from s2d_align.evaluation.nlg import NLG_METRICS
from s2d_align.evaluation.profiles import get_profile
from s2d_align.evaluation.score import ScoringContext, reference_labels, score_corpus

N_PAIRS = 1000
MANIFEST = "bench-1000-" + "0" * 53  # any fixed string: it keys the label cache


def make_pairs(n: int = N_PAIRS, seed: int = 0) -> tuple[dict[str, str], dict[str, str]]:
    plans = [p for p in plan_studies(1, 1, n, seed) if p.split == "test"][:n]
    refs, preds = {}, {}
    for k, plan in enumerate(plans):
        source = plans[(k + 7) % n] if k % 4 == 3 else plan
        kwargs = {"visit": plan.visit, "portable": plan.portable, "views": 1}
        ref_rng, pred_rng = np.random.default_rng([seed, k, 0]), np.random.default_rng([seed, k, 1])
        refs[plan.study_id] = write_report(plan.findings, ref_rng, **kwargs).text
        preds[plan.study_id] = write_report(source.findings, pred_rng, **kwargs).text
    return refs, preds


def test_score_1000_pairs(benchmark, tmp_path):
    refs, preds = make_pairs()
    assert len(refs) == N_PAIRS
    cfg = EvalConfig()
    cache = tmp_path / "label-cache"
    ids = list(refs)
    # the target assumes cached reference labels: fill the cache first, outside the timing
    reference_labels(get_labeler(cfg), ids, [refs[i] for i in ids], get_profile(cfg.profile),
                     MANIFEST, cache)  # fmt: skip

    report = benchmark.pedantic(
        score_corpus,
        args=(preds, refs, cfg, ScoringContext(MANIFEST, cache_dir=cache)),
        rounds=1,
        iterations=1,
    )
    assert report.n == N_PAIRS
    assert all(name in report.metrics for name in NLG_METRICS)
    assert 0.0 < report.metrics["BLEU_4"].value < 1.0
    assert report.metrics[report.headline].value > 0.3  # 3 in 4 predictions share the findings
    benchmark.extra_info.update({k: round(v, 3) for k, v in report.timings.items()})
    benchmark.extra_info["headline"] = report.metrics[report.headline].value
