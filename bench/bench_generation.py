"""Generation throughput on the default model: batch 32 vs one study at a time.

The model is the shared shortened default run (``conftest.default_run``: the default preset,
24 steps, from the shared pre-trained tiny LM and vision tower), loaded once, outside the
timing. Both sides generate the same first 64 test studies with the run's own context (the
reference report and predicted key phrases in the prompt) and greedy decoding; the prompts are
prepared before the timing, so what is timed is ``generate_rows`` (collation, encoding,
``generate``, decoding). Tokens are the generated tokens of each report up to its eos, so both
sides count the same tokens and the tokens/s ratio is the inverse ratio of the times.

Target: batch 32 >= 5x the tokens/s of batch 1, with identical text (asserted).
"""

from __future__ import annotations

import time
from dataclasses import replace

import pytest
import torch
from common import GenerateSpy, cache_root, split_inputs
from targets import Target, record

N_STUDIES = 64
BATCH = 32


@pytest.mark.benchmark(group="generation")
def test_generation_batch_vs_one(benchmark, default_run):
    from s2d_align.inference.generate import load_run
    from s2d_align.inference.passes import generate_rows
    from s2d_align.training.distributed import torch_threads

    run = load_run(default_run["run_dir"], cache_root=cache_root())
    with torch_threads(run.cfg.train.num_threads):
        dataset, store, ctx = split_inputs(run, "test", N_STUDIES)
        spy = GenerateSpy(run.model.llm, run.tokenizer.eos_token_id)

        def generate(batch_size: int) -> tuple[list[str], dict]:
            spy.reset()
            inference = replace(run.cfg.inference, batch_size=batch_size)
            rows = generate_rows(
                run.model, dataset, run.builder, store, ctx, inference, dist=run.dist
            )
            counts = {"tokens": spy.tokens, "steps": spy.steps, "row_steps": spy.row_steps,
                      "prompt_tokens": spy.prompt_tokens, "generate_s": spy.seconds}  # fmt: skip
            return [r["prediction"] for r in rows], counts

        start = time.perf_counter()
        one, one_counts = generate(1)
        one_s = time.perf_counter() - start
        many, many_counts = benchmark.pedantic(generate, args=(BATCH,), rounds=1, iterations=1)
        many_s = benchmark.stats.stats.max
        threads = torch.get_num_threads()
    assert many == one, "batched generation changed the text"
    tokens = one_counts["tokens"]
    assert many_counts["tokens"] == tokens > 0
    ratio = (tokens / many_s) / (tokens / one_s)
    useful = tokens / many_counts["row_steps"]
    record(
        benchmark,
        Target(
            "generation-batch",
            ratio,
            5.0,
            ">=",
            f"{tokens / many_s:.0f} vs {tokens / one_s:.0f} tokens/s ({many_s:.2f} s vs "
            f"{one_s:.2f} s; {len(one)} studies, {tokens} new tokens after "
            f"{one_counts['prompt_tokens']} prompt tokens; batch {BATCH}: "
            f"{many_counts['steps']} decode steps, {useful:.0%} of its row-steps useful)",
            note=f"context {ctx.name}, {threads} torch thread(s) (the preset's)",
        ),
    )
    benchmark.extra_info.update(one_s=one_s, batch_s=many_s, one=one_counts, batch=many_counts,
                                context=ctx.name, distinct=len(set(one)))  # fmt: skip
