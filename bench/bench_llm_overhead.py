"""The real-LLM path against plain transformers + peft, on smollm2-cpu's SmolLM2-135M.

Our side is the project's model exactly as ``build_model`` makes it for the smollm2-cpu preset
with ``model.trainable.llm=lora`` (vision tower frozen, projector + memory trained, LoRA r=8 on
SmolLM2's attention projections; note that the shipped preset inherits ``llm: full`` from the
default preset, so it fine-tunes all of SmolLM2 instead: see the README). The plain side is a
second copy of the same SmolLM2 weights wrapped by ``peft.get_peft_model`` with the same LoRA
settings, fed token ids of exactly our sequence shape (visual tokens + prompt + target, the
same left padding, the same number of target tokens). Each side runs in turn, three times;
medians are compared.

- ``llm-train-overhead``: forward + backward of one stage-1 batch (preset batch size). Ours
  minus the vision side (encoding, projector, memory: forward and backward, timed alone)
  over plain. Target <= 1.15.
- ``llm-generate-overhead``: greedy generation of the preset's generation batch, both sides
  forced to the same number of new tokens (plain ``min_new_tokens``); ours minus encoding the
  images over plain. Target <= 1.15 (tokens/s ratio = the inverse).

Both sides run on one torch thread (the preset lets torch take every core).
"""

from __future__ import annotations

import pytest
import torch
from common import GenerateSpy, cache_root, interleaved, prepare
from targets import Target, record

PRESET = "smollm2-cpu"
# llm=lora as the issue states it; the vision tower's label pre-training is skipped (its
# weights do not change what a step costs, and it takes minutes of CPU to build once)
OVERRIDES = ("model.trainable.llm=lora", "model.vision.pretrain_steps=0")
REPEATS = 3
NEW_TOKENS = 32
# One torch thread on both sides: on a shared 2-core machine two OpenMP threads per process
# stall on each other (8x slower steps seen), and the ratio is what the bench is after.
THREADS = 1


def _build_sides(cfg):
    from peft import LoraConfig, get_peft_model

    from s2d_align.models import build_model, load_llm_tokenizer
    from s2d_align.models.llm import build_llm
    from s2d_align.training.collate import Collator, ContextStore, StageContext
    from s2d_align.training.data import StudyDataset, load_run_annotation
    from s2d_align.training.keyphrases import build_vocab, extract_keyphrases
    from s2d_align.training.prompts import PromptBuilder
    from s2d_align.utils.seed import seed_everything

    tokenizer = load_llm_tokenizer(cfg.model.llm, cache_dir=cache_root())
    studies = load_run_annotation(cfg, cache_root()).split("train")
    phrases = extract_keyphrases({s.id: s.report for s in studies},
                                 source=cfg.model.keyphrase_source)  # fmt: skip
    vocab = build_vocab(phrases.values(), cfg.model.keyphrase_vocab)
    seed_everything(cfg.seed)
    ours = build_model(cfg, tokenizer, keyphrase_vocab=vocab, llm_cache_dir=cache_root())
    ours.set_trainable(cfg.stage_trainable(cfg.stages[0]))
    ours.train()
    lora = cfg.model.lora
    plain = get_peft_model(
        build_llm(cfg.model.llm, tokenizer, cache_dir=cache_root()),
        LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                   target_modules=list(lora.target_modules), bias="none"),
    )  # fmt: skip
    plain.train()

    builder = PromptBuilder(tokenizer, cfg.prompt, cfg.model.llm.max_length)
    dataset = StudyDataset(
        studies[: max(cfg.train.batch_size, cfg.inference.batch_size)],
        image_size=cfg.data.image_size,
        max_views=cfg.data.max_views,
    )
    stage = [StageContext.from_stage(cfg.stages[0])]
    train_batch = Collator(builder, ContextStore(), stage)(
        [dataset[i] for i in range(cfg.train.batch_size)]
    )
    gen_batch = Collator(builder, ContextStore(), stage, generate=True)(
        [dataset[i] for i in range(cfg.inference.batch_size)]
    )
    return tokenizer, ours, plain, train_batch, gen_batch


def _plain_inputs(ours, batch, vocab_size: int, *, labels: bool):
    """Token ids with our assembled sequence's shape: per row, visual + text tokens,
    left-padded to the longest; labels on as many trailing positions as ours has targets."""
    with torch.no_grad():
        n_visual = ours.encode(batch["pixel_values"], batch["view_mask"]).mask.sum(1)
    lengths = (batch["attention_mask"].sum(1) + n_visual).tolist()
    width = max(lengths)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab_size, (len(lengths), width), generator=gen)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        mask[i, width - n :] = 1
    out = {"input_ids": ids, "attention_mask": mask}
    if labels:
        targets = (batch["labels"] != -100).sum(1).tolist()
        out["labels"] = torch.full_like(ids, -100)
        for i, t in enumerate(targets):
            out["labels"][i, width - t :] = ids[i, width - t :]
    return out, width


@pytest.fixture(scope="module")
def sides():
    from s2d_align.training.distributed import torch_threads

    cfg = prepare(PRESET, OVERRIDES)
    with torch_threads(THREADS):
        yield cfg, *_build_sides(cfg)


@pytest.mark.benchmark(group="real-llm")
def test_training_step_overhead(benchmark, sides):
    cfg, tokenizer, ours, plain, batch, _ = sides
    inputs, width = _plain_inputs(ours, batch, len(tokenizer), labels=True)

    def our_step():
        ours.zero_grad(set_to_none=True)
        ours(batch).loss.backward()

    def vision_side():
        ours.zero_grad(set_to_none=True)
        enc = ours.encode(batch["pixel_values"], batch["view_mask"])
        enc.tokens.float().pow(2).mean().backward()

    def plain_step():
        plain.zero_grad(set_to_none=True)
        plain(**inputs).loss.backward()

    our_step()  # warm-up: first calls allocate
    plain_step()
    times = benchmark.pedantic(
        interleaved,
        args=({"ours": our_step, "vision": vision_side, "plain": plain_step}, REPEATS),
        rounds=1,
    )
    ratio = (times["ours"] - times["vision"]) / times["plain"]
    record(
        benchmark,
        Target(
            "llm-train-overhead",
            ratio,
            1.15,
            "<=",
            f"ours {times['ours']:.2f} s (vision side {times['vision']:.2f} s) vs plain "
            f"{times['plain']:.2f} s per step; batch {cfg.train.batch_size} x {width} tokens",
            note="forward + backward, medians of 3 interleaved; llm=lora as the issue states",
        ),
    )
    benchmark.extra_info.update(times=times, width=width)


@pytest.mark.benchmark(group="real-llm")
def test_generation_overhead(benchmark, sides):
    from transformers import GenerationConfig

    _, tokenizer, ours, plain, _, batch = sides
    ours.eval()
    plain.eval()
    spy = GenerateSpy(ours.llm, tokenizer.eos_token_id)
    ours.generate(batch, max_new_tokens=NEW_TOKENS)  # warm-up; fixes the step count
    steps = spy.steps
    spy.remove()
    inputs, width = _plain_inputs(ours, batch, len(tokenizer), labels=False)
    gen_cfg = GenerationConfig(max_new_tokens=steps, min_new_tokens=steps, do_sample=False,
                               pad_token_id=tokenizer.pad_token_id,
                               eos_token_id=tokenizer.eos_token_id)  # fmt: skip

    def our_generate():
        ours.generate(batch, max_new_tokens=NEW_TOKENS)

    @torch.no_grad()
    def encode():
        ours.encode(batch["pixel_values"], batch["view_mask"])

    @torch.no_grad()
    def plain_generate():
        out = plain.generate(**inputs, generation_config=gen_cfg)
        assert out.shape[1] == width + steps

    times = benchmark.pedantic(
        interleaved,
        args=({"ours": our_generate, "vision": encode, "plain": plain_generate}, REPEATS),
        rounds=1,
    )
    ratio = (times["ours"] - times["vision"]) / times["plain"]
    tokens = steps * len(batch["ids"])
    record(
        benchmark,
        Target(
            "llm-generate-overhead",
            ratio,
            1.15,
            "<=",
            f"ours {tokens / times['ours']:.0f} vs plain {tokens / times['plain']:.0f} tokens/s "
            f"({times['ours']:.2f} s, encode {times['vision']:.3f} s, vs {times['plain']:.2f} s); "
            f"batch {len(batch['ids'])}, prompt {width}, {steps} new tokens",
            note="greedy with KV cache, medians of 3 interleaved",
        ),
    )
    benchmark.extra_info.update(times=times, width=width, steps=steps)
