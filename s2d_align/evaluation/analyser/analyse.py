"""``analyse(report)``: sections -> sentences -> mentions with status -> CheXpert-14 labels and
key phrases.

Aggregation follows the CheXpert labeler: across the mentions of one observation, positive beats
uncertain beats negative; an observation never mentioned stays blank (None). "No Finding" is 1 when
no observation other than Support Devices (and no other abnormality such as emphysema, granuloma
or scoliosis) is positive or uncertain, and blank otherwise; it is never 0. As in CheXpert, an
asserted "chf" / "heart failure" also makes Cardiomegaly uncertain.

A report whose every sentence sits in sections that state no finding of this study (indication,
comparison...) has nothing to label: it is "no text", all 14 labels blank, never No Finding.
An empty report keeps CheXpert's reading (nothing mentioned: No Finding).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Literal

from s2d_align.chexpert import OBSERVATIONS
from s2d_align.evaluation.analyser.lexicon import CM, SD
from s2d_align.evaluation.analyser.mentions import (
    Mention,
    find_terms,
    statement_mentions,
    term_mentions,
)
from s2d_align.evaluation.analyser.negation import SentenceTokens, find_cues
from s2d_align.evaluation.analyser.sections import select_sections
from s2d_align.evaluation.analyser.sentences import split_sentences

#: Bump when a change to lexicons or rules can change labels (part of the labeler signature).
#: 1.1: sections kept by exclusion (unknown headers read), "no text" reports all blank, one
#: finding per line, CheXpert hedges ("not clearly seen", "suggestion of"); SynthCXR unchanged.
ANALYSER_VERSION = "1.1"

Status = Literal["positive", "negative", "uncertain"]
_STATUS_NAME: dict[int, Status] = {1: "positive", 0: "negative", -1: "uncertain"}
_NO_FINDING = "No Finding"


@dataclass(frozen=True)
class KeyPhrase:
    """An anatomy-grounded finding phrase, e.g. ``small left pleural effusion`` (positive).

    ``observation`` is one of the 14 CheXpert names, or None for a finding outside them
    (granuloma, emphysema, sternotomy wires...).
    """

    text: str
    observation: str | None
    anatomy: str | None
    status: Status
    severity: str | None = None


@dataclass(frozen=True)
class Analysis:
    """What ``analyse`` found: 14 labels, key phrases, and the mentions and sentences behind them."""

    labels: dict[str, int | None]
    keyphrases: list[KeyPhrase]
    mentions: list[Mention] = field(default_factory=list)
    sentences: list[str] = field(default_factory=list)
    text: str = ""  # normalised analysed text: findings sections, de-identified, lower-cased
    dropped_sections: tuple[str, ...] = ()  # sections not read (indication, comparison...)
    no_text: bool = False  # sections were dropped and nothing was left to read: all blank

    @property
    def keyphrase_texts(self) -> list[str]:
        return [k.text for k in self.keyphrases]


@dataclass(frozen=True)
class SectionCounts:
    """Over a set of reports: how many had sections dropped, and how many had nothing left."""

    reports: int
    dropped: int
    no_text: int

    def describe(self) -> str:
        text = f"sections dropped in {self.dropped} of {self.reports} reports"
        if self.no_text:
            text += f"; {self.no_text} had no findings text left (all 14 labels blank)"
        return text


def count_sections(analyses: Iterable[Analysis]) -> SectionCounts:
    """Tally of ``dropped_sections`` and ``no_text`` over analyses."""
    n = dropped = no_text = 0
    for a in analyses:
        n += 1
        dropped += bool(a.dropped_sections)
        no_text += a.no_text
    return SectionCounts(n, dropped, no_text)


def analyse_sentence(sentence: str, index: int = 0) -> list[Mention]:
    """Mentions with their status in one sentence."""
    mentions = _sentence_mentions(sentence.lower())
    if index:
        return [replace(m, sentence=index) for m in mentions]
    return list(mentions)


@lru_cache(maxsize=65536)
def _sentence_mentions(sentence: str) -> tuple[Mention, ...]:
    # Reports repeat template sentences ("No pneumothorax."), so caching by sentence pays off.
    tokens = SentenceTokens.of(sentence)
    cues = find_cues(sentence)
    terms = find_terms(sentence)
    mentions = term_mentions(tokens, 0, cues, terms)
    term_spans = [(s, e) for _, s, e in terms]
    mentions.extend(statement_mentions(tokens, 0, cues, term_spans))
    mentions = _or_alternatives(tokens, mentions)
    mentions.sort(key=lambda m: m.start)
    return tuple(mentions)


def _or_alternatives(tokens: SentenceTokens, mentions: list[Mention]) -> list[Mention]:
    """ "atelectasis or pneumonia" (not negated) states neither for sure: both uncertain."""
    ordered = sorted(mentions, key=lambda m: m.start)
    uncertain: set[int] = set()
    for a, b in itertools.pairwise(ordered):
        if a.status != 1 or b.status != 1 or a.kind != "label" or b.kind != "label":
            continue
        gap = [tokens.words[i] for i in tokens.between(a.end, b.start)]
        if (
            "or" in gap
            and len(gap) <= 4
            and all(w in {"or", ",", "an", "a", "early", "developing"} for w in gap)
        ):
            uncertain.update((id(a), id(b)))
    if not uncertain:
        return mentions
    out = []
    for m in mentions:
        if id(m) in uncertain:
            phrase = "possible " + m.phrase
            m = replace(m, status=-1, cue="or", phrase=phrase)
        out.append(m)
    return out


def aggregate(mentions: list[Mention]) -> dict[str, int | None]:
    """CheXpert aggregation of mention statuses into the 14 labels."""
    found: dict[str, set[int]] = {}
    no_finding = True
    for m in mentions:
        if m.kind == "incidental":
            continue
        if m.status in (1, -1) and (m.kind == "other" or any(o != SD for o in m.observations)):
            no_finding = False
        if m.kind != "label":
            continue
        for obs in m.observations:
            found.setdefault(obs, set()).add(m.status)
        if m.canonical == "congestive heart failure" and m.status in (1, -1):
            found.setdefault(CM, set()).add(-1)
    labels: dict[str, int | None] = {}
    for obs in OBSERVATIONS:
        statuses = found.get(obs)
        if obs == _NO_FINDING:
            labels[obs] = 1 if no_finding else None
        elif not statuses:
            labels[obs] = None
        elif 1 in statuses:
            labels[obs] = 1
        elif -1 in statuses:
            labels[obs] = -1
        else:
            labels[obs] = 0
    return labels


def _keyphrases(mentions: list[Mention]) -> list[KeyPhrase]:
    phrases: list[KeyPhrase] = []
    seen: set[str] = set()
    for m in mentions:
        if not m.phrase or m.phrase in seen:
            continue
        seen.add(m.phrase)
        observation = m.observations[0] if m.observations else None
        phrases.append(
            KeyPhrase(m.phrase, observation, m.anatomy, _STATUS_NAME[m.status], m.severity)
        )
    return phrases


@lru_cache(maxsize=4096)
def _analyse_cached(report: str) -> Analysis:
    selection = select_sections(report)
    sentences = [s.lower() for s in split_sentences(selection.text)]
    mentions: list[Mention] = []
    for i, sentence in enumerate(sentences):
        mentions.extend(analyse_sentence(sentence, i))
    no_text = bool(selection.dropped) and not sentences
    return Analysis(
        labels=dict.fromkeys(OBSERVATIONS) if no_text else aggregate(mentions),
        keyphrases=_keyphrases(mentions),
        mentions=mentions,
        sentences=sentences,
        text=" ".join(sentences),
        dropped_sections=selection.dropped,
        no_text=no_text,
    )


def analyse(report: str) -> Analysis:
    """Analyse one report: 14 CheXpert labels (1/0/-1/None) and key phrases."""
    if not isinstance(report, str):
        raise TypeError(f"analyse() expects a report string, got {type(report).__name__}")
    result = _analyse_cached(report)
    # Hand out fresh containers so a caller mutating them cannot poison the cache.
    return Analysis(
        labels=dict(result.labels),
        keyphrases=list(result.keyphrases),
        mentions=list(result.mentions),
        sentences=list(result.sentences),
        text=result.text,
        dropped_sections=result.dropped_sections,
        no_text=result.no_text,
    )
