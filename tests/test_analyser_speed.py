"""The clinical text analyser stays linear in sentence length.

Degenerate model output (one sentence of 100k words, or a phrase repeated thousands of times) used
to make scoring hang: scope checks compared every mention with every cue and every other mention.
Bounds are generous because CI machines are noisy; the ratio test catches a quadratic path.
"""

from __future__ import annotations

import time

import pytest

from s2d_align.chexpert import OBSERVATIONS
from s2d_align.evaluation.analyser.analyse import _analyse_cached, _sentence_mentions, analyse

RUN_ON = "the "  # one sentence, no finding
REPETITIVE = "no effusion and "  # one sentence, a negated finding every three words
WORDS = 100_000


def _timed(text: str) -> float:
    _analyse_cached.cache_clear()  # time the work, not the cache
    _sentence_mentions.cache_clear()
    t0 = time.perf_counter()
    analysis = analyse(text)
    elapsed = time.perf_counter() - t0
    assert set(analysis.labels) == set(OBSERVATIONS)
    return elapsed


def _report(unit: str, words: int) -> str:
    return unit * (words // len(unit.split()))


@pytest.mark.parametrize("unit", [RUN_ON, REPETITIVE, "no effusion, ", "no. "])
def test_a_100k_word_report_is_labelled_in_seconds(unit: str) -> None:
    assert _timed(_report(unit, WORDS)) < 10.0


@pytest.mark.parametrize("unit", [RUN_ON, REPETITIVE, "effusion none ", "lungs are clear\n"])
def test_time_grows_linearly_with_sentence_length(unit: str) -> None:
    small = min(_timed(_report(unit, WORDS // 10)) for _ in range(2))
    large = _timed(_report(unit, WORDS))
    assert large / small < 20, f"10x the words took {large / small:.0f}x the time"


def test_repetitive_report_keeps_its_labels() -> None:
    analysis = analyse(_report(REPETITIVE, 3_000))
    assert analysis.labels["Pleural Effusion"] == 0
    assert analysis.labels["No Finding"] == 1
    assert analysis.keyphrase_texts == ["no pleural effusion"]
