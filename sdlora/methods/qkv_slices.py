"""Low-rank adapters on chosen slices of timm's fused ``attn.qkv`` weight (InfLoRA: k and v).

``attn.qkv.weight`` is (3d, d): rows [0, d) make queries, [d, 2d) keys, [2d, 3d) values. A
component ``key`` holds, for every block and every chosen slice, A (r, d) and B (d, r); the
slice's weight becomes W + sum over components of B A. Components are kept by key in
ParameterDicts, so what trains is chosen by exact key, never by a name's prefix (InfLoRA's
released code matched ``lora_B_k.1`` by substring, which also unfroze ``lora_B_k.10``-``19``
on 20 tasks, liangyanshuo/InfLoRA #13).
"""
from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["SliceLoRA", "SLICES"]

SLICES = {"q": 0, "k": 1, "v": 2}


class SliceLoRA(nn.Module):
    """Per-key low-rank updates of the `slices` of every block's qkv weight.

    Args:
        dim: embedding width d.
        depth: number of blocks.
        slices: which of "q", "k", "v" are adapted, e.g. ("k", "v").
    """

    def __init__(self, dim: int, depth: int, slices: tuple[str, ...]) -> None:
        super().__init__()
        bad = [s for s in slices if s not in SLICES]
        if bad or not slices:
            raise ValueError(f"slices={slices!r} is not valid; choose some of: q, k, v")
        self.dim, self.depth, self.slices = dim, depth, tuple(slices)
        self.A = nn.ParameterDict()  # key -> (depth, S, r, d)
        self.B = nn.ParameterDict()  # key -> (depth, S, d, r)

    def add(self, key: str, A: torch.Tensor, trainable_B: bool = True) -> None:
        """A new component with fixed `A` (depth, S, r, d) and B = 0; only B may train."""
        depth, s, r, d = A.shape
        if (depth, s, d) != (self.depth, len(self.slices), self.dim):
            raise ValueError(f"A of shape {tuple(A.shape)} does not fit depth {self.depth}, "
                             f"{len(self.slices)} slices, width {self.dim}")
        self.A[key] = nn.Parameter(A.detach().clone(), requires_grad=False)
        self.B[key] = nn.Parameter(A.new_zeros(depth, s, d, r), requires_grad=trainable_B)

    def delta(self, keys) -> torch.Tensor:
        """sum over `keys` of B A per block and slice: (depth, S, d, d)."""
        total = None
        for key in keys:
            part = self.B[key] @ self.A[key]
            total = part if total is None else total + part
        return total

    def weights(self, base: list[torch.Tensor], keys) -> list[torch.Tensor]:
        """Each block's qkv weight (3d, d) with the `keys` components' update on its slices."""
        keys = list(keys)
        if not keys:
            return list(base)
        delta = self.delta(keys)  # (depth, S, d, d)
        zero = delta.new_zeros(self.depth, self.dim, self.dim)
        parts = [delta[:, self.slices.index(name)] if name in self.slices else zero
                 for name in SLICES]
        full = torch.cat(parts, dim=1)  # (depth, 3d, d)
        return [w + full[i] for i, w in enumerate(base)]
