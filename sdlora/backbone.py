"""Backbones: timm VisionTransformers, built by tag, weights from a hub or from a local file.

The embedded foundation model is a small timm ViT (width 192, 6 blocks, 3 heads, patch 4,
28x28 inputs) pretrained by ``python -m sdlora pretrain`` and shipped as safetensors in
``sdlora/assets``. It loads through timm's own pretrained-weights path
(``pretrained_cfg_overlay=dict(file=...)``), the same path that loads ViT-B/16 from a local file.
A local file must hold every weight of the backbone (`check_weight_keys`): timm loads a file
of other keys without an error and leaves the backbone random.

A run's checkpoints hold no frozen backbone, so a run is only valid with the weights file it was
trained on: `weights_sha256` (cached per path, size and modification time) is recorded in each
run folder and compared when the run is loaded (`sdlora.train.check_backbone_weights`).
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import timm
from timm.models.vision_transformer import VisionTransformer

from .errors import ConfigError

__all__ = ["BackboneSpec", "EMBEDDED", "EMBEDDED_WEIGHTS", "GLYPH", "GLYPH_WEIGHTS",
           "create_backbone", "BACKBONES", "image_size", "backbone_width", "weights_file",
           "weights_sha256", "check_weight_keys"]

log = logging.getLogger(__name__)

EMBEDDED_WEIGHTS = Path(__file__).parent / "assets" / "embedded_vit_t6p4.safetensors"
GLYPH_WEIGHTS = Path(__file__).parent / "assets" / "glyph_vit_t6p4.safetensors"


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one backbone: a timm architecture plus overrides and normalisation."""

    arch: str
    kwargs: dict = field(default_factory=dict)
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    weights: Path | None = None  # local weights file; None = timm's hub weights for `arch`


EMBEDDED = BackboneSpec(
    arch="vit_tiny_patch16_224",
    kwargs=dict(img_size=28, patch_size=4, embed_dim=192, depth=6, num_heads=3),
    weights=EMBEDDED_WEIGHTS,
)

# glyphs40's foundation model: `embedded-vit` trained further on clean glyphs of the 80 glyph
# classes in other typefaces than glyphs40's (`python -m sdlora pretrain --model glyph-vit`).
# The same architecture as `embedded-vit`, whose weights it starts from.
GLYPH = BackboneSpec(arch=EMBEDDED.arch, kwargs=dict(EMBEDDED.kwargs), weights=GLYPH_WEIGHTS)

BACKBONES: dict[str, BackboneSpec] = {
    "embedded-vit": EMBEDDED,  # for renditions20 (the default)
    "glyph-vit": GLYPH,  # for glyphs40
    # The paper's backbone: name the tag explicitly (the bare name resolved to other weights
    # across timm versions).
    "vit_base_patch16_224.augreg2_in21k_ft_in1k": BackboneSpec(
        "vit_base_patch16_224.augreg2_in21k_ft_in1k", mean=(0.5,) * 3, std=(0.5,) * 3),
    "vit_base_patch16_224.dino": BackboneSpec(
        "vit_base_patch16_224.dino", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
}


def image_size(name: str) -> int:
    """Input size of backbone `name` (the embedded ViT: 28; ViT-B/16 and other tags: 224)."""
    spec = BACKBONES.get(name)
    return int(spec.kwargs.get("img_size", 224)) if spec else 224


@lru_cache(maxsize=None)
def backbone_width(name: str) -> int:
    """The width D of backbone `name` (its qkv projections are D x D per q, k, v: a rank above D
    adds nothing). From the spec's ``embed_dim`` where it names one, else from the model built
    on the meta device (shapes only, no memory, no weights)."""
    import torch

    spec = BACKBONES.get(name) or BackboneSpec(name)
    if "embed_dim" in spec.kwargs:
        return int(spec.kwargs["embed_dim"])
    with torch.device("meta"):
        model = timm.create_model(spec.arch, pretrained=False, num_classes=0, **spec.kwargs)
    return int(model.embed_dim)


def weights_file(name: str, weights: Path | str | None = None) -> Path | None:
    """The local weights file backbone `name` loads: `weights` if given, else its spec's; None
    for timm's hub weights."""
    spec = BACKBONES.get(name) or BackboneSpec(name)
    file = weights if weights is not None else spec.weights
    return Path(file) if file is not None else None


_SHA256: dict[tuple[str, int, int], str] = {}


def weights_sha256(path: Path | str) -> str:
    """sha256 (hex) of a weights file, computed once per path, size and modification time."""
    path = Path(path).resolve()
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA256:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        _SHA256[key] = digest.hexdigest()
    return _SHA256[key]


class WeightsError(ConfigError):
    """A weights file that does not fit the backbone; the message names the file."""


def check_weight_keys(model: VisionTransformer, file: Path | str) -> None:
    """WeightsError unless `file` holds every weight of `model` (extra keys, e.g. a
    classifier head, are allowed): names the file and how many of the model's keys matched.
    A safetensors file's keys are read from its header; any other file (or a layout timm
    converts) is loaded and passed through timm's ViT checkpoint filter first."""
    expected = set(model.state_dict())
    try:
        from safetensors import safe_open
        with safe_open(str(file), framework="pt") as f:
            keys = set(f.keys())
    except Exception:  # noqa: BLE001 - not safetensors: a torch state dict
        keys = set()
    if not expected <= keys:
        from timm.models import load_state_dict
        from timm.models.vision_transformer import checkpoint_filter_fn

        try:
            keys = set(checkpoint_filter_fn(load_state_dict(str(file)), model))
        except Exception:  # noqa: BLE001 - a file the filter cannot read: its keys as they are
            pass
    missing = sorted(expected - keys)
    if missing:
        matched = len(expected) - len(missing)
        raise WeightsError(
            f"weights file {file} matches {matched} of the backbone's {len(expected)} weights "
            f"({len(missing)} missing, e.g. {', '.join(missing[:3])}); expected a state dict "
            f"of this timm ViT (its parameter names and shapes)")


def create_backbone(name: str, pretrained: bool = True, weights: Path | None = None,
                    ) -> tuple[VisionTransformer, BackboneSpec]:
    """Build a headless timm ViT (``num_classes=0``: forward returns the pooled token).

    Args:
        name: a key of `BACKBONES`, or any timm ViT tag.
        pretrained: load weights (from `weights`, the spec's local file, or timm's hub); a
            local file must hold every weight of the backbone (`check_weight_keys`).
        weights: local weights file (safetensors or a torch state dict) overriding the spec's.
    """
    spec = BACKBONES.get(name) or BackboneSpec(name)
    file = weights_file(name, weights)
    if pretrained and file is not None and not file.exists():
        raise FileNotFoundError(f"weights file {file} for backbone {name!r} not found")
    overlay = dict(file=str(file)) if file is not None else None
    model = timm.create_model(spec.arch, pretrained=pretrained, num_classes=0,
                              pretrained_cfg_overlay=overlay, **spec.kwargs)
    if not isinstance(model, VisionTransformer):
        raise ValueError(f"backbone {name!r} builds a {type(model).__name__}; the adapters "
                         f"need a timm VisionTransformer")
    if pretrained and file is not None:
        check_weight_keys(model, file)
    return model, spec
