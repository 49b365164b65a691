"""Bootstrap intervals, paired approximate randomisation, mean and sd over seeds, and the
seed-level (hierarchical) bootstrap and paired test."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from s2d_align.chexpert import OBSERVATIONS
from s2d_align.evaluation.ce import ce_statistics
from s2d_align.evaluation.nlg import bleu_from_stats
from s2d_align.evaluation.stats import (
    AdditiveStatistic,
    bootstrap_intervals,
    hierarchical_bootstrap,
    mean_sd,
    mean_statistic,
    paired_randomization,
    seed_paired_test,
)


def _scores(n: int, seed: int = 0, shift: float = 0.0) -> np.ndarray:
    return np.clip(np.random.default_rng(seed).normal(0.4 + shift, 0.15, n), 0, 1)


def test_bootstrap_interval_contains_the_estimate_and_narrows_with_n():
    widths = []
    for n in (40, 400, 4000):
        stat = mean_statistic(_scores(n))
        ((low, high),) = bootstrap_intervals({"m": stat}, n_boot=500, seed=1).values()
        estimate = stat.value()[0]
        assert low[0] < estimate < high[0]
        widths.append(high[0] - low[0])
    assert widths[0] > 2 * widths[1] > 4 * widths[2]  # ~ 1 / sqrt(n)


def test_bootstrap_is_seeded():
    stat = {"m": mean_statistic(_scores(100))}
    a = bootstrap_intervals(stat, n_boot=200, seed=3)["m"]
    b = bootstrap_intervals(stat, n_boot=200, seed=3)["m"]
    c = bootstrap_intervals(stat, n_boot=200, seed=4)["m"]
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_bootstrap_matches_a_naive_resampling_loop():
    """The weight-matrix bootstrap gives the same distribution as resampling ids in a loop."""
    values = _scores(30, seed=5)
    stat = mean_statistic(values)
    ((low, high),) = bootstrap_intervals({"m": stat}, n_boot=4000, seed=0).values()
    rng = np.random.default_rng(123)
    naive = [values[rng.integers(0, 30, 30)].mean() for _ in range(4000)]
    n_low, n_high = np.quantile(naive, [0.025, 0.975])
    assert low[0] == pytest.approx(n_low, abs=0.01)
    assert high[0] == pytest.approx(n_high, abs=0.01)


def test_bootstrap_of_a_ce_cell_recomputes_it_from_label_rows():
    rng = np.random.default_rng(2)
    refs = [{o: int(rng.random() < 0.3) for o in OBSERVATIONS} for _ in range(300)]
    preds = [{o: (v if rng.random() < 0.8 else 1 - v) for o, v in r.items()} for r in refs]
    micro = ce_statistics(preds, refs)["u0", "14", "micro"]
    ((low, high),) = bootstrap_intervals({"c": micro}, n_boot=300, seed=0).values()
    f1 = micro.value()[2]
    assert low[2] < f1 < high[2]
    assert low[2] > 0.0 and high[2] < 1.0
    assert high[2] - low[2] < 0.1


def test_bleu_bootstrap_uses_the_exact_corpus_formula():
    # two "reports": one perfect 4-gram match, one with no match at all
    stats = np.array([[5, 5, 5, 4, 3, 2, 5, 4, 3, 2], [5, 5, 5, 4, 3, 2, 0, 0, 0, 0]], float)
    bleu = AdditiveStatistic(stats, lambda sums, _n: bleu_from_stats(sums))
    assert bleu.value()[0] == pytest.approx(0.5)  # BLEU-1: 5 of 10 unigrams match
    ((low, high),) = bootstrap_intervals({"b": bleu}, n_boot=400, seed=0).values()
    assert low[0] < 1e-6 and high[0] == pytest.approx(1.0)  # resamples of one kind only


def test_paired_randomization_separates_different_systems():
    a = mean_statistic(_scores(200, seed=1, shift=0.1))
    b = mean_statistic(_scores(200, seed=2))
    result = paired_randomization({"m": (a, b)}, trials=2000, seed=0)["m"]
    assert result.delta[0] > 0.05
    assert result.p_value[0] < 0.01


def test_paired_randomization_of_identical_systems_gives_p_one():
    a = mean_statistic(_scores(200, seed=1))
    result = paired_randomization({"m": (a, a)}, trials=500, seed=0)["m"]
    assert result.delta[0] == 0.0
    assert result.p_value[0] == 1.0


def test_paired_randomization_is_large_for_noise_only_differences():
    base = _scores(300, seed=1)
    noise = np.random.default_rng(9).normal(0, 0.05, 300)  # no systematic difference
    result = paired_randomization(
        {"m": (mean_statistic(base + noise), mean_statistic(base - noise))}, trials=2000, seed=0
    )["m"]
    assert result.p_value[0] > 0.05


def test_paired_randomization_approaches_the_exact_permutation_p_value():
    a = np.array([0.9, 0.7, 0.8, 0.6, 0.75, 0.2])
    b = np.array([0.5, 0.6, 0.4, 0.65, 0.3, 0.25])
    observed = abs(a.mean() - b.mean())
    diffs = a - b
    exact = np.mean(
        [
            abs(np.dot(signs, diffs)) / 6 >= observed - 1e-12
            for signs in itertools.product((1, -1), repeat=6)
        ]
    )
    result = paired_randomization(
        {"m": (mean_statistic(a), mean_statistic(b))}, trials=20_000, seed=0
    )["m"]
    assert result.p_value[0] == pytest.approx(exact, abs=0.015)


def test_mean_and_sd_over_seeds():
    summary = mean_sd([0.30, 0.32, 0.34])
    assert summary.mean == pytest.approx(0.32)
    assert summary.sd == pytest.approx(0.02)
    assert summary.n == 3
    assert "±" in str(summary)
    single = mean_sd([0.5])
    assert single.sd is None and str(single) == "0.5000"
    with pytest.raises(ValueError, match="NaN"):
        mean_sd([0.1, float("nan")])


def test_no_resamples_means_no_interval():
    assert bootstrap_intervals({"m": mean_statistic(_scores(10))}, n_boot=0) == {}


# -- seed level ----------------------------------------------------------------------------------
def _seeds(shifts, n=200, noise=0.02, seed=0):
    """Per seed: (variant, reference) statistics; seed s shares its studies' base scores."""
    out = []
    for s, shift in enumerate(shifts):
        base = _scores(n, seed=100 + s)
        jitter = np.random.default_rng(seed * 10 + s).normal(0, noise, n)
        out.append((mean_statistic(base + shift + jitter), mean_statistic(base)))
    return out


def test_a_difference_in_one_seed_of_three_is_not_significant_at_seed_level():
    res = seed_paired_test({"m": _seeds([0.1, 0.0, 0.0])}, trials=2000, n_boot=500)["m"]
    assert res.seed_p[0, 0] < 0.01 and res.seeds_significant()[0] == 1  # seed 0 on its own
    assert res.p_studies[0] < 0.01  # randomising studies within seeds alone would mark it
    assert res.p_seeds[0] > 0.3 and res.p_value[0] == 1.0  # seeds 1 and 2 show no difference
    every = seed_paired_test({"m": _seeds([0.1, 0.1, 0.1])}, trials=2000, n_boot=500)["m"]
    assert every.p_value[0] < 0.001 and every.seeds_significant()[0] == 3
    assert every.p_value[0] == every.seed_p[:, 0].max()  # the weakest seed decides
    # Same sign in every seed but one seed within noise: that seed's p is the test's p.
    weak = seed_paired_test({"m": _seeds([0.1, 0.1, 0.002])}, trials=2000, n_boot=500)["m"]
    assert weak.seeds_significant()[0] == 2 and weak.p_value[0] > 0.05
    assert every.low[0] < every.delta[0] < every.high[0] and every.low[0] > 0.09


def test_seed_level_p_needs_seeds_and_is_one_for_identical_systems():
    (pair,) = _seeds([0.1])
    single = seed_paired_test({"m": [pair]}, trials=200, n_boot=100)["m"]
    assert np.isnan(single.p_value[0]) and single.p_studies[0] < 0.01
    same = [(a, a) for a, _ in _seeds([0.0, 0.0, 0.0])]
    res = seed_paired_test({"m": same}, trials=200, n_boot=100)["m"]
    assert res.delta[0] == 0.0 and res.p_value[0] == 1.0


def test_seed_differences_are_corpus_level_for_bleu():
    rng = np.random.default_rng(0)

    def bleu_stat(quality):  # 10 columns: testlen, reflen, guesses, matches
        guess = np.array([20.0, 19, 18, 17])
        n = len(quality)
        matches = np.minimum(guess, np.round(guess * quality[:, None]))
        stats = np.column_stack([np.full(n, 20.0), np.full(n, 22.0), np.tile(guess, (n, 1)),
                                 matches])  # fmt: skip
        return AdditiveStatistic(stats, lambda sums, _n: bleu_from_stats(sums))

    pairs = [(bleu_stat(rng.uniform(0.3, 0.9, 50)), bleu_stat(rng.uniform(0.2, 0.8, 50)))
             for _ in range(3)]  # fmt: skip
    res = seed_paired_test({"b": pairs}, trials=200, n_boot=200)["b"]
    expected = [a.value() - b.value() for a, b in pairs]  # corpus BLEU, not mean sentence BLEU
    np.testing.assert_allclose(res.seed_delta, expected)
    np.testing.assert_allclose(res.delta, np.mean(expected, axis=0))


def test_hierarchical_bootstrap_matches_a_naive_two_level_loop():
    seeds = [_scores(40, seed=s, shift=0.05 * s) for s in range(3)]
    ((low, high),) = hierarchical_bootstrap(
        {"m": [mean_statistic(v) for v in seeds]}, n_boot=4000, seed=0
    ).values()
    rng = np.random.default_rng(7)
    naive = []
    for _ in range(4000):
        drawn = rng.integers(0, 3, 3)
        naive.append(np.mean([seeds[s][rng.integers(0, 40, 40)].mean() for s in drawn]))
    n_low, n_high = np.quantile(naive, [0.025, 0.975])
    assert low[0] == pytest.approx(n_low, abs=0.006) and high[0] == pytest.approx(n_high, abs=0.006)
    # seed-to-seed spread widens the interval beyond any single seed's bootstrap interval
    single = bootstrap_intervals({"m": mean_statistic(seeds[0])}, n_boot=2000, seed=0)["m"]
    assert high[0] - low[0] > high_minus_low(single)


def high_minus_low(interval) -> float:
    return float(interval[1][0] - interval[0][0])


def test_hierarchical_bootstrap_checks_its_input():
    a, b = mean_statistic(_scores(10)), mean_statistic(_scores(12))
    with pytest.raises(ValueError, match="same reports"):
        hierarchical_bootstrap({"m": [(a, b)]})
    with pytest.raises(ValueError, match="no seeds"):
        hierarchical_bootstrap({"m": []})
