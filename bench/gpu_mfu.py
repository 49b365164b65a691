"""GPU throughput of the project's own model at ~1B parameters: training MFU and generation.

``python bench/gpu_mfu.py`` (no arguments needed) builds, through ``s2d_align.models.build_model``
from a config, a ~1.0B-parameter Llama-shaped LM (width 2048, 18 layers, 16 heads of 128, MLP
5632, vocabulary 32,000, tied embeddings) fed by a ViT-B/16 encoder at 224 px (196 visual
tokens), the memory adapter and the projector: random weights, SDPA attention, everything
trainable. Training batches are 1,024 tokens per row (196 visual + 828 text). It runs
optimizer steps the way the training loop does (AdamW on the loop's parameter groups, gradient
clipping) under bf16 autocast on float32 weights, as ``train.precision: bf16`` trains
(``--weights bf16``: the weights themselves in bf16), and reports:

- model-FLOPs utilisation: forward + backward FLOPs of one step, counted by
  ``torch.utils.flop_counter`` (no recomputation, optimizer excluded), per measured step time,
  over the chip's dense bf16 peak (a table of known chips; ``--peak-tflops`` overrides);
- generation tokens/s at batch 1 and batch 32 (greedy, KV cache, 128 new tokens after a
  196 + 64 token prompt; tokens counted per row up to its eos).

It prints one JSON object and is sized to finish in well under 5 minutes on one H100/H200.
``--tiny`` runs the same code on a toy size on CPU in seconds (what the tests run); without a
CUDA device and without ``--tiny`` it stops with a message rather than run 1B on a CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import platform
import sys
import time
from dataclasses import dataclass
from typing import Any

import torch

from s2d_align.training.distributed import torch_threads

#: Dense (no sparsity) bf16 tensor peaks in TFLOP/s, by a substring of the CUDA device name;
#: the first match wins, so the more specific names come first.
BF16_PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H200 NVL", 835.5),
    ("H200", 989.5),
    ("H100 NVL", 835.5),
    ("H100 PCIe", 756.0),
    ("H100", 989.5),  # SXM ("NVIDIA H100 80GB HBM3")
    ("A100", 312.0),
)


@dataclass(frozen=True)
class Size:
    image_size: int
    patch_size: int
    vit_width: int
    vit_layers: int
    vit_heads: int
    width: int
    layers: int
    heads: int
    mlp: int
    vocab: int
    seq_len: int  # visual + text tokens per training row
    batch: int
    steps: int
    warmup: int
    gen_prompt: int  # text tokens of the generation prompt (after the visual tokens)
    gen_tokens: int
    gen_batch: int


FULL = Size(image_size=224, patch_size=16, vit_width=768, vit_layers=12, vit_heads=12,
            width=2048, layers=18, heads=16, mlp=5632, vocab=32000, seq_len=1024, batch=16,
            steps=10, warmup=3, gen_prompt=64, gen_tokens=128, gen_batch=32)  # fmt: skip
TINY = Size(image_size=32, patch_size=8, vit_width=32, vit_layers=1, vit_heads=2, width=64,
            layers=2, heads=4, mlp=128, vocab=256, seq_len=64, batch=2, steps=2, warmup=1,
            gen_prompt=8, gen_tokens=8, gen_batch=4)  # fmt: skip


class StubTokenizer:
    """What the model needs of a tokenizer when no text is read: a size and special ids."""

    def __init__(self, vocab: int) -> None:
        self.vocab = vocab
        self.pad_token_id, self.bos_token_id, self.eos_token_id = 0, 1, 2

    def __len__(self) -> int:
        return self.vocab

    def batch_decode(self, rows, skip_special_tokens: bool = True) -> list[str]:
        return [" ".join(str(int(t)) for t in row) for row in rows]


def build(size: Size, device: torch.device):
    """The S2D model of ``size`` from a config, built directly on ``device``."""
    from s2d_align.config.schema import (
        Config,
        DataConfig,
        LLMConfig,
        MemoryConfig,
        ModelConfig,
        StageConfig,
        Trainable,
        TrainConfig,
        VisionConfig,
    )
    from s2d_align.models import build_model

    cfg = Config(
        name="gpu-mfu",
        data=DataConfig(image_size=size.image_size, max_views=1),
        model=ModelConfig(
            vision=VisionConfig(
                source="tiny",
                arch="vit",
                hidden_size=size.vit_width,
                num_layers=size.vit_layers,
                num_heads=size.vit_heads,
                patch_size=size.patch_size,
            ),
            llm=LLMConfig(
                source="tiny",
                hidden_size=size.width,
                num_layers=size.layers,
                num_heads=size.heads,
                intermediate_size=size.mlp,
                vocab_size=size.vocab,
                max_length=size.seq_len,
            ),
            memory=MemoryConfig(slots=64, num_heads=size.heads),
            trainable=Trainable(vision="full", llm="full"),
        ),
        stages=(StageConfig(name="pair"),),
        train=TrainConfig(precision="bf16", batch_size=size.batch),
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = build_model(cfg, StubTokenizer(size.vocab))
    model.set_trainable(cfg.stage_trainable(cfg.stages[0]))
    return cfg, model


def visual_tokens(size: Size) -> int:
    return (size.image_size // size.patch_size) ** 2


def make_batch(size: Size, device: torch.device, rows: int, text: int, *, train: bool) -> dict:
    """Random pixels and token ids in the batch layout the collator produces."""
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, size.vocab, (rows, text), generator=gen)
    batch = {
        "ids": [f"row{i}" for i in range(rows)],
        "pixel_values": torch.rand(rows, 1, 1, size.image_size, size.image_size, generator=gen),
        "view_mask": torch.ones(rows, 1, dtype=torch.bool),
        "input_ids": ids,
        "attention_mask": torch.ones(rows, text, dtype=torch.long),
    }
    if train:  # loss on the text after a short prompt, as the collator labels targets
        labels = ids.clone()
        labels[:, : min(16, text - 1)] = -100
        batch["labels"] = labels
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def known_peak(device_name: str) -> tuple[float, str] | None:
    """``(TFLOP/s, table key)`` for a CUDA device name, or None when the table lacks it."""
    for key, value in BF16_PEAK_TFLOPS:
        if key in device_name:
            return value, key
    return None


def peak_tflops(device: torch.device, override: float | None) -> tuple[float | None, str]:
    if override is not None:
        return override, "--peak-tflops"
    if device.type != "cuda":
        return None, "no known peak for a CPU (give --peak-tflops)"
    name = torch.cuda.get_device_name(device)
    found = known_peak(name)
    if found is None:
        return None, f"{name!r} is not in the peak table (give --peak-tflops)"
    return found[0], f"table: {found[1]}"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_measure(model, cfg, size: Size, device: torch.device, autocast) -> dict[str, Any]:
    from torch.utils.flop_counter import FlopCounterMode

    from s2d_align.training.loop import parameter_groups

    batch = make_batch(size, device, size.batch, size.seq_len - visual_tokens(size), train=True)
    model.train()
    optimizer = torch.optim.AdamW(parameter_groups(model, cfg.train.weight_decay), lr=1e-4)
    params = [p for p in model.parameters() if p.requires_grad]

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = model(batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.train.grad_clip)
        optimizer.step()
        return float(loss.detach())

    counter = FlopCounterMode(display=False)
    optimizer.zero_grad(set_to_none=True)
    with counter, autocast():  # one forward + backward, counted (not timed)
        model(batch).loss.backward()
    flops = counter.get_total_flops()
    for _ in range(size.warmup):
        step()
    sync(device)
    start = time.perf_counter()
    losses = [step() for _ in range(size.steps)]
    sync(device)
    seconds = (time.perf_counter() - start) / size.steps
    if not all(math.isfinite(v) for v in losses):
        raise RuntimeError(f"non-finite training loss: {losses}")
    return {
        "steps": size.steps,
        "step_s": seconds,
        "tokens_per_step": size.batch * size.seq_len,
        "tokens_per_s": size.batch * size.seq_len / seconds,
        "flops_per_step": flops,
        "achieved_tflops": flops / seconds / 1e12,
        "loss": losses[-1],
        "peak_memory_gib": (
            torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
        ),
    }


def generate_measure(model, size: Size, device: torch.device, autocast, rows: int) -> dict:
    batch = make_batch(size, device, rows, size.gen_prompt, train=False)
    llm, counted = model.llm, {"tokens": 0}
    inner = llm.generate

    def spy(*args, **kwargs):  # counts each row's new tokens up to its eos
        out = inner(*args, **kwargs)
        for row in out.tolist():
            counted["tokens"] += row.index(2) + 1 if 2 in row else len(row)
        return out

    llm.generate = spy
    try:
        with autocast():
            model.generate(batch, max_new_tokens=2)  # warm-up (kernels, cache allocation)
            counted["tokens"] = 0
            sync(device)
            start = time.perf_counter()
            model.generate(batch, max_new_tokens=size.gen_tokens)
            sync(device)
    finally:
        del llm.generate
    seconds = time.perf_counter() - start
    return {
        "batch": rows,
        "new_tokens": counted["tokens"],
        "seconds": seconds,
        "tokens_per_s": counted["tokens"] / seconds,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="toy size on CPU (seconds)")
    parser.add_argument("--device", help="default: cuda if available (cpu with --tiny)")
    parser.add_argument("--peak-tflops", type=float, help="the chip's dense bf16 peak")
    parser.add_argument("--weights", choices=("fp32", "bf16"), default="fp32",
                        help="fp32 weights + bf16 autocast (the training loop's bf16), or "
                             "bf16 weights")  # fmt: skip
    args = parser.parse_args(argv)

    started = time.perf_counter()
    size = TINY if args.tiny else FULL
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() and not args.tiny
                                          else "cpu"))  # fmt: skip
    if device.type != "cuda" and not args.tiny:
        raise SystemExit("gpu_mfu: no CUDA device; run with --tiny for the CPU check, or pass "
                         "--device cpu to run the 1B model on a CPU anyway")  # fmt: skip
    # a toy model runs fastest on one thread (two fight over busy cores), as the tiny presets do
    with torch_threads(1 if args.tiny else 0):
        return _run(args, size, device, started)


def _run(args: argparse.Namespace, size: Size, device: torch.device, started: float) -> dict:
    cfg, model = build(size, device)
    if args.weights == "bf16":
        model.to(torch.bfloat16)

    def autocast():
        if args.weights == "fp32":
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    counts = model.parameter_counts()
    train = train_measure(model, cfg, size, device, autocast)
    peak, peak_source = peak_tflops(device, args.peak_tflops)
    train["peak_tflops"] = peak
    train["peak_source"] = peak_source
    train["mfu"] = train["achieved_tflops"] / peak if peak else None
    model.zero_grad(set_to_none=True)
    generation = {
        f"batch_{rows}": generate_measure(model, size, device, autocast, rows)
        for rows in (1, size.gen_batch)
    }
    import transformers

    result = {
        "tiny": args.tiny,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "weights": args.weights,
        "attention": model.llm.config._attn_implementation,
        "params": {name: total for name, (total, _) in counts.items()},
        "params_total": sum(total for total, _ in counts.values()),
        "seq_len": size.seq_len,
        "visual_tokens": visual_tokens(size),
        "batch": size.batch,
        "train": train,
        "generate": generation,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "wall_s": time.perf_counter() - started,
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
    sys.exit(0)
