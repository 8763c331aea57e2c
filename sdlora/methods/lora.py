"""The LoRA family (SD-LoRA and its relatives): a timm ViT, a `QVAdapter`, and a linear head
that grows per task.

The method contract (as Mammoth states it): `begin_task(t)` sets up what trains on task t,
the training loop steps the parameters that `trainable_parameters()` returns, `end_task(t)`
freezes, absorbs or keeps what task t learned. `merged()` folds every component into the plain
timm weights, so inference costs exactly a plain ViT.

Methods (names of `sdlora.config.METHODS`) as choices over one adapter:

================  ==============  =============  ==================  =======================
method            components      normalisation  magnitudes train    direction trains
================  ==============  =============  ==================  =======================
sd-lora(-rr/-kd)  one per task    ||A B||_F      all alpha_1..t      current only
no-rescale        one per task    ||A B||_F      current alpha_t     current only
                  (Table 4 row 3: earlier alphas set to 1 when the next task begins)
frozen-magnitudes one per task    ||A B||_F      current alpha_t     current only
                  (earlier alphas kept at their task-end values; not in the paper)
single-decoupled  one, all tasks  ||A B||_F      its alpha           on every task
fixed-first-dir.  one, all tasks  ||A B||_F      its alpha           task 1 only
lora              one, all tasks  none           (no magnitude)      on every task
sd-lora released  one per task    ||A|| ||B||    all, reset to 0.8   current, unnormalised
full-ft / frozen  no adapter: the whole backbone trains / nothing but the head trains
================  ==============  =============  ==================  =======================
"""
from __future__ import annotations

import logging

import torch
import torch.nn as nn
from torch.func import functional_call

from ..adapters import QVAdapter, absolute_residual, least_squares_residual
from ..config import TrainConfig
from ..traits import TRAITS, MethodTraits
from ..fused import FrozenMagnitudes
from .base import ContinualMethod, IncrementalHead, Normalised

__all__ = ["ContinualViT", "IncrementalHead", "MethodTraits", "TRAITS", "RELEASED_MAGNITUDE",
           "PARTS", "methods_with", "has_part"]

log = logging.getLogger(__name__)

RELEASED_MAGNITUDE = 0.8  # the released code's magnitude init, re-created every task


# What the analysis pages of SD-LoRA's own parts need a run to have logged.
PARTS = ("magnitudes", "directions")


def methods_with(part: str) -> tuple[str, ...]:
    """The methods whose runs have `part`: ``'magnitudes'`` (a learned alpha per component,
    logged every step) or ``'directions'`` (a new normalised direction per task, so a residual
    against the earlier tasks' directions, Eqn. 7). Both are SD-LoRA's; `joint` has magnitudes
    with ``joint_adapter='sd-lora'`` and never a second direction (it trains one task)."""
    if part not in PARTS:
        raise ValueError(f"part={part!r} is not valid; choose one of: {', '.join(PARTS)}")
    return tuple(m for m, t in TRAITS.items()
                 if t.adapter and t.magnitudes and (part == "magnitudes" or t.per_task))


def has_part(config: TrainConfig | dict, part: str) -> bool:
    """Whether a run of `config` (a `TrainConfig` or a run's config.json as a dict) has `part`
    (see `methods_with`)."""
    get = config.get if isinstance(config, dict) else lambda k, d=None: getattr(config, k, d)
    method = get("method")
    if method == "joint":
        return part == "magnitudes" and get("joint_adapter", "lora") in methods_with(part)
    return method in methods_with(part)


class ContinualViT(ContinualMethod):
    """Backbone + adapter + incremental head for one method.

    Args:
        backbone: a headless timm VisionTransformer (``num_classes=0``).
        config: the run's configuration (method, ranks, magnitude inits).
        mean, std: input normalisation applied inside the model.
    """

    def __init__(self, backbone: nn.Module, config: TrainConfig,
                 mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__(backbone, config, mean, std)
        self.kind = self.family_member(config)
        self.traits = TRAITS[self.kind]
        self.backbone.requires_grad_(self.traits.backbone_trains)
        self.head = IncrementalHead(backbone.num_features)
        self.qkv_names = [f"blocks.{i}.attn.qkv.weight" for i in range(len(backbone.blocks))]
        self.adapter: QVAdapter | None = None
        if self.traits.adapter:
            released = config.variant == "released"
            normalisation = "none" if self.kind == "lora" else (
                "factors" if released else "product")
            self.adapter = QVAdapter(backbone.embed_dim, len(backbone.blocks), normalisation,
                                     magnitudes=self.traits.magnitudes)

    @staticmethod
    def family_member(config: TrainConfig) -> str:
        """The row of `TRAITS` this model follows: the method itself, or for `joint` the
        adapter it trains jointly with (`joint_adapter`)."""
        return config.joint_adapter if config.method == "joint" else config.method

    @property
    def released(self) -> bool:
        return self.config.variant == "released"

    # -- forward -----------------------------------------------------------------------------
    def composed_weights(self) -> dict[str, torch.Tensor]:
        """The backbone's qkv weights with the adapter's update folded in (Eqn. 4)."""
        params = dict(self.backbone.named_parameters())
        base = [params[n] for n in self.qkv_names]
        if self.released and self.adapter.current is not None:
            return self._released_weights(base)
        return dict(zip(self.qkv_names, self.adapter.qkv_weights(base)))

    def _released_weights(self, base: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        # The released code: frozen components as alpha_k * A_k B_k / (||A_k|| ||B_k||), the
        # current component added as plain A_t B_t with no magnitude and no normalisation.
        adapter = self.adapter
        current = adapter.current
        frozen = adapter.frozen_components
        delta = adapter.A[current.key] @ adapter.B[current.key]  # (P, m, n)
        if frozen:
            delta = delta + adapter.frozen_delta()
        return dict(zip(self.qkv_names, adapter.qkv_weights(base, delta)))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.normalise_input(x)
        if self.adapter is None:
            return self.backbone(x)  # (B, D)
        return functional_call(self.backbone, self.composed_weights(), (x,), strict=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (B, classes seen)

    # -- the method contract -----------------------------------------------------------------
    def begin_task(self, task: int, classes: int, generator: torch.Generator) -> None:
        """Grow the head and set what trains on `task` (0-based)."""
        self.task = task
        self.head.grow(classes, generator)
        adapter, traits, cfg = self.adapter, self.traits, self.config
        if adapter is None:
            return
        if self.released:
            # Magnitudes re-created at 0.8 on every task; the new component starts at zero
            # (A = 0) and carries no magnitude while it trains.
            for p in adapter.magnitude.values():
                p.data.fill_(RELEASED_MAGNITUDE)
            adapter.add_component(task, cfg.rank, generator, magnitude=RELEASED_MAGNITUDE,
                                  zero_A=True)
            adapter.magnitude[adapter.current.key].requires_grad_(False)
            return
        if traits.per_task or task == 0:
            start = cfg.magnitude_init
            if task > 0 and cfg.new_magnitude_init is not None:
                start = cfg.new_magnitude_init
            adapter.add_component(task, cfg.rank_for_task(task), generator, magnitude=start,
                                  zero_A=self.kind == "lora")
        if self.kind == "no-rescale":
            # Table 4 row 3 on task t: W0 + D_1 + ... + D_{t-1} + alpha_t D_t. The model
            # evaluated after task k keeps its learned alpha_k; from task k+1 on D_k enters with
            # coefficient exactly 1 (set here, so a resumed run does the same).
            with torch.no_grad():
                for component in adapter.frozen_components:
                    adapter.magnitude[component.key].fill_(1.0)
        for component in adapter.components:
            trains = component is adapter.current or traits.rescale_earlier
            if component.key in adapter.magnitude:
                adapter.magnitude[component.key].requires_grad_(trains)

    def end_task(self) -> dict:
        """Finish the current task; returns what happened (KD's residual and decision)."""
        adapter, traits, cfg = self.adapter, self.traits, self.config
        info: dict = {}
        if adapter is None:
            return info
        if self.released:
            adapter.magnitude[adapter.current.key].requires_grad_(True)
            adapter.freeze_current()
            return info
        if self.kind == "sd-lora-kd" and adapter.frozen_components:
            info = self._absorb_or_keep()
            if info["absorbed"]:
                return info
        if traits.per_task or not traits.direction_after_first:
            adapter.freeze_current()
        return info

    def _absorb_or_keep(self) -> dict:
        """SD-LoRA-KD (Eqns. 7-8, Algorithm 1 lines 10-12). The coefficients are always Eqn. 7's
        (the normalised directions' least-squares fit); the test compares with `kd_tau` either
        that fit's relative residual (`kd_residual='relative'`, scale-free) or Algorithm 1
        line 11's residual of the unnormalised products (`'absolute'`). Both are recorded."""
        adapter, cfg = self.adapter, self.config
        current = adapter.current
        with torch.no_grad():
            coef, residual = least_squares_residual(adapter.direction(current.key),
                                                    adapter.frozen_directions)
            product = adapter.A[current.key] @ adapter.B[current.key]
            earlier = torch.stack([adapter.A[c.key] @ adapter.B[c.key]
                                   for c in adapter.frozen_components])
            _, absolute = absolute_residual(product, earlier)
            tested = residual if cfg.kd_residual == "relative" else absolute
            absorbed = tested < cfg.kd_tau
            if absorbed:
                # Eqn. 8 adds the coefficients themselves; 'scaled' adds alpha_t * c_k, which
                # keeps the function the model had (alpha_t * D_t ~ alpha_t * sum c_k D_k).
                scale = 1.0 if cfg.kd_absorb == "paper" else float(adapter.magnitude[current.key])
                for c, k in zip(adapter.frozen_components, coef.tolist()):
                    adapter.magnitude[c.key].add_(scale * k)
                adapter.drop_current()
        return dict(absorbed=bool(absorbed), residual=residual, residual_absolute=absolute,
                    product_norm=float(torch.linalg.vector_norm(product)),
                    kd_residual=cfg.kd_residual, kd_tau=cfg.kd_tau, coefficients=coef.tolist())

    def trainable_parameters(self) -> dict[str, list[nn.Parameter]]:
        """Parameters that train on the current task, grouped: adapter and head."""
        groups = {"head": [p for p in self.head.parameters() if p.requires_grad]}
        if self.traits.backbone_trains:
            groups["backbone"] = list(self.backbone.parameters())
        adapter = self.adapter
        if adapter is not None:
            current = adapter.current
            params = [p for p in adapter.magnitude.values() if p.requires_grad]
            if current is not None:  # fixed-first-direction freezes its only one after task 1
                params += [adapter.A[current.key], adapter.B[current.key]]
            for p in adapter.parameters():
                p.requires_grad_(any(p is q for q in params))
            groups["adapter"] = params
        return groups

    def fuse_frozen(self, chunk_bytes: int | None = 8 << 20) -> FrozenMagnitudes | None:
        """After `trainable_parameters`: the fused step of the frozen components' magnitudes
        (`sdlora.fused`), which caches their sum for the forward pass. Its parameters must be
        left out of the other optimiser; `close()` it before `end_task`. None when the method
        has no frozen component with a magnitude."""
        adapter, cfg = self.adapter, self.config
        if adapter is None or not adapter.use_magnitudes or not adapter.frozen_components:
            return None
        trains = adapter.magnitude[adapter.frozen_components[0].key].requires_grad
        return FrozenMagnitudes(adapter, trains=trains, optimizer=cfg.optimizer, lr=cfg.lr,
                                weight_decay=cfg.weight_decay, momentum=cfg.momentum,
                                chunk_bytes=chunk_bytes)

    # -- checkpoints -----------------------------------------------------------------------
    def checkpoint_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {f"head.{k}": v for k, v in self.head.state_dict().items()}
        if self.adapter is not None:
            tensors.update({f"adapter.{k}": v for k, v in self.adapter.tensors().items()})
        if self.traits.backbone_trains:
            tensors.update({f"backbone.{k}": v for k, v in self.backbone.state_dict().items()})
        return tensors

    def checkpoint_meta(self) -> dict:
        return dict(layout=self.adapter.layout() if self.adapter is not None else [])

    def load_checkpoint(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        self.head.restore(tensors, meta)
        self.task = meta["task"]
        backbone = {k[len("backbone."):]: v for k, v in tensors.items()
                    if k.startswith("backbone.")}
        if backbone:
            self.backbone.load_state_dict(backbone)
        if self.adapter is not None:
            adapter = {k[len("adapter."):]: v for k, v in tensors.items()
                       if k.startswith("adapter.")}
            self.adapter.load_layout(meta["layout"], adapter)

    # -- inference -------------------------------------------------------------------------
    @torch.no_grad()
    def merged(self) -> nn.Module:
        """A plain timm ViT (weights with every component folded in) and a Linear head over all
        classes seen: costs exactly a plain ViT at inference."""
        import copy

        plain = copy.deepcopy(self.backbone)
        if self.adapter is not None:
            state = plain.state_dict()
            state.update({k: v.detach() for k, v in self.composed_weights().items()})
            plain.load_state_dict(state)
        plain.reset_classifier(self.head.num_classes)
        plain.head.load_state_dict(self.head.as_linear().state_dict())
        return Normalised(plain, self.mean, self.std)

