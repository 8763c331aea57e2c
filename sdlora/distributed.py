"""Several processes through torchrun: DistributedDataParallel with exact gradient averaging.

``torchrun --nproc_per_node N -m sdlora train ...`` starts N copies; each builds the same model
(every initialisation comes from seeded generators), draws the same batch order and trains on
its slice of every batch (`shard`). The model is wrapped in DistributedDataParallel (`wrap`)
anew for every task, because what trains changes from task to task and DDP fixes its parameter
set when it wraps. Each rank's loss is its slice's summed loss times world / (whole batch), so
DDP's average of the ranks' gradients is exactly the whole batch's mean gradient: every rank
takes the step a single process would take on the whole batch, and the shared magnitudes stay
identical on every rank. The frozen magnitudes step from the gradient of their cached sum
(`sdlora.fused`), a parameter DDP all-reduces like any other. Only rank 0 writes the run folder.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["Context", "context", "shard", "wrap"]


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


def wrap(model: torch.nn.Module, ctx: Context, device: torch.device) -> torch.nn.Module:
    """`model` in DistributedDataParallel under torchrun (a single process: `model` itself).

    Wrapped anew for every task, after the method has set what trains (DDP fixes its parameter
    set when it wraps). Buffers are not broadcast each step: the frozen-direction buffer is
    large and identical on every rank by construction."""
    if not ctx.active:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                   else None, broadcast_buffers=False)


def barrier(ctx: Context) -> None:
    if ctx.active:
        dist.barrier()
