"""Text-only pre-training of the tiny LM on train-split reports, cached by content hash.

Tiny presets have no pretrained LLM, so the tiny LM first learns the report language (teacher
forcing, AdamW, a few hundred steps) to stand in for one. The result depends only on the LM
config, the tokenizer and the train reports; it is cached under
``cache_root/tiny-llm-<sha256>/`` and shared by every variant and seed. It runs with its own
fixed seed inside a forked RNG, so a cache hit and a cache miss leave the caller's RNG streams
in the same state (a run is identical whether or not it had to pre-train).

The cache entry is written atomically by :mod:`s2d_align.models.weights_cache`.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path

import torch

from s2d_align.config import to_dict
from s2d_align.config.schema import Config
from s2d_align.errors import ConfigError, DataError
from s2d_align.models.llm import build_tiny_llm
from s2d_align.models.weights_cache import cached_weights
from s2d_align.utils.progress import progress_bar

PRETRAIN_SEED = 1234  # fixed on purpose: the cache is shared by every run seed
BATCH_SIZE = 32
WARMUP_FRACTION = 0.1
MIN_LR_FRACTION = 0.1
CACHE_FORMAT = 2  # 2: entries written by models.weights_cache


def tokenizer_fingerprint(tokenizer) -> str:
    """A stable text for hashing: the full tokenizer definition plus its special tokens."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    body = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab()))
    specials = {
        name: getattr(tokenizer, name, None)
        for name in ("bos_token", "eos_token", "pad_token", "unk_token")
    }
    return body + json.dumps(specials, sort_keys=True)


def pretrain_cache_key(cfg: Config, tokenizer, train_reports: list[str]) -> str:
    h = hashlib.sha256()
    recipe = {
        "format": CACHE_FORMAT,
        "llm": to_dict(cfg.model.llm),
        "seed": PRETRAIN_SEED,
        "batch_size": BATCH_SIZE,
        "warmup_fraction": WARMUP_FRACTION,
        "min_lr_fraction": MIN_LR_FRACTION,
    }
    h.update(json.dumps(recipe, sort_keys=True).encode("utf-8"))
    h.update(tokenizer_fingerprint(tokenizer).encode("utf-8"))
    for report in train_reports:
        h.update(report.encode("utf-8") + b"\0")
    return h.hexdigest()


def _encode_reports(tokenizer, reports: list[str], max_length: int) -> list[list[int]]:
    rows = []
    for report in reports:
        ids = tokenizer(report, add_special_tokens=False)["input_ids"]
        bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        rows.append([*(bos + ids)[: max_length - 1], tokenizer.eos_token_id])
    return rows


def _lr_factor(step: int, total: int) -> float:
    warmup = max(1, int(WARMUP_FRACTION * total))
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return MIN_LR_FRACTION + (1 - MIN_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * progress))


def train_tiny_llm(
    cfg: Config, tokenizer, train_reports: list[str], *, progress: bool = False
) -> tuple[dict[str, torch.Tensor], dict]:
    """Pre-train a fresh tiny LM; returns (state dict, training log). Deterministic."""
    lcfg = cfg.model.llm
    rows = _encode_reports(tokenizer, train_reports, lcfg.max_length)
    pad = tokenizer.pad_token_id
    log: dict = {"steps": lcfg.pretrain_steps, "lr": lcfg.pretrain_lr, "loss": []}
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(PRETRAIN_SEED)
        model = build_tiny_llm(lcfg, tokenizer)
        model.train()
        gen = torch.Generator().manual_seed(PRETRAIN_SEED)
        opt = torch.optim.AdamW(
            model.parameters(), lr=lcfg.pretrain_lr, betas=(0.9, 0.95), weight_decay=0.01
        )
        bar = progress_bar(
            range(lcfg.pretrain_steps),
            desc="pre-train tiny LM",
            wanted=progress,
        )
        for step in bar:
            pick = torch.randint(len(rows), (min(BATCH_SIZE, len(rows)),), generator=gen)
            chosen = [rows[i] for i in pick.tolist()]
            width = max(len(r) for r in chosen)
            ids = torch.full((len(chosen), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, r in enumerate(chosen):
                ids[i, : len(r)] = torch.tensor(r)
                mask[i, : len(r)] = 1
            labels = ids.masked_fill(mask == 0, -100)
            for group in opt.param_groups:
                group["lr"] = lcfg.pretrain_lr * _lr_factor(step, lcfg.pretrain_steps)
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            if not torch.isfinite(loss):
                raise ConfigError(
                    f"tiny LM pre-training diverged at step {step} (loss {loss.item()}); "
                    "lower model.llm.pretrain_lr"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            if step % 10 == 0 or step == lcfg.pretrain_steps - 1:
                log["loss"].append([step, round(loss.item(), 5)])
                bar.set_postfix(loss=f"{loss.item():.3f}")
    log["seconds"] = round(time.perf_counter() - start, 2)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    return state, log


def pretrained_tiny_llm(
    cfg: Config,
    tokenizer,
    train_reports: list[str],
    cache_root: Path,
    *,
    progress: bool = False,
) -> dict[str, torch.Tensor]:
    """The pre-trained tiny LM's state dict, from the cache or trained (then cached) now."""
    if cfg.model.llm.source != "tiny":
        raise ConfigError("pre-training applies to model.llm.source 'tiny' only")
    if not train_reports:
        raise DataError("tiny LM pre-training needs at least one train-split report")

    def build() -> tuple[dict[str, torch.Tensor], dict]:
        state, log = train_tiny_llm(cfg, tokenizer, train_reports, progress=progress)
        meta = {"n_reports": len(train_reports), "llm": to_dict(cfg.model.llm), "log": log}
        return state, meta

    key = pretrain_cache_key(cfg, tokenizer, train_reports)
    return cached_weights(Path(cache_root), "tiny-llm", key, build)[0]
