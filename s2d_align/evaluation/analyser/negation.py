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
import re
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


def _gap_in_scope(
    tokens: SentenceTokens,
    start: int,
    end: int,
    masked: list[tuple[int, int]],
    window: int,
    forward: bool,
    strict_verbs: bool = False,
) -> bool:
    """Whether the text between a cue and a mention (``[start, end)``) keeps them in one scope."""
    idx = tokens.between(start, end)
    verb_seen = False
    content = 0
    for i in idx:
        word = tokens.words[i]
        s = tokens.starts[i]
        if any(a <= s < b for a, b in masked):
            continue  # inside another mention
        if _is_terminator(tokens, i):
            return False
        nxt = tokens.words[i + 1] if i + 1 < len(tokens.words) else ""
        if word in VERBS:
            if strict_verbs:
                return False
            verb_seen = True
        elif word in {",", "and"}:
            if verb_seen or (strict_verbs and word == ","):
                return False
            if forward and word == "and" and nxt in AND_STARTERS:
                return False
            if forward and word == "," and nxt in COMMA_STARTERS:
                return False
        if word not in _LIST_WORDS and not (len(word) == 1 and not word.isalnum()):
            content += 1
            if content > window:
                return False
    return True


def cue_status(
    tokens: SentenceTokens,
    span: tuple[int, int],
    cues: list[Cue],
    mention_spans: list[tuple[int, int]],
    _depth: int = 0,
) -> tuple[int, Cue | None]:
    """Status of the mention at ``span``: 1 positive, 0 negative, -1 uncertain, and the cue."""
    start, end = span
    others = [s for s in mention_spans if s != span]
    best: tuple[int, Cue] | None = None  # (distance, cue)
    for cue in cues:
        rule = cue.rule
        if rule.kind == "pseudo":
            continue
        if cue.end <= start and rule.direction in ("pre", "both"):
            if _gap_in_scope(tokens, cue.end, start, others, rule.window, forward=True):
                dist = start - cue.end
                if best is None or dist < best[0]:
                    best = (dist, cue)
        elif cue.start >= end and rule.direction in ("post", "both"):
            strict = rule.direction == "both" or rule.window <= 2
            if _gap_in_scope(
                tokens, end, cue.start, others, rule.window, forward=False, strict_verbs=strict
            ):
                dist = cue.start - end
                if best is None or dist < best[0]:
                    best = (dist, cue)
    if best is None:
        return 1, None
    cue = best[1]
    if cue.rule.kind == "uncertain" and cue.end <= start:
        # "no suspicious nodules", "no effusion or suspicious nodules": "suspicious" qualifies the
        # noun inside a negation; it does not hedge it. Other hedges do need the negation right
        # before them ("no possible ..."), so that "no effusion, possible nodule" stays uncertain.
        for other in cues:
            if (
                other.rule.kind != "negative"
                or other.rule.direction != "pre"
                or other.end > cue.start
            ):
                continue
            adjacent = len(tokens.between(other.end, cue.start)) == 0
            qualifier = cue.text == "suspicious" and _gap_in_scope(
                tokens, other.end, start, others, other.rule.window, forward=True
            )
            if adjacent or qualifier:
                return 0, other
    if cue.rule.kind == "negative":
        return 0, cue
    if cue.rule.kind == "uncertain":
        return -1, cue
    # inherit: "no focal opacity to suggest pneumonia" -> as the cue before it says, else uncertain
    if _depth > 2:
        return -1, cue
    status, _ = cue_status(
        tokens, (cue.start, cue.end), [c for c in cues if c is not cue], mention_spans, _depth + 1
    )
    return (0, cue) if status == 0 else (-1, cue)
