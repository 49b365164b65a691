"""Builders for the model tests: a tiny tokenizer, tiny configs and contract-shaped batches."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

import torch

from s2d_align.config.schema import (
    Config,
    DataConfig,
    LLMConfig,
    LoraSettings,
    MemoryConfig,
    ModelConfig,
    StageConfig,
    StageTrainable,
    Trainable,
    VisionConfig,
)

REPORTS = [
    "The heart is normal in size. No pleural effusion or pneumothorax.",
    "Small left pleural effusion. No pneumothorax. The heart is normal.",
    "Mild cardiomegaly. The lungs are clear.",
    "There is a right upper lobe opacity, likely pneumonia.",
    "No acute cardiopulmonary abnormality.",
    "Moderate right pleural effusion with basal atelectasis.",
]
PROMPT = "Describe the findings. Findings:"
KEYPHRASES = ["pleural effusion", "cardiomegaly", "no pneumothorax", "opacity"]


def make_tokenizer(folder: Path):
    from s2d_align.data.tokenizer import train_tokenizer

    return train_tokenizer(REPORTS * 3 + [PROMPT] * 6, 300, folder)


def tiny_config(
    *,
    memory: bool = True,
    gate: bool = True,
    topk: int = 0,
    views: int = 2,
    stages: tuple[Trainable, ...] = (Trainable(),),
    lambda_align: float = 0.0,
    lambda_kp: float = 0.0,
    slots: int = 8,
) -> Config:
    stage_cfgs = tuple(
        StageConfig(
            name=f"s{i}",
            trainable=StageTrainable(**asdict(t)),  # every part named: exactly t
            step_fraction=1 / len(stages),
            lambda_align=lambda_align,
            align_with="reference" if lambda_align > 0 else "none",
            lambda_kp=lambda_kp,
        )
        for i, t in enumerate(stages)
    )
    return Config(
        data=DataConfig(image_size=32, max_views=views),
        model=ModelConfig(
            vision=VisionConfig(hidden_size=32, num_layers=1, num_heads=2, patch_size=8),
            llm=LLMConfig(
                hidden_size=32,
                num_layers=1,
                num_heads=2,
                intermediate_size=64,
                max_length=64,
                pretrain_steps=12,
            ),
            memory=MemoryConfig(enabled=memory, slots=slots, num_heads=2, topk=topk, gate=gate),
            lora=LoraSettings(r=4, alpha=8, dropout=0.0),
        ),
        stages=stage_cfgs,
    )


def with_model(cfg: Config, **model_fields) -> Config:
    return replace(cfg, model=replace(cfg.model, **model_fields))


def _pad(tokenizer, rows: list[list[int]], left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        sl = slice(width - len(r), width) if left else slice(0, len(r))
        ids[i, sl] = torch.tensor(r)
        mask[i, sl] = 1
    return ids, mask


def make_batch(
    tokenizer,
    n: int = 3,
    *,
    views: int = 2,
    view_mask: list[list[bool]] | None = None,
    generation: bool = False,
    seed: int = 0,
    size: int = 32,
) -> dict:
    """A batch in the contract's layout (training: prompt + target + eos, right-padded;
    generation: prompt only, left-padded)."""
    gen = torch.Generator().manual_seed(seed)
    enc = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    prompt = [tokenizer.bos_token_id, *enc(PROMPT)]
    reports = [REPORTS[(i + seed) % len(REPORTS)] for i in range(n)]
    if generation:
        ids, mask = _pad(tokenizer, [prompt] * n, left=True)
        labels = None
    else:
        rows = [prompt + enc(" " + r) + [tokenizer.eos_token_id] for r in reports]
        ids, mask = _pad(tokenizer, rows, left=False)
        labels = ids.masked_fill(mask == 0, -100)
        labels[:, : len(prompt)] = -100
    aux_ids, aux_mask = _pad(
        tokenizer, [enc(REPORTS[(i + 2) % len(REPORTS)]) for i in range(n)], False
    )
    vm = torch.ones(n, views, dtype=torch.bool) if view_mask is None else torch.tensor(view_mask)
    batch = {
        "ids": [f"s{i}" for i in range(n)],
        "pixel_values": torch.rand(n, views, 1, size, size, generator=gen),
        "view_mask": vm,
        "input_ids": ids,
        "attention_mask": mask,
        "aux_ids": aux_ids,
        "aux_mask": aux_mask,
        "kp_targets": (torch.rand(n, len(KEYPHRASES), generator=gen) > 0.5).float(),
    }
    if labels is not None:
        batch["labels"] = labels
    return batch


def build(cfg: Config, tokenizer, seed: int = 0, keyphrases=KEYPHRASES):
    from s2d_align.models import build_model

    torch.manual_seed(seed)
    return build_model(cfg, tokenizer, keyphrase_vocab=keyphrases)
