"""Checkpoints that a killed run resumes from exactly.

A checkpoint is a folder ``run_dir/checkpoints/step-NNNNNN/`` holding the trainable weights
(safetensors), the resolved config (YAML), the optimizer and scheduler states with the run's
counters (``trainer_state.pt``) and every process's RNG states (``rng-rankR.pt``). It is written
under a temporary name and renamed into place, and only then does ``checkpoints/latest.json``
point at it, so a kill at any moment leaves the previous checkpoint intact and pointed to.
"""

from __future__ import annotations

import random
import shutil
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
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
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
    path = run_dir / CHECKPOINTS / read_json(pointer)["checkpoint"]
    if not (path / STATE).is_file():
        raise DataError(f"{pointer} points at {path}, which is not a complete checkpoint")
    return path


def load_checkpoint(path: Path, rank: int = 0) -> Checkpoint:
    from safetensors.torch import load_file

    # Our own file with optimizer and RNG states (numpy arrays, tuples): not weights-only data.
    blob = torch.load(path / STATE, map_location="cpu", weights_only=False)
    rng_file = path / f"rng-rank{rank}.pt"
    if not rng_file.is_file():
        raise DataError(
            f"{path}: no RNG state for process {rank}; it was written by {blob['world']} "
            "process(es): resume with the same number"
        )
    return Checkpoint(
        path=path,
        model_state=load_file(str(path / WEIGHTS)),
        optimizer=blob["optimizer"],
        scheduler=blob["scheduler"],
        state=RunState(**blob["run_state"]),
        rng=torch.load(rng_file, weights_only=False),
    )
