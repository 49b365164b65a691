"""Evaluation profiles: what text the metrics see. Each profile has a version in the signature.

``raw-v1`` (the suite's protocol)
    References are the raw report texts; references and hypotheses both go through pycocoevalcap's
    PTB tokenizer (lowercased, punctuation tokens dropped); nothing is truncated. CE labels are
    computed on the raw texts.

``r2gen-legacy`` (for comparison with tables that used R2Gen's code, and its many forks)
    Reproduces what R2Gen's test loop scored (``modules/tokenizers.py``, ``modules/datasets.py``,
    ``modules/tester.py`` of zhjohnchan/R2Gen). Its quirks, each pinned by a test:

    1. Cleaning is chosen by dataset name: ``iu_xray`` gets the IU rules, anything else the
       MIMIC rules (R2Gen's ``else`` branch), so SynthCXR gets the MIMIC rules.
    2. Everything is lowercased.
    3. ``..`` is collapsed a fixed number of times (3 for IU, 8 for MIMIC), not until none is left.
    4. Enumerations are stripped by blind string replacement: every ``"1. "`` is deleted (also the
       one in ``"rib 11. the"`` -> ``"rib 1the"``), ``". 2. "`` and ``" 2. "`` (up to 5) become
       ``". "``.
    5. MIMIC only: newlines become spaces, runs of ``_`` collapse to one (then the punctuation
       class deletes it, so the ``___`` de-identification mark vanishes), runs of spaces collapse.
    6. Sentences are split on ``". "`` only, so a decimal ``2.5`` survives the split and then
       loses its dot: ``"2.5 cm"`` -> ``"25 cm"``.
    7. Per sentence, ``" / \\ '`` are deleted and then the character class
       ``[.,?;*!%^&_+():-\\[\\]{}]`` is deleted. ``:-\\[`` in that class is a *range* (``:`` to
       ``[``), so ``< = > @`` go too, while the hyphen itself survives (``"x-ray"`` stays).
    8. Sentences are re-joined with ``" . "`` plus a final ``" ."``: full stops become tokens
       and count in every n-gram metric. Empty sentences are kept (R2Gen's emptiness test compares
       a string with ``[]`` and is never false), so ``"a. . b"`` gives ``"a . . b ."``.
    9. With the train-split reports given, tokens seen fewer than ``threshold`` times in the
       cleaned train split (3 IU, 10 MIMIC; R2Gen's scripts) become ``<unk>`` on both sides,
       as R2Gen's references (decoded from ids) and predictions (model vocabulary) were.
    10. References are truncated to ``max_seq_length`` ids *including* the BOS id, so at most
        59 (IU, ``max_seq_length`` 60) or 99 (MIMIC, 100) tokens survive; full stops count.
        Predictions are not truncated (R2Gen's decoder had its own length limit).
    11. No PTB tokenization: R2Gen's ``compute_scores`` hands the space-joined tokens straight to
        the pycocoevalcap scorers. CE labels are computed on these cleaned (and truncated)
        texts, as R2Gen labelled its decoded outputs.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from s2d_align.errors import ConfigError

__all__ = [
    "PROFILES",
    "R2GEN_SETTINGS",
    "Profile",
    "R2GenSettings",
    "clean_report_iu_xray",
    "clean_report_mimic_cxr",
    "get_profile",
    "r2gen_reference_tokens",
    "r2gen_vocabulary",
]

PROFILES = ("raw-v1", "r2gen-legacy")
R2GEN_LEGACY_VERSION = "v1"

# R2Gen's per-sentence deletion class, kept byte for byte: ``:-\[`` is the range ':'..'['.
_R2GEN_PUNCT = re.compile(r"[.,?;*!%^&_+():-\[\]{}]")
_ENUMERATION = (
    (". 2. ", ". "), (". 3. ", ". "), (". 4. ", ". "), (". 5. ", ". "),
    (" 2. ", ". "), (" 3. ", ". "), (" 4. ", ". "), (" 5. ", ". "),
)  # fmt: skip


def _repeat_replace(text: str, old: str, new: str, times: int) -> str:
    for _ in range(times):
        text = text.replace(old, new)
    return text


def _strip_enumeration(text: str) -> str:
    text = text.replace("1. ", "")
    for old, new in _ENUMERATION:
        text = text.replace(old, new)
    return text


def _clean_sentence(sentence: str) -> str:
    for char in ('"', "/", "\\", "'"):
        sentence = sentence.replace(char, "")
    return _R2GEN_PUNCT.sub("", sentence.strip().lower())


def _join_sentences(text: str) -> str:
    sentences = text.strip().lower().split(". ")
    return " . ".join(_clean_sentence(s) for s in sentences) + " ."


def clean_report_iu_xray(report: str) -> str:
    """R2Gen's ``clean_report_iu_xray``: see the module docstring for its quirks."""
    text = _repeat_replace(report, "..", ".", 3)
    return _join_sentences(_strip_enumeration(text))


def clean_report_mimic_cxr(report: str) -> str:
    """R2Gen's ``clean_report_mimic_cxr``: see the module docstring for its quirks."""
    text = report.replace("\n", " ")
    text = _repeat_replace(text, "__", "_", 7)
    text = _repeat_replace(text, "  ", " ", 6)
    text = _repeat_replace(text, "..", ".", 8)
    return _join_sentences(_strip_enumeration(text))


@dataclass(frozen=True)
class R2GenSettings:
    """R2Gen's per-dataset settings (its training scripts; argparse defaults for other data)."""

    cleaner: Callable[[str], str]
    max_seq_length: int  # ids kept per reference, BOS included
    threshold: int  # minimum train-split count for a token to enter the vocabulary


R2GEN_SETTINGS: dict[str, R2GenSettings] = {
    "iu_xray": R2GenSettings(clean_report_iu_xray, 60, 3),
    "mimic_cxr": R2GenSettings(clean_report_mimic_cxr, 100, 10),
    # R2Gen has no third dataset: the else branch picks the MIMIC cleaner, argparse defaults 60/3.
    "synthcxr": R2GenSettings(clean_report_mimic_cxr, 60, 3),
}


def r2gen_vocabulary(train_reports: Iterable[str], settings: R2GenSettings) -> frozenset[str]:
    """Tokens with at least ``threshold`` occurrences in the cleaned train reports."""
    counts = Counter(tok for report in train_reports for tok in settings.cleaner(report).split())
    return frozenset(tok for tok, n in counts.items() if n >= settings.threshold)


def r2gen_reference_tokens(
    report: str, settings: R2GenSettings, vocabulary: frozenset[str] | None = None
) -> list[str]:
    """What R2Gen's tester decoded as the ground truth: cleaned, ``<unk>``-mapped, truncated."""
    tokens = _map_unknown(settings.cleaner(report).split(), vocabulary)
    # ids = [bos] + tokens + [eos], cut to max_seq_length, then decoded from index 1
    return tokens[: settings.max_seq_length - 1]


def _map_unknown(tokens: list[str], vocabulary: frozenset[str] | None) -> list[str]:
    if vocabulary is None:
        return tokens
    return [t if t in vocabulary else "<unk>" for t in tokens]


@dataclass(frozen=True)
class Profile:
    """Turns raw references and predictions into the strings that the metrics score."""

    name: str
    tag: str  # how the profile appears in the signature
    ptb: bool  # PTB-tokenize before the n-gram metrics
    dataset: str = "synthcxr"
    vocabulary: frozenset[str] | None = None

    @property
    def ce_on_raw(self) -> bool:
        """CE labels from the raw texts (raw-v1) or from the texts the metrics see (r2gen-legacy)."""
        return self.name == "raw-v1"

    @property
    def tokenizer_tag(self) -> str:
        return "ptb" if self.ptb else "r2gen-ws"

    def references(self, texts: Mapping[str, str]) -> dict[str, str]:
        if self.name == "raw-v1":
            return dict(texts)
        settings = R2GEN_SETTINGS[self.dataset]
        return {
            k: " ".join(r2gen_reference_tokens(v, settings, self.vocabulary))
            for k, v in texts.items()
        }

    def predictions(self, texts: Mapping[str, str]) -> dict[str, str]:
        if self.name == "raw-v1":
            return dict(texts)
        cleaner = R2GEN_SETTINGS[self.dataset].cleaner
        return {
            k: " ".join(_map_unknown(cleaner(v).split(), self.vocabulary)) for k, v in texts.items()
        }


def get_profile(
    name: str, *, dataset: str = "synthcxr", train_reports: Iterable[str] | None = None
) -> Profile:
    """A profile by name. ``r2gen-legacy`` uses ``dataset``'s rules and, with ``train_reports``,
    R2Gen's ``<unk>`` vocabulary (quirk 9); without them no token is mapped (the tag says so)."""
    if name == "raw-v1":
        return Profile(name="raw-v1", tag="raw-v1", ptb=True, dataset=dataset)
    if name != "r2gen-legacy":
        raise ConfigError(f"unknown evaluation profile {name!r} (known: {', '.join(PROFILES)})")
    if dataset not in R2GEN_SETTINGS:
        raise ConfigError(
            f"r2gen-legacy: unknown dataset {dataset!r} (known: {', '.join(R2GEN_SETTINGS)})"
        )
    settings = R2GEN_SETTINGS[dataset]
    vocabulary = None if train_reports is None else r2gen_vocabulary(train_reports, settings)
    unk = f"unk{settings.threshold}" if vocabulary is not None else "nounk"
    tag = f"r2gen-legacy-{R2GEN_LEGACY_VERSION}/{dataset}/len{settings.max_seq_length}/{unk}"
    return Profile(name="r2gen-legacy", tag=tag, ptb=False, dataset=dataset, vocabulary=vocabulary)
