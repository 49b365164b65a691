"""Building blocks of report text: mentions (what a sentence states) and phrasing helpers.

A :class:`Mention` is one statement about a CheXpert observation (positive, negative or
uncertain) with its key phrase; labels are aggregated from mentions. :class:`Writer` makes the
random phrasing choices with a radiologist's habits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

POSITIVE, NEGATIVE, UNCERTAIN = "positive", "negative", "uncertain"


@dataclass(frozen=True)
class Mention:
    """One statement about a CheXpert observation, with its key phrase."""

    observation: str
    status: str  # positive | negative | uncertain
    text: str  # key phrase: anatomy + observation + modifiers; "no ..." / "possible ..." marked
    anatomy: str | None = None

    def to_dict(self) -> dict[str, str | None]:
        return {
            "text": self.text,
            "observation": self.observation,
            "anatomy": self.anatomy,
            "status": self.status,
        }


Option = tuple[str, list[Mention]]


class Writer:
    """Random choices with a radiologist's habits: each style prefers some phrasings."""

    def __init__(self, rng: np.random.Generator, style: int) -> None:
        self.rng = rng
        self.style = style

    def chance(self, p: float) -> bool:
        return bool(self.rng.random() < p)

    def pick(self, options):
        if self.chance(0.55):
            return options[self.style % len(options)]
        return options[int(self.rng.integers(len(options)))]


def cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" or word[:2] in ("8 ", "11", "18") else "a"


def zone_phrase(w: Writer, side: str, zone: str) -> tuple[str, str]:
    """(adjective, prepositional phrase) naming a lung zone: 'right lower lobe', 'in the lingula'."""
    if side == "bilateral":
        return {
            "lower": ("bibasilar", "at both lung bases"),
            "middle": ("bilateral mid lung", "in both mid lungs"),
            "upper": ("bilateral upper lobe", "in both upper lobes"),
        }[zone]
    if zone == "upper":
        options = [
            (f"{side} upper lobe", f"in the {side} upper lobe"),
            (f"{side} upper lung", f"in the {side} upper lung zone"),
        ]
    elif zone == "middle":
        if side == "right":
            options = [
                ("right middle lobe", "in the right middle lobe"),
                ("right mid lung", "in the right mid lung zone"),
            ]
        else:
            options = [
                ("lingular", "in the lingula"),
                ("left mid lung", "in the left mid lung zone"),
            ]
    else:
        options = [
            (f"{side} lower lobe", f"in the {side} lower lobe"),
            (f"{side} basilar", f"at the {side} lung base"),
        ]
    return w.pick(options)


def nth(n: int) -> str:
    return {1: "1st", 2: "2nd", 3: "3rd"}.get(n, f"{n}th")


def size_text(w: Writer, mm: int) -> str:
    if mm >= 30 or (mm >= 10 and w.chance(0.5)):
        return f"{mm / 10:.1f} cm"
    return f"{mm} mm"
