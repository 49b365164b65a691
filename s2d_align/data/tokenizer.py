"""Byte-level BPE tokenizer for the tiny presets, trained on the train split's reports.

Pretrained LLMs bring their own tokenizer; the tiny LLM needs one, and training it on the train
split only (plus the prompt templates, whose words every prompt contains) keeps val and test text
out of it. Byte-level means every string round-trips: ``decode(encode(x)) == x``; ``<unk>``
exists for the ``transformers`` API but byte-level input never produces it.

Encoding adds no special tokens: the model code places ``<s>`` / ``</s>`` where the prompt format
wants them. Training is deterministic: the same texts and vocab size give a byte-identical
``tokenizer.json``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from s2d_align.config.schema import PromptConfig
from s2d_align.errors import ConfigError, DataError
from s2d_align.utils.io import read_json, sha256_text, write_json

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

    from s2d_align.data.r2gen import Annotation

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
#: Special tokens in id order: ``<pad>`` = 0, ``<s>`` = 1, ``</s>`` = 2, ``<unk>`` = 3.
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)
TOKENIZER_FILE = "tokenizer.json"
META_FILE = "tokenizer_meta.json"
_BYTE_ALPHABET = 256
MIN_VOCAB = _BYTE_ALPHABET + len(SPECIAL_TOKENS)


def prompt_texts(prompt: PromptConfig) -> list[str]:
    """The fixed words of the prompt templates (``{text}`` slots removed)."""
    return [
        prompt.instruction,
        prompt.reference.replace("{text}", " "),
        prompt.keyphrases.replace("{text}", " "),
        prompt.answer_prefix,
    ]


def corpus_hash(texts: Sequence[str], vocab_size: int, min_frequency: int = 2) -> str:
    """Identifies a tokenizer by what it was trained on (for caches keyed by content)."""
    return sha256_text(f"bpe-bytelevel v1 vocab={vocab_size} min_freq={min_frequency}", *texts)


def _wrap(tokenizer_object: Any) -> PreTrainedTokenizerFast:
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer_object,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
    )


def train_tokenizer(
    texts: Sequence[str],
    vocab_size: int,
    out_dir: str | Path,
    *,
    min_frequency: int = 2,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``texts`` and save ``tokenizer.json`` (+ meta) in ``out_dir``.

    ``vocab_size`` counts the 256 byte symbols and the 4 special tokens; a small corpus may stop
    below it (no pair left with ``min_frequency`` occurrences); the meta file records the size
    reached.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < MIN_VOCAB:
        raise ConfigError(
            f"tokenizer vocab_size must be >= {MIN_VOCAB} (256 bytes + 4 specials), got {vocab_size}"
        )
    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise DataError("cannot train a tokenizer: no non-empty training text")
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    wrapped = _wrap(tok)
    wrapped.save_pretrained(str(out_dir))
    write_json(
        out_dir / META_FILE,
        {
            "kind": "bpe-bytelevel",
            "vocab_size_requested": vocab_size,
            "vocab_size": tok.get_vocab_size(),
            "min_frequency": min_frequency,
            "special_tokens": list(SPECIAL_TOKENS),
            "texts": len(texts),
            "corpus_hash": corpus_hash(texts, vocab_size, min_frequency),
        },
    )
    return wrapped


def train_report_tokenizer(
    annotation: Annotation,
    vocab_size: int,
    out_dir: str | Path,
    *,
    prompt: PromptConfig | None = None,
) -> PreTrainedTokenizerFast:
    """Train on the train split's reports (one per study) plus the prompt template words.

    The template words are counted once per report, as often as they occur in training
    prompts, so "Findings:" gets merged like any word that every sample contains.
    """
    seen: set[str] = set()
    reports: list[str] = []
    for study in annotation.split("train"):
        key = study.study_id or study.id
        if key not in seen:  # per-image MIMIC rows repeat their study's report
            seen.add(key)
            reports.append(study.report)
    template = " ".join(prompt_texts(prompt or PromptConfig()))
    return train_tokenizer([*reports, *([template] * len(reports))], vocab_size, out_dir)


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """Load a tokenizer saved by :func:`train_tokenizer` (a folder or its ``tokenizer.json``)."""
    from tokenizers import Tokenizer

    path = Path(path)
    file = path / TOKENIZER_FILE if path.is_dir() else path
    if not file.is_file():
        raise DataError(f"tokenizer not found: {file}")
    try:
        tok = Tokenizer.from_file(str(file))
    except Exception as exc:  # the Rust side raises a bare Exception on bad JSON
        raise DataError(f"{file}: cannot load tokenizer: {exc}") from None
    missing = [t for t in SPECIAL_TOKENS if tok.token_to_id(t) is None]
    if missing:
        raise DataError(f"{file}: tokenizer lacks special token(s) {', '.join(missing)}")
    return _wrap(tok)


def tokenizer_meta(path: str | Path) -> dict[str, Any]:
    """The ``tokenizer_meta.json`` written beside a trained tokenizer."""
    return read_json(Path(path) / META_FILE)
