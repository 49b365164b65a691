"""Report text handling: de-identification tokens, sections and sentence splitting.

Reports arrive in several shapes: raw MIMIC-CXR text with ``FINDINGS:`` / ``IMPRESSION:`` headers,
hard line wraps and ``___`` de-identification blanks; IU X-Ray findings with ``XXXX`` tokens;
and R2Gen-cleaned text that is lower-cased with spaced full stops (``"the heart is normal ."``).
All of them go through the same steps here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

#: Placeholder that replaces every de-identification token (XXXX, ___, [** ... **]).
DEID_TOKEN: Final = "xxxx"

_DEID_RE = re.compile(r"\[\*\*[^\]]*\*\*\]|\bX{2,}\b|_{2,}", re.IGNORECASE)

#: Section names that carry findings; everything under another known header is dropped
#: (an indication such as "r/o pneumonia" is not a finding).
KEPT_SECTIONS: Final = frozenset({"findings", "impression", "conclusion", "preamble", "addendum"})

_HEADER_NAMES: Final = (
    "findings",
    "finding",
    "impression",
    "impressions",
    "conclusion",
    "conclusions",
    "indication",
    "indications",
    "history",
    "clinical history",
    "clinical information",
    "clinical indication",
    "reason for exam",
    "reason for examination",
    "reason for study",
    "comparison",
    "comparisons",
    "technique",
    "examination",
    "exam",
    "procedure",
    "notification",
    "recommendation",
    "recommendations",
    "addendum",
    "wet read",
    "final report",
    "type of examination",
)
_CANONICAL_HEADER: Final = {
    "finding": "findings",
    "impressions": "impression",
    "conclusions": "conclusion",
    "indications": "indication",
    "comparisons": "comparison",
}
_HEADER_RE = re.compile(
    r"(?:(?<=\s)|^)("
    + "|".join(sorted((re.escape(h) for h in _HEADER_NAMES), key=len, reverse=True))
    + r")\s*:",
    re.IGNORECASE,
)

# Abbreviations whose full stop never ends a sentence.
_ABBREVIATIONS: Final = frozenset(
    {
        "dr",
        "mr",
        "mrs",
        "ms",
        "vs",
        "approx",
        "e.g",
        "i.e",
        "eg",
        "ie",
        "etc",
        "fig",
        "st",
        "no",
        "pt",
        "resp",
        "incl",
        "cf",
        "al",
        "a.m",
        "p.m",
    }
)
_SENTENCE_END_RE = re.compile(
    r"[.!?]+(?=\s|$)|\n\s*\n|\s+(?=\d{1,2}[.)]\s+[A-Za-z])|\s-\s(?=[A-Z])"
)
_LIST_MARKER_RE = re.compile(r"^\s*(?:\d{1,2}[.)]|[-*\u2022])\s+")


@dataclass(frozen=True)
class Section:
    name: str  # lower-case header name, or "preamble" for text before any header
    text: str


def replace_deid(text: str) -> str:
    """Map every de-identification token to one placeholder word, so it reads as a word."""
    return _DEID_RE.sub(DEID_TOKEN, text)


def split_sections(report: str) -> list[Section]:
    """Split a report at known ``HEADER:`` markers. Text before the first header is ``preamble``."""
    sections: list[Section] = []
    matches = list(_HEADER_RE.finditer(report))
    start, name = 0, "preamble"
    for match in matches:
        sections.append(Section(name, report[start : match.start()]))
        raw = match.group(1).lower()
        name = _CANONICAL_HEADER.get(raw, raw)
        start = match.end()
    sections.append(Section(name, report[start:]))
    return [s for s in sections if s.text.strip()]


def findings_text(report: str) -> str:
    """The parts of a report that state findings (FINDINGS, IMPRESSION, un-headed text)."""
    report = replace_deid(report)
    kept = [s.text.strip() for s in split_sections(report) if s.name in KEPT_SECTIONS]
    return "\n\n".join(kept)


def split_sentences(text: str) -> list[str]:
    """Split into sentences; full stops in numbers ("1.5 cm"), abbreviations ("vs.") and
    de-identified names do not end a sentence; numbered-list markers are dropped."""
    sentences: list[str] = []
    start = 0
    for match in _SENTENCE_END_RE.finditer(text):
        end = match.end()
        if match.group().startswith("."):
            before = text[start : match.start()].rsplit(None, 1)
            last_word = before[-1].lower().rstrip(".") if before else ""
            if last_word in _ABBREVIATIONS:
                continue
        _append(sentences, text[start:end])
        start = end
    _append(sentences, text[start:])
    return sentences


def _append(sentences: list[str], piece: str) -> None:
    piece = _LIST_MARKER_RE.sub("", piece)
    piece = " ".join(piece.split())
    piece = piece.rstrip(" .!?").strip()
    if any(ch.isalpha() for ch in piece):
        sentences.append(piece)


def normalise(text: str) -> str:
    """Lower-cased, de-identified, single-spaced text."""
    return " ".join(replace_deid(text).lower().split())
