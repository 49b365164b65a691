"""The tiny presets' byte-level BPE tokenizer: trained on train reports only, deterministic."""

from __future__ import annotations

from pathlib import Path

import pytest
from data_fixtures import entry, write_r2gen
from transformers import PreTrainedTokenizerFast

from s2d_align.config.schema import PromptConfig
from s2d_align.data.r2gen import load_annotation
from s2d_align.data.tokenizer import (
    SPECIAL_TOKENS,
    load_tokenizer,
    tokenizer_meta,
    train_report_tokenizer,
    train_tokenizer,
)
from s2d_align.errors import ConfigError, DataError

TRAIN_REPORTS = [
    "The heart size is normal. There is no pleural effusion or pneumothorax.",
    "Small left pleural effusion. No focal consolidation.",
    "Mild cardiomegaly. The lungs are clear. No pneumothorax.",
    "Right lower lobe opacity concerning for pneumonia. No pleural effusion.",
]


@pytest.fixture
def annotation(tmp_path: Path):
    splits = {
        "train": [
            entry(f"t{i}", "train", TRAIN_REPORTS[i % 4], views=1, image_path=["x.png"])
            for i in range(40)
        ],
        "val": [
            entry("v0", "val", "Zygomatic zygomatic zygomatic zygomatic.", image_path=["x.png"])
        ],
        "test": [
            entry(f"s{i}", "test", "Quixotic quixotic quixotic.", image_path=["x.png"])
            for i in range(20)
        ],
    }
    return load_annotation(write_r2gen(tmp_path / "ds", splits, images=False))  # reports only


def test_trained_on_train_split_with_special_tokens(annotation, tmp_path: Path) -> None:
    tok = train_report_tokenizer(annotation, 400, tmp_path / "tok")
    assert isinstance(tok, PreTrainedTokenizerFast)
    assert [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3]
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert len(tok) <= 400
    # frequent train words become single tokens; test-only words, however frequent, do not
    assert len(tok.tokenize(" effusion")) == 1
    assert len(tok.tokenize(" quixotic")) > 2
    # prompt template words are in the corpus too
    assert len(tok.tokenize(PromptConfig().answer_prefix)) <= 2
    # encoding adds no special tokens; the model code places them
    ids = tok("No pneumothorax.")["input_ids"]
    assert not set(ids) & {0, 1, 2, 3}


def test_round_trip_of_any_text(annotation, tmp_path: Path) -> None:
    tok = train_report_tokenizer(annotation, 300, tmp_path / "tok")
    for text in [
        "No pneumothorax.",
        "  XXXX ___ Ünïcödé → 5×3 mm\nnodule\t",
        "PICC tip: SVC/RA junction.",
    ]:
        assert tok.decode(tok(text)["input_ids"]) == text
    assert tok.unk_token_id not in tok("Ünïcödé ✓")["input_ids"]


def test_deterministic_and_reloadable(annotation, tmp_path: Path) -> None:
    train_report_tokenizer(annotation, 350, tmp_path / "a")
    train_report_tokenizer(annotation, 350, tmp_path / "b")
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (
        tmp_path / "b" / "tokenizer.json"
    ).read_bytes()
    text = "Small right pleural effusion."
    via_hf = PreTrainedTokenizerFast.from_pretrained(str(tmp_path / "a"))
    via_ours = load_tokenizer(tmp_path / "a")
    assert via_hf(text)["input_ids"] == via_ours(text)["input_ids"]
    assert via_hf.eos_token == "</s>" and via_ours.pad_token == "<pad>"
    meta = tokenizer_meta(tmp_path / "a")
    assert meta["vocab_size_requested"] == 350 and meta["vocab_size"] == len(via_ours)
    # a different corpus gives a different hash (caches keyed on it invalidate)
    train_tokenizer(TRAIN_REPORTS, 350, tmp_path / "c")
    assert tokenizer_meta(tmp_path / "c")["corpus_hash"] != meta["corpus_hash"]


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="vocab_size must be >= 260"):
        train_tokenizer(TRAIN_REPORTS, 100, tmp_path / "t")
    with pytest.raises(DataError, match="no non-empty training text"):
        train_tokenizer(["", "  "], 300, tmp_path / "t")
    with pytest.raises(DataError, match="tokenizer not found"):
        load_tokenizer(tmp_path / "nowhere")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "tokenizer.json").write_text("{not json")
    with pytest.raises(DataError, match=r"broken/tokenizer\.json: cannot load tokenizer"):
        load_tokenizer(tmp_path / "broken")
