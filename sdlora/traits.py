"""What each LoRA-family method trains (`TRAITS`): its own module, imported by both
`sdlora.methods.lora` (which builds the models) and `sdlora.config` (which checks which options
apply to a method) without either importing the other."""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MethodTraits", "TRAITS"]


@dataclass(frozen=True)
class MethodTraits:
    adapter: bool  # has a QVAdapter
    per_task: bool = True  # a new component per task (else one component for all tasks)
    magnitudes: bool = True
    rescale_earlier: bool = True  # earlier magnitudes train on later tasks
    direction_after_first: bool = True  # the (single) direction trains after task 1
    backbone_trains: bool = False


TRAITS: dict[str, MethodTraits] = {
    "sd-lora": MethodTraits(adapter=True),
    "sd-lora-rr": MethodTraits(adapter=True),
    "sd-lora-kd": MethodTraits(adapter=True),
    "no-rescale": MethodTraits(adapter=True, rescale_earlier=False),
    "frozen-magnitudes": MethodTraits(adapter=True, rescale_earlier=False),
    "single-decoupled": MethodTraits(adapter=True, per_task=False),
    "fixed-first-direction": MethodTraits(adapter=True, per_task=False, direction_after_first=False),
    "lora": MethodTraits(adapter=True, per_task=False, magnitudes=False),
    "full-ft": MethodTraits(adapter=False, backbone_trains=True),
    "frozen": MethodTraits(adapter=False),
}
