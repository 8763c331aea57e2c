"""The paper's benchmarks from their published on-disk formats, with splits made by code.

Nothing here downloads on its own except torchvision's CIFAR-100 when asked to. Each loader
reads a root folder (``--data-root``, or ``$SDLORA_DATA/<name>``) and returns a `Benchmark`
whose train and test sets are `ImageDataset`s: images decoded and transformed on the fly in
DataLoader workers, never held in memory.

Layouts (and where the data is published):

* CIFAR-100: torchvision's ``cifar-100-python/`` under the root
  (https://www.cs.toronto.edu/~kriz/cifar.html); ``download=True`` fetches it when online.
* ImageNet-R, ImageNet-A: one folder per class (``<root>/<wnid>/*.jpg``, 200 classes) as in the
  published archives (github.com/hendrycks/imagenet-r, github.com/hendrycks/natural-adv-examples);
  a seeded 80/20 train/test split per class is made by code. An already split layout
  (``<root>/train/<wnid>/``, ``<root>/test/<wnid>/``) is used as it is.
* DomainNet: ``<root>/<domain>/<class>/<image>`` for the six domains with the official split
  lists ``<root>/<domain>_train.txt`` and ``<root>/<domain>_test.txt`` (lines
  ``<domain>/<class>/<image> <label>``; ai.bu.edu/M3SDA); all six domains, 345 classes.
* CUB-200-2011: ``<root>/images.txt``, ``image_class_labels.txt``, ``train_test_split.txt``,
  ``classes.txt`` and ``images/`` (www.vision.caltech.edu/datasets/cub_200_2011).

Transforms follow the paper's codebase: train RandomResizedCrop(size, scale=(0.05, 1)) and a
horizontal flip; test Resize(size * 256 / 224) and CenterCrop(size); pixel values in [0, 1].
Mean/std normalisation happens inside the model and is the config's `normalise_inputs`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .benchmark import Benchmark, DataError

__all__ = ["ImageDataset", "FILE_BENCHMARKS", "load_file_benchmark", "data_root", "transforms_for"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def data_root(name: str, root: str | Path | None) -> Path:
    if root is not None:
        return Path(root)
    base = os.environ.get("SDLORA_DATA")
    if base is None:
        raise DataError(f"benchmark {name!r} needs its data folder: pass --data-root DIR or set "
                        f"SDLORA_DATA (its subfolder {name}/ is used)")
    return Path(base) / name


def transforms_for(size: int, train: bool) -> Callable:
    from torchvision import transforms as T

    if train:
        return T.Compose([T.RandomResizedCrop(size, scale=(0.05, 1.0)),
                          T.RandomHorizontalFlip(), T.ToTensor()])
    return T.Compose([T.Resize(int(round(size * 256 / 224))), T.CenterCrop(size), T.ToTensor()])


@dataclass
class ImageDataset(torch.utils.data.Dataset):
    """Images decoded on demand: `items` are file paths or uint8 HWC arrays; labels (N,)."""

    items: Sequence
    labels: torch.Tensor
    transform: Callable | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, mask: torch.Tensor) -> "ImageDataset":
        idx = torch.nonzero(mask).flatten().tolist()
        items = self.items[idx] if isinstance(self.items, np.ndarray) else [self.items[i] for i in idx]
        return ImageDataset(items, self.labels[mask], self.transform)

    def with_labels(self, labels: torch.Tensor) -> "ImageDataset":
        return ImageDataset(self.items, labels, self.transform)

    def with_transform(self, transform: Callable) -> "ImageDataset":
        return ImageDataset(self.items, self.labels, transform)

    def __getitem__(self, i: int):
        from PIL import Image

        item = self.items[i]
        image = Image.fromarray(item) if isinstance(item, np.ndarray) else Image.open(item)
        image = image.convert("RGB")
        x = self.transform(image) if self.transform else torch.from_numpy(np.asarray(image))
        return x, int(self.labels[i])


def _folder_classes(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir())


def _images(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)


PUBLISHED = {
    "cifar100": "https://www.cs.toronto.edu/~kriz/cifar.html",
    "imagenet-r": "https://github.com/hendrycks/imagenet-r",
    "imagenet-a": "https://github.com/hendrycks/natural-adv-examples",
    "domainnet": "http://ai.bu.edu/M3SDA/",
    "cub200": "https://www.vision.caltech.edu/datasets/cub_200_2011/",
}


def _expect(condition: bool, name: str, root: Path, layout: str) -> None:
    if not condition:
        raise DataError(f"{name}: {root} does not have the expected layout: {layout}. The data "
                        f"is published at {PUBLISHED[name]}")


def _class_folders(name: str, root: Path, expected: int, split_seed: int,
                   test_fraction: float = 0.2) -> Benchmark:
    layout = (f"one folder per class ({expected} classes, <root>/<wnid>/*.jpg) or "
              f"<root>/train/<wnid>/ and <root>/test/<wnid>/")
    _expect(root.is_dir(), name, root, layout)
    if (root / "train").is_dir() and (root / "test").is_dir():
        classes = _folder_classes(root / "train")
        _expect(classes == _folder_classes(root / "test") and len(classes) == expected,
                name, root, layout)
        parts = []
        for split in ("train", "test"):
            items, labels = [], []
            for c, cls in enumerate(classes):
                files = _images(root / split / cls)
                items += files
                labels += [c] * len(files)
            parts.append(ImageDataset(items, torch.tensor(labels)))
        return Benchmark(name, parts[0], parts[1], classes)
    classes = _folder_classes(root)
    _expect(len(classes) == expected, name, root, layout + f" (found {len(classes)} folders)")
    rng = np.random.default_rng(split_seed)
    train_items, train_labels, test_items, test_labels = [], [], [], []
    for c, cls in enumerate(classes):
        files = _images(root / cls)
        _expect(len(files) >= 2, name, root, layout + f" (class {cls} has {len(files)} images)")
        order = rng.permutation(len(files))
        n_test = max(1, int(round(test_fraction * len(files))))
        test_items += [files[i] for i in order[:n_test]]
        train_items += [files[i] for i in order[n_test:]]
        test_labels += [c] * n_test
        train_labels += [c] * (len(files) - n_test)
    return Benchmark(name, ImageDataset(train_items, torch.tensor(train_labels)),
                     ImageDataset(test_items, torch.tensor(test_labels)), classes)


def _imagenet_r(root: Path, split_seed: int = 0) -> Benchmark:
    return _class_folders("imagenet-r", root, 200, split_seed)


def _imagenet_a(root: Path, split_seed: int = 0) -> Benchmark:
    return _class_folders("imagenet-a", root, 200, split_seed)


def _cifar100(root: Path, split_seed: int = 0, download: bool = False) -> Benchmark:
    """torchvision's on-disk format (cifar-100-python/{train,test,meta}, Python pickles of
    arrays and lists, the format the dataset is published in), read directly; `download` uses
    torchvision to fetch it first."""
    import pickle

    if download:
        from torchvision.datasets import CIFAR100
        CIFAR100(str(root), train=True, download=True)
    folder = root / "cifar-100-python"
    layout = "<root>/cifar-100-python/ with train, test and meta (torchvision's format)"
    for n in ("train", "test", "meta"):
        _expect((folder / n).exists(), "cifar100", root, layout + f" ({n} missing)")
    parts = []
    for n in ("train", "test"):
        with open(folder / n, "rb") as f:
            d = pickle.load(f, encoding="bytes")
        images = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        parts.append(ImageDataset(np.ascontiguousarray(images), torch.tensor(d[b"fine_labels"])))
    with open(folder / "meta", "rb") as f:
        names = [n.decode() for n in pickle.load(f, encoding="bytes")[b"fine_label_names"]]
    return Benchmark("cifar100", parts[0], parts[1], names)


DOMAINS = ("clipart", "infograph", "painting", "quickdraw", "real", "sketch")


def _domainnet(root: Path, split_seed: int = 0) -> Benchmark:
    layout = ("<root>/<domain>/<class>/<image> for the six domains and the split lists "
              "<root>/<domain>_train.txt, <root>/<domain>_test.txt")
    parts = []
    for split in ("train", "test"):
        items, labels = [], []
        for domain in DOMAINS:
            listing = root / f"{domain}_{split}.txt"
            _expect(listing.exists(), "domainnet", root, layout + f" ({listing.name} missing)")
            for line in listing.read_text().splitlines():
                if line.strip():
                    path, label = line.rsplit(maxsplit=1)
                    items.append(str(root / path))
                    labels.append(int(label))
        parts.append(ImageDataset(items, torch.tensor(labels)))
    classes = sorted({Path(p).parent.name for p in parts[0].items})
    _expect(int(parts[0].labels.max()) + 1 == len(classes), "domainnet", root,
            layout + f" (labels run to {int(parts[0].labels.max())}, {len(classes)} class folders)")
    return Benchmark("domainnet", parts[0], parts[1], classes)


def _cub200(root: Path, split_seed: int = 0) -> Benchmark:
    layout = "images.txt, image_class_labels.txt, train_test_split.txt, classes.txt and images/"
    files = {n: root / n for n in ("images.txt", "image_class_labels.txt", "train_test_split.txt",
                                   "classes.txt")}
    for n, p in files.items():
        _expect(p.exists(), "cub200", root, layout + f" ({n} missing)")

    def table(path: Path) -> dict[int, str]:
        return {int(a): b for a, b in (line.split(maxsplit=1) for line in
                                       path.read_text().splitlines() if line.strip())}

    paths, labels, is_train = (table(files[n]) for n in ("images.txt", "image_class_labels.txt",
                                                          "train_test_split.txt"))
    classes = [name for _, name in sorted(table(files["classes.txt"]).items())]
    parts = {True: ([], []), False: ([], [])}
    for i, path in sorted(paths.items()):
        items, ys = parts[is_train[i].strip() == "1"]
        items.append(str(root / "images" / path))
        ys.append(int(labels[i]) - 1)
    return Benchmark("cub200", *(ImageDataset(parts[k][0], torch.tensor(parts[k][1]))
                                 for k in (True, False)), classes)


FILE_BENCHMARKS: dict[str, Callable[..., Benchmark]] = {
    "cifar100": _cifar100,
    "imagenet-r": _imagenet_r,
    "imagenet-a": _imagenet_a,
    "domainnet": _domainnet,
    "cub200": _cub200,
}


def load_file_benchmark(name: str, root: str | Path | None, image_size: int,
                        split_seed: int = 0) -> Benchmark:
    """Load `name` from its folder and attach the train/test transforms for `image_size`."""
    if name not in FILE_BENCHMARKS:
        raise DataError(f"unknown benchmark {name!r}; valid: {', '.join(FILE_BENCHMARKS)}")
    bench = FILE_BENCHMARKS[name](data_root(name, root), split_seed=split_seed)
    bench.train = bench.train.with_transform(transforms_for(image_size, train=True))
    bench.test = bench.test.with_transform(transforms_for(image_size, train=False))
    return bench
