"""SimpleCIL (Zhou et al., 2023, *Revisiting Class-Incremental Learning with Pre-Trained Models*):
the pretrained backbone stays frozen and no gradient step is taken. Each class's prototype is
the mean pooled feature of its training images under the test transform; a test image goes to
the class whose prototype has the highest cosine similarity to its feature, over every class
seen so far.

Nothing of one class depends on another, so the prototypes, and with them every prediction,
do not depend on the batch size or on the order in which the tasks arrive: features are summed
per class in float64 and the cosine is taken in float64 (tests/test_methods.py checks both).
At inference it is a plain ViT with a linear head whose rows are the unit-norm prototypes
(`merged`): argmax of the cosine equals argmax of that product, since a feature's own norm is
the same for every class.
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import ContinualMethod, Normalised

__all__ = ["SimpleCIL"]


class SimpleCIL(ContinualMethod):
    trains_by_gradient = False

    def __init__(self, backbone: nn.Module, config, mean, std) -> None:
        super().__init__(backbone, config, mean, std)
        dim = backbone.num_features
        self.register_buffer("feature_sum", torch.zeros(0, dim, dtype=torch.float64))
        self.register_buffer("count", torch.zeros(0, dtype=torch.float64))
        self._task_classes = range(0)

    @property
    def num_classes(self) -> int:
        return int(self.count.shape[0])

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.normalise_input(x))  # (B, D) pooled pre-logits feature

    def prototypes(self) -> torch.Tensor:
        """(classes seen, D) float64 class means."""
        return self.feature_sum / self.count.clamp(min=1)[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = F.normalize(self.features(x).double(), dim=1)
        return (features @ F.normalize(self.prototypes(), dim=1).T).float()  # (B, classes)

    # -- the contract ----------------------------------------------------------------------
    def begin_task(self, task: int, classes: int, generator: torch.Generator) -> None:
        self.task = task
        start = self.num_classes
        self.feature_sum = torch.cat([self.feature_sum, self.feature_sum.new_zeros(
            classes, self.feature_sum.shape[1])])
        self.count = torch.cat([self.count, self.count.new_zeros(classes)])
        self._task_classes = range(start, start + classes)

    @torch.no_grad()
    def fit_task(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.eval()
        for x, y in batches:
            if len(y) and not (self._task_classes.start <= int(y.min())
                               and int(y.max()) < self._task_classes.stop):
                raise ValueError(f"labels {sorted(set(y.tolist()))} are not all of the current "
                                 f"task's classes {list(self._task_classes)}")
            features = self.features(x).double()
            self.feature_sum.index_add_(0, y, features)
            self.count.index_add_(0, y, torch.ones_like(y, dtype=torch.float64))

    def end_task(self) -> dict:
        counts = self.count[self._task_classes.start:self._task_classes.stop]
        empty = [self._task_classes.start + i for i, c in enumerate(counts.tolist()) if c == 0]
        if empty:
            raise ValueError(f"classes {empty} of task {self.task + 1} have no training image, "
                             f"so they have no prototype")
        return dict(images_per_class=counts.tolist())

    # -- checkpoints -----------------------------------------------------------------------
    def checkpoint_tensors(self) -> dict[str, torch.Tensor]:
        return {"prototypes.feature_sum": self.feature_sum, "prototypes.count": self.count}

    def load_checkpoint(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        device = self.count.device
        self.feature_sum = tensors["prototypes.feature_sum"].to(device, torch.float64)
        self.count = tensors["prototypes.count"].to(device, torch.float64)
        self.task = meta["task"]

    # -- inference -------------------------------------------------------------------------
    @torch.no_grad()
    def merged(self) -> nn.Module:
        """A plain timm ViT whose linear head holds the unit-norm prototypes (bias 0)."""
        import copy

        plain = copy.deepcopy(self.backbone)
        plain.reset_classifier(self.num_classes)
        plain.head.weight.copy_(F.normalize(self.prototypes(), dim=1).to(plain.head.weight))
        plain.head.bias.zero_()
        return Normalised(plain, self.mean, self.std)
