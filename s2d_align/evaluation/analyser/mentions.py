"""Mention detection in one sentence: lexicon terms, subject-predicate statements, modifiers."""

from __future__ import annotations

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
    SentenceTokens,
    _gap_in_scope,
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


def _modifiers(
    tokens: SentenceTokens, start: int, end: int, blocked: list[tuple[int, int]], cues: list[Cue]
) -> tuple[str | None, str | None, str | None]:
    """(severity, anatomy, measurement) from the words around a mention."""
    words = tokens.words
    cue_spans = [(c.start, c.end) for c in cues]
    inside = list(tokens.between(start, end))
    before: list[int] = []
    i = (inside[0] if inside else tokens.between(0, start).stop) - 1
    while i >= 0 and len(before) < 5:
        s = tokens.starts[i]
        if words[i] in _STOP_BACK or _is_terminator(tokens, i):
            break
        if any(a <= s < b for a, b in blocked) or any(a <= s < b for a, b in cue_spans):
            break
        before.insert(0, i)
        i -= 1
    after: list[int] = []
    j = inside[-1] + 1 if inside else tokens.between(0, end).stop
    seen_prep = False
    while j < len(words) and len(after) < 8:
        s = tokens.starts[j]
        w = words[j]
        if _is_terminator(tokens, j) or w in {",", "and", "with", "without", "or", "which"}:
            break
        if any(a <= s < b for a, b in blocked) or any(a <= s < b for a, b in cue_spans):
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
    mentions = []
    for term, start, end in terms:
        if term.kind == "block":
            continue
        status, cue = cue_status(tokens, (start, end), cues, spans)
        if term.negative_only and status != 0:
            continue
        others = [sp for sp in spans if sp != (start, end)]
        severity, anatomy, measure = _modifiers(tokens, start, end, others, cues)
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
    subjects = [
        (SUBJECTS[i], start, end)
        for i, start, end in _SUBJECTS.scan(tokens.text)
        if not any(_overlaps((start, end), t) for t in term_spans)
    ]
    if not subjects:
        return []
    predicates: list[tuple[str, int, int]] = []
    for name, regex in _PREDICATE_RES.items():
        predicates.extend((name, m.start(), m.end()) for m in regex.finditer(tokens.text))
    predicates.sort(key=lambda p: (p[1], -p[2]))
    subject_spans = [(s, e) for _, s, e in subjects]
    mentions = []
    for subject, s_start, s_end in subjects:
        if not (subject.abnormal or subject.normal):
            continue
        found = _predicate_after(
            tokens, subject, s_start, s_end, predicates, subject_spans, term_spans
        )
        if found is None:
            found = _predicate_before(
                tokens, subject, s_start, predicates, term_spans, cues, subject_spans
            )
        if found is None:
            continue
        polarity, status, p_start, p_end, cue = found
        start, end = min(s_start, p_start), max(s_end, p_end)
        mention = _statement(
            tokens, index, subject, polarity, status, start, end, cue, term_spans, cues
        )
        if mention is not None:
            mentions.append(mention)
    return mentions


def _predicate_after(tokens, subject, s_start, s_end, predicates, subject_spans, term_spans):
    for name, p_start, p_end in predicates:
        if p_start < s_end or name not in subject.predicates:
            continue
        if any(s_end <= t[0] and t[1] <= p_start for t in term_spans):
            return None  # a finding sits between subject and predicate
        masked = [sp for sp in subject_spans if sp != (s_start, s_end)]
        if not _gap_in_scope(tokens, s_end, p_start, masked, window=6, forward=False):
            return None
        gap = [tokens.words[i] for i in tokens.between(s_end, p_start)]
        polarity = PREDICATES[name][0]
        if any(w in _NEGATING_WORDS for w in gap):
            if polarity != "abnormal":
                return None
            return polarity, 0, p_start, p_end, "not"
        if any(w in _HEDGING_WORDS for w in gap) and polarity == "abnormal":
            return polarity, -1, p_start, p_end, next(w for w in gap if w in _HEDGING_WORDS)
        return polarity, _polarity_status(polarity), p_start, p_end, None
    return None


def _predicate_before(tokens, subject, s_start, predicates, term_spans, cues, subject_spans):
    for name, p_start, p_end in reversed(predicates):
        if p_end > s_start or name not in subject.predicates:
            continue
        # "normal heart size and mediastinal contours": other subjects may sit in the gap
        gap = [
            tokens.words[i]
            for i in tokens.between(p_end, s_start)
            if not any(a <= tokens.starts[i] < b for a, b in subject_spans)
        ]
        if len(gap) > 4 or any(w not in _PREPOSITIVE_GAP for w in gap):
            return None
        polarity = PREDICATES[name][0]
        status = _polarity_status(polarity)
        cue = None
        if polarity == "abnormal":
            status, found = cue_status(tokens, (p_start, s_start), cues, term_spans)
            cue = found.text if found else None
        return polarity, status, p_start, p_end, cue
    return None


def _polarity_status(polarity: str) -> int:
    return {"abnormal": 1, "normal": 0, "borderline": -1}[polarity]


def _statement(
    tokens: SentenceTokens,
    index: int,
    subject: Subject,
    polarity: str,
    status: int,
    start: int,
    end: int,
    cue: str | None,
    term_spans: list[tuple[int, int]],
    cues: list[Cue],
) -> Mention | None:
    severity, anatomy, measure = _modifiers(tokens, start, end, term_spans, cues)
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
