"""A content-keyed, atomically written cache of pre-trained weights (tiny LM, tiny vision tower).

A folder ``cache_root/<prefix>-<key[:24]>/`` holds ``weights.safetensors`` and ``meta.json``
(the full key, the training log, whatever the caller adds). It is written under a temporary
name and renamed into place, so a killed process never leaves a half-written entry, and two
processes racing on one key both end with the same (deterministic) weights.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

import torch

from s2d_align.errors import DataError
from s2d_align.utils.io import read_json, write_json

WEIGHTS_NAME = "weights.safetensors"
META_NAME = "meta.json"


def cached_weights(
    cache_root: Path,
    prefix: str,
    key: str,
    build: Callable[[], tuple[dict[str, torch.Tensor], dict]],
) -> tuple[dict[str, torch.Tensor], Path]:
    """The state dict cached under ``key``, or ``build()``'s (state, meta), cached first.

    Returns the state dict and the entry's folder."""
    from safetensors.torch import load_file, save_file

    cache_root = Path(cache_root)
    final = cache_root / f"{prefix}-{key[:24]}"
    if not final.is_dir():
        state, meta = build()
        tmp = cache_root / f".tmp-{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        try:
            save_file(state, str(tmp / WEIGHTS_NAME))
            write_json(tmp / META_NAME, {"key": key, **meta})
            try:
                os.rename(tmp, final)
            except OSError:
                if not final.is_dir():  # not a lost race: a real failure
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    meta_path = final / META_NAME
    if not meta_path.is_file() or read_json(meta_path).get("key") != key:
        raise DataError(f"{meta_path}: missing or for another key (expected {key}); delete {final}")
    try:
        return load_file(final / WEIGHTS_NAME), final
    except Exception as exc:
        raise DataError(
            f"{final / WEIGHTS_NAME}: unreadable cached weights ({exc}); delete {final}"
        ) from None
