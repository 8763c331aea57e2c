"""The base types of a class-incremental benchmark, below `sdlora.data` (the embedded ones) and
`sdlora.datasets` (the paper's, from disk), which both build them: `Benchmark`, its in-memory
`ArrayDataset`, the `DataError` every loader raises, and the seeded stratified split.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["ArrayDataset", "Benchmark", "DataError", "stratified_split"]


class DataError(ValueError):
    """A data set is missing or malformed; the message says what was expected and where."""


@dataclass
class ArrayDataset:
    """Images (N, 3, H, W) float in [0, 1] and integer labels (N,), kept in memory."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, mask: torch.Tensor) -> "ArrayDataset":
        return ArrayDataset(self.images[mask], self.labels[mask])

    def with_labels(self, labels: torch.Tensor) -> "ArrayDataset":
        return ArrayDataset(self.images, labels)


@dataclass
class Benchmark:
    """A class-incremental benchmark: train and test sets over `num_classes` labels."""

    name: str
    train: "ArrayDataset"  # or sdlora.datasets.ImageDataset (decoded on the fly)
    test: "ArrayDataset"
    class_names: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def validation_split(self, fraction: float = 0.2, seed: int = 0) -> "Benchmark":
        """For choosing hyperparameters without the test set: the training set minus a seeded,
        stratified `fraction` of each class, and that fraction as the held-out set (in place of
        `test`). The test images are not touched."""
        if not 0 < fraction < 1:
            raise DataError(f"val_fraction={fraction!r} is not valid; it must be in (0, 1)")
        counts = np.bincount(self.train.labels.numpy(), minlength=self.num_classes)
        least = int(counts.min())
        if least >= 2 and int(round(fraction * least)) >= least:
            # the same rounding as stratified_split: the largest fraction that leaves a class
            # one training image is just below (least - 0.5) / least
            raise DataError(f"val_fraction={fraction} leaves no training image for a class with "
                            f"{least} training images; choose from {1 / least:.3f} to "
                            f"{(least - 1) / least:.3f}")
        if int(round(fraction * counts.min())) < 1:
            raise DataError(f"val_fraction={fraction} leaves no validation image for a class "
                            f"with {counts.min()} training images; give at least "
                            f"{1 / counts.min():.3f}")
        is_val = torch.from_numpy(stratified_split(self.train.labels.numpy(), fraction, seed))
        return Benchmark(f"{self.name} (validation split)", self.train.subset(~is_val),
                         self.train.subset(is_val), self.class_names)

    def train_for_fitting(self):
        """The training images under the *test* transform (no augmentation), for methods that
        fit statistics instead of taking gradient steps (class-mean prototypes)."""
        transform = getattr(self.test, "transform", None)
        if transform is not None and hasattr(self.train, "with_transform"):
            return self.train.with_transform(transform)
        return self.train


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of test samples: `test_fraction` of each class, chosen with `seed`."""
    rng = np.random.default_rng(seed)
    is_test = np.zeros(labels.shape[0], dtype=bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        is_test[idx[: int(round(test_fraction * idx.size))]] = True
    return is_test
