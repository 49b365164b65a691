"""Negation and uncertainty cues and their scope within a sentence.

A cue is found by one ordered regex (pseudo-negations first, so "no change in" or "not
significantly changed" never negate; then uncertainty, whose cues often contain a negation word,
as in "cannot be excluded"; then negation). Each cue looks forward (``pre``: "no", "without",
"possible"), backward (``post``: "is not seen", "has resolved", "cannot be excluded") or both
(``both``: "versus"). A mention takes the status of the nearest cue whose scope reaches it.

Scope ends at a terminator ("but", "however", "although", "which", ";", ...), at "and" or a comma
that follows a verb ("no effusion is seen, and the heart is enlarged") or that opens a new clause
("no pneumothorax and the heart is enlarged"), and after a window of content words, where words
inside other mentions, list commas and "or"/"and" do not count, so "no focal consolidation, pleural
effusion, or pneumothorax" negates all three.
"""

from __future__ import annotations

import bisect
import itertools
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from s2d_align.evaluation.analyser.scan import OrderedScanner

CueKind = Literal["negative", "uncertain", "pseudo", "inherit"]
Direction = Literal["pre", "post", "both"]


@dataclass(frozen=True)
class CueRule:
    pattern: str
    kind: CueKind
    direction: Direction
    window: int = 8  # content words the scope reaches


@dataclass(frozen=True)
class Cue:
    start: int
    end: int
    text: str
    rule: CueRule


_SEEN = (
    r"(?:seen|identified|visuali[sz]ed|appreciated|present|evident|demonstrated|noted|detected|observed|"
    r"visible|apparent|shown|found|depicted)"
)
_AUX = r"(?:(?:is|are|was|were|has been|have been|had been)(?: also| again| currently| now)? )?"
_CHANGE = (
    r"(?:change|changes|increase|decrease|worsening|improvement|progression|enlargement|difference)"
)

CUE_RULES: Final[tuple[CueRule, ...]] = (
    # --- pseudo-negations: contain a negation word but do not negate the finding ---
    CueRule(
        r"no (?:significant |appreciable |substantial |definite |major |marked |real |obvious |"
        r"significant interval |interval |short-?term |radiographically significant )?"
        + _CHANGE
        + r"(?: (?:in|of|from|since|compared))?",
        "pseudo",
        "both",
    ),
    CueRule(
        r"without (?:significant |appreciable |interval |substantial )?" + _CHANGE, "pseudo", "both"
    ),
    CueRule(
        r"not (?:been )?(?:significantly |substantially |appreciably |markedly |much |greatly )?"
        r"(?:changed|increased|decreased|improved|worsened|enlarged since)",
        "pseudo",
        "both",
    ),
    CueRule(r"no more than|not only|no further|gram[- ]negative", "pseudo", "both"),
    # --- "inherit": "no opacity to suggest pneumonia" negates pneumonia through the first cue ---
    CueRule(r"to suggest|to indicate|to explain", "inherit", "pre", 4),
    # --- uncertainty ---
    # CheXpert: "not clearly seen", "not well visualized", "poorly evaluated" leave it open
    CueRule(
        _AUX
        + r"(?:not (?:be )?(?:clearly|well|optimally|fully) |poorly |incompletely |suboptimally )"
        r"(?:seen|visuali[sz]ed|evaluated|assessed|appreciated)",
        "uncertain",
        "post",
        6,
    ),
    CueRule(
        _AUX
        + r"(?:cannot|can ?not|can't|could not|couldn't|may not|not) (?:be )?(?:entirely |completely |totally |"
        r"definitely |confidently |fully )?(?:excluded|ruled out)",
        "uncertain",
        "post",
        6,
    ),
    CueRule(
        r"(?:cannot|can ?not|can't|could not|couldn't|may not|does not|do not|not) (?:entirely |completely |"
        r"definitely |confidently )?(?:exclude|rule out)",
        "uncertain",
        "pre",
    ),
    CueRule(r"(?:would be |is )?difficult to (?:exclude|rule out)", "uncertain", "both", 6),
    CueRule(
        _AUX
        + r"(?:also )?(?:possible|suspected|questioned|likely|probable|a consideration|considered|"
        r"not excluded|a possibility|in question)(?=\s*(?:$|[,;]|\b(?:and|but|although|however)\b))",
        "uncertain",
        "post",
        6,
    ),
    CueRule(
        _AUX + r"(?:likely|probably|possibly|questionably) (?:present|seen|noted)",
        "uncertain",
        "post",
        6,
    ),
    CueRule(
        r"(?:may|might|could|can) (?:also )?(?:be|represent|reflect|indicate|relate to|be due to|"
        r"be related to|be secondary to|have|include|suggest)|may|might",
        "uncertain",
        "pre",
    ),
    CueRule(
        r"(?:is |are )?(?:most |more |less )?(?:likely|probably|possibly|presumably|perhaps|potentially|"
        r"questionably|conceivably)(?: (?:represents?|reflects?|due to|related to|secondary to|"
        r"consistent with))?",
        "uncertain",
        "pre",
    ),
    CueRule(
        r"(?:possible|probable|presumed|presumptive|questionable|suspected|suspect|suspicious for|"
        r"suspicion (?:of|for)|suspicious|equivocal|borderline|indeterminate|uncertain|unlikely|"
        r"concerning for|concern for|worrisome for|worrisome|cannot distinguish between|"
        r"suggestion of|suggest(?:s|ed|ive of|ing)?|question of|possibility of|potential|"
        r"correlat(?:e|ion) clinically for|clinical(?:ly)? correlat(?:e|ion) for|"
        r"differential (?:diagnosis )?(?:includes|would include|considerations include)|"
        r"(?:to )?rule out|r/o|to exclude|(?:evaluate|eval|assess|evaluation|assessment) (?:for|of)|"
        r"\?)",
        "uncertain",
        "pre",
    ),
    # "versus" also reaches back to the word before it ("atelectasis versus pneumonia")
    CueRule(r"(?:versus|vs\.?)", "uncertain", "both", 3),
    # --- negation, post: "pneumothorax is not seen", "the effusion has resolved" ---
    CueRule(
        _AUX
        + r"(?:not|no longer)(?: clearly| definitely| definitively| convincingly| well| currently| "
        r"now| again| grossly| readily| appreciably| significantly)? (?:be )?" + _SEEN,
        "negative",
        "post",
        6,
    ),
    CueRule(
        r"(?:is|are|was|were|has been|have been|had been)(?: also| now| again)? (?:absent|excluded|"
        r"ruled out|resolved|removed|gone|cleared|no longer present)|(?:has|have|had) (?:since |now |"
        r"nearly |almost |completely |largely |essentially |interval(?:ly)? )?(?:resolved|cleared|"
        r"been removed)|(?:has|have|had) not (?:recurred|returned|re-?accumulated)",
        "negative",
        "post",
        6,
    ),
    CueRule(
        r"(?:absent|resolved|removed|removal|gone|cleared)(?=\s*(?:$|[,;]|\b(?:and|but|with|since|compared|"
        r"from|on|in)\b))",
        "negative",
        "post",
        4,
    ),
    CueRule(r"not (?:present|identified|seen)|none", "negative", "post", 4),
    # --- negation, pre ---
    CueRule(
        r"(?:no|without|nothing) (?:(?:radiographic|definite|convincing|new|clear|other|acute|"
        r"significant|further) )*(?:evidence|findings?|signs?|features?|suggestion) "
        r"(?:to suggest|suggest(?:ive|ing) of|of|for|to indicate|that would suggest)|nothing to suggest",
        "negative",
        "pre",
    ),
    CueRule(
        r"negative for|free of|clear of|absence of|absent|lack of|resolution of|resolved|interval removal of|"
        r"removal of|removed|not (?:suggestive of|consistent with|indicative of|compatible with)|"
        r"rather than|instead of|no longer|there is not|there are not|nor|neither|without|no",
        "negative",
        "pre",
    ),
)

_CUES = OrderedScanner([f"(?:{rule.pattern})(?![\\w-])" for rule in CUE_RULES], left_exclude="-")

# --- tokens and clause structure ------------------------------------------------------------
_TOKEN_RE = re.compile(r"[a-z]/[a-z](?![a-z])|\w+(?:[-'./]\w+)*|[^\w\s]")


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


TERMINATORS: Final = _words(
    "but however although though whereas which except after following since despite because "
    "s/p post given ; ( ) yet otherwise"
)
TERMINATOR_BIGRAMS: Final = frozenset(
    {
        ("aside", "from"),
        ("apart", "from"),
        ("other", "than"),
        ("status", "post"),
        ("compared", "to"),
        ("compared", "with"),
        ("in", "comparison"),
        ("as", "well"),
        ("in", "addition"),
    }
)
VERBS: Final = _words(
    "is are was were be been has have had remains remain persists persist appears appear seen "
    "noted identified demonstrated visualized present shows show demonstrates measures "
    "measuring projects terminates extends represents reflects there"
)
#: Words that open a new clause after "and" (so "no effusion and the heart is large" stops).
AND_STARTERS: Final = _words(
    "there the this these that it its a an heart cardiac lungs lung mediastinal mediastinum "
    "cardiomediastinal hilar osseous bony bones visualized interval stable unchanged "
    "persistent persistently mild mildly moderate severe small large new increased increasing "
    "decreased improved improving worsening worsened minimal trace slight subtle left right "
    "bilateral again redemonstrated pulmonary tip otherwise no"
)
#: Stricter set for a bare comma (a size word after a comma is usually another list item).
COMMA_STARTERS: Final = _words(
    "there the this these it its heart cardiac lungs mediastinal mediastinum "
    "cardiomediastinal osseous bony stable unchanged persistent interval again otherwise "
    "redemonstrated however"
)
_LIST_WORDS: Final = frozenset(
    {"or", "and", "nor", ",", "/", "and/or", "of", "the", "a", "an", "any"}
)


@dataclass
class SentenceTokens:
    """Tokens of one lower-cased sentence with their character offsets."""

    text: str
    words: list[str]
    starts: list[int]
    ends: list[int]

    @classmethod
    def of(cls, text: str) -> SentenceTokens:
        words, starts, ends = [], [], []
        for m in _TOKEN_RE.finditer(text):
            words.append(m.group())
            starts.append(m.start())
            ends.append(m.end())
        return cls(text, words, starts, ends)

    def between(self, start: int, end: int) -> range:
        """Indices of tokens that lie inside ``[start, end)``."""
        lo = bisect.bisect_left(self.starts, start)
        hi = bisect.bisect_left(self.starts, end)
        while hi > lo and self.ends[hi - 1] > end:
            hi -= 1
        return range(lo, hi)


def find_cues(text: str) -> list[Cue]:
    return [Cue(start, end, text[start:end], CUE_RULES[i]) for i, start, end in _CUES.scan(text)]


def _is_terminator(tokens: SentenceTokens, i: int) -> bool:
    word = tokens.words[i]
    if word in TERMINATORS:
        return True
    return i + 1 < len(tokens.words) and (word, tokens.words[i + 1]) in TERMINATOR_BIGRAMS


#: Widest scope of any cue (content words); a gap holding more ends every scope that spans it.
MAX_WINDOW: Final = max(rule.window for rule in CUE_RULES)


class SpanCover:
    """Which tokens start inside one of a set of spans (mentions), in O(1) per token.

    Built once per sentence, so that scope checks need not scan every other mention for every
    token (that made the analyser cubic in sentence length on run-on text).
    """

    def __init__(self, tokens: SentenceTokens, spans: Iterable[tuple[int, int]]) -> None:
        starts = tokens.starts
        diff = [0] * (len(starts) + 1)
        self._spans = Counter(spans)
        for (a, b), n in self._spans.items():
            lo, hi = bisect.bisect_left(starts, a), bisect.bisect_left(starts, b)
            if lo < hi:
                diff[lo] += n
                diff[hi] -= n
        self._count = list(itertools.accumulate(diff))
        self._starts = starts
        #: per token: inside no span at all
        self.free = [c == 0 for c in self._count[: len(starts)]]

    def covered(self, i: int, exclude: tuple[int, int] | None = None) -> bool:
        """Whether token ``i`` starts inside a span, not counting spans equal to ``exclude``."""
        count = self._count[i]
        if count and exclude is not None and exclude[0] <= self._starts[i] < exclude[1]:
            count -= self._spans.get(exclude, 0)
        return count > 0


def _prefix(flags: Iterable[bool]) -> list[int]:
    return [0, *itertools.accumulate(flags)]


class ScopeIndex:
    """Prefix counts over the tokens of one sentence that answer "does this gap keep a cue and a
    mention in one scope?" in O(log n), and the sentence's cues in text order.

    Tokens inside a mention (``spans``) are skipped, as the scope rules say. A gap is read as one
    left-to-right pass would read it: it breaks at a terminator, at "," or "and" after a verb, at
    a clause-opening "and"/"," (looking forward), at any verb or comma for strict cues, and once
    its content words exceed the cue's window.
    """

    def __init__(
        self, tokens: SentenceTokens, spans: Iterable[tuple[int, int]], cues: Sequence[Cue] = ()
    ) -> None:
        self.tokens = tokens
        self.cues = list(cues)
        self.cue_starts = [c.start for c in self.cues]
        self.cue_ends = [c.end for c in self.cues]
        cover = SpanCover(tokens, spans)
        words = tokens.words
        free = cover.free
        nexts = [*words[1:], ""]
        bigram = [(w, x) in TERMINATOR_BIGRAMS for w, x in zip(words, nexts, strict=True)]
        # One flag list per rule, prefix-summed; a gap [lo, hi) holds prefix[hi] - prefix[lo].
        self._term = _prefix(
            f and (w in TERMINATORS or b) for f, w, b in zip(free, words, bigram, strict=True)
        )
        self._verb = _prefix(f and w in VERBS for f, w in zip(free, words, strict=True))
        self._comma = _prefix(f and w == "," for f, w in zip(free, words, strict=True))
        self._fwd = _prefix(
            f and ((w == "and" and x in AND_STARTERS) or (w == "," and x in COMMA_STARTERS))
            for f, w, x in zip(free, words, nexts, strict=True)
        )
        self._content = _prefix(
            f and w not in _LIST_WORDS and not (len(w) == 1 and not w.isalnum())
            for f, w in zip(free, words, strict=True)
        )
        self._verbs = [
            i for i, (f, w) in enumerate(zip(free, words, strict=True)) if f and w in VERBS
        ]
        self._clauses = [
            i for i, (f, w) in enumerate(zip(free, words, strict=True)) if f and w in {",", "and"}
        ]

    def _hard_break(self, lo: int, hi: int, forward: bool) -> bool:
        if self._term[hi] > self._term[lo] or (forward and self._fwd[hi] > self._fwd[lo]):
            return True
        # "," or "and" after a verb, both inside the gap
        k = bisect.bisect_left(self._verbs, lo)
        if k == len(self._verbs) or self._verbs[k] >= hi:
            return False
        c = bisect.bisect_left(self._clauses, hi) - 1
        return c >= 0 and self._clauses[c] > self._verbs[k]

    def in_scope(self, gap: range, window: int, forward: bool, strict_verbs: bool = False) -> bool:
        """Whether the tokens ``gap`` (between a cue and a mention) keep them in one scope."""
        lo, hi = gap.start, gap.stop
        if hi <= lo:
            return True
        if self._hard_break(lo, hi, forward):
            return False
        if strict_verbs and (self._verb[hi] > self._verb[lo] or self._comma[hi] > self._comma[lo]):
            return False
        return self._content[hi] - self._content[lo] <= window

    def closed(self, gap: range, forward: bool) -> bool:
        """Whether no cue of any rule reaches across ``gap``; then none reaches across a wider gap
        either, so a nearest-first search can stop."""
        lo, hi = gap.start, gap.stop
        if hi <= lo:
            return False
        return (
            self._hard_break(lo, hi, forward) or self._content[hi] - self._content[lo] > MAX_WINDOW
        )


def cue_status(
    tokens: SentenceTokens,
    span: tuple[int, int],
    cues: list[Cue],
    mention_spans: list[tuple[int, int]],
    _depth: int = 0,
    *,
    scope: ScopeIndex | None = None,
) -> tuple[int, Cue | None]:
    """Status of the mention at ``span``: 1 positive, 0 negative, -1 uncertain, and the cue.

    Words inside ``mention_spans`` do not count towards a scope. Pass ``scope`` (built from the
    same tokens, spans and cues) when asking for many mentions of one sentence.
    """
    if scope is None:
        scope = ScopeIndex(tokens, mention_spans, cues)
    return _cue_status(scope, span, frozenset(), _depth)


def _cue_status(
    scope: ScopeIndex, span: tuple[int, int], exclude: frozenset[int], depth: int
) -> tuple[int, Cue | None]:
    # The nearest cue whose scope reaches the mention wins (a cue before it on a tie).
    start, end = span
    before = _nearest_before(scope, start, exclude)
    after = _nearest_after(scope, end, exclude)
    if before is not None and (after is None or before[0] <= after[0]):
        cue = before[1]
    elif after is not None:
        cue = after[1]
    else:
        return 1, None
    if cue.rule.kind == "uncertain" and cue.end <= start:
        negation = _negated_hedge(scope, cue, start, exclude)
        if negation is not None:
            return 0, negation
    if cue.rule.kind == "negative":
        return 0, cue
    if cue.rule.kind == "uncertain":
        return -1, cue
    # inherit: "no focal opacity to suggest pneumonia" -> as the cue before it says, else uncertain
    if depth > 2:
        return -1, cue
    status, _ = _cue_status(scope, (cue.start, cue.end), exclude | {id(cue)}, depth + 1)
    return (0, cue) if status == 0 else (-1, cue)


def _nearest_before(
    scope: ScopeIndex, start: int, exclude: frozenset[int]
) -> tuple[int, Cue] | None:
    """(distance, cue) of the nearest cue before ``start`` whose scope reaches forward to it.

    Cues are tried nearest first and the search stops once a gap closes every scope, so a long
    run-on sentence costs a few look-ups per mention, not one per cue.
    """
    tokens, cues = scope.tokens, scope.cues
    k = bisect.bisect_right(scope.cue_ends, start) - 1
    while k >= 0:
        cue = cues[k]
        k -= 1
        gap = tokens.between(cue.end, start)
        rule = cue.rule
        if (
            id(cue) not in exclude
            and rule.kind != "pseudo"
            and rule.direction in ("pre", "both")
            and scope.in_scope(gap, rule.window, forward=True)
        ):
            return (start - cue.end, cue)
        if scope.closed(gap, forward=True):
            break
    return None


def _nearest_after(scope: ScopeIndex, end: int, exclude: frozenset[int]) -> tuple[int, Cue] | None:
    """(distance, cue) of the nearest cue after ``end`` whose scope reaches back to it; a cue
    that also looks forward, or has a short window, is cut by any verb or comma in between."""
    tokens, cues = scope.tokens, scope.cues
    k = bisect.bisect_left(scope.cue_starts, end)
    while k < len(cues):
        cue = cues[k]
        k += 1
        gap = tokens.between(end, cue.start)
        rule = cue.rule
        strict = rule.direction == "both" or rule.window <= 2
        if (
            id(cue) not in exclude
            and rule.kind != "pseudo"
            and rule.direction in ("post", "both")
            and scope.in_scope(gap, rule.window, forward=False, strict_verbs=strict)
        ):
            return (cue.start - end, cue)
        if scope.closed(gap, forward=False):
            break
    return None


def _negated_hedge(
    scope: ScopeIndex, hedge: Cue, start: int, exclude: frozenset[int]
) -> Cue | None:
    """The negation that turns the hedge ``hedge`` before a mention at ``start`` into a negative.

    "no suspicious nodules", "no effusion or suspicious nodules": "suspicious" qualifies the noun
    inside a negation; it does not hedge it. Other hedges do need the negation right before them
    ("no possible ..."), so that "no effusion, possible nodule" stays uncertain. The first such
    negation in text order wins: walk back, keep the farthest found.
    """
    tokens, cues = scope.tokens, scope.cues
    suspicious = hedge.text == "suspicious"
    found: Cue | None = None
    k = bisect.bisect_right(scope.cue_ends, hedge.start) - 1
    while k >= 0:
        other = cues[k]
        k -= 1
        adjacent = len(tokens.between(other.end, hedge.start)) == 0
        reach = tokens.between(other.end, start)
        if (
            id(other) not in exclude
            and other.rule.kind == "negative"
            and other.rule.direction == "pre"
            and (
                adjacent or (suspicious and scope.in_scope(reach, other.rule.window, forward=True))
            )
        ):
            found = other
        if not adjacent and (not suspicious or scope.closed(reach, forward=True)):
            break
    return found
