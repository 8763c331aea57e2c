"""Prompt tokens inserted into a timm ViT's sequence after the class token (L2P).

`embed` is the first half of timm's ``forward_features`` (patch embedding, class token and
position embedding, patch dropout, pre-norm); `insert_after_cls` puts (B, P, D) prompts between
the class token and the patches, each with the class token's position embedding added (as the
L2P PyTorch port and PILOT do), so the sequence is [CLS, prompts, patches], 1 + P + patches long.
"""
from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["embed", "insert_after_cls"]


def embed(vit: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Images (B, 3, H, W) -> tokens (B, 1 + patches, D) before the first block."""
    return vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))


def insert_after_cls(vit: nn.Module, tokens: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
    """[CLS, prompts + pos(CLS), patches]: (B, 1 + N, D), (B, P, D) -> (B, 1 + P + N, D)."""
    if vit.pos_embed is not None and not getattr(vit, "no_embed_class", False):
        prompts = prompts + vit.pos_embed[:, :1]
    return torch.cat([tokens[:, :1], prompts, tokens[:, 1:]], dim=1)
