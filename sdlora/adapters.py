"""Low-rank adapters for the query and value projections of a timm ViT: SD-LoRA and relatives.

SD-LoRA (Wu et al., ICLR 2025, Eqn. 4) adapts every query and value projection W0 as

    W = W0 + sum_k alpha_k * (A_k B_k) / ||A_k B_k||_F,        k = 1..t

with A_k (m x r_k), B_k (r_k x n), one scalar magnitude alpha_k per task *shared by every
adapted projection of every block*, and on task t only alpha_1..alpha_t and (A_t, B_t)
trainable. The projections are the q and v slices of timm's fused ``attn.qkv`` (rows 0:d and
2d:3d of its (3d, d) weight).

Why the cost does not grow with the tasks. The released code evaluates one low-rank branch per
earlier task on every token. Here the update is composed in weight space once per step and the
ViT runs with the composed weights (``torch.func.functional_call``), so the forward pass is a
plain ViT's. The earlier, frozen directions are kept as one dense buffer (K, P, m, n) of
*normalised* directions. While a task trains, their weighted sum M = sum_k alpha_k D_k is cached
(`frozen_sum`) and the forward reads only M; after the backward pass one fused pass over the
buffer computes the magnitudes' gradients <dL/dW, D_k>, their optimiser step and the new M
(`sdlora.fused.FrozenMagnitudes`): K * P * m * n multiply-adds per step, independent of batch
size and tokens. The price is memory, K * P * m * n floats (1.1 GB for ViT-B/16 at 20 tasks),
and one dense weight gradient for q and v (which full fine-tuning computes too). Outside
training (evaluation, merging, the analyses) `delta()` computes the sum from the magnitudes.

Components. A component is one (A, B) pair with an optional magnitude. While it trains it is
*current*; when it is frozen its normalised direction is computed once into the buffer and its
factors are kept only for checkpoints. Every method of `sdlora.methods` is a choice of when to
add, freeze, drop or absorb components and which magnitudes train.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn

from .fused import frozen_sum

__all__ = [
    "Component",
    "QVAdapter",
    "absolute_residual",
    "least_squares_residual",
    "normalise",
    "normaliser",
]

Normalisation = Literal["product", "factors", "none"]


def normaliser(product: torch.Tensor, A: torch.Tensor | None = None,
               B: torch.Tensor | None = None, kind: Normalisation = "product") -> torch.Tensor:
    """What `normalise` divides each projection's update by: (P,) (ones for ``none``)."""
    if kind == "none":
        return torch.ones(product.shape[0], dtype=product.dtype, device=product.device)
    if kind == "product":
        return torch.linalg.matrix_norm(product)  # (P,)
    if kind == "factors":
        return torch.linalg.matrix_norm(A) * torch.linalg.matrix_norm(B)  # (P,)
    raise ValueError(f"normalisation={kind!r}; valid: 'product', 'factors', 'none'")


def normalise(product: torch.Tensor, A: torch.Tensor | None = None, B: torch.Tensor | None = None,
              kind: Normalisation = "product") -> torch.Tensor:
    """Divide each projection's update (P, m, n) by its own norm.

    ``product``: ||A B||_F, the paper's Eqn. 3-4 (the gradient flows through the norm, as the
    equation says; nothing is detached). ``factors``: ||A||_F ||B||_F, the authors' released
    code. ``none``: no division (vanilla LoRA).
    """
    if kind == "none":
        return product
    return product / normaliser(product, A, B, kind)[:, None, None]


def least_squares_residual(target: torch.Tensor, basis: torch.Tensor,
                           ) -> tuple[torch.Tensor, float]:
    """Eqn. 7 over all adapted projections at once, with coefficients shared by them.

    Args:
        target: (P, m, n) the new normalised direction, one unit-norm matrix per projection.
        basis: (K, P, m, n) the earlier normalised directions.

    Returns:
        coefficients (K,) minimising ||target - sum_k c_k basis_k||_F over the stacked P
        projections (the magnitudes are shared, so one coefficient per task), and the residual
        ||target - sum_k c_k basis_k||_F / ||target||_F: 0 when the direction lies in the span of
        the earlier ones, 1 when it is orthogonal to all of them. With one projection and a
        unit-norm target this is exactly Algorithm 1's ||A_t B_t - sum_k c_k A_k B_k||_F; with P
        projections it is the root mean square of the per-projection residual norms.
    """
    y = target.reshape(-1).double()
    if basis.shape[0] == 0:
        return torch.zeros(0, dtype=target.dtype), 1.0
    X = basis.reshape(basis.shape[0], -1).double().T  # (P*m*n, K)
    coef = torch.linalg.lstsq(X, y.unsqueeze(1), driver="gelsd").solution.squeeze(1)  # (K,)
    residual = torch.linalg.vector_norm(y - X @ coef) / torch.linalg.vector_norm(y)
    return coef.to(target.dtype), float(residual)


def absolute_residual(target: torch.Tensor, basis: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Algorithm 1 line 11 as written: ||A_t B_t - sum_k c_k A_k B_k||_F of the *unnormalised*
    products, over all adapted projections at once with one coefficient per earlier task.

    Args:
        target: (P, m, n) the new product A_t B_t.
        basis: (K, P, m, n) the earlier products A_k B_k.

    Returns:
        the coefficients (K,) minimising that norm (least squares over the P stacked
        projections) and the norm itself, in the units of the weights. With one projection it
        is ||A_t B_t||_F times `least_squares_residual`'s relative residual (the same span, the
        target scaled); with P projections the two fits weigh the projections differently (here
        by the size of each product, there equally). ||A_t B_t||_F when K = 0.
    """
    y = target.reshape(-1).double()
    if basis.shape[0] == 0:
        return torch.zeros(0, dtype=target.dtype), float(torch.linalg.vector_norm(y))
    X = basis.reshape(basis.shape[0], -1).double().T  # (P*m*n, K)
    coef = torch.linalg.lstsq(X, y.unsqueeze(1), driver="gelsd").solution.squeeze(1)  # (K,)
    return coef.to(target.dtype), float(torch.linalg.vector_norm(y - X @ coef))


def _projection_products(rows: torch.Tensor, vectors: torch.Tensor,
                         chunk_bytes: int = 16 << 20) -> torch.Tensor:
    """Per-projection inner products of rows (K, P, N) float32 with vectors (V, P, N) float64:
    (K, V, P) in float64, converting the rows a chunk at a time (never a float64 copy of the
    whole buffer). One pass over the rows: K * V * P * N multiply-adds."""
    K, P, N = rows.shape
    out = torch.empty(K, vectors.shape[0], P, dtype=torch.float64, device=rows.device)
    step = max(1, chunk_bytes // (8 * P * N))
    for start in range(0, K, step):
        chunk = rows[start:start + step].double()  # (c, P, N)
        for p in range(P):  # a strided (c, N) by (N, V) product per projection: no copies
            out[start:start + step, :, p] = chunk[:, p] @ vectors[:, p].T
    return out


def _solve(gram: torch.Tensor, b: torch.Tensor, yy: float) -> float:
    """||y - X c|| for the least-squares c, from X^T X, X^T y and y^T y (all float64)."""
    coef = torch.linalg.lstsq(gram, b.unsqueeze(1), driver="gelsd").solution.squeeze(1)
    return max(yy - float(b @ coef), 0.0) ** 0.5


@dataclass
class Component:
    """One low-rank component: its task (0-based), rank, and whether it still trains."""

    key: str
    task: int
    rank: int
    frozen: bool = False


class QVAdapter(nn.Module):
    """The weight update of the q and v slices of every block's ``attn.qkv``.

    Args:
        dim: embedding width d (each slice is d x d).
        depth: number of blocks; P = 2 * depth adapted projections, ordered
            (block 0 q, block 0 v, block 1 q, ...).
        normalisation: see `normalise`.
        magnitudes: whether components carry a learnable magnitude (False: vanilla LoRA).
    """

    def __init__(self, dim: int, depth: int, normalisation: Normalisation = "product",
                 magnitudes: bool = True) -> None:
        super().__init__()
        if normalisation not in ("product", "factors", "none"):
            raise ValueError(f"normalisation={normalisation!r}; valid: 'product', 'factors', "
                             f"'none'")
        self.dim, self.depth, self.num_projections = dim, depth, 2 * depth
        self.normalisation = normalisation
        self.use_magnitudes = magnitudes
        self.components: list[Component] = []
        self.A = nn.ParameterDict()  # key -> (P, m, r)
        self.B = nn.ParameterDict()  # key -> (P, r, n)
        self.magnitude = nn.ParameterDict()  # key -> () scalar shared by all P projections
        # Normalised directions of frozen components, in `components` order (K, P, m, n).
        # Derived from A and B, so not saved with the state dict.
        self.register_buffer("frozen_directions", torch.zeros(0, 2 * depth, dim, dim),
                             persistent=False)
        # While a task trains: sum_k alpha_k D_k over the frozen components, a parameter cached
        # and kept up to date by `sdlora.fused.FrozenMagnitudes` (None: computed from the
        # magnitudes). Registered (as None when absent), never saved: `tensors` picks what is.
        self.register_parameter("frozen_sum", None)
        # Per frozen direction and projection, what `normalise` divided its product by, so
        # A_k B_k = scale[k, p] * D_k[p] (K, P) float64 on the CPU; and, for the step logs'
        # residuals, the per-projection Gram matrix <D_j[p], D_k[p]> (K, K, P) float64.
        self._frozen_scales = torch.zeros(0, 2 * depth, dtype=torch.float64)
        self._gram: torch.Tensor | None = None

    # -- structure -------------------------------------------------------------------------
    @property
    def current(self) -> Component | None:
        return next((c for c in self.components if not c.frozen), None)

    @property
    def frozen_components(self) -> list[Component]:
        return [c for c in self.components if c.frozen]

    def add_component(self, task: int, rank: int, generator: torch.Generator,
                      magnitude: float = 1.0, zero_A: bool = False, init_std: float | None = None,
                      ) -> Component:
        """Append a trainable component of `rank` for `task`.

        Initialisation: B (r x n) ~ N(0, 1/n) and A (m x r) ~ N(0, 1/r), both small and random
        as Theorem 1 assumes, so A B != 0 and its normalised direction is defined from the first
        step (the usual LoRA zero init of one factor leaves A B / ||A B||_F at 0/0). `zero_A`
        gives vanilla LoRA's start (A B = 0: W = W0 exactly).
        """
        if rank <= 0:
            raise ValueError(f"rank={rank}; the rank must be a positive integer")
        if self.current is not None:
            raise RuntimeError(f"component {self.current.key} still trains; freeze it first")
        key = str(len(self.components))
        device = self.frozen_directions.device
        P, d = self.num_projections, self.dim
        std_b = init_std if init_std is not None else 1.0 / math.sqrt(d)
        std_a = init_std if init_std is not None else 1.0 / math.sqrt(rank)
        B = torch.randn(P, rank, d, generator=generator) * std_b
        A = torch.zeros(P, d, rank) if zero_A else torch.randn(P, d, rank, generator=generator) * std_a
        self.A[key] = nn.Parameter(A.to(device))
        self.B[key] = nn.Parameter(B.to(device))
        if self.use_magnitudes:
            self.magnitude[key] = nn.Parameter(torch.tensor(float(magnitude), device=device))
        component = Component(key=key, task=task, rank=rank)
        self.components.append(component)
        return component

    def direction(self, key: str) -> torch.Tensor:
        """The (normalised) direction of component `key`, (P, m, n)."""
        A, B = self.A[key], self.B[key]
        return normalise(A @ B, A, B, self.normalisation)

    def _scale(self, key: str) -> torch.Tensor:
        """(P,) float64 on the CPU: A B = scale[p] * direction[p] for component `key`."""
        A, B = self.A[key].detach().double(), self.B[key].detach().double()
        return normaliser(A @ B, A, B, self.normalisation).cpu()

    def _directions_change(self, rebuilt: bool = False) -> None:
        if self.frozen_sum is not None:
            raise RuntimeError("the frozen components change while a FrozenMagnitudes step "
                               "caches their sum; close() it first")
        if rebuilt:
            self._gram = None  # freezing only appends rows, which residuals_of_current adds

    def freeze_current(self) -> None:
        """Freeze the current component: its direction joins the dense buffer."""
        self._directions_change()
        component = self.current
        if component is None:
            return
        with torch.no_grad():
            direction = self.direction(component.key)
        self.A[component.key].requires_grad_(False)
        self.B[component.key].requires_grad_(False)
        component.frozen = True
        self.frozen_directions = torch.cat([self.frozen_directions, direction[None]])
        self._frozen_scales = torch.cat([self._frozen_scales, self._scale(component.key)[None]])

    def drop_current(self) -> Component:
        """Remove the current component (SD-LoRA-KD after absorbing it)."""
        self._directions_change()
        component = self.current
        if component is None:
            raise RuntimeError("no trainable component to drop")
        self.components.remove(component)
        del self.A[component.key], self.B[component.key]
        if component.key in self.magnitude:
            del self.magnitude[component.key]
        return component

    def rebuild_frozen_directions(self) -> None:
        """Recompute the dense buffer from the factors (after loading a checkpoint)."""
        self._directions_change(rebuilt=True)
        with torch.no_grad():
            directions = [self.direction(c.key) for c in self.frozen_components]
        P, d = self.num_projections, self.dim
        self.frozen_directions = (torch.stack(directions) if directions else
                                  torch.zeros(0, P, d, d, device=self.frozen_directions.device))
        self._frozen_scales = torch.stack([self._scale(c.key) for c in self.frozen_components]
                                          ) if directions else torch.zeros(0, P, dtype=torch.float64)

    # -- the update, Eqn. 4 ----------------------------------------------------------------
    def magnitudes(self) -> dict[str, float]:
        """Current magnitudes keyed by their component's 1-based task, in one device sync."""
        with_magnitude = [c for c in self.components if c.key in self.magnitude]
        if not with_magnitude:
            return {}
        values = torch.stack([self.magnitude[c.key].detach() for c in with_magnitude]).tolist()
        return {str(c.task + 1): v for c, v in zip(with_magnitude, values)}

    def frozen_delta(self) -> torch.Tensor:
        """sum_k alpha_k D_k over the frozen components (P, m, n); the cached sum while a
        `FrozenMagnitudes` step keeps one, else computed (differentiably) from the magnitudes."""
        if self.frozen_sum is not None:
            return self.frozen_sum
        P, d = self.num_projections, self.dim
        frozen = self.frozen_components
        if not frozen:
            return self.frozen_directions.new_zeros(P, d, d)
        if not self.use_magnitudes:
            return self.frozen_directions.sum(0)
        alpha = torch.stack([self.magnitude[c.key] for c in frozen])  # (K,)
        return frozen_sum(alpha, self.frozen_directions)

    def delta(self) -> torch.Tensor:
        """sum_k alpha_k * normalised(A_k B_k) for every projection: (P, m, n)."""
        out = self.frozen_delta()
        current = self.current
        if current is not None:
            update = self.direction(current.key)  # (P, m, n)
            if self.use_magnitudes:
                update = self.magnitude[current.key] * update
            out = out + update
        return out

    def qkv_weights(self, base: list[torch.Tensor], delta: torch.Tensor | None = None,
                    ) -> list[torch.Tensor]:
        """Compose each block's qkv weight (3d, d): W0 with the q and v slices updated by
        `delta` (P, m, n), by default this adapter's Eqn. 4 update."""
        delta = (self.delta() if delta is None else delta).view(self.depth, 2, self.dim, self.dim)
        d = self.dim
        return [torch.cat([w[:d] + delta[i, 0], w[d:2 * d], w[2 * d:] + delta[i, 1]])
                for i, w in enumerate(base)]

    @torch.no_grad()
    def residual_of_current(self) -> float:
        """The relative residual of `residuals_of_current`."""
        return self.residuals_of_current()["relative"]

    @torch.no_grad()
    def residuals_of_current(self) -> dict[str, float]:
        """Both residuals of the current component against the frozen ones, for the step logs:

        * ``relative``: `least_squares_residual` of the normalised direction D_t against the
          D_k (Eqn. 7; 1 when orthogonal, whatever the scale);
        * ``absolute``: `absolute_residual` of the unnormalised product A_t B_t against the
          A_k B_k (Algorithm 1 line 11; grows with the size of A_t B_t).

        Cost: one float64 pass over the buffer per call (K x P per-projection inner products
        <D_k[p], A_t B_t[p]>), from which both right-hand sides follow, since
        A_k B_k[p] = scale[k, p] D_k[p]; the normal equations use the per-projection Gram
        matrix of the frozen directions, extended by a row when a direction freezes. No
        least-squares solve over P*m*n rows. Relative 1.0 and absolute ||A_t B_t||_F when there
        is no earlier direction."""
        current = self.current
        if current is None:
            raise RuntimeError("no trainable component")
        A, B = self.A[current.key], self.B[current.key]
        product = A @ B  # (P, m, n)
        P = self.num_projections
        U = product.reshape(P, -1).double()
        uu = (U * U).sum(1).cpu()  # (P,) ||A_t B_t[p]||^2
        K = self.frozen_directions.shape[0]
        if K == 0:
            return dict(relative=1.0, absolute=float(uu.sum()) ** 0.5)
        flat = self.frozen_directions.view(K, P, -1)
        known = 0 if self._gram is None else self._gram.shape[0]
        if known < K:  # extend the Gram matrix by the rows of directions frozen since
            gram = torch.zeros(K, K, P, dtype=torch.float64)
            if known:
                gram[:known, :known] = self._gram
            new = torch.cat([_projection_products(flat, flat[j:j + 8].double())
                             for j in range(known, K, 8)], dim=1).cpu()  # (K, K - known, P)
            gram[:, known:] = new
            gram[known:, :] = new.transpose(0, 1)
            self._gram = gram
        ip = _projection_products(flat, U[None]).squeeze(1).cpu()  # (K, P) <D_k[p], U[p]>
        if self.normalisation == "product":
            s_t = uu.sqrt()  # (P,) ||A_t B_t[p]||_F, as `normaliser` (in float64)
        else:
            s_t = normaliser(product.double(), A.double(), B.double(), self.normalisation).cpu()
        s = self._frozen_scales  # (K, P)
        if bool((s_t > 0).all()):
            yy = float((uu / s_t ** 2).sum())  # ||D_t||^2
            relative = _solve(self._gram.sum(2), (ip / s_t).sum(1), yy) / yy ** 0.5
        else:  # a zero product (e.g. A = 0 at a released-code start): no direction yet
            relative = float("nan")
        absolute = _solve(torch.einsum("jkp,jp,kp->jk", self._gram, s, s), (ip * s).sum(1),
                          float(uu.sum()))
        return dict(relative=relative, absolute=absolute)

    # -- checkpoints -----------------------------------------------------------------------
    def layout(self) -> list[dict]:
        return [dict(key=c.key, task=c.task, rank=c.rank, frozen=c.frozen) for c in self.components]

    def load_layout(self, layout: list[dict], tensors: dict[str, torch.Tensor]) -> None:
        """Rebuild components from `layout` and tensors named A.<key>, B.<key>, magnitude.<key>."""
        device = self.frozen_directions.device
        self.components = [Component(**c) for c in layout]
        self.A = nn.ParameterDict({c.key: nn.Parameter(tensors[f"A.{c.key}"].to(device),
                                                       requires_grad=not c.frozen)
                                   for c in self.components})
        self.B = nn.ParameterDict({c.key: nn.Parameter(tensors[f"B.{c.key}"].to(device),
                                                       requires_grad=not c.frozen)
                                   for c in self.components})
        self.magnitude = nn.ParameterDict({c.key: nn.Parameter(tensors[f"magnitude.{c.key}"].to(device))
                                           for c in self.components if f"magnitude.{c.key}" in tensors})
        self.rebuild_frozen_directions()

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {f"A.{k}": v.detach() for k, v in self.A.items()}
        out.update({f"B.{k}": v.detach() for k, v in self.B.items()})
        out.update({f"magnitude.{k}": v.detach() for k, v in self.magnitude.items()})
        return out
