"""The shared cache: where it lives, what in a config its contents depend on, and how it is built.

The cache holds what every run of one data and LLM config shares: the dataset (SynthCXR is
generated), tokenizers, the tiny vision tower's and tiny LM's pre-training, and de-quantised
copies of GGUF files. Each entry is keyed by content and written atomically, so runs and
processes sharing one cache agree on it.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from s2d_align.config import Config
from s2d_align.config.schema import DataConfig, EvalConfig, LLMConfig, PromptConfig, VisionConfig

log = logging.getLogger(__name__)

#: The environment variable naming the cache when the caller names none.
CACHE_ENV = "S2D_CACHE"


def resolve_cache_root(cache_root: Path | str | None, *, default: Path | str | None = None) -> Path:
    """The cache folder to use: ``cache_root`` when given, else ``default`` (a grid's
    ``RESULTS/cache``), else ``$S2D_CACHE``, else ``~/.cache/s2d-align``."""
    if cache_root is not None:
        return Path(cache_root)
    if default is not None:
        return Path(default)
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "s2d-align"


SharedKey = tuple[DataConfig, LLMConfig, VisionConfig, PromptConfig, EvalConfig]


def shared_cache_key(cfg: Config) -> SharedKey:
    """The parts of ``cfg`` the shared caches depend on (data, towers, prompts and the labeler
    that labels the vision tower's pre-training): two configs with equal keys share them.

    Frozen configs, so the key is hashable for in-memory bookkeeping; folder names on disk
    use content hashes instead (``hash()`` differs between processes).
    """
    return (cfg.data, cfg.model.llm, cfg.model.vision, cfg.prompt, cfg.eval)


def prepare_shared(cfg: Config, cache_root: Path | str | None, *, progress: bool = False) -> None:
    """Build the one-time parts every run of ``cfg``'s data and LLM shares, in ``cache_root``:
    the dataset, the tokenizer, the tiny vision tower's and the tiny LM's pre-training, or the
    de-quantised copy of a GGUF file. ``run_training`` finds them there.

    Grids call it once before starting parallel runs, so that workers do not each build the
    same cache (they would agree, but the work would be repeated).
    """
    from s2d_align.training.data import load_run_annotation, train_reports
    from s2d_align.training.distributed import Dist, torch_threads
    from s2d_align.training.tokenizer import shared_tokenizer
    from s2d_align.training.vision_init import initial_vision_state

    cache_root = resolve_cache_root(cache_root)
    with torch_threads(cfg.train.num_threads):
        started = time.perf_counter()
        annotation = load_run_annotation(cfg, cache_root, progress=progress)
        tokenizer = shared_tokenizer(cfg, annotation, cache_root, Dist())
        initial_vision_state(cfg, annotation, cache_root, progress=progress)
        if cfg.model.llm.source == "tiny":
            from s2d_align.models import pretrained_tiny_llm

            pretrained_tiny_llm(
                cfg, tokenizer, train_reports(annotation), cache_root, progress=progress
            )
        else:
            from s2d_align.models.llm import build_llm, gguf_cache_folder, llm_location

            gguf_file = llm_location(cfg.model.llm)[1]
            if gguf_file and not (gguf_cache_folder(cfg.model.llm, cache_root) / "model").is_dir():
                build_llm(cfg.model.llm, tokenizer, cache_dir=cache_root)  # writes the copy
        log.info("shared data, tokenizer and LLM weights ready (%.1fs)",
                 time.perf_counter() - started)  # fmt: skip
