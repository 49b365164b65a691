"""The training loop and pipeline on tiny SynthCXR runs: budget, schedule, resume, NaN guard,
frozen parts, collate layout, the CLI, and a 2-process run."""

from __future__ import annotations

import itertools
import math
import socket
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from training_fixtures import cache_root, ddp_worker, shared_run, tiny_config

from s2d_align.config import find_ablations_dir, load_config
from s2d_align.errors import ConfigError
from s2d_align.training.checkpoint import latest_checkpoint, load_checkpoint
from s2d_align.training.loop import TrainingError, lr_multiplier, plan_stages, stage_steps
from s2d_align.training.pipeline import run_training
from s2d_align.training.run_dir import RESULT_FILE
from s2d_align.utils.io import read_json, read_jsonl

ADAPTER = Path("adapter") / "adapter_model.safetensors"


# ----------------------------------------------------------------------------- step budget
@pytest.mark.parametrize(
    ("fractions", "total"),
    [
        ((0.4, 0.3, 0.3), 600),
        ((0.4, 0.3, 0.3), 7),
        ((0.5, 0.5), 3),
        ((1.0,), 5),
        ((0.3, 0.3, 0.4), 5),
    ],
)
def test_stage_budgets_sum_to_total_steps(fractions, total):
    steps = stage_steps(fractions, total)
    assert sum(steps) == total
    assert all(s >= 0 for s in steps)
    assert steps[:-1] == [round(f * total) for f in fractions[:-1]]


def test_plans_are_contiguous_and_multitask_is_one_stage():
    cfg = tiny_config("train.total_steps=50", variant="s2d")
    plans = plan_stages(cfg)
    assert [p.name for p in plans] == ["pair", "reference", "keyphrases"]
    assert [p.first_step for p in plans] == [0, 20, 35]
    assert sum(p.steps for p in plans) == 50
    multi = plan_stages(tiny_config("train.total_steps=50", variant="multitask"))
    assert len(multi) == 1 and multi[0].steps == 50
    assert multi[0].weights == (0.4, 0.3, 0.3)
    assert [c.lambda_kp for c in multi[0].contexts] == [0.0, 0.0, 0.5]


def test_too_small_budget_is_a_clear_error():
    with pytest.raises(ConfigError, match="total_steps=5 is too small"):
        stage_steps((0.3, 0.3, 0.3, 0.1), 5)  # 2 + 2 + 2 > 5


def test_learning_rate_warms_up_then_decays_to_zero_over_the_whole_run():
    total, warmup = 100, 10
    lrs = [lr_multiplier(s, total, warmup) for s in range(total)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(lrs[10:]))
    assert lrs[-1] < 0.01


@pytest.mark.parametrize("preset", ["smoke", "default", "smollm2-cpu", "iu-xray", "mimic-cxr"])
def test_shipped_presets_load_and_budget_their_stages(preset):
    cfg = load_config(preset)
    assert cfg.name == preset
    assert sum(p.steps for p in plan_stages(cfg)) == cfg.train.total_steps
    if cfg.data.source == "r2gen":  # GPU presets: placeholders the user must override
        assert cfg.data.annotation.startswith("/path/to/") and cfg.train.precision == "bf16"


# ----------------------------------------------------------------------------- a finished run
def test_finished_run_holds_every_artifact_and_the_exact_budget(tmp_path_factory):
    run = shared_run(tmp_path_factory)
    result = read_json(run / RESULT_FILE)
    cfg = tiny_config()
    assert result["total_steps"] == cfg.train.total_steps == 12
    log = read_jsonl(run / "train_log.jsonl")
    assert [r["step"] for r in log] == list(range(1, 13))
    per_stage = {p.name: p.steps for p in plan_stages(cfg)}
    assert {name: sum(r["stage"] == name for r in log) for name in per_stage} == per_stage
    # Stage 1 trains on the LM loss alone; stage 2 adds alignment; stage 3 alignment + kp BCE.
    assert set(log[0]["losses"]) == {"lm"}
    assert set(log[-1]["losses"]) == {"lm", "align", "kp"}
    # Tokens seen are recorded and add up.
    assert result["tokens_seen"] == sum(r["target_tokens"] for r in log) > 0
    # The schedule is one curve over the whole run: lr at step s is lr * multiplier(s - 1).
    warmup = round(cfg.train.warmup_fraction * cfg.train.total_steps)
    for row in log:
        expected = cfg.train.lr * lr_multiplier(row["step"] - 1, 12, warmup)
        assert row["lr"] == pytest.approx(expected)
    for name in (
        "config.yaml",
        "tokenizer/tokenizer.json",
        "keyphrase_vocab.json",
        "keyphrase_threshold.json",
        "retrieval/index.json",
        str(ADAPTER),
    ):
        assert (run / name).is_file(), name
    assert latest_checkpoint(run).name == "step-0000012"


def test_rerunning_a_finished_run_returns_its_result_without_training(tmp_path_factory):
    run = shared_run(tmp_path_factory)
    before = (run / ADAPTER).read_bytes()
    result = run_training(
        tiny_config(), run, progress=False, cache_root=cache_root(tmp_path_factory)
    )
    assert result.total_steps == 12
    assert (run / ADAPTER).read_bytes() == before


def test_a_different_config_never_resumes_another_run(tmp_path_factory):
    run = shared_run(tmp_path_factory)
    with pytest.raises(ConfigError, match="different config"):
        run_training(
            tiny_config("train.lr=0.01"),
            run,
            progress=False,
            cache_root=cache_root(tmp_path_factory),
        )


# ----------------------------------------------------------------------------- resume
class _Kill(Exception):
    pass


def _kill_at(step: int):
    def callback(info):
        if info.global_step == step:
            raise _Kill(f"killed at {step}")

    return callback


@pytest.mark.slow
def test_resume_after_kills_gives_bit_identical_weights(tmp_path_factory, tmp_path):
    reference = shared_run(tmp_path_factory)  # the same config, never interrupted
    cache = cache_root(tmp_path_factory)
    run = tmp_path / "interrupted"
    # Stages run steps 1-5, 6-9, 10-12; checkpoints every 3 steps and at stage ends. A kill at
    # step 4 resumes from step 3 (mid stage 1), a kill at step 7 from step 6 (mid stage 2):
    # optimizer, scheduler, RNG and sampler state all have to come back for the replayed steps
    # to match.
    for kill, resume_point in ((4, 3), (7, 6)):
        with pytest.raises(_Kill):
            run_training(
                tiny_config(), run, progress=False, cache_root=cache, callbacks=[_kill_at(kill)]
            )
        assert not (run / RESULT_FILE).exists()
        assert load_checkpoint(latest_checkpoint(run)).state.global_step == resume_point
    result = run_training(tiny_config(), run, progress=False, cache_root=cache)
    assert result.resumed_from_step == 6
    ref, got = load_file(reference / ADAPTER), load_file(run / ADAPTER)
    assert ref.keys() == got.keys()
    different = [k for k in ref if not torch.equal(ref[k], got[k])]
    assert not different, f"weights differ after resume: {different[:5]}"
    ref_log, got_log = (
        read_jsonl(reference / "train_log.jsonl"),
        read_jsonl(run / "train_log.jsonl"),
    )
    assert [r["loss"] for r in got_log] == [r["loss"] for r in ref_log]
    assert [r["step"] for r in got_log] == list(range(1, 13))


@pytest.mark.slow
def test_intermediate_val_predictions_do_not_change_training(tmp_path_factory, tmp_path):
    reference = shared_run(tmp_path_factory)
    seen = {}

    def collect(info):
        if info.val_predictions is not None:
            seen[info.global_step] = info.val_predictions

    cfg = tiny_config("train.eval_every=6")
    run_training(
        cfg,
        tmp_path / "evals",
        progress=False,
        cache_root=cache_root(tmp_path_factory),
        callbacks=[collect],
    )
    assert sorted(seen) == [6, 12]
    n_val = cfg.data.synth.n_val
    assert all(len(rows) == n_val for rows in seen.values())
    # Step 6 is in stage 2 (references trained so far); step 12 ends stage 3 (key-phrase head).
    assert {r["context"] for r in seen[6]} == {"image+reference"}
    assert {r["context"] for r in seen[12]} == {"image+reference+predicted_keyphrases"}
    ref, got = load_file(reference / ADAPTER), load_file(tmp_path / "evals" / ADAPTER)
    assert all(torch.equal(ref[k], got[k]) for k in ref)


# ----------------------------------------------------------------------------- NaN guard
@pytest.mark.slow
def test_nan_loss_stops_with_stage_and_step_and_keeps_the_last_checkpoint(
    tmp_path_factory, tmp_path, monkeypatch
):
    from s2d_align.models.s2d import S2DModel

    calls = {"n": 0}
    original = S2DModel.forward

    def poisoned(self, batch, **kwargs):
        out = original(self, batch, **kwargs)
        calls["n"] += 1
        if calls["n"] == 8:  # the 8th micro-batch = optimizer step 8, in stage 2 (reference)
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(S2DModel, "forward", poisoned)
    run = tmp_path / "nan"
    with pytest.raises(TrainingError) as info:
        run_training(tiny_config(), run, progress=False, cache_root=cache_root(tmp_path_factory))
    message = str(info.value)
    assert "stage 'reference'" in message and "optimizer step 8" in message
    assert "non-finite loss" in message and "step-0000006" in message
    kept = latest_checkpoint(run)
    assert kept.name == "step-0000006"
    assert load_checkpoint(kept).state.global_step == 6
    assert max(r["step"] for r in read_jsonl(run / "train_log.jsonl")) == 7


# ----------------------------------------------------------------------------- trainable parts
@pytest.mark.slow
def test_frozen_parts_stay_bit_identical_through_a_stage(tmp_path_factory, tmp_path):
    # Six steps in stages of 2 / 2 / 2. Stage 2 freezes everything but the LM's LoRA.
    cfg = tiny_config(
        "train.total_steps=6",
        *(
            f"stages.1.trainable.{part}=frozen"
            for part in ("vision", "projector", "memory", "keyphrase_head")
        ),
        "stages.2.trainable.vision=full",  # a stage names the one part it changes
    )
    run = tmp_path / "frozen"
    snapshots = {}

    def keep_stage_ends(info):
        if info.stage_step == plan_stages(cfg)[info.stage_index].steps:
            snapshots[info.stage_index] = load_file(latest_checkpoint(run) / "model.safetensors")

    run_training(
        cfg,
        run,
        progress=False,
        cache_root=cache_root(tmp_path_factory),
        callbacks=[keep_stage_ends],
    )
    start, end = snapshots[0], snapshots[1]  # stage 2 runs from the end of stage 1 to its own
    frozen = [
        k for k in start if k.split(".")[0] in ("vision", "projector", "memory", "keyphrase_head")
    ]
    lora = [k for k in start if k.startswith("llm.") and "lora_" in k]
    base = [k for k in start if k.startswith("llm.") and "lora_" not in k]
    assert frozen and lora and base
    changed = [k for k in frozen + base if not torch.equal(start[k], end[k])]
    assert not changed, f"frozen parameters changed in stage 2: {changed[:5]}"
    assert any(not torch.equal(start[k], end[k]) for k in lora)
    # Stage 3 names vision: full (the preset freezes it): it moves.
    final = load_file(run / ADAPTER)
    assert any(not torch.equal(end[k], final[k]) for k in frozen if k.startswith("vision."))


@pytest.mark.slow
def test_memory_reset_stages_start_from_a_fresh_memory(tmp_path_factory, tmp_path, monkeypatch):
    from s2d_align.models.s2d import S2DModel

    calls = []
    original = S2DModel.reset_memory

    def spy(self, generator=None):
        before = {k: v.detach().clone() for k, v in self.memory.state_dict().items()}
        original(self, generator)
        after = self.memory.state_dict()
        calls.append(before["gate"].item())
        # The content is new (bank and read projections); the gate keeps acting as strongly.
        assert not torch.equal(before["bank"], after["bank"])
        assert not torch.equal(before["q_proj.weight"], after["q_proj.weight"])
        assert torch.equal(before["gate"], after["gate"])

    monkeypatch.setattr(S2DModel, "reset_memory", spy)
    cfg = tiny_config("train.total_steps=4", variant="s2d-mem-reset")
    run_training(cfg, tmp_path / "reset", progress=False, cache_root=cache_root(tmp_path_factory))
    assert len(calls) == 2  # at the start of stages 2 and 3
    assert calls[0] != 0.0  # stage 1 had opened the gate; the reset leaves it open


# ----------------------------------------------------------------------------- CLI
@pytest.mark.slow
def test_cli_train_then_generate_writes_predictions_score_reads(tmp_path_factory, tmp_path, capsys):
    from training_fixtures import TINY

    from s2d_align.cli.eval_score import read_predictions
    from s2d_align.cli.main import main
    from s2d_align.data.r2gen import load_annotation
    from s2d_align.data.synth import ensure_synthcxr

    cache = cache_root(tmp_path_factory)
    run = tmp_path / "sft-run"
    code = main(
        [
            "train",
            "--preset",
            "smoke",
            "--variant",
            "sft",
            "--seed",
            "3",
            "--out",
            str(run),
            "--cache",
            str(cache),
            "--no-progress",
            *TINY,
        ]
    )
    assert code == 0
    assert read_json(run / RESULT_FILE)["total_steps"] == 12
    saved = load_config(run / "config.yaml")
    assert saved.seed == 3 and not saved.model.memory.enabled and len(saved.stages) == 1
    pred = tmp_path / "pred.jsonl"
    assert (
        main(
            [
                "generate",
                "--run",
                str(run),
                "--split",
                "test",
                "--out",
                str(pred),
                "--cache",
                str(cache),
                "--no-progress",
            ]
        )
        == 0
    )
    predictions = read_predictions(pred)
    ann = load_annotation(ensure_synthcxr(saved.data.synth, cache, progress=False))
    assert list(predictions) == [s.id for s in ann.split("test")]
    assert all(isinstance(t, str) for t in predictions.values())
    rows = read_jsonl(pred)
    assert {"id", "prediction", "reference_ids", "keyphrases"} <= set(rows[0])
    assert rows[0]["context"] == "image" and rows[0]["reference_ids"] == []
    image = ann.split("test")[0].image_paths[0]
    capsys.readouterr()
    assert main(["generate", "--run", str(run), "--image", image, "--cache", str(cache)]) == 0
    assert capsys.readouterr().out.strip() == rows[0]["prediction"]  # same study, same report


def test_cli_reports_a_missing_annotation_clearly(tmp_path, capsys):
    from s2d_align.cli.main import main

    code = main(
        [
            "train",
            "--preset",
            "smoke",
            "--out",
            str(tmp_path / "r"),
            "--no-progress",
            "data.source=r2gen",
            f"data.annotation={tmp_path / 'nope.json'}",
        ]
    )
    assert code == 2
    assert "data.annotation" in capsys.readouterr().err


# ----------------------------------------------------------------------------- 2 processes
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_gloo_run_trains_and_gathers_predictions(tmp_path_factory, tmp_path):
    import torch.multiprocessing as mp

    from s2d_align.data.r2gen import load_annotation
    from s2d_align.data.synth import ensure_synthcxr

    cache = cache_root(tmp_path_factory)
    run, out = tmp_path / "ddp", tmp_path / "ddp.jsonl"
    mp.spawn(ddp_worker, args=(2, _free_port(), str(run), str(cache), str(out)), nprocs=2)
    result = read_json(run / RESULT_FILE)
    assert result["processes"] == 2 and result["total_steps"] == 12
    log = read_jsonl(run / "train_log.jsonl")
    assert all(r["samples"] == 4 for r in log)  # the global batch, summed over both processes
    assert all(math.isfinite(r["loss"]) for r in log)
    cfg = tiny_config()
    ann = load_annotation(ensure_synthcxr(cfg.data.synth, cache, progress=False))
    rows = read_jsonl(out)
    assert [r["id"] for r in rows] == [s.id for s in ann.split("test")]  # gathered, in order


# ----------------------------------------------------------------------------- batches
REPORTS = [
    "Small left pleural effusion. No pneumothorax.",
    "The heart is mildly enlarged. No pleural effusion.",
    "No acute cardiopulmonary process. No pneumothorax.",
    "Right upper lobe consolidation. No pleural effusion.",
]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from s2d_align.config.schema import PromptConfig
    from s2d_align.data.tokenizer import prompt_texts, train_tokenizer

    texts = REPORTS * 4 + prompt_texts(PromptConfig())
    return train_tokenizer(texts, 300, tmp_path_factory.mktemp("tok"))


def _items(n: int = 3, epoch: int = 0):
    import numpy as np

    from s2d_align.data.r2gen import Study
    from s2d_align.training.data import Item

    out = []
    for i in range(n):
        study = Study(id=f"s{i}", report=REPORTS[i], image_paths=("x.png",), split="train")
        pixels = np.full((2, 8, 8), 10 * i, dtype=np.uint8)
        out.append(Item(i, study, pixels, n_views=1 + i % 2, epoch=epoch))
    return out


def _collator(tokenizer, ctx, generate=False, seed=0):
    from s2d_align.config.schema import PromptConfig
    from s2d_align.training.collate import Collator, ContextStore
    from s2d_align.training.keyphrases import build_vocab, extract_keyphrases, oracle_keyphrases
    from s2d_align.training.prompts import PromptBuilder
    from s2d_align.training.retrieval import ReferenceTexts

    reports = {f"s{i}": r for i, r in enumerate(REPORTS)}
    phrases = extract_keyphrases(reports, source="positive")
    vocab = build_vocab(phrases.values(), 8)
    references = ReferenceTexts(
        {f"s{i}": ["t9"] for i in range(4)}, {"t9": "Heart size is normal. Lungs are clear."}
    )
    store = ContextStore(
        values={
            "reference": references,
            "keyphrases": oracle_keyphrases(reports, vocab, "positive"),
        },
        align={"keyphrases": extract_keyphrases(reports, source="all")},
    )
    builder = PromptBuilder(tokenizer, PromptConfig(), 256)
    return Collator(builder, store, [ctx], vocab=vocab, seed=seed, generate=generate), vocab


def test_training_batch_is_right_padded_with_labels_on_the_target_only(tokenizer):
    from s2d_align.training.collate import IGNORE_INDEX, StageContext

    ctx = StageContext(
        signals=("reference", "keyphrases"),
        align_with="reference",
        lambda_align=0.1,
        lambda_kp=0.5,
        name="kp",
    )
    collate, vocab = _collator(tokenizer, ctx)
    batch = collate(_items())
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    assert batch["pixel_values"].shape == (3, 2, 1, 8, 8)
    assert batch["view_mask"].tolist() == [[True, False], [True, True], [True, False]]
    assert float(batch["pixel_values"].max()) <= 1.0
    for row, report in enumerate(REPORTS[:3]):
        n = int(mask[row].sum())
        assert mask[row, :n].all() and not mask[row, n:].any()  # right padding
        target = labels[row][labels[row] != IGNORE_INDEX].tolist()
        assert target[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(target[:-1]).strip() == report
        assert (labels[row, n:] == IGNORE_INDEX).all()
        prompt = tokenizer.decode(ids[row, : n - len(target)])
        assert "Reference report: Heart size is normal." in prompt
        assert prompt.rstrip().endswith("Findings:")
    assert batch["aux_ids"] is not None and batch["aux_ids"].shape[0] == 3
    assert batch["kp_targets"].shape == (3, len(vocab))
    assert batch["kp_targets"].sum() > 0


def test_generation_batch_is_left_padded_prompt_only(tokenizer):
    from s2d_align.training.collate import StageContext

    collate, _ = _collator(
        tokenizer, StageContext(signals=("reference",), name="ref"), generate=True
    )
    batch = collate(_items())
    mask = batch["attention_mask"]
    assert "labels" not in batch
    for row in range(3):
        n = int(mask[row].sum())
        assert mask[row, -n:].all() and not mask[row, :-n].any()  # left padding
        text = tokenizer.decode(batch["input_ids"][row, -n:])
        assert text.endswith("Findings:") and REPORTS[row] not in text


def test_keyphrase_dropout_is_deterministic_and_follows_p(tokenizer):
    from s2d_align.training.collate import StageContext, signal_dropped

    draws = [signal_dropped(0, "kp", 0, f"s{i}", 0.3, "keyphrases") for i in range(2000)]
    assert 0.25 < sum(draws) / len(draws) < 0.35
    assert draws == [signal_dropped(0, "kp", 0, f"s{i}", 0.3, "keyphrases") for i in range(2000)]
    kp = ("keyphrases",)
    always = StageContext(signals=kp, dropout=(("keyphrases", 1.0),), name="kp")
    never = StageContext(signals=kp, dropout=(("keyphrases", 0.0),), name="kp")
    dropped = _collator(tokenizer, always)[0](_items())
    kept = _collator(tokenizer, never)[0](_items())
    text = tokenizer.decode(kept["input_ids"][0])
    assert "Key phrases:" in text
    assert "Key phrases:" not in tokenizer.decode(dropped["input_ids"][0])


def test_a_study_without_key_phrases_says_so_in_its_prompt(tokenizer):
    from s2d_align.config.schema import PromptConfig
    from s2d_align.training.collate import StageContext
    from s2d_align.training.prompts import PromptBuilder
    from s2d_align.training.signals import render_parts

    # REPORTS[2] is a normal study: no positive finding, so an empty oracle list.
    oracle = StageContext(signals=("keyphrases",), name="kp")
    collate, _ = _collator(tokenizer, oracle, generate=True)
    batch = collate(_items())
    texts = [tokenizer.decode(row[row != tokenizer.pad_token_id]) for row in batch["input_ids"]]
    assert "Key phrases: none" in texts[2]
    assert "Key phrases:" in texts[0] and "none" not in texts[0]
    image_only, _ = _collator(tokenizer, StageContext(name="pair"), generate=True)
    assert "Key phrases" not in tokenizer.decode(image_only(_items())["input_ids"][2])
    # The filler is a config template; an empty one leaves the part out as before.
    silent = PromptBuilder(tokenizer, PromptConfig(no_keyphrases=""), 256)
    assert "Key phrases" not in silent.prompt_text(render_parts({"keyphrases": []}, silent))


def test_keyphrase_vocab_is_the_most_frequent_with_alphabetical_ties():
    from s2d_align.training.keyphrases import build_vocab, in_vocab, multi_hot

    docs = [["b", "a", "c"], ["a", "c"], ["c", "d", "d"], ["e"]]
    assert build_vocab(docs, 3) == ["c", "a", "b"]  # c:3, a:2, then b/d/e tie at 1
    assert build_vocab(list(reversed(docs)), 3) == ["c", "a", "b"]
    assert in_vocab(["b", "zz", "c"], ["c", "a", "b"]) == ["c", "b"]
    assert multi_hot(["b", "zz"], ["c", "a", "b"]).tolist() == [0.0, 0.0, 1.0]


def test_report_keyphrases_come_from_the_analyser():
    from s2d_align.training.keyphrases import report_keyphrases

    report = "Small left pleural effusion. No pneumothorax."
    assert report_keyphrases(report, source="positive") == ["left pleural effusion"]
    phrases = report_keyphrases(report, source="all")
    assert "no pneumothorax" in phrases
    assert any("effusion" in p and "left" in p for p in phrases)


@pytest.mark.slow
@pytest.mark.parametrize(
    "variant", sorted(p.stem for p in (find_ablations_dir() / "variants").glob("*.yaml"))
)
def test_every_shipped_variant_trains_and_generates(variant, tmp_path_factory, tmp_path):
    from s2d_align.inference.generate import generate_split

    cfg = tiny_config("train.total_steps=5", variant=variant)
    cache = cache_root(tmp_path_factory)
    result = run_training(cfg, tmp_path / variant, progress=False, cache_root=cache)
    assert result.total_steps == 5
    assert [s["steps"] for s in result.stages] == [p.steps for p in plan_stages(cfg)]
    rows = generate_split(tmp_path / variant, "test", progress=False, cache_root=cache)
    assert len(rows) == cfg.data.synth.n_test
