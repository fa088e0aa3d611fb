"""Data parallelism for training through ``accelerate`` (``accelerate launch -m reneg train ...``).

Only the negative embedding is trained, so there is no model to wrap: each process computes the gradient of its
share of the global batch and the gradients are summed with one all-reduce. ``accelerate``'s
:class:`~accelerate.PartialState` sets up the process group (NCCL on GPUs, gloo on CPU) from the launcher's
environment; a plain single process never touches ``torch.distributed``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch


@dataclass
class DistContext:
    """Rank/world size and the two collectives training needs; the default is one process."""

    world_size: int = 1
    rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over processes, in place (no-op for one process)."""
        if self.world_size > 1:
            import torch.distributed as dist

            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def any(self, flag: bool) -> bool:
        """True on every process if ``flag`` is true on any (for interrupt polling)."""
        if self.world_size == 1:
            return bool(flag)
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        return bool(self.all_reduce_sum(t).item() > 0)

    def barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()


def launched_world_size() -> int:
    """Number of processes the launcher (``accelerate launch``/``torchrun``) started; 1 when run directly."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def init_distributed(device: str | torch.device | None = None) -> DistContext:
    """The process group of a launched run (via ``accelerate.PartialState``), or a one-process context.

    ``device``: ``"cpu"`` forces gloo on CPU; otherwise each process gets ``PartialState().device``
    (``cuda:<local rank>``).
    """
    if launched_world_size() <= 1:
        return DistContext(device=torch.device(device) if device is not None else torch.device("cpu"))
    from accelerate import PartialState

    cpu = device is not None and torch.device(device).type == "cpu" or not torch.cuda.is_available()
    state = PartialState(cpu=cpu)
    return DistContext(world_size=state.num_processes, rank=state.process_index,
                       device=torch.device("cpu") if cpu else state.device)
