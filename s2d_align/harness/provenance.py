"""Where a result came from: git commit and software/hardware environment (best effort)."""

from __future__ import annotations

import functools
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

UNKNOWN = "unknown"


@functools.lru_cache(maxsize=8)
def git_sha(path: str | Path | None = None) -> str:
    """The commit of the source tree (``-dirty`` appended when it has local changes).

    Returns ``unknown`` outside a git checkout or without git: provenance is best effort and
    must never stop a run.
    """
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10
        )
        if sha.returncode != 0:
            return UNKNOWN
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=10,
        )
        suffix = "-dirty" if dirty.returncode == 0 and dirty.stdout.strip() else ""
        return sha.stdout.strip() + suffix
    except (OSError, subprocess.SubprocessError):
        return UNKNOWN


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return UNKNOWN


def environment() -> dict[str, Any]:
    """Python, key library versions, platform, CPU and GPU: enough to explain a timing or a diff.

    GPU details are read from torch only when the process has imported it already (the real
    pipeline has; a dry run or a report need not pay for the import).
    """
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "implementation": sys.implementation.name,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "s2d_align": _version("s2d-align"),
        "torch": _version("torch"),
        "transformers": _version("transformers"),
        "peft": _version("peft"),
        "optuna": _version("optuna"),
        "pycocoevalcap": _version("pycocoevalcap"),
    }
    torch = sys.modules.get("torch")  # never import torch just for provenance (seconds)
    if torch is None:
        return env
    try:
        env["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            env["gpu"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            env["cuda"] = torch.version.cuda
        else:
            env["gpu"] = []
    except Exception:  # provenance must never break a run
        env["gpu"] = UNKNOWN
    return env
