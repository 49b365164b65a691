"""The run folder: its file names and the config it was trained with.

A run folder is self-contained: ``config.yaml`` (resolved), ``tokenizer/``, ``adapter/`` (the
trained weights; for tiny presets they include the LLM), ``retrieval/`` (index, neighbours and the
encoder state that built it, when references are used), ``keyphrase_vocab.json``,
``keyphrase_threshold.json``, ``train_log.jsonl``, ``checkpoints/`` and finally
``train_result.json``, whose presence marks the run as finished.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from s2d_align.config import Config, config_hash, to_dict
from s2d_align.config.loader import from_dict, read_yaml
from s2d_align.errors import ConfigError, DataError, S2DError

RESULT_FILE = "train_result.json"
CONFIG_FILE = "config.yaml"
TOKENIZER_DIR = "tokenizer"
ADAPTER_DIR = "adapter"
ENCODER_FILE = "encoder.safetensors"


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
