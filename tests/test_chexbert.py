"""CheXbert labeler: architecture and key layout, strict loading, class mapping, text handling.

Checkpoints are written by the tests with random weights in the real layout (``model_state_dict``
with ``module.``-prefixed keys); a tiny BertConfig keeps them small. The bert-base default is
checked on the ``meta`` device, which allocates nothing.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from s2d_align.chexpert import OBSERVATIONS
from s2d_align.config.schema import EvalConfig
from s2d_align.errors import ConfigError, DataError
from s2d_align.evaluation.labelers import get_labeler
from s2d_align.evaluation.labelers.chexbert import (
    CheXbertLabeler,
    CheXbertModel,
    bert_base_uncased_config,
    classes_to_labels,
    encode_report,
    load_tokenizer,
)

REPORTS = [
    "Heart size is normal. No pleural effusion or pneumothorax.",
    "",
    "Small left pleural effusion with adjacent atelectasis.\n\nPossible right lower lobe pneumonia.",
    "ET tube 4 cm above the carina.",
    "Moderate cardiomegaly. " * 30,  # longer than the tiny model's 64 positions
]


def tiny_config():
    from transformers import BertConfig

    # Full uncased vocabulary (the packaged vocab.txt has 30522 entries), tiny everything else.
    return BertConfig(
        vocab_size=30522,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        pad_token_id=0,
    )


def write_checkpoint(path: Path, state: dict[str, torch.Tensor], prefix: str = "module.") -> Path:
    torch.save({"epoch": 3, "model_state_dict": {prefix + k: v for k, v in state.items()}}, path)
    return path


@pytest.fixture(scope="module")
def tiny_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {k: v.clone() for k, v in CheXbertModel(tiny_config()).state_dict().items()}


@pytest.fixture
def ckpt(tmp_path: Path, tiny_state: dict[str, torch.Tensor]) -> Path:
    return write_checkpoint(tmp_path / "chexbert.pth", tiny_state)


@pytest.mark.slow  # first import of transformers (~10 s on a busy 2-core machine)
def test_default_architecture_has_the_real_keys_and_shapes() -> None:
    with torch.device("meta"):
        model = CheXbertModel(bert_base_uncased_config())
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert len(shapes) == 199 + 2 * 14  # bert-base with pooler + 14 heads (weight, bias)
    assert shapes["bert.embeddings.word_embeddings.weight"] == (30522, 768)
    assert shapes["bert.embeddings.position_embeddings.weight"] == (512, 768)
    assert shapes["bert.encoder.layer.11.attention.self.query.weight"] == (768, 768)
    assert shapes["bert.encoder.layer.11.output.LayerNorm.bias"] == (768,)
    assert shapes["bert.pooler.dense.weight"] == (768, 768)
    for i in range(13):
        assert shapes[f"linear_heads.{i}.weight"] == (4, 768)
        assert shapes[f"linear_heads.{i}.bias"] == (4,)
    assert shapes["linear_heads.13.weight"] == (2, 768)
    assert "linear_heads.14.weight" not in shapes
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == 109_482_240 + 13 * (4 * 768 + 4) + (2 * 768 + 2)


def test_tiny_checkpoint_loads_and_labels(ckpt: Path) -> None:
    labeler = CheXbertLabeler(ckpt, config=tiny_config(), batch_size=2, device="cpu")
    labels = labeler.label(REPORTS)
    assert len(labels) == len(REPORTS)
    for lab in labels:
        assert tuple(lab) == OBSERVATIONS
        assert all(v in (1, 0, -1, None) for v in lab.values())
        assert lab["No Finding"] in (1, None)
    sha = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert sha in labeler.signature and labeler.signature.startswith("chexbert")


def test_batching_and_padding_do_not_change_predictions(ckpt: Path) -> None:
    one = CheXbertLabeler(ckpt, config=tiny_config(), batch_size=1, device="cpu")
    many = CheXbertLabeler(ckpt, config=tiny_config(), batch_size=4, device="cpu")
    assert one.predict_classes(REPORTS) == many.predict_classes(REPORTS)
    # order of the input is kept although batches are sorted by length
    assert many.predict_classes(REPORTS[::-1]) == many.predict_classes(REPORTS)[::-1]


def test_class_mapping_through_the_heads(
    tmp_path: Path, tiny_state: dict[str, torch.Tensor]
) -> None:
    state = {k: v.clone() for k, v in tiny_state.items()}
    wanted = [i % 4 for i in range(13)] + [1]  # 0 blank, 1 positive, 2 negative, 3 uncertain
    for head, cls in enumerate(wanted):
        state[f"linear_heads.{head}.weight"].zero_()
        bias = torch.full_like(state[f"linear_heads.{head}.bias"], -10.0)
        bias[cls] = 10.0
        state[f"linear_heads.{head}.bias"] = bias
    path = write_checkpoint(tmp_path / "forced.pth", state)
    labels = CheXbertLabeler(path, config=tiny_config(), device="cpu").label(["No pneumothorax."])[
        0
    ]
    mapping = {0: None, 1: 1, 2: 0, 3: -1}
    assert [labels[o] for o in OBSERVATIONS[:-1]] == [mapping[c] for c in wanted[:-1]]
    assert labels["No Finding"] == 1


def test_classes_to_labels() -> None:
    labels = classes_to_labels([1, 2, 3, 0] + [0] * 9 + [0])
    assert (labels["Enlarged Cardiomediastinum"], labels["Cardiomegaly"]) == (1, 0)
    assert (labels["Lung Opacity"], labels["Lung Lesion"]) == (-1, None)
    assert labels["No Finding"] is None
    with pytest.raises(ValueError):
        classes_to_labels([0] * 13)


def test_strict_loading_rejects_a_renamed_key(
    tmp_path: Path, tiny_state: dict[str, torch.Tensor]
) -> None:
    state = dict(tiny_state)
    state["linear_heads.14.weight"] = state.pop("linear_heads.13.weight")
    path = write_checkpoint(tmp_path / "renamed.pth", state)
    with pytest.raises(
        DataError, match=r"missing.*linear_heads\.13\.weight.*unexpected.*linear_heads\.14"
    ):
        CheXbertLabeler(path, config=tiny_config(), device="cpu")


def test_strict_loading_rejects_missing_keys_and_wrong_shapes(
    tmp_path: Path, tiny_state: dict[str, torch.Tensor]
) -> None:
    state = dict(tiny_state)
    del state["bert.pooler.dense.bias"]
    with pytest.raises(DataError, match="missing key"):
        CheXbertLabeler(write_checkpoint(tmp_path / "a.pth", state), config=tiny_config())
    state = dict(tiny_state)
    state["linear_heads.0.weight"] = torch.zeros(3, 16)
    with pytest.raises(
        DataError, match=r"linear_heads\.0\.weight has shape \(3, 16\), expected \(4, 16\)"
    ):
        CheXbertLabeler(write_checkpoint(tmp_path / "b.pth", state), config=tiny_config())
    # a bert-base checkpoint does not load into a different architecture, and vice versa
    with pytest.raises(DataError, match="missing key"):
        CheXbertLabeler(write_checkpoint(tmp_path / "c.pth", tiny_state), config=None)


def test_prefix_variants_and_legacy_buffer(
    tmp_path: Path, tiny_state: dict[str, torch.Tensor]
) -> None:
    plain = write_checkpoint(tmp_path / "plain.pth", tiny_state, prefix="")
    assert CheXbertLabeler(plain, config=tiny_config()).label(["x"])  # saved without DataParallel
    legacy = dict(tiny_state)
    legacy["bert.embeddings.position_ids"] = torch.arange(64).unsqueeze(
        0
    )  # transformers 3.x buffer
    CheXbertLabeler(write_checkpoint(tmp_path / "legacy.pth", legacy), config=tiny_config())
    mixed = {"module." + k if i % 2 else k: v for i, (k, v) in enumerate(tiny_state.items())}
    torch.save({"model_state_dict": mixed}, tmp_path / "mixed.pth")
    with pytest.raises(DataError, match="prefix"):
        CheXbertLabeler(tmp_path / "mixed.pth", config=tiny_config())
    torch.save({"state_dict": {}}, tmp_path / "other.pth")
    with pytest.raises(DataError, match="model_state_dict"):
        CheXbertLabeler(tmp_path / "other.pth", config=tiny_config())
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match=r"garbage\.pth"):
        CheXbertLabeler(tmp_path / "garbage.pth", config=tiny_config())


def test_sha256_is_checked(ckpt: Path) -> None:
    sha = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    CheXbertLabeler(ckpt, config=tiny_config(), expected_sha256=sha.upper())
    with pytest.raises(ConfigError, match="SHA-256"):
        CheXbertLabeler(ckpt, config=tiny_config(), expected_sha256="0" * 64)


def test_missing_files_say_what_to_supply(tmp_path: Path, ckpt: Path) -> None:
    with pytest.raises(ConfigError, match=r"checkpoint not found.*chexbert\.pth"):
        CheXbertLabeler(tmp_path / "nope.pth", config=tiny_config())
    with pytest.raises(ConfigError, match=r"vocab file not found.*vocab\.txt"):
        CheXbertLabeler(ckpt, vocab=tmp_path / "vocab.txt", config=tiny_config())
    with pytest.raises(ConfigError, match="chexbert_checkpoint"):
        get_labeler(EvalConfig(labeler="chexbert"))


def test_text_handling_as_chexbert() -> None:
    tok = load_tokenizer()
    ids = encode_report(tok, "The heart  is\n\nnormal. ")
    assert ids == encode_report(tok, "the heart is normal.")  # uncased, whitespace folded
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    assert encode_report(tok, "   \n ") == [tok.cls_token_id, tok.sep_token_id]
    long = encode_report(tok, "effusion " * 600)
    assert len(long) == 512 and long[-1] == tok.sep_token_id and long[-2] != tok.sep_token_id
    assert encode_report(tok, "effusion " * 100, max_len=64)[-1] == tok.sep_token_id


def test_get_labeler_builds_chexbert_from_config(ckpt: Path) -> None:
    sha = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    cfg = EvalConfig(labeler="chexbert", chexbert_checkpoint=str(ckpt), chexbert_sha256=sha)
    # the default (bert-base) architecture rejects the tiny checkpoint: strict, with a clear message
    with pytest.raises(DataError, match="not a CheXbert checkpoint of this architecture"):
        get_labeler(cfg)
