"""The contract every continual-learning method implements, and the parts they share.

The training loop (`sdlora.train`) is the same for every method. It calls, per task t:

1. ``begin_task(t, classes, generator)``: grow the classifier by the task's classes and set up
   what trains on t (new adapter components, prompts, prototypes ...); for gradient methods
   then ``prepare_task(batches)``, which may look at the task's training data first.
2. If ``trains_by_gradient``: steps the parameters of ``trainable_parameters()`` (groups by name,
   one fresh ``torch.optim`` optimiser per task) on cross-entropy over the current task's logits,
   plus ``auxiliary_loss()`` when the method adds a term (e.g. a key-query pull), plus the
   optimiser that ``fuse_frozen()`` returns, if any. Otherwise ``fit_task(batches)`` sees the
   task's training data once (prototype methods: no gradient step at all).
3. ``end_task()``: freeze, absorb, merge, align or keep what t learned; returns a dict recorded
   in ``metrics.json``'s ``task_info``.

Checkpoints: ``checkpoint_tensors()`` and ``checkpoint_meta()`` are written after each task;
``load_checkpoint(tensors, meta)`` on a freshly built model of the same configuration restores
the model at that task's end. ``merged()`` returns a plain model (a timm ViT and a head) that
costs exactly a plain ViT at inference, or raises `NotMergeable` with the reason.

``adapter`` is the method's `sdlora.adapters.QVAdapter` where it has one (the LoRA family), else
None: the magnitude and direction analyses read it.

Task identity (methods that infer each test image's task, HiDe-Prompt): after every inference
pass ``last_task_prediction`` holds the predicted task of each image (B,), and
`sdlora.train.evaluate` records its accuracy per task (``task_info``'s
``task_identity_accuracy``). ``oracle_task`` True (analysis only, never a default) makes
`evaluate` pass each test image's true task to ``forward(x, task_ids=...)`` instead. Both are
None / False for every other method.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
import torch.nn as nn

from ..config import TrainConfig

__all__ = ["ContinualMethod", "IncrementalHead", "NotMergeable", "Normalised"]


class NotMergeable(RuntimeError):
    """The method's model cannot be folded into a plain ViT (the message says why)."""


class IncrementalHead(nn.Module):
    """One linear classifier over all classes seen, grown by each task's classes.

    Each task's rows are a separate Linear; earlier tasks' rows are frozen (from the second task
    on the loss sees only the current task's logits, so they would get no gradient anyway).
    """

    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.in_features = in_features
        self.tasks = nn.ModuleList()
        # Follows .to(device), so a task's rows are created where the model lives.
        self.register_buffer("anchor", torch.zeros(0), persistent=False)

    @property
    def num_classes(self) -> int:
        return sum(layer.out_features for layer in self.tasks)

    def grow(self, classes: int, generator: torch.Generator) -> None:
        for layer in self.tasks:
            layer.requires_grad_(False)
        layer = nn.Linear(self.in_features, classes)
        bound = 1.0 / self.in_features ** 0.5  # nn.Linear's default init, from our generator
        with torch.no_grad():
            layer.weight.uniform_(-bound, bound, generator=generator)
            layer.bias.uniform_(-bound, bound, generator=generator)
        self.tasks.append(layer.to(self.anchor.device))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.cat([layer(features) for layer in self.tasks], dim=1)  # (B, classes seen)

    def restore(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        """Grow to a checkpoint's shape (tasks 0..meta['task']) and load its ``head.*`` tensors;
        every row frozen, as after `end_task`."""
        generator = torch.Generator().manual_seed(0)  # shapes only: the values are loaded
        for _ in range(meta["task"] + 1):
            self.grow(meta["classes_per_task"], generator)
        self.load_state_dict({k[len("head."):]: v for k, v in tensors.items()
                              if k.startswith("head.")})
        for layer in self.tasks:
            layer.requires_grad_(False)

    def as_linear(self) -> nn.Linear:
        layer = nn.Linear(self.in_features, self.num_classes)
        with torch.no_grad():
            layer.weight.copy_(torch.cat([t.weight for t in self.tasks]))
            layer.bias.copy_(torch.cat([t.bias for t in self.tasks]))
        return layer


class Normalised(nn.Module):
    """A plain model with the run's input normalisation in front."""

    def __init__(self, model: nn.Module, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", mean.clone(), persistent=False)
        self.register_buffer("std", std.clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)


class ContinualMethod(nn.Module):
    """Backbone, input normalisation, and the method contract (see the module docstring).

    Args:
        backbone: a headless timm VisionTransformer (``num_classes=0``).
        config: the run's configuration.
        mean, std: input normalisation applied inside the model.
    """

    trains_by_gradient: bool = True  # False: `fit_task` instead of optimiser steps
    mergeable: bool = True  # False: `merged()` raises NotMergeable (no plain-ViT form)
    oracle_task: bool = False  # True: `evaluate` hands forward each image's true task
    last_task_prediction: torch.Tensor | None = None  # (B,) tasks inferred by the last pass

    def __init__(self, backbone: nn.Module, config: TrainConfig,
                 mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.config = config
        self.backbone = backbone
        self.backbone.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        self.adapter: nn.Module | None = None  # a QVAdapter for the LoRA family
        self.task = -1

    # -- forward ---------------------------------------------------------------------------
    def normalise_input(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std  # (B, 3, H, W)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, classes seen)
        raise NotImplementedError

    # -- the contract ----------------------------------------------------------------------
    def begin_task(self, task: int, classes: int, generator: torch.Generator) -> None:
        raise NotImplementedError

    def prepare_task(self, batches: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]],
                     ) -> None:
        """Gradient methods only, after `begin_task` and before the first step: ``batches()``
        iterates the task's training data (images, task-local labels) in stored order, as often
        as called (InfLoRA's input covariance before and after training; HiDe-Prompt's
        task-identity stage before, its statistics and head alignment in `end_task`). Default:
        nothing."""

    def trainable_parameters(self) -> dict[str, list[nn.Parameter]]:
        return {}

    def fuse_frozen(self, chunk_bytes: int | None = 8 << 20):
        """An extra optimiser that steps some parameters outside torch.optim (the LoRA family's
        frozen magnitudes), or None."""
        return None

    def auxiliary_loss(self) -> torch.Tensor | None:
        """A term added to the cross-entropy, computed by the last forward pass, or None."""
        return None

    def fit_task(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """For methods that do not train by gradient: see the task's training data once
        (images, labels as model class ids)."""
        raise NotImplementedError(f"{type(self).__name__} trains by gradient")

    def end_task(self) -> dict:
        return {}

    # -- checkpoints -----------------------------------------------------------------------
    def checkpoint_tensors(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def checkpoint_meta(self) -> dict:
        return {}

    def load_checkpoint(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        raise NotImplementedError

    # -- inference -------------------------------------------------------------------------
    def merged(self) -> nn.Module:
        raise NotMergeable(f"{type(self).__name__} has no plain-ViT form")
