"""Continual-learning methods behind one contract (`sdlora.methods.base.ContinualMethod`).

One module per method family; the training loop in `sdlora.train` is the same for all:

hide-prompt         ``sdlora.methods.hide_prompt``  baseline: a task-identity stage on the frozen
                                                    query picks each image's task prefix prompt;
                                                    heads aligned on features sampled from class
                                                    statistics (Wang et al. 2023)
==================  ==============================  =====================================
Shared parts for the baselines: ``prefix`` (prefix keys/values inside timm's attention),
``prompt_tokens`` (prompts after the class token), ``query`` (the frozen query feature),
``qkv_slices`` (low-rank adapters on slices of ``attn.qkv``), ``covariance`` (input covariance).
"""
from __future__ import annotations

import importlib

import torch.nn as nn

from ..config import TrainConfig
from .base import ContinualMethod, IncrementalHead, NotMergeable

__all__ = ["ContinualMethod", "IncrementalHead", "NotMergeable", "method_class", "build_method"]

# Method name -> (module, class). Every name of sdlora.config.METHODS has a row.
_FAMILY = ("sdlora.methods.lora", "ContinualViT")
_SPECIAL: dict[str, tuple[str, str]] = {
    "simplecil": ("sdlora.methods.simplecil", "SimpleCIL"),
    "joint": ("sdlora.methods.joint", "Joint"),
    "inflora": ("sdlora.methods.inflora", "InfLoRA"),
    "l2p": ("sdlora.methods.l2p", "L2P"),
    "dualprompt": ("sdlora.methods.dualprompt", "DualPrompt"),
    "coda-prompt": ("sdlora.methods.coda_prompt", "CODAPrompt"),
    "hide-prompt": ("sdlora.methods.hide_prompt", "HiDePrompt"),
}


def method_class(method: str) -> type[ContinualMethod]:
    """The class that implements `method` (a name of `sdlora.config.METHODS`)."""
    from ..config import METHODS, ConfigError

    if method not in METHODS:
        raise ConfigError(f"method={method!r} is not valid; choose one of: {', '.join(METHODS)}")
    module, name = _SPECIAL.get(method, _FAMILY)
    return getattr(importlib.import_module(module), name)


def build_method(backbone: nn.Module, config: TrainConfig, mean, std) -> ContinualMethod:
    return method_class(config.method)(backbone, config, mean, std)
