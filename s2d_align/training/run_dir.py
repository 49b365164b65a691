"""The run folder: its file names, result record, config and tokenizer.

A run folder is self-contained: ``config.yaml`` (resolved), ``tokenizer/``, ``adapter/`` (the
trained weights; for tiny presets they include the LLM), ``retrieval/`` (index, neighbours and the
encoder state that built it, when references are used), ``keyphrase_vocab.json``,
``keyphrase_threshold.json``, ``train_log.jsonl``, ``checkpoints/`` and finally
``train_result.json``, whose presence marks the run as finished.
"""

from __future__ import annotations

import os
import resource
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from s2d_align.config import Config, config_hash, to_dict
from s2d_align.config.loader import from_dict, read_yaml
from s2d_align.data.r2gen import Annotation
from s2d_align.errors import ConfigError, DataError, S2DError
from s2d_align.training.distributed import Dist

RESULT_FILE = "train_result.json"
CONFIG_FILE = "config.yaml"
TOKENIZER_DIR = "tokenizer"
ADAPTER_DIR = "adapter"
ENCODER_FILE = "encoder.safetensors"


def default_cache_root() -> Path:
    """Shared cache for SynthCXR data, tokenizers and pre-trained tiny LMs: ``$S2D_CACHE`` or
    ``~/.cache/s2d-align``."""
    env = os.environ.get("S2D_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "s2d-align"


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


@dataclass
class TrainResult:
    """What a finished training run reports (also ``run_dir/train_result.json``)."""

    run_dir: str
    config_hash: str
    total_steps: int
    tokens_seen: int  # target tokens (the LM loss's tokens) over all processes
    input_tokens_seen: int  # prompt + target tokens fed, without padding
    samples_seen: int
    wall_time_s: float  # this call, including data, tokenizer and pre-training
    train_time_s: float  # optimizer steps only
    samples_per_s: float
    peak_rss_mb: float
    processes: int
    stages: list[dict[str, Any]] = field(default_factory=list)
    final_loss: float | None = None
    resumed_from_step: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainResult:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def load_run_config(run_dir: Path) -> Config:
    """The resolved config a run was trained with."""
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise DataError(f"{run_dir} is not a run folder (no {CONFIG_FILE})")
    return from_dict(Config, read_yaml(path), str(path))


def check_same_run(run_dir: Path, cfg: Config) -> None:
    """A folder that holds training progress (a checkpoint or a result) belongs to its config;
    a folder where a run failed before its first step can be reused with a fixed config."""
    started = (run_dir / RESULT_FILE).is_file() or (run_dir / "checkpoints").is_dir()
    if started and (run_dir / CONFIG_FILE).is_file():
        saved = load_run_config(run_dir)
        if config_hash(saved) != config_hash(cfg):
            raise ConfigError(
                f"{run_dir} holds a run with a different config ({run_dir / CONFIG_FILE}); "
                "use another --run folder or delete it"
            )


def _written_by_train(path: Path) -> bool:
    """Whether ``path`` is a resolved config as ``train`` saves it (every key, nothing else),
    not a user's own file of that name."""
    try:
        data = read_yaml(path)
        resolved = to_dict(from_dict(Config, data, str(path)))
    except (S2DError, TypeError, ValueError, AttributeError):
        return False
    return data == yaml.safe_load(yaml.safe_dump(resolved, sort_keys=False))


def check_run_folder(run_dir: Path) -> None:
    """Refuse an existing folder that is neither empty nor a run folder: training writes
    ``config.yaml``, ``train_log.jsonl``... there and would replace a user's files."""
    if run_dir.exists() and not run_dir.is_dir():
        raise DataError(f"{run_dir}: exists and is not a folder")
    if not run_dir.is_dir() or not any(run_dir.iterdir()):
        return
    if (run_dir / RESULT_FILE).is_file() or (run_dir / "checkpoints" / "latest.json").is_file():
        return  # training progress: check_same_run tells whether it is this config's
    if not _written_by_train(run_dir / CONFIG_FILE):
        raise DataError(
            f"{run_dir}: folder is not empty and holds no training run (no {CONFIG_FILE} "
            "written by train); choose another --run"
        )


def train_reports(annotation: Annotation) -> list[str]:
    """One report per train study (per-image MIMIC rows repeat their study's report)."""
    seen, out = set(), []
    for study in annotation.split("train"):
        key = study.study_id or study.id
        if key not in seen:
            seen.add(key)
            out.append(study.report)
    return out


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
    if cfg.model.llm.source == "tiny":
        from s2d_align.data.tokenizer import load_tokenizer

        return load_tokenizer(run_dir / TOKENIZER_DIR)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(run_dir / TOKENIZER_DIR), local_files_only=True)
