"""Report text handling: de-identification tokens and sentence splitting (sections: ``sections``).

Reports arrive in several shapes: raw MIMIC-CXR text with ``FINDINGS:`` / ``IMPRESSION:`` headers,
hard line wraps and ``___`` de-identification blanks; IU X-Ray findings with ``XXXX`` tokens;
and R2Gen-cleaned text that is lower-cased with spaced full stops (``"the heart is normal ."``).
All of them go through the same steps here.
"""

from __future__ import annotations

import re
from typing import Final


def _wordset(words: str) -> frozenset[str]:
    return frozenset(words.split())


#: Placeholder that replaces every de-identification token (XXXX, ___, [** ... **]).
DEID_TOKEN: Final = "xxxx"

_DEID_RE = re.compile(r"\[\*\*[^\]]*\*\*\]|\bX{2,}\b|_{2,}", re.IGNORECASE)

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
    r"[.!?]+(?=\s|$)|\n\s*\n|\s+(?=\d{1,2}[.)]\s+[A-Za-z])|\s-\s(?=[A-Z])|\n(?=[ \t]*[A-Z][a-z])"
)
# A line that ends in one of these words (or a comma) is hard-wrapped mid-sentence, so the next
# line continues it even when it starts with a capital ("discussed with\nDr. ___").
_CONTINUING_WORDS: Final = _wordset(
    "and or nor but of the a an with without no not to in for at on by from as than versus vs "
    "is are was were be been"
)
_LIST_MARKER_RE = re.compile(r"^\s*(?:\d{1,2}[.)]|[-*\u2022])\s+")


def replace_deid(text: str) -> str:
    """Map every de-identification token to one placeholder word, so it reads as a word."""
    return _DEID_RE.sub(DEID_TOKEN, text)


def split_sentences(text: str) -> list[str]:
    """Split into sentences; full stops in numbers ("1.5 cm"), abbreviations ("vs.") and
    de-identified names do not end a sentence; numbered-list markers are dropped. A line break
    ends a sentence when the next line starts with a capitalised word and the line before does
    not end mid-phrase (reports that put one finding per line, without full stops)."""
    sentences: list[str] = []
    start = 0
    for match in _SENTENCE_END_RE.finditer(text):
        end = match.end()
        if match.group() == "\n":  # one finding per line: a line break before a capital
            last = _last_word(text, start, match.start()).lower()
            if not last or last.endswith(",") or last in _CONTINUING_WORDS:
                continue
        elif match.group().startswith("."):
            last_word = _last_word(text, start, match.start()).lower().rstrip(".")
            if last_word in _ABBREVIATIONS:
                continue
        _append(sentences, text[start:end])
        start = end
    _append(sentences, text[start:])
    return sentences


def _last_word(text: str, start: int, end: int) -> str:
    """``text[start:end].split()[-1]`` (or ""), reading back from ``end`` only: slicing from
    ``start`` made a long sentence full of "no." or line breaks quadratic."""
    i = end
    while i > start and text[i - 1].isspace():
        i -= 1
    j = i
    while j > start and not text[j - 1].isspace():
        j -= 1
    return text[j:i]


def _append(sentences: list[str], piece: str) -> None:
    piece = _LIST_MARKER_RE.sub("", piece)
    piece = " ".join(piece.split())
    piece = piece.rstrip(" .!?").strip()
    if any(ch.isalpha() for ch in piece):
        sentences.append(piece)


def normalise(text: str) -> str:
    """Lower-cased, de-identified, single-spaced text."""
    return " ".join(replace_deid(text).lower().split())
