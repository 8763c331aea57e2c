"""The frozen query feature of the prompt methods: the unprompted ViT's pre-logits class token.

L2P, DualPrompt, CODA-Prompt and HiDe-Prompt choose prompts from the pretrained model's own
feature of the image: timm ``forward_head(forward_features(x), pre_logits=True)`` (class token
after the final norm), one extra forward pass, without gradient. It is why their inference
costs two ViT passes (the paper's Table 5).
"""
from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["query_features"]


@torch.no_grad()
def query_features(vit: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) normalised images -> (B, D) frozen pre-logits features (no gradient)."""
    return vit.forward_head(vit.forward_features(x), pre_logits=True)
