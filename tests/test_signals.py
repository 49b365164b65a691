"""Auxiliary signals as registry entries: the built-in ones render as before, and a new one is
one entry plus its builder."""

from __future__ import annotations

import numpy as np
import pytest

from s2d_align.config.schema import PromptConfig, StageConfig
from s2d_align.errors import ConfigError

REPORTS = [
    "Small left pleural effusion. No pneumothorax.",
    "The heart is mildly enlarged. No pleural effusion.",
    "No acute cardiopulmonary process. No pneumothorax.",
    "Right upper lobe consolidation. No pleural effusion.",
]
REFERENCE = "Heart size is normal. Lungs are clear. " + REPORTS[3]
PHRASES = ["left pleural effusion", "cardiomegaly"]
INSTRUCTION = "Describe the findings of the chest radiograph."

#: (max_length, reference, key phrases, prompt) as the code rendered them before signals were
#: registry entries (captured from the previous ``PromptBuilder.prompt_text``).
BEFORE = [
    (256, None, None, f"{INSTRUCTION} Findings:"),
    (256, REFERENCE, None, f"{INSTRUCTION} Reference report: {REFERENCE} Findings:"),
    (256, None, [], f"{INSTRUCTION} Key phrases: none Findings:"),
    (
        256,
        REFERENCE,
        PHRASES,
        f"{INSTRUCTION} Reference report: {REFERENCE} "
        "Key phrases: left pleural effusion; cardiomegaly Findings:",
    ),
    (
        256,
        REFERENCE,
        [],
        f"{INSTRUCTION} Reference report: {REFERENCE} Key phrases: none Findings:",
    ),
    (32, REFERENCE, None, f"{INSTRUCTION} Reference report: Heart size is Findings:"),
    (
        32,
        REFERENCE,
        PHRASES,
        f"{INSTRUCTION} Reference report: Heart size is Key phrases: left pleural effusion; car "
        "Findings:",
    ),
    (
        32,
        REFERENCE,
        [],
        f"{INSTRUCTION} Reference report: Heart size is Key phrases: none Findings:",
    ),
]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from s2d_align.data.tokenizer import prompt_texts, train_tokenizer

    texts = REPORTS * 4 + prompt_texts(PromptConfig())
    return train_tokenizer(texts, 300, tmp_path_factory.mktemp("tok"))


def _build_prior(inputs):
    """The toy builder: each study's "prior report" is the report of the study before it."""
    reports = [s.report for s in inputs.studies]
    return {s.id: reports[i - 1] if i else "" for i, s in enumerate(inputs.studies)}


@pytest.fixture
def prior():
    """A toy "prior report" signal, registered for one test: one entry plus its builder."""
    from s2d_align.training.signals import SIGNALS, Signal, register

    signal = register(
        Signal(
            "prior",
            render=lambda text, builder: f"Prior report: {text.strip()}" if text else None,
            build=_build_prior,
            align=lambda text: text,
            missing="",
            inference="prior",
        )
    )
    yield signal
    SIGNALS.pop("prior")


def _studies(split: str = "train"):
    from s2d_align.data.r2gen import Study

    return [
        Study(id=f"s{i}", report=r, image_paths=("x.png",), split=split)
        for i, r in enumerate(REPORTS)
    ]


def _items(studies):
    from s2d_align.training.data import Item

    return [
        Item(i, s, np.full((1, 8, 8), 10 * i, dtype=np.uint8), n_views=1)
        for i, s in enumerate(studies)
    ]


def _decoded_prompts(tokenizer, batch) -> list[str]:
    return [tokenizer.decode(row[row != tokenizer.pad_token_id]) for row in batch["input_ids"]]


@pytest.mark.parametrize(("max_length", "reference", "phrases", "expected"), BEFORE)
def test_builtin_signals_render_as_before(tokenizer, max_length, reference, phrases, expected):
    from s2d_align.training.collate import Collator, ContextStore, StageContext
    from s2d_align.training.prompts import PromptBuilder
    from s2d_align.training.retrieval import ReferenceTexts
    from s2d_align.training.signals import render_parts

    builder = PromptBuilder(tokenizer, PromptConfig(), max_length)
    values = {}
    if reference is not None:
        values["reference"] = reference
    if phrases is not None:
        values["keyphrases"] = phrases
    assert builder.prompt_text(render_parts(values, builder)) == expected
    # The same text reaches a generation batch, token for token, through the store.
    store = ContextStore(
        values={
            "reference": ReferenceTexts({"s0": ["t1"]}, {"t1": reference or ""}),
            "keyphrases": {"s0": phrases or []},
        }
    )
    ctx = StageContext(signals=tuple(values), name="x")
    batch = Collator(builder, store, [ctx], generate=True)(_items(_studies()[:1]))
    ids = tokenizer(expected, add_special_tokens=False)["input_ids"]
    keep = builder.budget.max_length - builder.budget.min_target  # a long prompt keeps its end
    assert batch["input_ids"][0].tolist() == ids[-keep:]


def test_config_names_signals_in_prompt_order_and_rejects_unknown_ones():
    from s2d_align.training.collate import (
        StageContext,
        check_signal_names,
        resolve_inference_context,
    )
    from s2d_align.training.signals import inference_contexts

    stage = StageConfig(name="kp", context=("keyphrases", "reference"), keyphrase_dropout=0.25)
    ctx = StageContext.from_stage(stage)
    assert ctx.signals == ("reference", "keyphrases")
    assert ctx.dropout == (("keyphrases", 0.25),)
    with pytest.raises(ConfigError, match=r"stages\.bad\.context: unknown signal 'prior'"):
        StageContext.from_stage(StageConfig(name="bad", context=("prior",)))
    assert list(inference_contexts()) == [
        "image",
        "image+reference",
        "image+reference+predicted_keyphrases",
        "oracle_keyphrases",
    ]
    from training_fixtures import tiny_config

    with pytest.raises(ConfigError, match="unknown inference context 'image\\+prior'"):
        resolve_inference_context(tiny_config(), "image+prior")
    # A typo in a preset fails when the run starts (`s2d-align train` checks before any work).
    with pytest.raises(
        ConfigError, match=r"stages\.reference\.context: unknown signal 'referense'"
    ):
        check_signal_names(tiny_config("stages.1.context=[referense]"))


def test_a_toy_signal_is_one_entry_and_reaches_prompt_and_batch(tokenizer, prior):
    from training_fixtures import tiny_config

    from s2d_align.training.collate import Collator, StageContext, build_context
    from s2d_align.training.prompts import PromptBuilder
    from s2d_align.training.signals import SignalInputs, inference_contexts

    stage = StageConfig(
        name="prior", context=("prior", "keyphrases"), align_with="prior", lambda_align=0.1
    )
    ctx = StageContext.from_stage(stage)
    assert ctx.signals == ("keyphrases", "prior")  # registered last: its part comes last
    studies = _studies()
    inputs = SignalInputs(tiny_config(), studies, vocab=["left pleural effusion", "cardiomegaly"])
    store = build_context(["keyphrases", "prior"], inputs)
    assert store.values["prior"]["s1"] == REPORTS[0]
    builder = PromptBuilder(tokenizer, PromptConfig(), 256)
    batch = Collator(builder, store, [ctx], seed=0)(_items(studies))
    prompts = _decoded_prompts(tokenizer, batch)
    # s1's prior is s0's report, rendered after its key phrases and before the answer prefix.
    text = prompts[1]
    assert "Key phrases: cardiomegaly Prior report: Small left pleural effusion." in text
    assert text.index("Prior report:") < text.index("Findings:")
    assert "Prior report" not in prompts[0]  # no prior study: the part is left out
    # The alignment loss reads the prior report's tokens.
    aux = batch["aux_ids"][1][batch["aux_mask"][1].bool()].tolist()
    assert aux == tokenizer(REPORTS[0], add_special_tokens=False)["input_ids"]
    # Its inference context follows from the entry alone.
    assert inference_contexts()["image+reference+predicted_keyphrases+prior"].signals == (
        "reference",
        "keyphrases",
        "prior",
    )


@pytest.mark.slow
def test_a_run_trains_with_a_toy_signal_in_its_prompt_and_alignment(tmp_path_factory, prior):
    """Naming the toy signal in a stage's config is all a run needs: its builder fills the train
    prompts and the alignment loss reads it."""
    from training_fixtures import cache_root, tiny_config

    from s2d_align.training.collate import Collator
    from s2d_align.training.pipeline import run_training
    from s2d_align.utils.io import read_jsonl

    seen: list[str] = []
    original = Collator._prompt_values

    def spy(self, item, ctx):
        values = original(self, item, ctx)
        if "prior" in values:
            seen.append(values["prior"])
        return values

    cfg = tiny_config(
        "stages.1.context=[reference, prior]", "stages.1.align_with=prior", "train.total_steps=6"
    )
    run_dir = tmp_path_factory.mktemp("prior") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Collator, "_prompt_values", spy)
        run_training(cfg, run_dir, progress=False, cache_root=cache_root(tmp_path_factory))
    rows = [r for r in read_jsonl(run_dir / "train_log.jsonl") if r["stage"] == "reference"]
    assert rows and all(r["losses"]["align"] > 0 for r in rows)
    assert seen and any(text for text in seen)  # train reports, from the toy builder
