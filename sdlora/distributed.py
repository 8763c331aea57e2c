"""Several processes through torchrun: data parallel with exact gradient averaging.

``torchrun --nproc_per_node N -m sdlora train ...`` starts N copies; each builds the same model
(every initialisation comes from seeded generators), draws the same batch order, trains on its
slice of every batch (`shard`), and sums the gradients of all ranks weighted by their slice sizes
(`average_gradients`), so every rank takes the step a single process would take on the whole
batch: the shared magnitudes stay identical on every rank. Only rank 0 writes the run folder.
The gradients are reduced by hand rather than by DistributedDataParallel because what trains
changes from task to task (DDP fixes its parameter set when it wraps a model).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["Context", "context", "shard", "average_gradients"]


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


_CONTEXT: Context | None = None


def context(device_type: str = "cpu") -> Context:
    """The process group from torchrun's environment (started once); a single process when
    WORLD_SIZE is unset or 1. NCCL on CUDA, gloo on the CPU."""
    global _CONTEXT
    if _CONTEXT is not None:
        return _CONTEXT
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    _CONTEXT = Context(rank=int(os.environ.get("RANK", "0")), world=world,
                       local_rank=int(os.environ.get("LOCAL_RANK", "0")))
    return _CONTEXT


def shard(indices: torch.Tensor, ctx: Context) -> torch.Tensor:
    """This rank's slice of one batch's indices."""
    return indices[ctx.rank::ctx.world] if ctx.active else indices


def average_gradients(params: list[torch.nn.Parameter], local_count: int, ctx: Context) -> None:
    """Turn each rank's mean-loss gradient into the gradient of the whole batch's mean loss."""
    if not ctx.active:
        return
    total = torch.tensor([float(local_count)], device=params[0].device if params else "cpu")
    dist.all_reduce(total)
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        p.grad.mul_(local_count / total.item())
        dist.all_reduce(p.grad)


def barrier(ctx: Context) -> None:
    if ctx.active:
        dist.barrier()
