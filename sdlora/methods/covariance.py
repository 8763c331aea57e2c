"""A hook that collects each attention layer's input covariance (InfLoRA, BASELINES.md 4.5).

While active, a forward pre-hook on every block's ``attn`` adds x^T x of its input (the
``norm1`` output, all tokens of all images) in float64 and counts the tokens; `covariances`
gives the mean of x x^T over tokens, one (d, d) matrix per block.
"""
from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["InputCovariance"]


class InputCovariance:
    """``with InputCovariance(vit) as cov: <forward passes>``, then ``cov.covariances()``."""

    def __init__(self, vit: nn.Module) -> None:
        self.vit = vit
        depth, dim = len(vit.blocks), vit.embed_dim
        self.sums = torch.zeros(depth, dim, dim, dtype=torch.float64)
        self.tokens = torch.zeros(depth, dtype=torch.float64)
        self._handles = []

    def _hook(self, index: int):
        def hook(module, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            self.sums[index] += (x.T @ x).to(self.sums.device)
            self.tokens[index] += x.shape[0]
        return hook

    def __enter__(self) -> "InputCovariance":
        device = next(self.vit.parameters()).device
        self.sums, self.tokens = self.sums.to(device), self.tokens.to(device)
        self._handles = [blk.attn.register_forward_pre_hook(self._hook(i))
                         for i, blk in enumerate(self.vit.blocks)]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def covariances(self) -> torch.Tensor:
        """(depth, d, d) float64: mean over tokens of x x^T."""
        if not bool((self.tokens > 0).all()):
            raise ValueError("no input was seen: the covariance needs at least one forward pass")
        return self.sums / self.tokens[:, None, None]
