"""InfLoRA (Liang & Li, CVPR 2024, *Interference-Free Low-Rank Adaptation for Continual
Learning*), per BASELINES.md section 6.

Each task t adds, on the key and value slices of every block's ``attn.qkv`` (`SliceLoRA`),
W += B_t A_t with rank r (`rank`):

* Before training (`prepare_task`): one pass over the task's training data collects each
  block's input covariance C = mean over tokens of x x^T (`InputCovariance`). C is projected
  away from the protected subspace M of earlier tasks ('remove' layers: C - M M^T C; 'retain'
  layers, whose basis holds the complement: P P^T C) and A_t = (top-r left singular vectors)^T
  / sqrt(3), the same A for k and v. A_t is fixed from creation, so x A_t^T ~ 0 for inputs in
  the protected span: the update does not interfere with what earlier tasks' inputs see.
* B_t starts at zero and is, with the task's head rows (one Linear per task, concatenated at
  test), the only thing that trains. The backbone stays in eval mode (no dropout).
* After training (`end_task`): B_t A_t is merged into the plain qkv weights, the covariance is
  collected again with the merged model, and DualGPM extends M with threshold
  eps_t = gpm_eps_start + (gpm_eps_end - gpm_eps_start) * t / tasks (t = the 0-based task just
  finished; 0.98, 0.982, ... for 10 tasks): 'remove' layers add residual directions until the
  captured energy (squared singular values of C) reaches eps_t, 'retain' layers drop directions
  from their complement basis; a 'remove' basis past d/2 columns switches to its complement.

Inference is one plain ViT pass (`merged`). Checkpoints keep every task's A and B and the bases;
loading re-merges them into the pretrained weights in task order, as training did.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
import torch.nn as nn
from torch.func import functional_call

from .base import ContinualMethod, IncrementalHead, Normalised
from .covariance import InputCovariance
from .qkv_slices import SliceLoRA

__all__ = ["InfLoRA", "dualgpm_update", "eps_schedule"]


def eps_schedule(start: float, end: float, tasks: int) -> list[float]:
    """DualGPM's threshold after each task t = 0..tasks-1."""
    return [start + (end - start) * t / tasks for t in range(tasks)]


def _energy_svd(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    u, s, _ = torch.linalg.svd(matrix, full_matrices=False)
    return u, s ** 2


def dualgpm_update(basis: torch.Tensor | None, kind: str, cov: torch.Tensor, eps: float,
                   ) -> tuple[torch.Tensor, str]:
    """One layer's DualGPM step (as InfLoRA's ``update_DualGPM``) on covariance `cov` (d, d),
    float64. `basis` (d, k) orthonormal columns or None (first task); `kind` 'remove' (basis
    spans the protected inputs) or 'retain' (basis spans their complement)."""
    d = cov.shape[0]
    if basis is None:
        u, energy = _energy_svd(cov)
        ratio = energy / energy.sum()
        r = int((torch.cumsum(ratio, 0) < eps).sum())
        # The released code stores these r columns as 'retain' when r >= d/2 (BASELINES.md
        # 3.5), though 'retain' bases hold the complement; here the switch below applies.
        basis, kind = u[:, :max(r, 1)], "remove"
    elif kind == "remove":
        total = _energy_svd(cov)[1].sum()
        residual = cov - basis @ (basis.T @ cov)
        u, energy = _energy_svd(residual)
        ratio = energy / total
        captured = float((total - energy.sum()) / total)
        r = 0
        while r < len(ratio) and captured < eps:
            captured += float(ratio[r])
            r += 1
        if r:
            basis = torch.cat([basis, u[:, :r]], dim=1)[:, :d]
    else:
        total = _energy_svd(cov)[1].sum()
        inside = basis @ (basis.T @ cov)
        u, energy = _energy_svd(inside)
        ratio = energy / total
        captured = float(energy.sum() / total)
        r = 0
        while r < len(ratio) and captured >= 1 - eps:
            captured -= float(ratio[r])
            r += 1
        if r:
            rest = basis - u[:, :r] @ (u[:, :r].T @ basis)
            keep = basis.shape[1] - r
            basis = torch.linalg.svd(rest, full_matrices=False)[0][:, :keep]
    if kind == "remove" and basis.shape[1] > d / 2:  # keep the smaller of the two bases
        u = torch.linalg.svd(basis, full_matrices=True)[0]
        basis, kind = u[:, basis.shape[1]:], "retain"
    return basis, kind


class InfLoRA(ContinualMethod):
    forward_passes = 1

    def __init__(self, backbone: nn.Module, config, mean, std) -> None:
        super().__init__(backbone, config, mean, std)
        self.rank = config.rank
        if self.rank > backbone.embed_dim:
            raise ValueError(f"rank={self.rank} is more than the width {backbone.embed_dim}")
        self.lora = SliceLoRA(backbone.embed_dim, len(backbone.blocks), ("k", "v"))
        self.head = IncrementalHead(backbone.num_features)
        self.qkv_names = [f"blocks.{i}.attn.qkv.weight" for i in range(len(backbone.blocks))]
        # Pretrained qkv weights: merging re-adds every task's B A to these, in task order.
        self.register_buffer("qkv_pretrained", torch.stack(
            [blk.attn.qkv.weight.detach().clone() for blk in backbone.blocks]), persistent=False)
        self.bases: list[torch.Tensor | None] = [None] * len(backbone.blocks)  # float64 (d, k)
        self.kinds: list[str] = ["remove"] * len(backbone.blocks)
        self.current: str | None = None  # key of the training component
        self._batches: Callable[[], Iterable] | None = None

    def train(self, mode: bool = True) -> "InfLoRA":
        super().train(mode)
        self.backbone.eval()  # as the released code: no dropout while training
        return self

    # -- forward ---------------------------------------------------------------------------
    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.normalise_input(x)
        if self.current is None:
            return self.backbone(x)  # (B, D): earlier tasks are merged into its weights
        params = dict(self.backbone.named_parameters())
        weights = self.lora.weights([params[n] for n in self.qkv_names], [self.current])
        return functional_call(self.backbone, dict(zip(self.qkv_names, weights)), (x,),
                               strict=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (B, classes seen)

    # -- the contract ----------------------------------------------------------------------
    @staticmethod
    def key(task: int) -> str:
        return f"task{task}"

    def begin_task(self, task: int, classes: int, generator: torch.Generator) -> None:
        """Grow the head; the adapter of `task` is created by `prepare_task` (it needs data)."""
        self.task = task
        self.head.grow(classes, generator)
        self.current = None

    @torch.no_grad()
    def covariance(self, batches: Iterable) -> torch.Tensor:
        """(depth, d, d) float64 input covariance of every block over `batches`."""
        was = self.training
        self.eval()
        with InputCovariance(self.backbone) as cov:
            for x, _ in batches:
                self.features(x)
        self.train(was)
        return cov.covariances()

    def projected_A(self, covariances: torch.Tensor) -> torch.Tensor:
        """A_t (depth, 2, r, d) from each block's covariance projected off the protected span."""
        rows = []
        for i, cov in enumerate(covariances):
            basis = self.bases[i]
            if basis is not None:
                basis = basis.to(cov)
                inside = basis @ (basis.T @ cov)
                cov = cov - inside if self.kinds[i] == "remove" else inside
            u = torch.linalg.svd(cov, full_matrices=False)[0]
            rows.append(u[:, :self.rank].T / math.sqrt(3))
        a = torch.stack(rows).to(self.qkv_pretrained.dtype)  # (depth, r, d)
        return torch.stack([a, a], dim=1)  # the same A for k and v

    def prepare_task(self, batches: Callable[[], Iterable]) -> None:
        self._batches = batches
        self.add_component(self.task, self.projected_A(self.covariance(batches())))

    def add_component(self, task: int, A: torch.Tensor) -> None:
        for key in self.lora.B:  # earlier tasks' B never train again
            self.lora.B[key].requires_grad_(False)
        self.current = self.key(task)
        self.lora.add(self.current, A)

    def trainable_parameters(self) -> dict[str, list[nn.Parameter]]:
        """The current task's B (chosen by exact key) and its head rows."""
        if self.current is None:
            raise RuntimeError("InfLoRA needs prepare_task(batches) before training a task: "
                               "A_t comes from the task's input covariance")
        for key, p in self.lora.B.items():
            p.requires_grad_(key == self.current)
        return {"head": [p for p in self.head.parameters() if p.requires_grad],
                "adapter": [self.lora.B[self.current]]}

    @torch.no_grad()
    def merge_into_backbone(self, keys: list[str]) -> None:
        """qkv weights = pretrained + the `keys` components, added in order (as training)."""
        weights = [w.clone() for w in self.qkv_pretrained]
        for key in keys:
            weights = self.lora.weights(weights, [key])
        for blk, w in zip(self.backbone.blocks, weights):
            blk.attn.qkv.weight.copy_(w)

    def end_task(self) -> dict:
        if self.current is None:
            raise RuntimeError("end_task without prepare_task: no component to merge")
        self.lora.B[self.current].requires_grad_(False)
        self.merge_into_backbone(list(self.lora.B.keys()))
        self.current = None
        info = {}
        if self._batches is not None:  # DualGPM on the merged model's inputs
            eps = eps_schedule(self.config.gpm_eps_start, self.config.gpm_eps_end,
                               self.config.tasks)[min(self.task, self.config.tasks - 1)]
            covariances = self.covariance(self._batches())
            for i, cov in enumerate(covariances):
                self.bases[i], self.kinds[i] = dualgpm_update(self.bases[i], self.kinds[i],
                                                              cov.cpu(), eps)
            info = dict(eps=eps, basis_columns=[int(b.shape[1]) for b in self.bases],
                        kinds=list(self.kinds))
            self._batches = None
        return info

    # -- checkpoints -----------------------------------------------------------------------
    def checkpoint_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {f"head.{k}": v for k, v in self.head.state_dict().items()}
        for key in self.lora.A:
            tensors[f"adapter.A.{key}"] = self.lora.A[key].data
            tensors[f"adapter.B.{key}"] = self.lora.B[key].data
        for i, basis in enumerate(self.bases):
            if basis is not None:
                tensors[f"gpm.basis.{i}"] = basis
        return tensors

    def checkpoint_meta(self) -> dict:
        return dict(components=list(self.lora.A.keys()), gpm_kinds=list(self.kinds))

    def load_checkpoint(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        self.head.restore(tensors, meta)
        device = self.qkv_pretrained.device
        for key in meta["components"]:
            self.lora.add(key, tensors[f"adapter.A.{key}"].to(device), trainable_B=False)
            with torch.no_grad():
                self.lora.B[key].copy_(tensors[f"adapter.B.{key}"])
        self.merge_into_backbone(list(meta["components"]))
        self.bases = [tensors.get(f"gpm.basis.{i}") for i in range(len(self.bases))]
        self.bases = [b.to(torch.float64) if b is not None else None for b in self.bases]
        self.kinds = list(meta["gpm_kinds"])
        self.current, self.task = None, meta["task"]

    # -- inference -------------------------------------------------------------------------
    @torch.no_grad()
    def merged(self) -> nn.Module:
        """A plain timm ViT (every task's B A already in its qkv weights) and a Linear head."""
        import copy

        plain = copy.deepcopy(self.backbone)
        if self.current is not None:  # mid-task: fold the training component in as well
            params = dict(plain.named_parameters())
            weights = self.lora.weights([params[n] for n in self.qkv_names], [self.current])
            for blk, w in zip(plain.blocks, weights):
                blk.attn.qkv.weight.copy_(w)
        plain.reset_classifier(self.head.num_classes)
        plain.head.load_state_dict(self.head.as_linear().state_dict())
        return Normalised(plain, self.mean, self.std)
