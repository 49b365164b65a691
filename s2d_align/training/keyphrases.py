"""Key phrases: the vocabulary of the stage-3 head, multi-hot targets and oracle phrases.

Key phrases come from the project's clinical text analyser (anatomy + observation + modifiers,
with negated and uncertain mentions marked: "small left pleural effusion", "no pneumothorax").
The vocabulary is the K phrases that occur in the most train-split reports (document frequency,
ties broken alphabetically so it never depends on dict order). Prompts list a study's phrases in
vocabulary order, so the oracle phrases seen in training and the phrases the head predicts at
inference look alike.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from s2d_align.errors import DataError
from s2d_align.utils.io import read_json, write_json

VOCAB_FILE = "keyphrase_vocab.json"
THRESHOLD_FILE = "keyphrase_threshold.json"
#: Candidate thresholds for the val-tuned decision rule of the key-phrase head.
THRESHOLD_GRID = tuple(round(x, 2) for x in np.arange(0.05, 0.951, 0.05))

_SPACES = re.compile(r"\s+")


def normalise_phrase(text: str) -> str:
    """Lower case, single spaces, no trailing punctuation: one spelling per phrase."""
    return _SPACES.sub(" ", text.strip().lower()).strip(" .;,:")


def report_keyphrases(report: str) -> list[str]:
    """The analyser's key phrases of one report, normalised, first occurrence kept."""
    from s2d_align.evaluation.analyser import analyse

    seen: dict[str, None] = {}
    for kp in analyse(report).keyphrases:
        text = normalise_phrase(kp.text)
        if text:
            seen.setdefault(text, None)
    return list(seen)


def extract_keyphrases(
    reports: Mapping[str, str], *, progress: bool = False, desc: str = "key phrases"
) -> dict[str, list[str]]:
    """``{id: key phrases}`` for every report (identical texts are analysed once)."""
    cache: dict[str, list[str]] = {}
    out: dict[str, list[str]] = {}
    items = tqdm(
        reports.items(), desc=desc, unit="report", disable=not (progress and sys.stderr.isatty())
    )
    for sid, report in items:
        if report not in cache:
            cache[report] = report_keyphrases(report)
        out[sid] = cache[report]
    return out


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


def save_vocab(run_dir: Path, vocab: Sequence[str], counts_from: int) -> Path:
    return write_json(
        run_dir / VOCAB_FILE,
        {"vocab": list(vocab), "source": "analyser", "train_reports": counts_from},
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
