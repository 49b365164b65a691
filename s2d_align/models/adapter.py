"""Adapter files: the trained parts of an S2DModel as safetensors + a sorted JSON config.

Like peft's adapters: ``adapter_model.safetensors`` holds ``model.trainable_state_dict()``
(LoRA, projector, memory, heads, ...), ``adapter_config.json`` records what the weights fit
(model config, views, image size, key-phrase vocabulary, LoRA placement). Loading checks the
config first and then loads the tensors strictly: a missing or unexpected key is an error that
names it, never a silent partial load.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from s2d_align.config import to_dict
from s2d_align.errors import DataError
from s2d_align.utils.io import atomic_write_bytes, read_json

WEIGHTS_NAME = "adapter_model.safetensors"
CONFIG_NAME = "adapter_config.json"
FORMAT = "s2d-align-adapter"
FORMAT_VERSION = 1


def adapter_config(model) -> dict[str, Any]:
    """What the saved weights depend on; two models with equal configs accept each other's."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": to_dict(model.cfg),
        "num_views": model.num_views,
        "image_size": model.image_size,
        "keyphrase_vocab": list(model.keyphrase_vocab),
        "lora_llm": model.lora_llm,
        "lora_vision": model.lora_vision,
        "llm_class": type(model.llm).__name__,
    }


def save_adapter(model, directory: str | Path) -> Path:
    """Write the adapter files into ``directory`` (each file atomically)."""
    from safetensors.torch import save

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.cpu() for k, v in model.trainable_state_dict().items()}
    atomic_write_bytes(directory / WEIGHTS_NAME, save(state, metadata={"format": FORMAT}))
    text = json.dumps(adapter_config(model), indent=2, sort_keys=True, ensure_ascii=False)
    atomic_write_bytes(directory / CONFIG_NAME, (text + "\n").encode("utf-8"))
    return directory


def _differences(saved: Any, current: Any, where: str = "") -> list[str]:
    if isinstance(saved, dict) and isinstance(current, dict):
        out = []
        for key in sorted(set(saved) | set(current)):
            sub = f"{where}.{key}" if where else str(key)
            if key not in saved or key not in current:
                out.append(sub)
            else:
                out.extend(_differences(saved[key], current[key], sub))
        return out
    return [] if saved == current else [where]


def load_adapter(model, directory: str | Path) -> None:
    """Load adapter files written by ``save_adapter`` into a model built with the same config."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    for path in (config_path, weights_path):
        if not path.is_file():
            raise DataError(f"adapter file not found: {path}")
    saved = read_json(config_path)
    if saved.get("format") != FORMAT:
        raise DataError(f"{config_path}: not an s2d-align adapter (format {saved.get('format')!r})")
    if saved.get("format_version") != FORMAT_VERSION:
        raise DataError(
            f"{config_path}: adapter format version {saved.get('format_version')} "
            f"(this code reads {FORMAT_VERSION})"
        )
    diffs = _differences(saved, adapter_config(model))
    if diffs:
        raise DataError(
            f"{config_path}: the adapter was saved for a different model; differing fields: "
            + ", ".join(diffs)
        )
    try:
        state = load_file(weights_path)
    except (SafetensorError, OSError) as exc:
        raise DataError(f"{weights_path}: unreadable safetensors file: {exc}") from None
    model.load_trainable_state_dict(state, strict=True, source=str(weights_path))
