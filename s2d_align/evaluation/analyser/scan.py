"""Fast ordered multi-pattern scanning at token starts.

One big alternation of ~80 lexicon regexes tries every branch at every word start, which made the
analyser slow (about a millisecond per sentence). ``OrderedScanner`` gives the same result as
``re.finditer`` over ``(?<![\\w...])(?:p0|p1|...)`` (leftmost match, earlier pattern first at a
position, non-overlapping) but, at each token start, only tries the patterns that can begin with
that character. The first-character sets come from the regex parser; a pattern whose first
character cannot be worked out is tried everywhere, so the speed-up never changes results.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

try:  # Python >= 3.11
    from re import _constants as _c
    from re import _parser as _sre_parse
except ImportError:  # pragma: no cover - Python 3.10
    import sre_constants as _c  # type: ignore[no-redef]
    import sre_parse as _sre_parse  # type: ignore[no-redef]

_ANY = None


def _first_of_sequence(items) -> tuple[set[str] | None, bool]:
    chars: set[str] = set()
    for op, av in items:
        first, nullable = _first_of_item(op, av)
        if first is _ANY:
            return _ANY, False
        chars |= first
        if not nullable:
            return chars, False
    return chars, True


def _first_of_item(op, av) -> tuple[set[str] | None, bool]:
    if op is _c.LITERAL:
        return {chr(av)}, False
    if op is _c.IN:
        chars: set[str] = set()
        for kind, value in av:
            if kind is _c.LITERAL:
                chars.add(chr(value))
            elif kind is _c.RANGE:
                chars.update(chr(x) for x in range(value[0], value[1] + 1))
            else:  # categories (\w, \d), negation: give up
                return _ANY, False
        return chars, False
    if op is _c.SUBPATTERN:
        return _first_of_sequence(av[-1])
    if op is _c.BRANCH:
        chars = set()
        nullable = False
        for branch in av[1]:
            first, branch_nullable = _first_of_sequence(branch)
            if first is _ANY:
                return _ANY, False
            chars |= first
            nullable = nullable or branch_nullable
        return chars, nullable
    if op in (_c.MAX_REPEAT, _c.MIN_REPEAT, getattr(_c, "POSSESSIVE_REPEAT", object())):
        low, _high, body = av
        first, nullable = _first_of_sequence(body)
        return first, (low == 0 or nullable) if first is not _ANY else False
    if op in (_c.AT, _c.ASSERT, _c.ASSERT_NOT):
        return set(), True  # zero width
    return _ANY, False


def first_chars(pattern: str) -> set[str] | None:
    """Characters a match of ``pattern`` can start with, or None when unknown / any."""
    try:
        first, nullable = _first_of_sequence(_sre_parse.parse(pattern))
    except Exception:  # pragma: no cover - parser internals differ: stay correct, be slower
        return _ANY
    return _ANY if nullable else first


class OrderedScanner:
    """Find non-overlapping matches of ordered patterns, each match starting at a token start.

    A match is refused when the character before it is a word character or in ``left_exclude``
    (the equivalent of a ``(?<![\\w...])`` look-behind); every pattern should end with its own
    right-hand boundary.
    """

    def __init__(self, patterns: Sequence[str], left_exclude: str = "") -> None:
        self.left_exclude = left_exclude
        by_char: dict[str, list[int]] = {}
        anywhere: list[int] = []
        for i, p in enumerate(patterns):
            chars = first_chars(p)
            if chars is _ANY:
                anywhere.append(i)
            else:
                for ch in chars:
                    by_char.setdefault(ch, []).append(i)
        self._dispatch: dict[str, re.Pattern[str]] = {}
        for ch, idx in by_char.items():
            self._dispatch[ch] = self._combine(patterns, sorted(set(idx) | set(anywhere)))
        self._fallback = self._combine(patterns, anywhere) if anywhere else None
        # Candidate starts in one C-level pass: a token start whose character can begin a match.
        left = re.escape(left_exclude)
        if anywhere:
            self._candidates = re.compile(rf"(?<![\w{left}])(?=\S)")
        else:
            chars = "".join(re.escape(c) for c in sorted(by_char))
            self._candidates = re.compile(rf"(?<![\w{left}])[{chars}]")

    @staticmethod
    def _combine(patterns: Sequence[str], indices: list[int]) -> re.Pattern[str]:
        return re.compile("|".join(f"(?P<p{i}>{patterns[i]})" for i in indices))

    def scan(self, text: str) -> list[tuple[int, int, int]]:
        """``(pattern index, start, end)`` for each match, left to right."""
        found: list[tuple[int, int, int]] = []
        pos_limit = 0
        dispatch, fallback = self._dispatch, self._fallback
        for cand in self._candidates.finditer(text):
            start = cand.start()
            if start < pos_limit:
                continue
            regex = dispatch.get(text[start], fallback)
            if regex is None:
                continue
            m = regex.match(text, start)
            if m is None or m.end() == start:
                continue
            found.append((int(m.lastgroup[1:]), start, m.end()))  # type: ignore[index]
            pos_limit = m.end()
        return found
