"""Report sections: which parts of a report state the findings of this study.

Sections are kept by exclusion. Only sections known to state nothing found on this study are
dropped (indication, history, comparison, technique, examination, notification, recommendation
and the like: "r/o pneumonia" in an indication is not a finding). Every other section is read,
whatever its header says: FINDINGS and IMPRESSION, text before any header, and the headers real
reports are full of ("WET READ:", "PORTABLE AP CHEST RADIOGRAPH:", "LUNGS:", "FINDINGS AS OF
14:20:"). Headers are found three ways:

- a known name followed by a colon, in any case, anywhere after white space (``FINDINGS:``,
  ``Indication:``, ``RECOMMENDATION(S):``);
- another phrase followed by a colon that names the study, an organ, a section that is read or
  one that is dropped: in capitals at the start of a line or after a sentence (``... position.
  PORTABLE AP CHEST:``), capitalised at the start of a line (``Portable chest radiograph:``).
  Its words are read with its text, so ``LINES/TUBES: None.`` still says something. Any other
  colon (``R/O CHF:``, ``PMH:``) is text of the section it sits in;
- an all-caps title line without a colon that names the study (``FINAL REPORT``,
  ``CHEST PORTABLE, ___ AT 06:15``); the title itself is not read, the text under it is.

A dropped section also ends at a blank line after its text (MIMIC often writes the findings
under COMPARISON without a header); a one-line section (examination, technique, comparison), or
one whose text starts on its header's line, also ends at the first new line that starts a
sentence, unless that line goes on asking what the study is for ("Evaluate for pneumonia.").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from s2d_align.evaluation.analyser.sentences import replace_deid, split_sentences


def _wordset(words: str) -> frozenset[str]:
    return frozenset(words.split())


#: Text before the first header.
PREAMBLE: Final = "preamble"
#: Text that follows a dropped one-line section or paragraph without a header of its own.
UNHEADED: Final = "unheaded"

#: Sections that state no finding of this study: the only ones dropped.
DROPPED_SECTIONS: Final = frozenset(
    {
        "indication",
        "history",
        "clinical history",
        "clinical information",
        "clinical indication",
        "clinical data",
        "reason for exam",
        "reason for examination",
        "reason for study",
        "reason for request",
        "comparison",
        "technique",
        "examination",
        "exam",
        "type of examination",
        "procedure",
        "notification",
        "recommendation",
    }
)
#: Dropped sections that hold one line (what was done, what it is compared with).
ONE_LINE_SECTIONS: Final = frozenset(
    {"comparison", "technique", "examination", "exam", "type of examination", "procedure"}
)
# A header that starts with a dropped name and goes on ("COMPARISON STUDY", "INDICATION FOR
# EXAM", "HISTORY/INDICATION") is dropped too, unless it also names a section that is read.
_DROPPED_LEADS: Final = (*DROPPED_SECTIONS, "indications", "comparisons", "recommendations")

_KNOWN_NAMES: Final = (
    *sorted(DROPPED_SECTIONS),
    "findings",
    "finding",
    "impression",
    "impressions",
    "conclusion",
    "conclusions",
    "indications",
    "comparisons",
    "recommendations",
    "addendum",
    "wet read",
    "final report",
)
_CANONICAL: Final = {
    "finding": "findings",
    "impressions": "impression",
    "conclusions": "conclusion",
    "indications": "indication",
    "comparisons": "comparison",
    "recommendations": "recommendation",
}
_KNOWN_RE = re.compile(
    r"(?:(?<=\s)|^)("
    + "|".join(sorted((re.escape(h) for h in _KNOWN_NAMES), key=len, reverse=True))
    + r")(?:\(s\))?\s*:",
    re.IGNORECASE,
)
# An all-caps header word: letters, digits and the punctuation of "A.M.", "(S)", "LINES/TUBES",
# a time such as 14:20, or the de-identification placeholder.
_WORD = r"(?:[A-Z0-9][A-Z0-9,/&().'#+\-]*(?::\d+)*|xxxx)"
_CAPS_HEADER_RE = re.compile(
    rf"(?:^|(?<=\n)|(?<=[.!?]\s))[ \t]*(?P<name>{_WORD}(?:[ \t]+{_WORD}){{0,9}})[ \t]*:(?=\s|$)"
)
# A capitalised header at the start of a line ("Portable chest radiograph:", "Lungs:").
_LINE_HEADER_RE = re.compile(
    r"(?m)^[ \t]*(?P<name>[A-Z][A-Za-z/&()\-]*(?:[ \t]+[A-Za-z/&()\-]+){0,5})[ \t]*:(?=\s|$)"
)
_TITLE_LINE_RE = re.compile(rf"(?m)^[ \t]*(?P<name>{_WORD}(?:[ \t]+{_WORD}){{0,11}})[ \t]*$")
# What makes a phrase before a colon a header (see the module docstring).
_READING_WORDS: Final = _wordset(
    "findings finding impression impressions conclusion conclusions opinion summary result "
    "results diagnosis observations comment comments interpretation addendum"
)
_STUDY_WORDS: Final = _wordset(
    "radiograph radiographs radiography film films portable view views cxr x-ray xray report read"
)
_CHEST_VIEW_WORDS: Final = _wordset(
    "ap pa lat lateral frontal supine upright semi-upright erect decubitus"
)
_ORGAN_WORDS: Final = _wordset(
    "lungs lung pleura pleural heart cardiac cardiomediastinal mediastinum mediastinal hila "
    "hilar hilum bones bony osseous skeleton ribs lines tubes devices abdomen soft tissues "
    "diaphragm diaphragms airway airways trachea vasculature aorta"
)
# Words that make an all-caps line a sentence rather than a title ("CHEST X-RAY SHOWS NO ...").
_SENTENCE_WORDS: Final = _wordset(
    "is are was were no not shows show demonstrates there with without"
)
_BLANK_LINE_RE = re.compile(r"\S[^\n]*\n[ \t]*\n")
# A new line that starts a sentence, unless it goes on asking what the study is for.
_NEW_SENTENCE_LINE_RE = re.compile(
    r"\S[^\n]*\n(?=[ \t]*(?!(?:Evaluate|Eval|Assess|Rule|Please|Question|Query|Concern|Check)"
    r"\b)[A-Z][a-z])"
)


@dataclass(frozen=True)
class Section:
    name: str  # lower-case header name, "preamble" before any header, "unheaded" (see above)
    text: str
    heading: str = ""  # an unknown header, read with the text ("LINES/TUBES:")

    @property
    def read(self) -> str:
        """The text as read: heading and text on one line."""
        return f"{self.heading.strip()} {self.text.strip()}".strip()


@dataclass(frozen=True)
class SectionSelection:
    """The text that states findings, and the names of the sections dropped to get it."""

    text: str
    kept: tuple[str, ...]
    dropped: tuple[str, ...]


@dataclass(frozen=True)
class _Header:
    start: int
    end: int
    name: str
    read_words: bool  # whether the header's own words are read with its text


def _normal_name(raw: str) -> str:
    name = " ".join(raw.lower().replace("(s)", "").split()).strip(" .,")
    return _CANONICAL.get(name, name)


def is_dropped(name: str) -> bool:
    """Whether a section of this (lower-case) name states no finding of this study."""
    if name in DROPPED_SECTIONS:
        return True
    if _words_of(name) & _READING_WORDS:
        return False
    return any(
        name.startswith(lead) and name[len(lead) : len(lead) + 1] in {" ", "/", "&", ","}
        for lead in _DROPPED_LEADS
    )


def _words_of(name: str) -> set[str]:
    return set(re.split(r"[^a-z0-9-]+", name.lower())) - {""}


def _names_study(words: set[str]) -> bool:
    return bool(words & _STUDY_WORDS) or ("chest" in words and bool(words & _CHEST_VIEW_WORDS))


def _counts_as_header(raw: str, name: str) -> bool:
    words = _words_of(raw)
    return bool(words & (_READING_WORDS | _ORGAN_WORDS)) or _names_study(words) or is_dropped(name)


def _has_capitals(name: str) -> bool:
    return any(len(w) >= 2 and w.isupper() for w in re.findall(r"[A-Za-z]+", name))


def _headers(report: str) -> list[_Header]:
    found = [
        _Header(m.start(1), m.end(), _normal_name(m.group(1)), False)
        for m in _KNOWN_RE.finditer(report)
    ]
    for regex, caps in ((_CAPS_HEADER_RE, True), (_LINE_HEADER_RE, False)):
        for m in regex.finditer(report):
            raw, name = m.group("name"), _normal_name(m.group("name"))
            if (not caps or _has_capitals(raw)) and _counts_as_header(raw, name):
                found.append(_Header(m.start("name"), m.end(), name, not is_dropped(name)))
    for m in _TITLE_LINE_RE.finditer(report):
        raw = m.group("name")
        words = _words_of(raw)
        if _has_capitals(raw) and _names_study(words) and not words & _SENTENCE_WORDS:
            found.append(_Header(m.start("name"), m.end("name"), _normal_name(raw), False))
    found.sort(key=lambda h: (h.start, -h.end))
    headers: list[_Header] = []
    for h in found:  # the longest at a position (a known name on a tie); overlaps dropped
        if not headers or h.start >= headers[-1].end:
            headers.append(h)
    return headers


def _end_of_dropped(name: str, text: str) -> int:
    """Where the dropped part of a section ends: a blank line after text; or, for a one-line
    section or one whose text starts on the header's line ("History: cough"), a new line that
    starts a sentence ("The lungs are clear.")."""
    ends = [m.end() for m in [_BLANK_LINE_RE.search(text)] if m]
    same_line = bool(text.split("\n", 1)[0].strip())
    if name in ONE_LINE_SECTIONS or same_line:
        ends += [m.end() for m in [_NEW_SENTENCE_LINE_RE.search(text)] if m]
    return min(ends, default=len(text))


def split_sections(report: str) -> list[Section]:
    """Split a report at its headers (see the module docstring). A dropped section is cut where
    its own text ends; what follows is an ``unheaded`` section."""
    sections: list[Section] = []
    start, name, heading = 0, PREAMBLE, ""
    for h in [*_headers(report), None]:
        text = report[start : h.start if h else len(report)]
        if is_dropped(name):
            cut = _end_of_dropped(name, text)
            sections.append(Section(name, text[:cut]))
            sections.append(Section(UNHEADED, text[cut:]))
        else:
            sections.append(Section(name, text, heading))
        if h is not None:
            start, name = h.end, h.name
            heading = report[h.start : h.end] if h.read_words else ""
    return [s for s in sections if s.text.strip()]


def select_sections(report: str) -> SectionSelection:
    """The findings text of a report (de-identified), and which sections were kept and dropped.

    A section that holds only its own header ("PORTABLE AP CHEST:" and nothing after it) counts
    as neither.
    """
    report = replace_deid(report)
    kept: list[Section] = []
    dropped: list[str] = []
    for s in split_sections(report):
        if is_dropped(s.name):
            dropped.append(s.name)
        elif split_sentences(s.text):
            kept.append(s)
    text = "\n\n".join(s.read for s in kept)
    return SectionSelection(text, tuple(s.name for s in kept), tuple(dropped))


def findings_text(report: str) -> str:
    """The parts of a report that state findings: every section but the dropped ones."""
    return select_sections(report).text
