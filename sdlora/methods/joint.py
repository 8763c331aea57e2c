"""The joint upper bound: one model learns every class at once, as a single task.

`sdlora.train.split_for` gives a `joint` run one task holding all classes (its ``tasks``
setting names the incremental protocol it bounds), so the same loop, the same epochs per
training sample and the same head train it. The adapter is a choice (`joint_adapter`): vanilla
LoRA (``lora``), SD-LoRA's normalised component (``sd-lora``) or the whole backbone
(``full-ft``); the model is the LoRA family's, following that adapter's row of
`sdlora.methods.lora.TRAITS`.
"""
from __future__ import annotations

from .lora import ContinualViT

__all__ = ["Joint"]


class Joint(ContinualViT):
    """`ContinualViT` with the traits of `config.joint_adapter`, trained as one task."""
