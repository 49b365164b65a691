"""The sentences that finding AUROC scores: drawn from the train reports, labelled by the run's
labeler, with a fixed hand-written sentence as the fallback.

A model is scored on how likely it finds a sentence that states an observation. A hand-written
sentence ("There is a pleural effusion.") is off the training distribution when the reports say
it another way ("Small bilateral pleural effusions."): its likelihood then measures the wording,
not the belief, and AUROCs can fall far below 0.5 for findings the model's reports do state. So
the sentences come from the data:

- the train split's reports are split into sentences (the analyser's splitter, which drops the
  closing full stop) and every distinct sentence is labelled once with the run's labeler;
- for each observation, the :data:`SENTENCES_PER_POLARITY` most frequent sentences that are
  positive for it and for no other finding (No Finding aside: CheXpert sets it beside Support
  Devices), and as many of the most frequent sentences that negate it and state no positive
  finding; ties by frequency, then text;
- an observation without any such positive sentence uses its :data:`FINDING_SENTENCES` entry
  (listed in :attr:`FindingSentences.fallback`); one without negatives has an empty negative set.

A study's score for an observation (:meth:`FindingSentences.contrast`) is the mean likelihood of
its positive sentences minus that of its negative ones, or the positive mean alone. The choice
is cached under the evaluation cache by (train reports, labeler signature, K), so a grid labels
the train sentences once.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from s2d_align.chexpert import OBSERVATIONS
from s2d_align.errors import DataError
from s2d_align.evaluation.analyser import ANALYSER_VERSION, split_sentences
from s2d_align.utils.io import read_json, sha256_text, write_json

#: Sentences per observation on each side (positive, negative).
SENTENCES_PER_POLARITY = 3
#: Version of the selection rule; part of the cache key.
SELECTION_VERSION = "1"

#: One plain, side-neutral positive sentence per observation: the fallback for an observation
#: that no train sentence states on its own (checked against the rules labeler in the tests).
FINDING_SENTENCES: dict[str, str] = {
    "Enlarged Cardiomediastinum": "The cardiomediastinal silhouette is enlarged.",
    "Cardiomegaly": "The heart is enlarged.",
    "Lung Opacity": "There is an opacity in the lung.",
    "Lung Lesion": "There is a pulmonary nodule.",
    "Edema": "There is pulmonary edema.",
    "Consolidation": "There is consolidation in the lung.",
    "Pneumonia": "The findings are consistent with pneumonia.",
    "Atelectasis": "There is atelectasis.",
    "Pneumothorax": "There is a pneumothorax.",
    "Pleural Effusion": "There is a pleural effusion.",
    "Pleural Other": "There is pleural thickening.",
    "Fracture": "There is a rib fracture.",
    "Support Devices": "A support device is in place.",
    "No Finding": "No acute cardiopulmonary abnormality.",
}
assert tuple(FINDING_SENTENCES) == OBSERVATIONS


def _as_train_sentence(text: str) -> str:
    # The fallback takes the form the splitter gives train sentences (no closing full stop),
    # so every scored sentence ends the same way.
    return " ".join(split_sentences(text))


@dataclass(frozen=True)
class FindingSentences:
    """Positive and negative sentences per observation (every observation, in
    :data:`~s2d_align.chexpert.OBSERVATIONS` order) and how they were chosen."""

    positive: dict[str, tuple[str, ...]]
    negative: dict[str, tuple[str, ...]]
    fallback: tuple[str, ...]  # observations whose positive set is the FINDING_SENTENCES entry
    counts: dict[str, int]  # train occurrences of every chosen sentence (0: fallback)
    k: int = SENTENCES_PER_POLARITY
    train_sha256: str = ""  # digest of the train reports (sorted); "" when not from a split
    labeler: str = ""  # signature of the labeler that labelled them

    def __post_init__(self) -> None:
        for name, sets in (("positive", self.positive), ("negative", self.negative)):
            if tuple(sets) != OBSERVATIONS:
                raise DataError(f"finding sentences: {name} sets must list the 14 observations")
        empty = [o for o in OBSERVATIONS if not self.positive[o]]
        if empty:
            raise DataError(f"finding sentences: no positive sentence for {empty}")

    def sentences(self) -> list[str]:
        """Every distinct sentence to score, in a fixed order (first use)."""
        return list(
            dict.fromkeys(s for o in OBSERVATIONS for s in (*self.positive[o], *self.negative[o]))
        )

    def contrast(self, scores: np.ndarray) -> np.ndarray:
        """``[N, 14]`` finding scores from ``[N, S]`` sentence log-likelihoods (columns in
        :meth:`sentences` order): mean over the positive set minus mean over the negative set,
        or, for an observation the train reports never negate, minus the mean over every
        negative sentence of the other observations (the study's baseline for "a normal
        statement": without it, a model that writes any finding more fluently for this image
        would rank the study higher whatever the finding); the positive mean alone when no
        observation has a negative sentence."""
        order = {s: i for i, s in enumerate(self.sentences())}
        scores = np.asarray(scores, dtype=np.float64)
        if scores.ndim != 2 or scores.shape[1] != len(order):
            raise ValueError(
                f"sentence scores have shape {scores.shape}; expected (studies, {len(order)})"
            )
        out = np.empty((scores.shape[0], len(OBSERVATIONS)))
        every_negative = sorted({order[s] for obs in OBSERVATIONS for s in self.negative[obs]})
        for j, obs in enumerate(OBSERVATIONS):
            out[:, j] = scores[:, [order[s] for s in self.positive[obs]]].mean(1)
            if self.negative[obs]:
                out[:, j] -= scores[:, [order[s] for s in self.negative[obs]]].mean(1)
            elif every_negative:
                out[:, j] -= scores[:, every_negative].mean(1)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "selection": SELECTION_VERSION,
            "k": self.k,
            "train_sha256": self.train_sha256,
            "labeler": self.labeler,
            "fallback": list(self.fallback),
            "positive": {o: list(v) for o, v in self.positive.items()},
            "negative": {o: list(v) for o, v in self.negative.items()},
            "counts": dict(self.counts),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FindingSentences:
        try:
            return cls(
                positive={o: tuple(data["positive"][o]) for o in OBSERVATIONS},
                negative={o: tuple(data["negative"][o]) for o in OBSERVATIONS},
                fallback=tuple(data["fallback"]),
                counts={str(s): int(n) for s, n in data["counts"].items()},
                k=int(data["k"]),
                train_sha256=str(data["train_sha256"]),
                labeler=str(data["labeler"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise DataError(f"finding sentences: malformed record ({exc!r})") from None


def sentence_counts(reports: Iterable[str]) -> Counter[str]:
    """How often each sentence occurs in ``reports`` (the analyser's sentence splitter)."""
    return Counter(s for report in reports for s in split_sentences(report))


def _positive_findings(labels: Mapping[str, int | None]) -> set[str]:
    return {o for o, v in labels.items() if v == 1 and o != "No Finding"}


def select_finding_sentences(
    counts: Mapping[str, int],
    labels: Mapping[str, Mapping[str, int | None]],
    k: int = SENTENCES_PER_POLARITY,
) -> FindingSentences:
    """The ``k`` most frequent sentences positive for each observation alone, and the ``k``
    most frequent negative for it (and positive for nothing), ties broken by text.

    ``counts``: sentence -> occurrences; ``labels``: sentence -> CheXpert labels (every counted
    sentence). "Alone": no other finding is positive; No Finding is left out of that test, as
    CheXpert sets it beside Support Devices. No Finding itself takes sentences with No Finding
    = 1 and no positive finding. An observation without a positive sentence falls back to its
    :data:`FINDING_SENTENCES` entry.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    missing = [s for s in counts if s not in labels]
    if missing:
        raise DataError(
            f"finding sentences: no labels for {len(missing)} sentence(s), e.g. {missing[0]!r}"
        )
    ranked = sorted(counts, key=lambda s: (-counts[s], s))
    positive: dict[str, list[str]] = {o: [] for o in OBSERVATIONS}
    negative: dict[str, list[str]] = {o: [] for o in OBSERVATIONS}
    for sentence in ranked:
        row = labels[sentence]
        found = _positive_findings(row)
        for obs in OBSERVATIONS:
            value = row.get(obs)
            if obs == "No Finding":
                alone = value == 1 and not found
            else:
                alone = value == 1 and found == {obs}
            if alone and len(positive[obs]) < k:
                positive[obs].append(sentence)
            elif value == 0 and not found and len(negative[obs]) < k:
                negative[obs].append(sentence)
    fallback = tuple(o for o in OBSERVATIONS if not positive[o])
    for obs in fallback:
        positive[obs] = [_as_train_sentence(FINDING_SENTENCES[obs])]
    chosen = {s for o in OBSERVATIONS for s in (*positive[o], *negative[o])}
    return FindingSentences(
        positive={o: tuple(v) for o, v in positive.items()},
        negative={o: tuple(v) for o, v in negative.items()},
        fallback=fallback,
        counts={s: int(counts.get(s, 0)) for s in sorted(chosen)},
        k=k,
    )


def train_finding_sentences(
    reports: Sequence[str],
    labeler: Any,
    *,
    k: int = SENTENCES_PER_POLARITY,
    cache_dir: Path | None = None,
) -> FindingSentences:
    """:func:`select_finding_sentences` on the sentences of ``reports`` (the train split), each
    distinct sentence labelled once by ``labeler`` (``label(texts)``, ``signature``).

    With ``cache_dir`` the choice is stored there, keyed by the reports' digest (order-free),
    the labeler signature, ``k`` and the selection and splitter versions; a damaged or
    mismatched entry is recomputed."""
    digest = sha256_text(*sorted(reports))
    key = sha256_text(digest, labeler.signature, str(k), SELECTION_VERSION, ANALYSER_VERSION)
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"finding-sentences-{digest[:12]}-{key[:16]}.json"
        if path.is_file():
            try:
                cached = FindingSentences.from_dict(read_json(path))
            except DataError:  # a damaged entry is recomputed, never trusted
                cached = None
            wanted = (digest, labeler.signature, k)
            if cached is not None and (cached.train_sha256, cached.labeler, cached.k) == wanted:
                return cached
    counts = sentence_counts(reports)
    unique = sorted(counts)
    labelled = labeler.label(unique)
    if len(labelled) != len(unique):
        raise DataError(
            f"labeler {labeler.signature} returned {len(labelled)} label sets for "
            f"{len(unique)} train sentences"
        )
    chosen = select_finding_sentences(counts, dict(zip(unique, labelled, strict=True)), k)
    chosen = dataclasses.replace(chosen, train_sha256=digest, labeler=labeler.signature)
    if path is not None:
        write_json(path, chosen.to_dict(), indent=None)
    return chosen
