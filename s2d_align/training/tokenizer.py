"""A run's tokenizer: built once per data and LLM config in the shared cache, copied into the
run folder (``run_dir/tokenizer``) and loaded back from there by inference.

The tokenizer itself (byte-level BPE for the tiny LLM) is :mod:`s2d_align.data.tokenizer`; this
module decides where each run's copy comes from.
"""

from __future__ import annotations

import os
from pathlib import Path

from s2d_align.config import Config
from s2d_align.data.r2gen import Annotation
from s2d_align.training.data import train_reports
from s2d_align.training.distributed import Dist
from s2d_align.training.run_dir import TOKENIZER_DIR


def prepare_tokenizer(
    cfg: Config, annotation: Annotation, run_dir: Path, cache_root: Path, dist: Dist
):
    """The run's tokenizer, saved in ``run_dir/tokenizer`` (tiny: trained on train reports and
    cached by content; pretrained: the LLM's own)."""
    from s2d_align.data.tokenizer import load_tokenizer

    saved = run_dir / TOKENIZER_DIR
    if cfg.model.llm.source == "tiny" and (saved / "tokenizer.json").is_file():
        return load_tokenizer(saved)
    tokenizer = shared_tokenizer(cfg, annotation, cache_root, dist)
    if dist.is_main:
        tokenizer.save_pretrained(str(saved))
    return tokenizer


def shared_tokenizer(cfg: Config, annotation: Annotation, cache_root: Path, dist: Dist):
    """The tokenizer every run of this data and LLM config shares, built once into
    ``cache_root`` (tiny: BPE trained on the train reports and prompts, keyed by content;
    pretrained: the LLM's own, with a cached copy for GGUF files)."""
    from s2d_align.data.tokenizer import (
        corpus_hash,
        load_tokenizer,
        prompt_texts,
        train_report_tokenizer,
    )

    if cfg.model.llm.source != "tiny":
        from s2d_align.models import load_llm_tokenizer

        return load_llm_tokenizer(cfg.model.llm, cache_dir=cache_root)
    key = corpus_hash(
        [*train_reports(annotation), *prompt_texts(cfg.prompt)], cfg.model.llm.vocab_size
    )
    cached = cache_root / "tokenizers" / key[:24]
    with dist.main_first():
        if not (cached / "tokenizer.json").is_file():
            tmp = cached.with_name(f".tmp-{cached.name}-{os.getpid()}")
            train_report_tokenizer(annotation, cfg.model.llm.vocab_size, tmp, prompt=cfg.prompt)
            try:
                tmp.rename(cached)
            except OSError:
                if not cached.is_dir():
                    raise
    return load_tokenizer(cached)


def load_run_tokenizer(run_dir: Path, cfg: Config):
    """The tokenizer a finished run saved in its folder."""
    if cfg.model.llm.source == "tiny":
        from s2d_align.data.tokenizer import load_tokenizer

        return load_tokenizer(run_dir / TOKENIZER_DIR)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(run_dir / TOKENIZER_DIR), local_files_only=True)
