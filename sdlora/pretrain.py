"""Pretrain the embedded foundation models (``python -m sdlora pretrain [--model NAME]``).

`glyph-vit` (glyphs40's, `pretrain_glyphs`): supervised 80-way training on clean glyphs in the
pretraining typefaces; the benchmark `glyphs40` shows the same classes in other typefaces and
rendition styles. `embedded-vit` (for `renditions20`, `pretrain`): supervised 20-way training of the small timm ViT on full-resolution images of the benchmark's
classes (see `sdlora.data.load_pretraining_images`): the CPU-sized stand-in for a ViT pretrained
on ImageNet. The weights (without the 20-way head) are saved as safetensors to
`sdlora.backbone.EMBEDDED_WEIGHTS` and load through timm's local-file path.
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from .backbone import EMBEDDED, EMBEDDED_WEIGHTS, create_backbone
from .data import load_fashion_mnist, load_pretraining_images, render_coarse, _to_tensor

log = logging.getLogger(__name__)


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random shifts of up to 3 px, and for 20% of a batch a random down-/up-sampling to
    10-18 px (some low-resolution views, as a web-scale corpus has)."""
    n = x.shape[0]
    padded = F.pad(x, (3, 3, 3, 3))
    dx, dy = torch.randint(0, 7, (2, n), generator=generator)
    out = torch.stack([padded[i, :, dy[i]:dy[i] + 28, dx[i]:dx[i] + 28] for i in range(n)])
    low = torch.rand(n, generator=generator) < 0.2
    if low.any():
        size = int(torch.randint(10, 19, (1,), generator=generator))
        small = F.interpolate(out[low], size=(size, size), mode="area")
        out[low] = F.interpolate(small, size=(28, 28), mode="bilinear", align_corners=False)
    return out


@torch.no_grad()
def _accuracy(model, head, images, labels, mean, std) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(labels), 512):
        x = (images[i:i + 512] - mean) / std
        correct += (head(model(x)).argmax(1) == labels[i:i + 512]).sum().item()
    return 100.0 * correct / len(labels)


def _check_settings(lr: float, seed: int, **counts: int) -> None:
    """ConfigError naming the first bad setting: counts (epochs, steps, batch size) positive
    integers, lr a positive finite number, seed in the class-order seed's range."""
    from .config import SEED_MAX, ConfigError

    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"pretrain --{name.replace('_', '-')} {value} is not valid; it "
                              f"must be a positive integer")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ConfigError(f"pretrain lr={lr!r} is not valid; it must be a positive finite number")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_MAX:
        raise ConfigError(f"pretrain --seed {seed} is not valid; it must be an integer from 0 "
                          f"to {SEED_MAX}")


def pretrain(epochs: int = 3, batch_size: int = 128, lr: float = 1e-3, seed: int = 0,
             out: Path = EMBEDDED_WEIGHTS) -> dict:
    """Train the embedded ViT and save it; returns held-out accuracies (percent)."""
    import timm

    _check_settings(lr, seed, epochs=epochs, batch_size=batch_size)
    torch.manual_seed(seed)
    data = load_pretraining_images()
    model = timm.create_model(EMBEDDED.arch, pretrained=False, num_classes=0, **EMBEDDED.kwargs)
    head = torch.nn.Linear(model.num_features, 20)
    mean = torch.tensor(EMBEDDED.mean).view(1, 3, 1, 1)
    std = torch.tensor(EMBEDDED.std).view(1, 3, 1, 1)
    params = list(model.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    steps = epochs * math.ceil(len(data) / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    gen = torch.Generator().manual_seed(seed)
    start = time.time()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(data), generator=gen)
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            x = (augment(data.images[idx], gen) - mean) / std
            loss = F.cross_entropy(head(model(x)), data.labels[idx], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if (i // batch_size) % 100 == 0:
                log.info("epoch %d step %d loss %.3f (%.0f s)", epoch, i // batch_size,
                         loss.item(), time.time() - start)
    fx, fy = load_fashion_mnist("t10k")
    fashion_test = _to_tensor(fx, 255.0)
    fashion_coarse = _to_tensor(render_coarse(fx), 1.0)
    labels = torch.as_tensor(fy) + 10
    result = {
        "fashion_test_full_res": _accuracy(model, head, fashion_test, labels, mean, std),
        "fashion_test_8x8_rendition": _accuracy(model, head, fashion_coarse, labels, mean, std),
        "seconds": time.time() - start,
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp),
              metadata={"arch": EMBEDDED.arch, "kwargs": repr(EMBEDDED.kwargs),
                        **{k: f"{v:.2f}" for k, v in result.items()}})
    tmp.replace(out)
    log.info("saved %s: %s", out, result)
    return result


def _glyph_batches(atlas, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    from . import glyphs

    faces = torch.randint(0, atlas.shape[0], (n,), generator=generator)
    classes = torch.randint(0, atlas.shape[1], (n,), generator=generator)
    views = glyphs.sample_views(atlas, faces, classes, generator, max_rotation=12.0,
                                scale=(0.75, 1.15), shift=0.12, shear=0.2)
    return glyphs.to_28(views), classes


def pretrain_glyphs(steps: int = 600, batch_size: int = 64, lr: float = 5e-4, seed: int = 0,
                    out: Path | None = None) -> dict:
    """Pretrain glyphs40's foundation model (`glyph-vit`): `embedded-vit` trained further,
    80-way supervised, on clean glyphs of the pretraining typefaces
    (`sdlora.glyphs.PRETRAIN_FONTS`), a fresh random affine view every step. Never a rendition
    typeface or style. Saves the weights without the head; returns accuracies (percent) of the
    pretraining head on held-out views and on glyphs40's test renditions."""
    from . import glyphs
    from .backbone import GLYPH, GLYPH_WEIGHTS
    from .data import load_benchmark

    _check_settings(lr, seed, steps=steps, batch_size=batch_size)
    out = Path(out) if out is not None else GLYPH_WEIGHTS
    torch.manual_seed(seed)
    atlas = glyphs.glyph_atlas(glyphs.font_files(glyphs.PRETRAIN_FONTS))
    # Starts from renditions20's foundation model (digits and clothes at 28x28): a ViT trained
    # from scratch on glyphs learns too slowly for a CPU budget.
    model, _ = create_backbone("embedded-vit")
    head = torch.nn.Linear(model.num_features, atlas.shape[1])
    mean = torch.tensor(GLYPH.mean).view(1, 3, 1, 1)
    std = torch.tensor(GLYPH.std).view(1, 3, 1, 1)
    params = list(model.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    gen = torch.Generator().manual_seed(seed)
    start = time.time()
    model.train()
    for step in range(steps):
        x, y = _glyph_batches(atlas, batch_size, gen)
        loss = F.cross_entropy(head(model((x - mean) / std)), y, label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 25 == 0:
            log.info("step %d/%d loss %.3f (%.0f s)", step, steps, loss.item(), time.time() - start)
    seconds = time.time() - start
    held = torch.Generator().manual_seed(seed + 1)
    x, y = _glyph_batches(atlas, 2048, held)
    bench = load_benchmark("glyphs40")
    keep = glyphs.class_subset(bench.num_classes)  # glyphs40's classes among the 80
    head40 = torch.nn.Linear(model.num_features, len(keep))
    head40.load_state_dict({"weight": head.weight[keep], "bias": head.bias[keep]})
    result = {"pretraining_views": _accuracy(model, head, x, y, mean, std),
              "glyphs40_test_renditions": _accuracy(model, head40, bench.test.images,
                                                    bench.test.labels, mean, std),
              "steps": float(steps), "seconds": seconds}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp),
              metadata={"arch": GLYPH.arch, "kwargs": repr(GLYPH.kwargs), "data": "glyphs",
                        **{k: f"{v:.2f}" for k, v in result.items()}})
    tmp.replace(out)
    log.info("saved %s: %s", out, result)
    return result
