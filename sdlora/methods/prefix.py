"""Prefix key/value prompts inside timm's attention (L2P++, DualPrompt, CODA-Prompt, HiDe).

`prefix_attention` is timm's `Attention.forward` with learned tokens prepended to the keys and
values (not to the queries, so the sequence length is unchanged); it reads the module's own
``qkv``, ``q_norm``/``k_norm``, ``norm`` and ``proj``, so no block is copied. `run_blocks` drives
a ViT's blocks with prefixes at chosen layers and calls the unchanged timm block elsewhere.

Shapes are per sample, heads split with a permute: ``(B, Lp, D) -> (B, H, Lp, D/H)``. The
released prompt codes reshape ``(layers, 2, B, ...)`` without permuting, which hands sample b
the prompts of samples 2b and 2b+1 (BASELINES.md 2.7); tests/test_baselines.py checks that a
sample's output does not depend on the rest of its batch.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["prefix_attention", "run_blocks", "split_heads"]


def split_heads(tokens: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, L, D) -> (B, H, L, D/H), each sample keeping its own tokens."""
    b, n, d = tokens.shape
    return tokens.reshape(b, n, heads, d // heads).permute(0, 2, 1, 3)


def prefix_attention(attn: nn.Module, x: torch.Tensor, prefix_k: torch.Tensor | None,
                     prefix_v: torch.Tensor | None) -> torch.Tensor:
    """timm `Attention` on `x` (B, N, D) with `prefix_k`, `prefix_v` (B, Lp, D) prepended to its
    keys and values. With no prefix it equals ``attn(x)``."""
    if prefix_k is None:
        return attn(x)
    b, n, _ = x.shape
    qkv = attn.qkv(x).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)  # (B, H, N, Dh)
    k = torch.cat([split_heads(prefix_k, attn.num_heads), k], dim=2)
    v = torch.cat([split_heads(prefix_v, attn.num_heads), v], dim=2)
    q, k = attn.q_norm(q), attn.k_norm(k)
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=attn.attn_drop.p if attn.training
                                         else 0.0)
    out = attn.norm(out.transpose(1, 2).reshape(b, n, attn.attn_dim))
    if getattr(attn, "gate", None) is not None:
        out = out * attn.gate(x).sigmoid()
    return attn.proj_drop(attn.proj(out))


def run_blocks(vit: nn.Module, x: torch.Tensor,
               prefixes: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None,
               ) -> torch.Tensor:
    """A ViT's blocks on tokens `x` (B, N, D); block i gets ``prefixes[i]`` = (keys, values)."""
    prefixes = prefixes or {}
    for i, blk in enumerate(vit.blocks):
        if i not in prefixes:
            x = blk(x)
            continue
        pk, pv = prefixes[i]
        x = x + blk.drop_path1(blk.ls1(prefix_attention(blk.attn, blk.norm1(x), pk, pv)))
        x = x + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x))))
    return x
