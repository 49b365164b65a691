"""Key phrases: the vocabulary of the stage-3 head, multi-hot targets and oracle phrases.

Key phrases come from the project's clinical text analyser (anatomy + observation + modifiers,
with negated and uncertain mentions marked: "small left pleural effusion", "no pneumothorax").
``model.keyphrase_source`` chooses which of them count:

* ``positive`` (default): asserted findings only. Negated and normal statements ("no
  pneumothorax", "normal heart size") are left out: nearly every report has them, so a vocabulary
  of the most frequent phrases filled up with them and the head learnt to predict the same few
  for every study. Uncertain mentions are left out too: a hedge is weak evidence, and a target
  the report itself doubts teaches the head to assert it.
* ``positive+uncertain``: also hedged findings, kept apart as ``possible <finding>``.
* ``all``: every phrase verbatim (the behaviour before the choice existed, for old runs).

For the first two a phrase is made canonical so that it generalises across reports: the
severity or size word is dropped ("small left pleural effusion" -> "left pleural effusion",
"moderate cardiomegaly" -> "cardiomegaly": how much is for the report to say, the head only has
to say what and where) while side and zone are kept as the analyser writes them ("left lower
lobe", "bibasilar", "right apical"), and a word the analyser repeats back to back is written
once ("right central central venous catheter"). A study without any such finding has no phrase.

The vocabulary is the K phrases that occur in the most train-split reports (document frequency,
ties broken alphabetically so it never depends on dict order). Prompts list a study's phrases in
vocabulary order, so the oracle phrases seen in training and the phrases the head predicts at
inference look alike. :func:`oracle_keyphrases` is the one way a study's phrases are computed
(the "keyphrases" signal's builder, :mod:`s2d_align.training.signals`, calls it), for training
targets and prompts, threshold tuning and inference alike.

The head's decision rule is one threshold per phrase, tuned on val (:func:`tune_phrase_thresholds`).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np
import torch

from s2d_align.errors import DataError
from s2d_align.utils.io import read_json, write_json
from s2d_align.utils.progress import progress_bar

if TYPE_CHECKING:
    from s2d_align.evaluation.analyser import KeyPhrase

KeyphraseSource = Literal["positive", "positive+uncertain", "all"]
KEYPHRASE_SOURCES: tuple[str, ...] = get_args(KeyphraseSource)

VOCAB_FILE = "keyphrase_vocab.json"
THRESHOLD_FILE = "keyphrase_threshold.json"
#: Candidate thresholds for the val-tuned decision rule of the key-phrase head.
THRESHOLD_GRID = tuple(round(x, 2) for x in np.arange(0.05, 0.951, 0.05))

_SPACES = re.compile(r"\s+")
_HEDGE = "possible "


def normalise_phrase(text: str) -> str:
    """Lower case, single spaces, no trailing punctuation: one spelling per phrase."""
    return _SPACES.sub(" ", text.strip().lower()).strip(" .;,:")


def canonical_phrase(kp: KeyPhrase) -> str:
    """A finding phrase without its severity word, side and zone kept ("possible " kept)."""
    text = normalise_phrase(kp.text)
    hedge = ""
    if kp.status == "uncertain" and text.startswith(_HEDGE):
        hedge, text = _HEDGE, text[len(_HEDGE) :]
    # The analyser writes "<severity> <anatomy> <finding>", so the severity word leads when
    # present (an uncertain statement can carry a severity that its text leaves out).
    if kp.severity and text.startswith(kp.severity + " "):
        text = text[len(kp.severity) + 1 :]
    words = text.split()
    text = " ".join(w for i, w in enumerate(words) if i == 0 or w != words[i - 1])
    return hedge + text if text else ""


def _check_source(source: str) -> None:
    if source not in KEYPHRASE_SOURCES:
        raise ValueError(
            f"unknown key-phrase source {source!r} (model.keyphrase_source is one of "
            f"{', '.join(KEYPHRASE_SOURCES)})"
        )


def report_keyphrases(report: str, *, source: KeyphraseSource) -> list[str]:
    """The key phrases of one report for ``source`` (see the module docstring), first occurrence
    kept."""
    from s2d_align.evaluation.analyser import analyse

    _check_source(source)
    keep = {"positive"} if source == "positive" else {"positive", "uncertain"}
    seen: dict[str, None] = {}
    for kp in analyse(report).keyphrases:
        if source == "all":
            text = normalise_phrase(kp.text)
        elif kp.status in keep:
            text = canonical_phrase(kp)
        else:
            continue
        if text:
            seen.setdefault(text, None)
    return list(seen)


def extract_keyphrases(
    reports: Mapping[str, str],
    *,
    source: KeyphraseSource,
    progress: bool = False,
    desc: str = "key phrases",
) -> dict[str, list[str]]:
    """``{id: key phrases}`` for every report, unrestricted by any vocabulary (identical texts
    are analysed once)."""
    _check_source(source)
    cache: dict[str, list[str]] = {}
    out: dict[str, list[str]] = {}
    items = progress_bar(reports.items(), wanted=progress, desc=desc, unit="report")
    for sid, report in items:
        if report not in cache:
            cache[report] = report_keyphrases(report, source=source)
        out[sid] = cache[report]
    return out


def vocab_keyphrases(
    phrases: Mapping[str, Iterable[str]], vocab: Sequence[str]
) -> dict[str, list[str]]:
    """Each study's phrases restricted to ``vocab``, in vocabulary order."""
    return {sid: in_vocab(p, vocab) for sid, p in phrases.items()}


def oracle_keyphrases(
    reports: Mapping[str, str],
    vocab: Sequence[str],
    source: KeyphraseSource,
    *,
    progress: bool = False,
) -> dict[str, list[str]]:
    """``{id: phrases}`` of each report that are in ``vocab``, in vocabulary order: the oracle
    phrases of prompts, the head's targets and what thresholds are tuned against. ``source``
    must be the one the vocabulary was built from (:func:`load_vocab_source` for a run)."""
    return vocab_keyphrases(extract_keyphrases(reports, source=source, progress=progress), vocab)


def build_vocab(train_phrases: Iterable[Sequence[str]], k: int) -> list[str]:
    """The ``k`` phrases found in the most train reports; ties by text (deterministic)."""
    counts: Counter[str] = Counter()
    for phrases in train_phrases:
        counts.update(set(phrases))
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return [phrase for phrase, _ in ranked[: max(k, 0)]]


def in_vocab(phrases: Iterable[str], vocab: Sequence[str]) -> list[str]:
    """The phrases that are in ``vocab``, in vocabulary order (the order prompts use)."""
    present = set(phrases)
    return [p for p in vocab if p in present]


def multi_hot(phrases: Iterable[str], vocab: Sequence[str]) -> torch.Tensor:
    """``FloatTensor[K]`` with 1 at the vocabulary positions of ``phrases``."""
    index = {p: i for i, p in enumerate(vocab)}
    out = torch.zeros(len(vocab), dtype=torch.float32)
    for p in phrases:
        if p in index:
            out[index[p]] = 1.0
    return out


def decode_multi_hot(row: Sequence[bool] | np.ndarray, vocab: Sequence[str]) -> list[str]:
    return [vocab[i] for i, on in enumerate(row) if on]


def micro_f1(pred: np.ndarray, target: np.ndarray) -> float:
    """Micro-averaged F1 of two boolean ``[N, K]`` arrays (1.0 when both are empty)."""
    pred, target = pred.astype(bool), target.astype(bool)
    tp = float(np.logical_and(pred, target).sum())
    fp = float(np.logical_and(pred, ~target).sum())
    fn = float(np.logical_and(~pred, target).sum())
    if tp + fp + fn == 0:
        return 1.0
    return 2 * tp / (2 * tp + fp + fn)


def tune_threshold(
    probs: np.ndarray, targets: np.ndarray, grid: Sequence[float] = THRESHOLD_GRID
) -> tuple[float, float]:
    """The grid threshold with the best micro-F1 of ``probs >= t`` vs ``targets``.

    Ties go to the smallest threshold, so the choice is reproducible.
    """
    if probs.shape != targets.shape:
        raise ValueError(f"probs {probs.shape} and targets {targets.shape} differ in shape")
    best_t, best_f1 = float(grid[0]), -1.0
    for t in grid:
        f1 = micro_f1(probs >= t, targets)
        if f1 > best_f1 + 1e-12:
            best_t, best_f1 = float(t), f1
    return best_t, best_f1


def save_vocab(
    run_dir: Path, vocab: Sequence[str], counts_from: int, *, source: KeyphraseSource
) -> Path:
    _check_source(source)
    return write_json(
        run_dir / VOCAB_FILE,
        {
            "vocab": list(vocab),
            "source": "analyser",
            "keyphrase_source": source,
            "train_reports": counts_from,
        },
    )


def load_vocab(run_dir: Path) -> list[str]:
    path = run_dir / VOCAB_FILE
    if not path.is_file():
        return []
    data = read_json(path)
    vocab = data.get("vocab") if isinstance(data, dict) else None
    if not isinstance(vocab, list) or not all(isinstance(v, str) for v in vocab):
        raise DataError(f"{path}: expected {{'vocab': [phrases]}}")
    return vocab


def load_vocab_source(run_dir: Path) -> KeyphraseSource:
    """The ``keyphrase_source`` a run's vocabulary was built from. Files written before the
    choice existed hold no such key and were built from every phrase ("all")."""
    path = run_dir / VOCAB_FILE
    data = read_json(path) if path.is_file() else {}
    source = data.get("keyphrase_source", "all") if isinstance(data, dict) else None
    if source not in KEYPHRASE_SOURCES:
        raise DataError(
            f"{path}: keyphrase_source {source!r} is not one of {', '.join(KEYPHRASE_SOURCES)}"
        )
    return source


# ----------------------------------------------------------------------------- thresholds
def phrase_f1(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """F1 of every column of two boolean ``[N, K]`` arrays (1.0 where both are empty)."""
    pred, target = pred.astype(bool), target.astype(bool)
    tp = np.logical_and(pred, target).sum(axis=0).astype(float)
    wrong = np.logical_xor(pred, target).sum(axis=0).astype(float)  # fp + fn
    denom = 2 * tp + wrong
    return np.divide(2 * tp, denom, out=np.ones_like(tp), where=denom > 0)


@dataclass(frozen=True)
class PhraseThresholds:
    """Val-tuned decision rule of the key-phrase head: phrase ``k`` is predicted when its
    probability reaches ``thresholds[k]``."""

    thresholds: np.ndarray  # [K], vocabulary order
    global_threshold: float  # best micro-F1 threshold over every phrase at once (the old rule)
    fallback: np.ndarray  # [K] bool: phrases with nothing to tune on, set to ``fallback_threshold``
    fallback_threshold: float
    val_f1: float  # micro F1 with the per-phrase thresholds
    global_val_f1: float  # micro F1 with ``global_threshold`` for every phrase

    def record(self, vocab: Sequence[str]) -> dict[str, Any]:
        """The JSON form stored as ``keyphrase_threshold.json`` (without split bookkeeping)."""
        if len(vocab) != len(self.thresholds):
            raise ValueError(f"{len(self.thresholds)} thresholds for {len(vocab)} phrases")
        return {
            "thresholds": {p: float(t) for p, t in zip(vocab, self.thresholds, strict=True)},
            "global": self.global_threshold,
            "val_f1": self.val_f1,
            "global_val_f1": self.global_val_f1,
            "fallback": [p for p, f in zip(vocab, self.fallback, strict=True) if f],
            "fallback_threshold": self.fallback_threshold,
        }


def tune_phrase_thresholds(
    probs: np.ndarray, targets: np.ndarray, grid: Sequence[float] = THRESHOLD_GRID
) -> PhraseThresholds:
    """One threshold per phrase: the grid value with the best F1 of that phrase on the given
    (val) rows, ties to the smallest.

    A phrase with no positive row, or whose positives no grid value reaches (best F1 0), has
    nothing to tune on: on val every prediction of it is a false positive. It takes the top of
    the grid, so it is predicted only when the head is all but sure. The global micro-F1
    threshold (``global_threshold``, recorded for comparison) is no fallback: it is set by other
    phrases' score scales, and on a weakly trained head whose probabilities sit near 0.5 it
    flagged every such phrase for every study (the smoke preset: 13 phrases per test prompt,
    where training prompts hold about one, and near-empty generations).
    """
    if probs.ndim != 2 or probs.shape != targets.shape:
        raise ValueError(f"probs {probs.shape} and targets {targets.shape}: expected equal [N, K]")
    grid = sorted(float(t) for t in grid)
    if not grid:
        raise ValueError("the threshold grid is empty")
    targets = targets.astype(bool)
    global_t, global_f1 = tune_threshold(probs, targets, grid)
    k = probs.shape[1]
    top = grid[-1]
    if probs.shape[0] == 0 or k == 0:
        thresholds = np.full(k, top)
        val_f1 = micro_f1(probs >= thresholds, targets)
        return PhraseThresholds(thresholds, global_t, np.ones(k, bool), top, val_f1, global_f1)
    scores = np.stack([phrase_f1(probs >= t, targets) for t in grid])  # [T, K]
    best = scores.argmax(axis=0)  # first maximum: the smallest threshold among ties
    best_f1 = scores[best, np.arange(k)]
    fallback = ~targets.any(axis=0) | (best_f1 <= 0)
    thresholds = np.where(fallback, top, np.asarray(grid)[best])
    val_f1 = micro_f1(probs >= thresholds, targets)
    return PhraseThresholds(thresholds, global_t, fallback, top, val_f1, global_f1)


def phrase_thresholds(
    record: Mapping[str, Any], vocab: Sequence[str], where: str = THRESHOLD_FILE
) -> np.ndarray:
    """``[K]`` thresholds in vocabulary order from a saved threshold record.

    Reads the per-phrase format (``{"thresholds": {phrase: t}, "global": t, ...}``) and the
    single-threshold one of older runs (``{"threshold": t}``, used for every phrase).
    """
    if not isinstance(record, Mapping):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if "thresholds" in record:
        table = record["thresholds"]
        if not isinstance(table, Mapping) or set(table) != set(vocab):
            missing = sorted(set(vocab) - set(table)) if isinstance(table, Mapping) else []
            raise DataError(
                f"{where}: 'thresholds' must map every vocabulary phrase to a threshold "
                f"(missing or different phrases, e.g. {missing[:3]})"
            )
        values = [table[p] for p in vocab]
    elif "threshold" in record:
        values = [record["threshold"]] * len(vocab)
    else:
        raise DataError(f"{where}: expected 'thresholds' (per phrase) or 'threshold'")
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        raise DataError(f"{where}: thresholds must be numbers")
    return np.asarray(values, dtype=np.float64)
