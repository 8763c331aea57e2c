"""One validated configuration for a class-incremental run; saved inside every run folder."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

__all__ = ["TrainConfig", "METHODS", "ConfigError"]

# Method name -> one line of what it is (the table in sdlora.methods gives the behaviour).
METHODS: dict[str, str] = {
    "sd-lora": "Eqn. 4: a new normalised direction per task, shared magnitudes, all alphas train",
    "sd-lora-rr": "SD-LoRA with the rank schedule of Eqn. 6",
    "sd-lora-kd": "SD-LoRA that absorbs a direction into earlier magnitudes (Eqns. 7-8)",
    "lora": "vanilla LoRA: one W0 + A B trained on every task in turn",
    "full-ft": "full fine-tuning of the backbone",
    "frozen": "the pretrained backbone stays fixed; only the head trains",
    "fixed-first-direction": "ablation: W0 + alpha * normalised A1 B1, only alpha trains after task 1",
    "single-decoupled": "ablation: W0 + alpha * normalised A B, one component trained on every task",
    "no-rescale": "ablation (Table 4 row 3): W0 + D_1 + ... + D_{t-1} + alpha_t D_t; earlier "
                  "directions enter with coefficient 1, only alpha_t and the current direction train",
    "frozen-magnitudes": "not in the paper: earlier components frozen with the magnitude each "
                         "had at its task's end; only alpha_t and the current direction train",
}


class ConfigError(ValueError):
    """A configuration value is invalid; the message names it and what would be valid."""


def _choice(name: str, value: Any, valid) -> None:
    if value not in valid:
        raise ConfigError(f"{name}={value!r} is not valid; choose one of: "
                          f"{', '.join(map(str, valid))}")


def _positive(name: str, value, integer: bool = False) -> None:
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not value > 0:
        what = "a positive integer" if integer else "a positive number"
        raise ConfigError(f"{name}={value!r} is not valid; it must be {what}")


@dataclass
class TrainConfig:
    """Everything that defines a run. Defaults are the embedded CPU benchmark."""

    benchmark: str = "renditions20"  # sdlora.data.benchmark_names(): embedded or the paper's
    data_root: str | None = None  # folder of a file benchmark (default $SDLORA_DATA/<name>)
    class_order_seed: int | None = None  # seed of the class order (None: `seed`); released: 1993
    normalise_inputs: bool = True  # mean/std normalisation inside the model (released code: off)
    amp: str = "none"  # 'none' or 'bf16' (CUDA autocast)
    num_workers: int = 4  # DataLoader workers for file benchmarks
    backbone: str = "embedded-vit"  # a name in sdlora.backbone.BACKBONES or a timm ViT tag
    weights: str | None = None  # local weights file for the backbone (None: the backbone's own)
    method: str = "sd-lora"  # a name in METHODS
    tasks: int = 5  # equal tasks; must divide the benchmark's classes
    epochs: int = 5  # epochs per task
    batch_size: int = 32
    lr: float = 0.008  # the paper's Adam learning rate
    optimizer: str = "adam"  # 'adam' (the paper) or 'sgd' (momentum; the released code)
    momentum: float = 0.9  # SGD only
    weight_decay: float = 0.0
    schedule: str = "constant"  # 'constant' or 'cosine' (cosine over each task's steps)
    seed: int = 0  # class order, initialisations and batch order
    rank: int = 10  # r1
    rr_mu: int = 4  # SD-LoRA-RR: 1-based task from which rank rr_ranks[1] is used
    rr_nu: int = 8  # SD-LoRA-RR: 1-based task from which rank rr_ranks[2] is used
    rr_ranks: tuple[int, int, int] = (10, 8, 6)  # r1, r_mu, r_nu
    kd_tau: float = 9e-4  # SD-LoRA-KD threshold on the residual named by kd_residual
    # SD-LoRA-KD's test: 'relative' = ||D_t - sum c_k D_k||_F / ||D_t||_F of the normalised
    # directions (Eqn. 7, scale-free); 'absolute' = Algorithm 1 line 11 as written,
    # ||A_t B_t - sum c_k A_k B_k||_F of the unnormalised products (sdlora.adapters)
    kd_residual: str = "relative"
    kd_absorb: str = "paper"  # 'paper': alpha_k += c_k (Eqn. 8); 'scaled': alpha_k += alpha_t c_k
    variant: str = "paper"  # sd-lora only: 'paper' or 'released' (the authors' code, see README)
    magnitude_init: float = 1.0  # initial magnitude of a new component (Finding 2: one)
    new_magnitude_init: float | None = 0.0  # tasks >= 2: start of the new alpha_t (None: magnitude_init)
    head_lr_scale: float = 1.0  # head learning rate = lr * head_lr_scale
    residual_every: int = 10  # record the current direction's residual every N steps (0: never)
    device: str = "auto"  # 'auto', 'cpu' or 'cuda'
    eval_batch_size: int = 256
    extra: dict = field(default_factory=dict)  # free-form notes carried into the run folder

    def __post_init__(self) -> None:
        self.rr_ranks = tuple(self.rr_ranks)
        self.validate()

    def validate(self) -> None:
        from .backbone import BACKBONES
        from .data import benchmark_names

        _choice("method", self.method, list(METHODS))
        _choice("benchmark", self.benchmark, benchmark_names())
        _choice("amp", self.amp, ["none", "bf16"])
        if self.num_workers < 0:
            raise ConfigError(f"num_workers={self.num_workers} must be >= 0")
        if self.backbone not in BACKBONES and "vit" not in self.backbone:
            raise ConfigError(f"backbone={self.backbone!r} is not valid; choose one of: "
                              f"{', '.join(BACKBONES)} or another timm ViT tag")
        _choice("optimizer", self.optimizer, ["adam", "sgd"])
        _choice("schedule", self.schedule, ["constant", "cosine"])
        _choice("variant", self.variant, ["paper", "released"])
        _choice("kd_absorb", self.kd_absorb, ["paper", "scaled"])
        _choice("kd_residual", self.kd_residual, ["relative", "absolute"])
        _choice("device", self.device, ["auto", "cpu", "cuda"])
        if self.variant == "released" and self.method != "sd-lora":
            raise ConfigError(f"variant='released' applies to method 'sd-lora' only, "
                              f"not {self.method!r}")
        for name in ("tasks", "epochs", "batch_size", "rank", "rr_mu", "rr_nu", "eval_batch_size"):
            _positive(name, getattr(self, name), integer=True)
        for name in ("lr", "kd_tau", "head_lr_scale"):
            _positive(name, getattr(self, name))
        if len(self.rr_ranks) != 3:
            raise ConfigError(f"rr_ranks={self.rr_ranks!r} is not valid; give three ranks "
                              f"(r1, r_mu, r_nu)")
        for r in self.rr_ranks:
            _positive("rr_ranks", r, integer=True)
        if self.rr_nu < self.rr_mu:
            raise ConfigError(f"rr_nu={self.rr_nu} is before rr_mu={self.rr_mu}; Eqn. 6 needs "
                              f"mu <= nu")
        if self.weight_decay < 0 or not 0 <= self.momentum < 1:
            raise ConfigError(f"weight_decay={self.weight_decay} must be >= 0 and "
                              f"momentum={self.momentum} in [0, 1)")
        if self.residual_every < 0:
            raise ConfigError(f"residual_every={self.residual_every} must be >= 0")

    def rank_for_task(self, task: int) -> int:
        """Rank of task `task` (0-based). Eqn. 6 for sd-lora-rr with 1-based mu, nu."""
        if self.method != "sd-lora-rr":
            return self.rank
        r1, r_mu, r_nu = self.rr_ranks
        one_based = task + 1
        return r_nu if one_based >= self.rr_nu else r_mu if one_based >= self.rr_mu else r1

    def to_dict(self) -> dict:
        d = asdict(self)
        d["rr_ranks"] = list(self.rr_ranks)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown config keys {sorted(unknown)}; valid: {sorted(known)}")
        return cls(**d)
