"""The frozen components' share of Eqn. 4, and their magnitudes' optimiser step, in one pass.

While task t trains, the frozen components contribute

    M = sum_{k<t} alpha_k D_k,          D_k = A_k B_k / ||A_k B_k||_F  (fixed),

to every adapted projection, and each alpha_k gets the gradient g_k = <G, D_k> with
G = dL/dM = dL/dW. Done by autograd, that is two passes over the K frozen directions per step
(the einsum forward and its backward), and at 100 tasks the directions are the largest thing a
step touches (175 MB on the embedded ViT, 5.6 GB on ViT-B/16). `FrozenMagnitudes` makes it one:

* M is kept as one cached (P, m, n) tensor, a leaf of the autograd graph, so the forward reads
  M and the backward leaves G in ``M.grad``, both independent of K;
* `FrozenMagnitudes.step` then walks the directions once, a chunk at a time small enough to stay
  in the CPU's cache: g_chunk = D_chunk G, the optimiser's (elementwise) update of the chunk's
  magnitudes, and M_new += alpha_chunk' D_chunk while the chunk is still in cache. M_new is the
  exact sum for the new magnitudes (not an increment), so nothing drifts.

The update is torch.optim's Adam or SGD with momentum written out for a vector of magnitudes:
the same operations in the same order as torch's single-tensor implementations, tested against
them (`tests/test_adapters.py::test_fused_step_matches_torch_optim`). It is a
`torch.optim.Optimizer`, so learning-rate schedulers drive it like any other.
"""
from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["FrozenMagnitudes", "frozen_sum"]


def frozen_sum(alpha: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """sum_k alpha_k directions_k for directions (K, P, m, n): (P, m, n)."""
    K = directions.shape[0]
    return (alpha.to(directions.dtype) @ directions.reshape(K, -1)).view(directions.shape[1:])


class FrozenMagnitudes(torch.optim.Optimizer):
    """Adam or SGD for the magnitudes of an adapter's frozen components, fused with the pass that
    computes their gradients and the cached sum M they feed into (see the module docstring).

    Creating it installs M into the adapter as a parameter (``adapter.frozen_sum``, so that
    DistributedDataParallel all-reduces its gradient), and ``adapter.delta()`` reads M instead
    of recomputing the sum; `close` removes it. While it is installed, only this object changes
    the frozen magnitudes: their ``requires_grad`` is parked at False (they take no part in the
    forward pass) and restored by `close`.

    Args:
        adapter: a `sdlora.adapters.QVAdapter` with at least one frozen component.
        trains: whether the frozen magnitudes train (False: M is a constant, e.g. no-rescale).
        optimizer: 'adam' or 'sgd'; lr, weight_decay, momentum, betas, eps as in torch.optim.
        chunk_bytes: how much of the direction buffer one chunk covers; None: all of it at once
            (the default on CUDA, where there is no cache to fit and fewer launches win).
    """

    def __init__(self, adapter, trains: bool = True, optimizer: str = "adam", lr: float = 1e-3,
                 weight_decay: float = 0.0, momentum: float = 0.9,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 chunk_bytes: int | None = 8 << 20) -> None:
        if optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer={optimizer!r}; valid: 'adam', 'sgd'")
        frozen = adapter.frozen_components
        if not frozen or not adapter.use_magnitudes:
            raise ValueError("FrozenMagnitudes needs frozen components that carry magnitudes")
        self.adapter = adapter
        self.params = [adapter.magnitude[c.key] for c in frozen]
        super().__init__(self.params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum,
                                           betas=betas, eps=eps))
        self.kind, self.trains = optimizer, trains
        directions = adapter.frozen_directions
        self.K = directions.shape[0]
        self.flat = directions.view(self.K, -1)  # (K, P*m*n)
        per_direction = self.flat.shape[1] * self.flat.element_size()
        self.chunk = (self.K if chunk_bytes is None or directions.is_cuda
                      else max(1, min(self.K, chunk_bytes // per_direction)))
        with torch.no_grad():
            self.alpha = torch.stack([p.detach() for p in self.params]).clone()  # (K,)
            total = frozen_sum(self.alpha, directions)
        self.sum = nn.Parameter(total, requires_grad=trains)
        self._flags = [p.requires_grad for p in self.params]
        for p in self.params:
            p.requires_grad_(False)
        self.steps = 0
        self.exp_avg = torch.zeros_like(self.alpha)
        self.exp_avg_sq = torch.zeros_like(self.alpha)
        self.momentum_buffer = torch.zeros_like(self.alpha) if optimizer == "sgd" else None
        adapter.frozen_sum = self.sum

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.sum.grad = None

    def close(self) -> None:
        """Remove M from the adapter; the magnitudes are already written back."""
        if self.adapter.frozen_sum is self.sum:
            self.adapter.frozen_sum = None
            for p, flag in zip(self.params, self._flags):
                p.requires_grad_(flag)

    def _update(self, alpha: torch.Tensor, grad: torch.Tensor, part: slice, lr: float,
                group: dict) -> None:
        """torch.optim's single-tensor Adam / SGD step on a slice of the magnitudes, in place."""
        wd = group["weight_decay"]
        if wd != 0:
            grad = grad.add(alpha, alpha=wd)
        if self.kind == "adam":
            beta1, beta2 = group["betas"]
            exp_avg, exp_avg_sq = self.exp_avg[part], self.exp_avg_sq[part]
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            bias_correction1 = 1 - beta1 ** self.steps
            bias_correction2 = 1 - beta2 ** self.steps
            step_size = lr / bias_correction1
            denom = (exp_avg_sq.sqrt() / bias_correction2 ** 0.5).add_(group["eps"])
            alpha.addcdiv_(exp_avg, denom, value=-step_size)
            return
        momentum = group["momentum"]
        if momentum != 0:
            if self.steps == 1:
                self.momentum_buffer[part] = grad
            else:
                self.momentum_buffer[part].mul_(momentum).add_(grad)
            grad = self.momentum_buffer[part]
        alpha.add_(grad, alpha=-lr)

    @torch.no_grad()
    def step(self, closure=None) -> None:
        """One optimiser step of the frozen magnitudes from G = M.grad, and the new M, in a
        single pass over the frozen directions. A no-op when they do not train."""
        if not self.trains:
            return
        G = self.sum.grad
        if G is None:
            raise RuntimeError("no gradient for the frozen sum: call backward() first")
        group = self.param_groups[0]
        lr = group["lr"]
        self.steps += 1
        G = G.reshape(-1).to(self.flat.dtype)
        new = torch.zeros_like(G)
        for start in range(0, self.K, self.chunk):
            part = slice(start, min(start + self.chunk, self.K))
            block = self.flat[part]  # (c, P*m*n): read from memory once...
            grad = block @ G  # (c,) g_k = <G, D_k>
            self._update(self.alpha[part], grad, part, lr, group)
            new.addmv_(block.T, self.alpha[part])  # ...and used again from the cache
        self.sum.copy_(new.view_as(self.sum))
        torch._foreach_copy_(self.params, list(self.alpha.unbind()))
