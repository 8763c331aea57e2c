"""Continual-learning methods behind one contract (`sdlora.methods.base.ContinualMethod`).

One module per method family; the training loop in `sdlora.train` is the same for all:

=======================  ==========================  ==========================================
methods                  module                      what it is
=======================  ==========================  ==========================================
sd-lora, -rr, -kd,       ``sdlora.methods.lora``     one `QVAdapter` on the q/v slices of
lora, ablations,                                     ``attn.qkv`` (Eqn. 4 and relatives), or
full-ft, frozen                                      the whole backbone / nothing, + linear head
simplecil                ``sdlora.methods.simplecil`` frozen backbone, cosine class-mean
                                                     prototypes (Zhou et al. 2023)
joint                    ``sdlora.methods.joint``    upper bound: all classes as one task
inflora                  ``sdlora.methods.inflora``  baseline: k/v LoRA, A fixed by DualGPM
                                                     projection, only B trains (Liang & Li 2024)
l2p                      ``sdlora.methods.l2p``      baseline: prompt pool chosen per image by
                                                     a frozen query (Wang et al. 2022)
hide-prompt              ``sdlora.methods.           baseline: a task-identity stage on the
                         hide_prompt``               frozen query picks each image's task
                                                     prefix prompt; heads aligned on features
                                                     sampled from class statistics (Wang et
                                                     al. 2023)
=======================  ==========================  ==========================================

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
