"""``build_model``: the whole S2DModel for a run, from the config and a tokenizer."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from s2d_align.config.schema import Config
from s2d_align.errors import ConfigError, DataError
from s2d_align.models.llm import build_llm
from s2d_align.models.s2d import S2DModel, preview_names


def build_model(
    cfg: Config,
    tokenizer,
    llm_init_state: dict[str, torch.Tensor] | None = None,
    *,
    keyphrase_vocab: Sequence[str] = (),
    llm_cache_dir: str | Path | None = None,
) -> S2DModel:
    """Build the whole model for a run (tiny or pretrained towers, LoRA as the stages need).

    ``llm_init_state`` (e.g. the pre-trained tiny LM from ``pretrained_tiny_llm``) is loaded
    strictly into the LLM before LoRA is injected. ``llm_cache_dir`` keeps a de-quantised copy of
    a GGUF LLM (see ``models.llm``). Seed the RNGs before calling: the tiny towers,
    projector, heads and memory are initialised from the global torch RNG.
    """
    for stage in cfg.stages:
        if stage.lambda_align > 0 and not cfg.model.memory.enabled:
            raise ConfigError(
                f"stage {stage.name}: lambda_align > 0 needs the memory adapter "
                "(model.memory.enabled is false)"
            )
        if stage.lambda_kp > 0 and not keyphrase_vocab:
            raise ConfigError(f"stage {stage.name}: lambda_kp > 0 needs a key-phrase vocabulary")
    llm = build_llm(cfg.model.llm, tokenizer, cache_dir=llm_cache_dir)
    if llm_init_state is not None:
        load_llm_state(llm, llm_init_state)
    return S2DModel(
        cfg.model,
        llm,
        tokenizer,
        num_views=cfg.data.max_views,
        keyphrase_vocab=keyphrase_vocab,
        image_size=cfg.data.image_size,
        stage_trainables=[cfg.stage_trainable(s) for s in cfg.stages],
    )


def load_llm_state(llm: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Strictly load a full LLM state dict; a tied weight may be given once (either name)."""
    result = llm.load_state_dict(state, strict=False)
    params = llm.state_dict(keep_vars=True)
    given = {params[k].data_ptr() for k in state if k in params}
    missing = [k for k in result.missing_keys if params[k].data_ptr() not in given]
    if missing or result.unexpected_keys:
        raise DataError(
            f"llm_init_state does not match the LLM: missing {preview_names(missing)}, "
            f"unexpected {preview_names(list(result.unexpected_keys))}"
        )
