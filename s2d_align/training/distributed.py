"""Process group helpers on top of ``accelerate``: rank, device, gradient averaging, gathering.

Gradients are averaged with one flat all-reduce per optimizer step instead of wrapping the
model in ``DistributedDataParallel``: the set of trainable parameters changes from stage to
stage (DDP fixes it when it wraps), and a flat reduce after accumulation is also what
``no_sync`` + DDP would cost. Single-process runs skip all of it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.distributed as torch_dist


@contextlib.contextmanager
def torch_threads(n: int):
    """Run the block with ``n`` torch intra-op threads (0: leave the setting alone)."""
    if n <= 0:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class Dist:
    """The current process's place in the run (wraps an ``accelerate.Accelerator``)."""

    def __init__(self, cpu: bool | None = None) -> None:
        from accelerate import Accelerator

        if cpu is None:
            cpu = not torch.cuda.is_available()
        self.accelerator = Accelerator(cpu=cpu)

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def barrier(self) -> None:
        if self.world > 1:
            self.accelerator.wait_for_everyone()

    @contextlib.contextmanager
    def main_first(self):
        """The main process runs the block first (filling caches), then the others."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    def average_gradients(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Average ``.grad`` over processes. A parameter no process computed a gradient for
        keeps ``grad=None`` (AdamW then leaves it alone, as in a single-process run)."""
        if self.world == 1 or not params:
            return
        has = torch.tensor(
            [p.grad is not None for p in params], dtype=torch.float32, device=self.device
        )
        torch_dist.all_reduce(has, op=torch_dist.ReduceOp.MAX)
        params = [p for p, flag in zip(params, has.tolist(), strict=True) if flag > 0]
        if not params:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1).float() for g in grads])
        torch_dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for p, g in zip(params, grads, strict=True):
            n = g.numel()
            p.grad = flat[offset : offset + n].view_as(g).to(g.dtype)
            offset += n

    def sum_ints(self, values: Iterable[int]) -> list[int]:
        values = list(values)
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch_dist.all_reduce(t)
        return [int(v) for v in t.tolist()]

    def any(self, flag: bool) -> bool:
        """True on every process when ``flag`` is true on any of them."""
        if self.world == 1:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        torch_dist.all_reduce(t, op=torch_dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def gather(self, objects: list[Any]) -> list[Any]:
        """Concatenation of every process's ``objects`` (in rank order), on every process."""
        if self.world == 1:
            return list(objects)
        from accelerate.utils import gather_object

        return list(gather_object(list(objects)))
