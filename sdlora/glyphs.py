"""Glyph classes rendered offline from Debian's font packages: the embedded default's material.

80 classes of letters, digits and symbols from the Latin, Greek and Cyrillic alphabets (chosen so
that no two are the same shape in most typefaces: no c/C, o/O/0, l/I/1, Greek or Cyrillic
capitals that look Latin). Two disjoint sets of typefaces:

* the foundation model's "photographs" (`PRETRAIN_FONTS`, DejaVu and Liberation: 37 faces):
  clean glyphs, the CPU-sized stand-in for ImageNet;
* the benchmark's renditions (`RENDITION_FONTS`, GNU FreeFont and URW's base 35: 45 faces),
  drawn in other styles (outline, inversion, blur, noise, texture, low resolution, elastic warp,
  rotation, stroke weight), the stand-in for ImageNet-R's sketches, paintings and cartoons.

Each face is drawn once per class at 56x56 (white ink on black, centred on the font's own
metrics so size and baseline stay informative); every sample is a seeded random affine view of
one such drawing, box-filtered to 28x28. Generation takes seconds and is deterministic given
the seed (CPU, float32).
"""
from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["CLASSES", "CLASS_NAMES", "class_subset", "FONT_PACKAGES", "PRETRAIN_FONTS", "RENDITION_FONTS",
           "STYLES", "font_files", "glyph_atlas", "sample_views", "stylise"]

# (character, name). Order is the dataset label.
CLASSES: list[tuple[str, str]] = (
    [(c, f"Latin {c}") for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"]
    + [(c, f"Latin {c}") for c in "abdefghijkmnqrty"]
    + [(c, f"digit {c}") for c in "234567"]
    + [(c, f"Greek {n}") for c, n in zip("ΓΔΘΛΞΠΣΦΨΩ", ["Gamma", "Delta", "Theta", "Lambda", "Xi",
                                                      "Pi", "Sigma", "Phi", "Psi", "Omega"])]
    + [(c, f"Greek {n}") for c, n in zip("αβγδλμπσφψω", [
        "alpha", "beta", "gamma", "delta", "lambda", "mu", "pi", "sigma", "phi", "psi",
        "omega"])]
    + [(c, f"Cyrillic {n}") for c, n in zip("БДЖЗИЦЧШЭЮЯ", [
        "Be", "De", "Zhe", "Ze", "I", "Tse", "Che", "Sha", "E", "Yu", "Ya"])]
)
CLASS_NAMES = [name for _, name in CLASSES]

FONT_PACKAGES = ("fonts-dejavu-core", "fonts-dejavu-extra", "fonts-liberation",
                 "fonts-freefont-ttf", "fonts-urw-base35")
_FONT_ROOT = Path("/usr/share/fonts")
PRETRAIN_FONTS = (("truetype/dejavu", "fonts-dejavu-core fonts-dejavu-extra"),
                  ("truetype/liberation", "fonts-liberation"))
RENDITION_FONTS = (("truetype/freefont", "fonts-freefont-ttf"),
                   ("opentype/urw-base35", "fonts-urw-base35"))
# Faces in those folders that are not alphabets (symbols, dingbats, maths).
_EXCLUDED = ("D050000L", "StandardSymbolsPS", "DejaVuMathTeXGyre")

def class_subset(k: int) -> torch.Tensor:
    """Indices of `k` of the classes, spread evenly over `CLASSES` (every alphabet in it)."""
    if not 1 <= k <= len(CLASSES):
        raise ValueError(f"classes={k} is not valid; choose 1 to {len(CLASSES)}")
    return torch.linspace(0, len(CLASSES) - 1, k).round().long()


CANVAS = 56  # drawing size; samples are box-filtered to 28
SIZE = 28


class FontError(FileNotFoundError):
    """A font folder is missing; the message names the Debian package to install."""


def font_files(group: tuple[tuple[str, str], ...], root: Path = _FONT_ROOT) -> list[Path]:
    """The faces of `group` (PRETRAIN_FONTS or RENDITION_FONTS) that draw every class, sorted."""
    files = []
    for folder, package in group:
        path = Path(root) / folder
        found = sorted(p for p in path.glob("*") if p.suffix.lower() in (".ttf", ".otf")
                       and not p.stem.startswith(_EXCLUDED)) if path.is_dir() else []
        if not found:
            raise FontError(f"no fonts in {path}: install the Debian package(s) {package} "
                            f"(apt-get install -y {' '.join(FONT_PACKAGES)})")
        files += [p for p in found if _covers(p)]
    return files


def _covers(path: Path) -> bool:
    from fontTools.ttLib import TTFont

    cmap = TTFont(str(path), lazy=True, fontNumber=0).getBestCmap() or {}
    return all(ord(c) in cmap for c, _ in CLASSES)


@lru_cache(maxsize=4)
def _atlas(paths: tuple[str, ...]) -> torch.Tensor:
    from PIL import Image, ImageDraw, ImageFont

    out = np.zeros((len(paths), len(CLASSES), CANVAS, CANVAS), dtype=np.float32)
    for f, path in enumerate(paths):
        font = ImageFont.truetype(path, size=int(CANVAS * 0.72))
        for c, (char, _) in enumerate(CLASSES):
            img = Image.new("L", (CANVAS, CANVAS), 0)
            ImageDraw.Draw(img).text((CANVAS / 2, CANVAS / 2), char, fill=255, font=font,
                                     anchor="mm")
            out[f, c] = np.asarray(img, dtype=np.float32) / 255.0
    return torch.from_numpy(out)


def glyph_atlas(fonts: list[Path]) -> torch.Tensor:
    """(faces, classes, 56, 56) float drawings in [0, 1], white ink on black."""
    return _atlas(tuple(str(p) for p in fonts))


def sample_views(atlas: torch.Tensor, faces: torch.Tensor, classes: torch.Tensor,
                 generator: torch.Generator, max_rotation: float = 10.0,
                 scale: tuple[float, float] = (0.8, 1.1), shift: float = 0.1,
                 shear: float = 0.15) -> torch.Tensor:
    """Random affine views (N, 56, 56) of drawings atlas[faces[i], classes[i]]."""
    n = faces.shape[0]
    u = torch.rand(n, 6, generator=generator)
    angle = (u[:, 0] * 2 - 1) * math.radians(max_rotation)
    s = scale[0] + (scale[1] - scale[0]) * u[:, 1]
    aspect = 1 + (u[:, 2] * 2 - 1) * 0.1
    sh = (u[:, 3] * 2 - 1) * shear
    tx, ty = (u[:, 4] * 2 - 1) * shift, (u[:, 5] * 2 - 1) * shift
    cos, sin = torch.cos(angle), torch.sin(angle)
    # output -> input coordinates: inverse of scale*rotation*shear
    a = torch.stack([torch.stack([cos, -sin + sh * cos], 1),
                     torch.stack([sin, cos + sh * sin], 1)], 1)  # (n, 2, 2)
    a = a / torch.stack([s * aspect, s], 1).unsqueeze(1)
    theta = torch.cat([a, torch.stack([tx, ty], 1).unsqueeze(2)], 2)
    src = atlas[faces, classes].unsqueeze(1)
    grid = F.affine_grid(theta, list(src.shape), align_corners=False)
    return F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False).squeeze(1)


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(2.5 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-t ** 2 / (2 * sigma ** 2))
    k = k / k.sum()
    x = x.unsqueeze(1)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), k.view(1, 1, -1, 1))
    return x.squeeze(1)


def _smooth_noise(n: int, size: int, cells: int, generator: torch.Generator) -> torch.Tensor:
    coarse = torch.rand(n, 1, cells, cells, generator=generator)
    return F.interpolate(coarse, size=(size, size), mode="bicubic",
                         align_corners=False).squeeze(1).clamp(0, 1)


def _dilate(x: torch.Tensor, k: int = 3) -> torch.Tensor:
    return F.max_pool2d(x.unsqueeze(1), k, 1, k // 2).squeeze(1)


def _erode(x: torch.Tensor, k: int = 3) -> torch.Tensor:
    return -F.max_pool2d(-x.unsqueeze(1), k, 1, k // 2).squeeze(1)


def _elastic(x: torch.Tensor, generator: torch.Generator, strength: float) -> torch.Tensor:
    n, h, w = x.shape
    disp = (_smooth_noise(2 * n, h, 4, generator) * 2 - 1).view(n, 2, h, w) * strength
    base = F.affine_grid(torch.eye(2, 3).expand(n, 2, 3), [n, 1, h, w], align_corners=False)
    grid = base + disp.permute(0, 2, 3, 1)
    return F.grid_sample(x.unsqueeze(1), grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False).squeeze(1)


# Each style maps (N, 56, 56) ink maps (white on black, [0, 1]) to renditions in [0, 1].
def _outline(x, g):
    return (_dilate(x) - _erode(x)).clamp(0, 1)


def _inverted(x, g):
    return 1 - x


def _blurred(x, g):
    return _blur(x, 1.8)


def _noisy(x, g):
    return (x + 0.45 * torch.randn(x.shape, generator=g)).clamp(0, 1)


def _textured(x, g):
    n = x.shape[0]
    ink = _smooth_noise(n, CANVAS, 6, g).mul(0.6).add(0.4)
    paper = _smooth_noise(n, CANVAS, 10, g).mul(0.8)
    return x * ink + (1 - x) * paper


def _low_res(x, g):
    return F.interpolate(F.adaptive_avg_pool2d(x.unsqueeze(1), 12), size=(CANVAS, CANVAS),
                         mode="nearest").squeeze(1)


def _bold(x, g):
    return _dilate(x, 5)


def _warped(x, g):
    return _elastic(x, g, 0.12)


STYLES = {"outline": _outline, "inverted": _inverted, "blurred": _blurred, "noisy": _noisy,
          "textured": _textured, "low-res": _low_res, "bold": _bold, "warped": _warped}


def stylise(x: torch.Tensor, styles: torch.Tensor, generator: torch.Generator,
            names: tuple[str, ...] = tuple(STYLES)) -> torch.Tensor:
    """Apply style names[styles[i]] to x[i] (N, 56, 56); returns (N, 56, 56) in [0, 1]."""
    out = x.clone()
    for k, name in enumerate(names):
        mask = styles == k
        if mask.any():
            out[mask] = STYLES[name](x[mask], generator).clamp(0, 1)
    return out


def to_28(x: torch.Tensor) -> torch.Tensor:
    """(N, 56, 56) -> (N, 3, 28, 28) by 2x2 box filter, grey replicated to three channels."""
    return F.avg_pool2d(x.unsqueeze(1), 2).expand(-1, 3, -1, -1).contiguous()
