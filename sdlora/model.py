"""Compatibility name: the LoRA family's model now lives in `sdlora.methods.lora`.

Kept so that ``from sdlora.model import ContinualViT, TRAITS`` (old scripts, saved notebooks)
still works; new code imports from `sdlora.methods.lora`.
"""
from __future__ import annotations

from .methods.lora import (RELEASED_MAGNITUDE, TRAITS, ContinualViT, IncrementalHead,
                           MethodTraits)

__all__ = ["ContinualViT", "IncrementalHead", "MethodTraits", "TRAITS", "RELEASED_MAGNITUDE"]
