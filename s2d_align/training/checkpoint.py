"""Checkpoints that a killed run resumes from exactly.

A checkpoint is a folder ``run_dir/checkpoints/step-NNNNNN/`` holding the trainable weights
(safetensors), the resolved config (YAML), the optimizer and scheduler states with the run's
counters (``trainer_state.pt``) and every process's RNG states (``rng-rankR.pt``). It is written
under a temporary name and renamed into place, and only then does ``checkpoints/latest.json``
point at it, so a kill at any moment leaves the previous checkpoint intact and pointed to.

Every file is read with ``torch.load(weights_only=True)``: tensors and plain values only, so a
crafted file in a run folder cannot run code on resume. The RNG states are saved as such values
(numpy's key as a list); RNG files of earlier versions, which hold a numpy array, are read with
numpy's array type alone allowed besides.
"""

from __future__ import annotations

import contextlib
import pickle
import random
import re
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from s2d_align.config import Config, save_yaml
from s2d_align.errors import DataError
from s2d_align.training.distributed import Dist
from s2d_align.utils.io import read_json, write_json

CHECKPOINTS = "checkpoints"
LATEST = "latest.json"
WEIGHTS = "model.safetensors"
STATE = "trainer_state.pt"
_STEP_NAME = re.compile(r"step-\d+")
#: What an RNG file of an earlier version needs besides plain values: numpy's uint32 key array.
_NUMPY_ARRAY = [np.ndarray(0).__reduce__()[0], np.ndarray, np.dtype, np.dtypes.UInt32DType]


@dataclass
class RunState:
    """Counters of a run; what, with the RNG and optimizer states, makes resuming exact."""

    stage_index: int = 0  # stage being trained (or just finished, when stage_done)
    stage_step: int = 0  # optimizer steps done in that stage
    stage_done: bool = False
    micro_batches: int = 0  # micro-batches the run's one data order has handed out (all stages)
    global_step: int = 0  # optimizer steps over the whole run
    target_tokens: int = 0  # tokens seen (labels != -100), all processes
    input_tokens: int = 0  # text tokens fed (prompt + target, no padding), all processes
    samples: int = 0  # studies seen, all processes
    retrieval_built: bool = False
    stage_seconds: dict[str, float] = field(default_factory=dict)


def capture_rng() -> dict[str, Any]:
    """Every RNG's state as tensors and plain values (what a weights-only load accepts)."""
    name, key, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),  # (version, tuple of ints, float or None)
        "numpy": (name, key.tolist(), int(pos), int(has_gauss), float(gauss)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, key, *rest = state["numpy"]  # key: a list (or an array, in earlier versions)
    np.random.set_state((name, np.asarray(key, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class Checkpoint:
    path: Path
    model_state: dict[str, torch.Tensor]
    optimizer: dict[str, Any] | None
    scheduler: dict[str, Any] | None
    state: RunState
    rng: dict[str, Any]


def _step_name(step: int) -> str:
    return f"step-{step:07d}"


def save_checkpoint(
    run_dir: Path,
    *,
    dist: Dist,
    config: Config,
    model_state: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any,
    state: RunState,
    keep: int = 1,
) -> Path:
    """Write a checkpoint for ``state.global_step`` (collective: every process must call it)."""
    from safetensors.torch import save_file

    root = run_dir / CHECKPOINTS
    name = _step_name(state.global_step)
    final = root / name
    tmp = root / f".tmp-{name}"
    if dist.is_main:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    dist.barrier()
    torch.save(capture_rng(), tmp / f"rng-rank{dist.rank}.pt")
    if dist.is_main:
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in model_state.items()}
        save_file(tensors, str(tmp / WEIGHTS))
        save_yaml(config, tmp / "config.yaml")
        torch.save(
            {
                "optimizer": optimizer.state_dict() if optimizer is not None else None,
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "run_state": asdict(state),
                "world": dist.world,
            },
            tmp / STATE,
        )
    dist.barrier()
    if dist.is_main:
        if final.exists():  # a rerun of the same step (e.g. stage end == periodic step)
            shutil.rmtree(final)
        tmp.rename(final)
        write_json(
            root / LATEST,
            {"checkpoint": name, "step": state.global_step, "stage_index": state.stage_index},
        )
        older = sorted(p for p in root.glob("step-*") if p.name != name)
        for stale in older[: max(len(older) - (keep - 1), 0)]:
            shutil.rmtree(stale, ignore_errors=True)
    dist.barrier()
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = run_dir / CHECKPOINTS / LATEST
    if not pointer.is_file():
        return None
    pointed = read_json(pointer)
    name = pointed.get("checkpoint") if isinstance(pointed, dict) else None
    if not isinstance(name, str) or not _STEP_NAME.fullmatch(name):
        raise DataError(f"{pointer}: 'checkpoint' must name a step-N folder, got {name!r}")
    path = run_dir / CHECKPOINTS / name
    if not (path / STATE).is_file():
        raise DataError(f"{pointer} points at {path}, which is not a complete checkpoint")
    return path


def _restart_hint(file: Path) -> str:
    run_dir = file.parents[2]  # run_dir/checkpoints/step-N/file
    return f"the run cannot resume from it: delete {run_dir} to restart the run"


def _first_sentence(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return re.split(r"(?<=\.) ", text, maxsplit=1)[0].rstrip(".")


def _load_plain(path: Path, allow: Sequence[Any] = ()) -> Any:
    """``torch.load`` of tensors and plain values only (and ``allow``): loading never runs code."""
    allowing = contextlib.nullcontext()
    if allow and hasattr(torch.serialization, "safe_globals"):  # torch >= 2.5
        allowing = torch.serialization.safe_globals(list(allow))
    try:
        with allowing:
            return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
        if isinstance(exc, pickle.UnpicklingError) and "weights only" in str(exc).lower():
            found = re.search(r"GLOBAL (\S+)", str(exc))
            what = found.group(1) if found else "pickle code other than tensors and plain values"
            raise DataError(
                f"{path}: refused to load: it holds {what}, which no checkpoint of this suite "
                f"does (a crafted or foreign file); {_restart_hint(path)}"
            ) from None
        raise DataError(
            f"{path}: unreadable checkpoint file, truncated or corrupt "
            f"({_first_sentence(exc)}); {_restart_hint(path)}"
        ) from None


def load_checkpoint(path: Path, rank: int = 0) -> Checkpoint:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    blob = _load_plain(path / STATE)
    keys = ("optimizer", "scheduler", "run_state", "world")
    if not isinstance(blob, dict) or any(k not in blob for k in keys):
        raise DataError(f"{path / STATE}: not a trainer state (needs keys {', '.join(keys)})")
    rng_file = path / f"rng-rank{rank}.pt"
    if not rng_file.is_file():
        raise DataError(
            f"{path}: no RNG state for process {rank}; it was written by {blob['world']} "
            "process(es): resume with the same number"
        )
    try:
        model_state = load_file(str(path / WEIGHTS))
    except (SafetensorError, OSError) as exc:
        raise DataError(
            f"{path / WEIGHTS}: unreadable weights, truncated or corrupt "
            f"({_first_sentence(exc)}); "
            f"{_restart_hint(path / WEIGHTS)}"
        ) from None
    try:
        state = RunState(**blob["run_state"])
    except TypeError as exc:
        raise DataError(f"{path / STATE}: bad run_state ({exc})") from None
    return Checkpoint(
        path=path,
        model_state=model_state,
        optimizer=blob["optimizer"],
        scheduler=blob["scheduler"],
        state=state,
        rng=_load_plain(rng_file, allow=_NUMPY_ARRAY),
    )
