"""Mention detection in one sentence: lexicon terms, subject-predicate statements, modifiers."""

from __future__ import annotations

import bisect
import itertools
import re
from dataclasses import dataclass

from s2d_align.evaluation.analyser.lexicon import (
    LOBE_ABBREVIATIONS,
    MEASUREMENT_RE,
    PREDICATES,
    SEVERITY_WORDS,
    SIDE_WORDS,
    SUBJECTS,
    TERMS,
    ZONE_WORDS,
    Subject,
    Term,
)
from s2d_align.evaluation.analyser.negation import (
    VERBS,
    Cue,
    ScopeIndex,
    SentenceTokens,
    SpanCover,
    _is_terminator,
    cue_status,
)
from s2d_align.evaluation.analyser.scan import OrderedScanner

_TERMS = OrderedScanner([f"(?:{t.pattern})(?!\\w)" for t in TERMS])
_SUBJECTS = OrderedScanner([f"(?:{s.pattern})(?!\\w)" for s in SUBJECTS])
_PREDICATE_RES = {
    name: re.compile(f"(?<!\\w)(?:{pattern})(?!\\w)") for name, (_, pattern) in PREDICATES.items()
}
_NEGATING_WORDS = frozenset({"not", "no", "nor", "never"})
_HEDGING_WORDS = frozenset(
    {
        "may",
        "might",
        "could",
        "possibly",
        "probably",
        "likely",
        "questionably",
        "borderline",
        "?",
        "perhaps",
        "presumably",
        "potentially",
    }
)
_PREPOSITIVE_GAP = frozenset({"of", "the", "left", "right", "bilateral", "both", "and", "size"})
_STOP_BACK = VERBS | {",", "and", "or", "with", "without", "no", "of", "in", "at", "on"}
_PREPOSITIONS = frozenset(
    {
        "in",
        "at",
        "of",
        "within",
        "involving",
        "on",
        "along",
        "over",
        "overlying",
        "projecting",
        "throughout",
        "near",
        "adjacent",
        "abutting",
        "from",
        "into",
    }
)


@dataclass(frozen=True)
class Mention:
    """One mention of an observation (or another finding) in a sentence.

    status: 1 positive, 0 negative, -1 uncertain. ``kind`` is ``label`` (counts towards the 14
    labels), ``other`` (a finding outside the 14, rules out No Finding) or ``incidental``.
    """

    observations: tuple[str, ...]
    kind: str
    canonical: str
    text: str
    sentence: int
    start: int
    end: int
    status: int
    cue: str | None = None
    severity: str | None = None
    anatomy: str | None = None
    measurement: str | None = None
    negative_only: bool = False
    statement: str | None = None  # subject name for "heart size is normal"-style statements
    phrase: str = ""  # key-phrase text


def _overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def find_terms(text: str) -> list[tuple[Term, int, int]]:
    return [(TERMS[i], start, end) for i, start, end in _TERMS.scan(text)]


_AFTER_STOPS = frozenset({",", "and", "with", "without", "or", "which"})


class _Surroundings:
    """Where the words around a mention stop: at another mention (``blocked``) or a cue.

    ``next_event(j)`` is the first token at or after ``j`` where the forward walk of
    ``_modifiers`` either stops or meets a preposition, so the walk can skip the words in
    between (it keeps none of them) instead of reading to the end of a run-on sentence.
    """

    def __init__(self, tokens: SentenceTokens, blocked: SpanCover, cues: list[Cue]) -> None:
        self.blocked = blocked
        self.cue_cover = SpanCover(tokens, [(c.start, c.end) for c in cues])
        self._n = len(tokens.words)
        self._events = [
            j
            for j, w in enumerate(tokens.words)
            if w in _AFTER_STOPS
            or w in _PREPOSITIONS
            or w == "bilaterally"
            or not blocked.free[j]
            or not self.cue_cover.free[j]
            or _is_terminator(tokens, j)
        ]

    def next_event(self, j: int) -> int:
        k = bisect.bisect_left(self._events, j)
        return self._events[k] if k < len(self._events) else self._n


def _modifiers(
    tokens: SentenceTokens,
    start: int,
    end: int,
    around: _Surroundings,
    own: tuple[int, int] | None = None,
) -> tuple[str | None, str | None, str | None]:
    """(severity, anatomy, measurement) from the words around a mention; the words stop at
    another mention (not counting spans equal to ``own``) or at a cue."""
    words = tokens.words
    blocked, cue_cover = around.blocked, around.cue_cover
    inside = list(tokens.between(start, end))
    before: list[int] = []
    i = (inside[0] if inside else tokens.between(0, start).stop) - 1
    while i >= 0 and len(before) < 5:
        if words[i] in _STOP_BACK or _is_terminator(tokens, i):
            break
        if blocked.covered(i, own) or cue_cover.covered(i):
            break
        before.insert(0, i)
        i -= 1
    after: list[int] = []
    j = inside[-1] + 1 if inside else tokens.between(0, end).stop
    seen_prep = False
    while j < len(words) and len(after) < 8:
        if not seen_prep and (own is None or tokens.starts[j] >= own[1]):
            j = around.next_event(j)  # past ``own``, covered(j, own) is covered(j)
            if j == len(words):
                break
        w = words[j]
        if _is_terminator(tokens, j) or w in _AFTER_STOPS:
            break
        if blocked.covered(j, own) or cue_cover.covered(j):
            break
        if w in _PREPOSITIONS or (w == "bilaterally" and not after):
            seen_prep = True  # "effusions bilaterally" reads like "on both sides"
        if seen_prep:
            after.append(j)
        j += 1
    span_words = [words[k] for k in before + inside + after]
    severity = _severity(span_words)
    anatomy = _anatomy(span_words)
    window_text = tokens.text[tokens.starts[before[0]] if before else start : end]
    measure = MEASUREMENT_RE.search(window_text)
    return severity, anatomy, measure.group() if measure else None


def _severity(words: list[str]) -> str | None:
    found = [(k, SEVERITY_WORDS[w]) for k, w in enumerate(words) if w in SEVERITY_WORDS]
    if not found:
        return None
    if len(found) >= 2 and found[1][0] - found[0][0] == 2 and words[found[0][0] + 1] in {"to", "-"}:
        return f"{found[0][1]}-to-{found[1][1]}"  # "moderate to large"
    return found[0][1]


def _anatomy(words: list[str]) -> str | None:
    for w in words:
        if w in LOBE_ABBREVIATIONS:
            return LOBE_ABBREVIATIONS[w]
    side = next((SIDE_WORDS[w] for w in words if w in SIDE_WORDS), None)
    if "bibasilar" in words or "bibasal" in words:
        return "bibasilar"
    zone = None
    for k, w in enumerate(words):
        if w in ZONE_WORDS:
            zone = ZONE_WORDS[w]
            nxt = words[k + 1] if k + 1 < len(words) else ""
            if zone in {"upper", "middle", "mid", "lower"} and nxt in {"lobe", "lobes"}:
                return f"{side} {zone} lobe" if side else f"{zone} lobe"
            if zone in {"upper", "middle", "mid", "lower"} and nxt in {
                "lung",
                "lungs",
                "zone",
                "zones",
            }:
                return f"{side} {zone} lung" if side else f"{zone} lung"
            if zone == "lingular":
                return "lingula"
            break
    if "hemithorax" in words and side:
        return f"{side} hemithorax"
    parts = [p for p in (side, zone) if p]
    return " ".join(parts) if parts else None


def _phrase(status: int, severity: str | None, anatomy: str | None, canonical: str) -> str:
    if status == 0:
        return f"no {canonical}"
    if anatomy and " of the " in canonical:  # "blunting of the left costophrenic angle"
        head, tail = canonical.split(" of the ", 1)
        canonical, anatomy = f"{head} of the {anatomy} {tail}", None
    core = " ".join(p for p in (severity, anatomy, canonical) if p)
    return f"possible {core}" if status == -1 else core


def term_mentions(
    tokens: SentenceTokens, index: int, cues: list[Cue], terms: list[tuple[Term, int, int]]
) -> list[Mention]:
    spans = [(s, e) for _, s, e in terms]
    scope = ScopeIndex(tokens, spans, cues)
    around = _Surroundings(tokens, SpanCover(tokens, spans), cues)
    mentions = []
    for term, start, end in terms:
        if term.kind == "block":
            continue
        status, cue = cue_status(tokens, (start, end), cues, spans, scope=scope)
        if term.negative_only and status != 0:
            continue
        severity, anatomy, measure = _modifiers(tokens, start, end, around, own=(start, end))
        mentions.append(
            Mention(
                observations=term.observations,
                kind=term.kind,
                canonical=term.canonical,
                text=tokens.text[start:end],
                sentence=index,
                start=start,
                end=end,
                status=status,
                cue=cue.text if cue else None,
                severity=severity,
                anatomy=anatomy,
                measurement=measure,
                negative_only=term.negative_only,
                phrase=_phrase(status, severity, anatomy, term.canonical or tokens.text[start:end]),
            )
        )
    return mentions


def statement_mentions(
    tokens: SentenceTokens, index: int, cues: list[Cue], term_spans: list[tuple[int, int]]
) -> list[Mention]:
    """ "heart size is normal", "the mediastinum is widened", "clear lungs", "blunting of the left
    costophrenic angle": a structure plus a predicate that says it is normal or abnormal."""
    terms = _SortedSpans(term_spans)
    subjects = [
        (SUBJECTS[i], start, end)
        for i, start, end in _SUBJECTS.scan(tokens.text)
        if not terms.overlaps(start, end)
    ]
    if not subjects:
        return []
    predicates: list[tuple[str, int, int]] = []
    for name, regex in _PREDICATE_RES.items():
        predicates.extend((name, m.start(), m.end()) for m in regex.finditer(tokens.text))
    if not predicates:
        return []  # a statement needs a predicate
    predicates.sort(key=lambda p: (p[1], -p[2]))
    found_at = _Predicates(predicates)
    subject_spans = [(s, e) for _, s, e in subjects]
    ctx = _StatementContext(
        tokens,
        cues,
        term_spans,
        terms,
        ScopeIndex(tokens, subject_spans),
        ScopeIndex(tokens, term_spans, cues),
        SpanCover(tokens, subject_spans),
        _Surroundings(tokens, SpanCover(tokens, term_spans), cues),
    )
    mentions = []
    for subject, s_start, s_end in subjects:
        if not (subject.abnormal or subject.normal):
            continue
        found = _predicate_after(ctx, subject, s_end, found_at.first_from(subject, s_end))
        if found is None:
            found = _predicate_before(ctx, s_start, found_at.last_before(subject, s_start))
        if found is None:
            continue
        polarity, status, p_start, p_end, cue = found
        start, end = min(s_start, p_start), max(s_end, p_end)
        mention = _statement(ctx, index, subject, polarity, status, start, end, cue)
        if mention is not None:
            mentions.append(mention)
    return mentions


class _SortedSpans:
    """Spans sorted by start, for "does any span overlap / sit inside this range" in O(log n)."""

    def __init__(self, spans: list[tuple[int, int]]) -> None:
        ordered = sorted(spans)
        self._starts = [a for a, _ in ordered]
        self._max_end = [-1]  # max end over the first k spans
        for _, e in ordered:
            self._max_end.append(max(self._max_end[-1], e))
        self._min_end = [float("inf")] * (len(ordered) + 1)  # min end over spans k...
        for k in range(len(ordered) - 1, -1, -1):
            self._min_end[k] = min(self._min_end[k + 1], ordered[k][1])

    def overlaps(self, start: int, end: int) -> bool:
        return self._max_end[bisect.bisect_left(self._starts, end)] > start

    def any_inside(self, start: int, end: int) -> bool:
        return self._min_end[bisect.bisect_left(self._starts, start)] <= end


class _Predicates:
    """Predicate matches in sentence order, looked up per name: one regex's matches never overlap,
    so within a name starts and ends both increase."""

    def __init__(self, predicates: list[tuple[str, int, int]]) -> None:
        self.all = predicates
        self._by_name: dict[str, tuple[list[int], list[int], list[int]]] = {}
        for order, (name, p_start, p_end) in enumerate(predicates):
            orders, starts, ends = self._by_name.setdefault(name, ([], [], []))
            orders.append(order)
            starts.append(p_start)
            ends.append(p_end)

    def first_from(self, subject: Subject, pos: int) -> tuple[str, int, int] | None:
        """The first predicate of ``subject`` (in sentence order) starting at or after ``pos``."""
        best = None
        for name in set(subject.predicates) & self._by_name.keys():
            orders, starts, _ = self._by_name[name]
            k = bisect.bisect_left(starts, pos)
            if k < len(orders) and (best is None or orders[k] < best):
                best = orders[k]
        return None if best is None else self.all[best]

    def last_before(self, subject: Subject, pos: int) -> tuple[str, int, int] | None:
        """The last predicate of ``subject`` (in sentence order) ending at or before ``pos``."""
        best = None
        for name in set(subject.predicates) & self._by_name.keys():
            orders, _, ends = self._by_name[name]
            k = bisect.bisect_right(ends, pos) - 1
            if k >= 0 and (best is None or orders[k] > best):
                best = orders[k]
        return None if best is None else self.all[best]


@dataclass
class _StatementContext:
    """Per-sentence indexes shared by the statements of one sentence."""

    tokens: SentenceTokens
    cues: list[Cue]
    term_spans: list[tuple[int, int]]
    terms: _SortedSpans
    subject_scope: ScopeIndex
    term_scope: ScopeIndex
    subject_cover: SpanCover
    around: _Surroundings

    def __post_init__(self) -> None:
        # Prefix counts over tokens, so that a gap of any length is read in O(1): negating words,
        # the next hedging word, and words outside subjects (all / not allowed before a subject).
        words = self.tokens.words
        free = self.subject_cover.free
        self.negating = [0, *itertools.accumulate(w in _NEGATING_WORDS for w in words)]
        self.free = [0, *itertools.accumulate(free)]
        self.free_other = [
            0,
            *itertools.accumulate(
                f and w not in _PREPOSITIVE_GAP for f, w in zip(free, words, strict=True)
            ),
        ]
        self._hedges = [i for i, w in enumerate(words) if w in _HEDGING_WORDS]

    def next_hedge(self, lo: int) -> int | None:
        k = bisect.bisect_left(self._hedges, lo)
        return self._hedges[k] if k < len(self._hedges) else None


def _predicate_after(ctx: _StatementContext, subject, s_end, predicate):
    if predicate is None:
        return None
    name, p_start, p_end = predicate
    tokens = ctx.tokens
    if ctx.terms.any_inside(s_end, p_start):
        return None  # a finding sits between subject and predicate
    between = tokens.between(s_end, p_start)
    if not ctx.subject_scope.in_scope(between, window=6, forward=False):
        return None
    polarity = PREDICATES[name][0]
    lo, hi = between.start, between.stop
    if ctx.negating[hi] > ctx.negating[lo]:
        if polarity != "abnormal":
            return None
        return polarity, 0, p_start, p_end, "not"
    hedge = ctx.next_hedge(lo)
    if hedge is not None and hedge < hi and polarity == "abnormal":
        return polarity, -1, p_start, p_end, tokens.words[hedge]
    return polarity, _polarity_status(polarity), p_start, p_end, None


def _predicate_before(ctx: _StatementContext, s_start, predicate):
    if predicate is None:
        return None
    name, p_start, p_end = predicate
    tokens = ctx.tokens
    # "normal heart size and mediastinal contours": other subjects may sit in the gap
    between = tokens.between(p_end, s_start)
    lo, hi = between.start, between.stop
    if hi > lo and (ctx.free[hi] - ctx.free[lo] > 4 or ctx.free_other[hi] > ctx.free_other[lo]):
        return None
    polarity = PREDICATES[name][0]
    status = _polarity_status(polarity)
    cue = None
    if polarity == "abnormal":
        status, found = cue_status(
            tokens, (p_start, s_start), ctx.cues, ctx.term_spans, scope=ctx.term_scope
        )
        cue = found.text if found else None
    return polarity, status, p_start, p_end, cue


def _polarity_status(polarity: str) -> int:
    return {"abnormal": 1, "normal": 0, "borderline": -1}[polarity]


def _statement(
    ctx: _StatementContext,
    index: int,
    subject: Subject,
    polarity: str,
    status: int,
    start: int,
    end: int,
    cue: str | None,
) -> Mention | None:
    tokens = ctx.tokens
    severity, anatomy, measure = _modifiers(tokens, start, end, ctx.around)
    kind = "label"
    if status == 0:
        observations, phrase = subject.normal, subject.normal_text
        if not subject.label_normal:
            kind = "incidental"
    else:
        observations = subject.abnormal
        kind = subject.abnormal_kind
        phrase = _phrase(status, severity if status == 1 else None, None, subject.abnormal_text)
        if subject.name == "costophrenic" and anatomy:
            phrase = phrase.replace("the costophrenic", f"the {anatomy} costophrenic")
    if not observations:
        return None
    return Mention(
        observations=observations,
        kind=kind,
        canonical=subject.abnormal_text if status else subject.normal_text,
        text=tokens.text[start:end],
        sentence=index,
        start=start,
        end=end,
        status=status,
        cue=cue,
        severity=severity,
        anatomy=anatomy,
        measurement=measure,
        statement=subject.name,
        phrase=phrase,
    )
