"""One validated configuration for a class-incremental run; saved inside every run folder."""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field, fields
from functools import lru_cache
from typing import Any, Callable

__all__ = ["TrainConfig", "METHODS", "JOINT_ADAPTERS", "L2P_VARIANTS", "DUALPROMPT_VARIANTS",
           "PROMPT_SHAPES", "GRAD_CLIP_DEFAULTS", "PULL_WEIGHT_DEFAULTS", "HEAD_LR_SCALE_DEFAULTS",
           "HIDE_OPTIONS", "HIDE_BUDGETS", "APPLIES", "LR_RANGE", "MAGNITUDE_MAX",
           "PROMPT_TOKENS_MAX", "PROMPT_POOL_MAX", "LOSS_WEIGHT_MAX", "WORKERS_MAX", "EPOCHS_MAX",
           "ConfigError",
           "part_rates"]

from .errors import ConfigError  # noqa: E402  (defined there: sdlora.backbone subclasses it)

log = logging.getLogger(__name__)

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
    "simplecil": "reference: frozen backbone, cosine similarity to class-mean prototypes, no "
                 "gradient step (Zhou et al. 2023)",
    "joint": "reference (upper bound): all classes learned at once as one task, same epochs; "
             "adapter chosen by joint_adapter",
    "inflora": "baseline: LoRA on k and v with A fixed orthogonal to earlier tasks' input "
               "subspace (DualGPM), only B trains, merged after each task (Liang & Li 2024)",
    "l2p": "baseline: a pool of prompts chosen per image by a frozen query, frozen backbone "
           "(Wang et al. 2022); l2p_variant 'l2p++' is CODA-Prompt's prefix form",
    "dualprompt": "baseline: a shared G-prompt at blocks 0-1 and one E-prompt per task at "
                  "blocks 2-4 (prefixes), the E-prompt chosen per image by its key at test "
                  "(Wang et al. 2022, ECCV)",
    "coda-prompt": "baseline: prefixes at blocks 0-4 assembled from a pool of components "
                   "weighted by the frozen query, new components orthogonal to earlier ones "
                   "(Smith et al. 2023)",
    "hide-prompt": "baseline: a task-identity stage (frozen query, residual MLP, classifier "
                   "aligned on features sampled from class statistics) picks each image's "
                   "task prompt (prefix, blocks 0-4); the final head aligned the same way "
                   "(Wang et al. 2023)",
}

# L2P's variants: (pool, length) defaults. 'l2p': prompt tokens after the class token, head on
# the mean of the prompt outputs; 'l2p++': prefix keys/values at block 0, head on the class token.
L2P_VARIANTS = {"l2p": (10, 5), "l2p++": (30, 20)}

# DualPrompt's variants: G-prompt length default. 'official' (google-research/l2p, the PyTorch
# port): a prompt of length L is L prefix keys and L prefix values, one key per task shared by
# the E layers. 'coda' (CODA-Prompt's reimplementation, whose size is Table 5's 0.06M): length
# L is L/2 keys + L/2 values, a key per E layer.
DUALPROMPT_VARIANTS = {"official": 5, "coda": 6}

# (pool, length) defaults of the other prompt methods; None: DualPrompt's pool is one E-prompt
# per task (`tasks`). CODA-Prompt: 100 components of 8 tokens (4 keys + 4 values).
PROMPT_SHAPES: dict[str, tuple[int | None, int]] = {"dualprompt": (None, 20),
                                                    "coda-prompt": (100, 8)}

# Gradient-norm clip per method when `grad_clip` is not given: L2P's released code clips at 1.0
# (google-research/l2p, and the PyTorch port's --clip-grad 1.0), as do DualPrompt's official
# ImageNet-R config and HiDe-Prompt's (thu-ml/HiDe-Prompt, --clip-grad 1.0 in both stages);
# every other method does not.
GRAD_CLIP_DEFAULTS: dict[str, float | None] = {"l2p": 1.0, "dualprompt": 1.0, "hide-prompt": 1.0}

# Weight of the key-query pull when `pull_weight` is not given: L2P 0.1 (the PyTorch port and
# PILOT), DualPrompt 1.0 (its official ImageNet-R config); 0.1 for the methods that have none.
PULL_WEIGHT_DEFAULTS: dict[str, float] = {"dualprompt": 1.0}

# Head learning rate relative to `lr` per method when `head_lr_scale` is not given (1.0 for the
# methods not named): HiDe-Prompt's released runs use --larger_prompt_lr, the head at 0.1 x the
# prompts' rate.
HEAD_LR_SCALE_DEFAULTS: dict[str, float] = {"hide-prompt": 0.1}

# HiDe-Prompt's training budget (`hide_budget`). 'equal' (the default): the task's `epochs` passes
# over its images are split between the task-identity stage and the prompt stage in the released
# ImageNet-R script's ratio, 20 : 150 (training_scripts/train_imr_vit.sh), with at least one
# epoch for the identity stage and one for the prompts; each classifier alignment (on features
# sampled from class statistics, not on images) gets the released 30 epochs in proportion to the
# stage it follows: 30 / 20 of the identity stage's epochs, 30 / 150 of the prompts' (at least
# one each). So every method makes `epochs` passes over a task's images. 'released': the released
# stages as given (`hide_tii_epochs`, default 20, and `hide_ca_epochs`, default 30, for both
# alignments) beside the loop's `epochs` for the prompts: an extra budget (on glyphs40 at 4
# epochs, 20 identity epochs against every other method's 4), labelled so in every table.
HIDE_BUDGETS = ("equal", "released")
HIDE_RELEASED_EPOCHS = dict(identity=20, prompts=150, alignment=30)


def _rounded(x: float) -> int:
    """x rounded half up (Python's round() rounds 2.5 to 2)."""
    return int(math.floor(x + 0.5))


# HiDe-Prompt's final-head (TAP) alignment rate relative to `lr` when `hide_tap_lr` is not given:
# the released ImageNet-R stage 2 (training_scripts/train_imr_vit.sh) aligns at --ca_lr 0.005,
# unscaled, while its prompts train at 0.03 x 24 / 256 = 0.0028125.
TAP_LR_RATIO = 0.005 / 0.0028125  # 16 / 9


class _ByMethod:
    """The default of `grad_clip`, `pull_weight` and `head_lr_scale`: resolved to the method's
    entry of `GRAD_CLIP_DEFAULTS` (None if it has none), `PULL_WEIGHT_DEFAULTS` (0.1) or
    `HEAD_LR_SCALE_DEFAULTS` (1.0) when the config is made, so a saved config always holds the
    value used."""

    def __repr__(self) -> str:
        return "the method's default"


BY_METHOD: Any = _ByMethod()


class _ByBenchmark:
    """`backbone`'s default: resolved to the benchmark's own foundation model
    (`BENCHMARK_BACKBONES`) when the config is made, so a saved config holds the name used."""

    def __repr__(self) -> str:
        return "the benchmark's foundation model"


BY_BENCHMARK: Any = _ByBenchmark()

# The foundation model each embedded benchmark is made for (issue 9): glyph classes in held-out
# typefaces need the model that learned glyphs; Fashion-MNIST renditions and digits the model
# pretrained on Fashion-MNIST. Any other benchmark defaults to DEFAULT_BACKBONE.
BENCHMARK_BACKBONES: dict[str, str] = {"glyphs40": "glyph-vit", "glyphs80": "glyph-vit",
                                       "renditions20": "embedded-vit",
                                       "digits": "embedded-vit"}
DEFAULT_BACKBONE = "embedded-vit"

# Adapters the `joint` upper bound can train with (rows of sdlora.traits.TRAITS).
JOINT_ADAPTERS = ("lora", "sd-lora", "full-ft")


def _choice(name: str, value: Any, valid) -> None:
    if value not in valid:
        raise ConfigError(f"{name}={value!r} is not valid; choose one of: "
                          f"{', '.join(map(str, valid))}")


def _positive(name: str, value, integer: bool = False) -> None:
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not value > 0:
        what = "a positive integer" if integer else "a positive number"
        raise ConfigError(f"{name}={value!r} is not valid; it must be {what}")


def _finite(name: str, value, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name}={value!r} is not valid; it must be a finite number"
                          + (" (or null)" if optional else ""))


def _rate(name: str, value) -> None:
    """A learning rate within `LR_RANGE` (a positive normal float that cannot overflow)."""
    if not LR_RANGE[0] <= value <= LR_RANGE[1]:
        raise ConfigError(f"{name}={value!r} is not valid; a learning rate must be from "
                          f"{LR_RANGE[0]:g} to {LR_RANGE[1]:g}")


@lru_cache(maxsize=1)
def _timm_vits() -> frozenset[str]:
    """timm's VisionTransformer architectures and their pretrained tags."""
    import timm

    return frozenset(timm.list_models(module="vision_transformer")) | frozenset(
        timm.list_models(module="vision_transformer", pretrained=True))


def check_backbone(name) -> None:
    """ConfigError unless `name` is an sdlora backbone or a timm VisionTransformer tag."""
    from .backbone import BACKBONES

    if not isinstance(name, str) or (name not in BACKBONES and name not in _timm_vits()):
        close = sorted(n for n in _timm_vits() if isinstance(name, str) and name
                       and n.startswith(name.split(".")[0]))[:3]
        raise ConfigError(f"backbone={name!r} is not valid; choose one of: "
                          f"{', '.join(BACKBONES)} or a timm VisionTransformer name "
                          f"(timm.list_models(module='vision_transformer'))"
                          + (f", e.g. {', '.join(close)}" if close else ""))


SEED_MAX = 2**32 - 1  # numpy's RandomState range (the class order)

# Bounds of the numeric options: what can run. A value outside is refused when the config is
# made, before anything is built or trained (each of these once passed validation and then
# failed deep inside a run with a traceback, issue 23).
# Every learning rate (lr, lr x head_lr_scale, hide-prompt's own rates): the paper's Adam rate is
# 0.008, the smallest in use 4.7e-5; 1e308 overflowed in Adam, 1e-320 is a subnormal float.
LR_RANGE = (1e-10, 10.0)
# |magnitude_init|, |new_magnitude_init|: the paper starts at 1 (Finding 2); 1e300 overflowed
# the composed weights and failed in task 2's least-squares fit.
MAGNITUDE_MAX = 100.0
# Tokens one prompt adds to a block's sequence (prompt_length, g_prompt_length,
# hide_prompt_length; l2p: prompt_top_k x prompt_length): the released prompts have 5 to 20, a
# ViT-B/16 sequence 197; a million tokens failed in the allocator.
PROMPT_TOKENS_MAX = 1024
PROMPT_POOL_MAX = 1024  # prompts in a pool (released: 10 to 100)
HIDE_CENTROIDS_MAX = 1024  # k-means clusters per class (released: 10); above a class's images
# The prompts' parameters, estimated before they are allocated: pool x length x width x 4 bytes
# (x 5 prefix blocks for dualprompt and coda-prompt)
PROMPT_BYTES_MAX = 2**30
# pull_weight, ortho_weight, hide_contrast_weight: a term 1000 times the cross-entropy already
# decides alone; 1e300 overflows the loss to inf. weight_decay: 1 shrinks every weight by lr a
# step; the released codes use 0 to 5e-4.
LOSS_WEIGHT_MAX = 1000.0
WEIGHT_DECAY_MAX = 1.0
WORKERS_MAX = 256  # DataLoader worker processes
# Passes over each task's images: the paper's longest schedule is 50 (CUB-200), the released
# HiDe-Prompt's 150; 10,000 on the embedded default would train for weeks on a CPU.
EPOCHS_MAX = 10_000


@dataclass
class TrainConfig:
    """Everything that defines a run. Defaults are the embedded CPU benchmark."""

    benchmark: str = "glyphs40"  # sdlora.data.benchmark_names(): embedded or the paper's
    data_root: str | None = None  # folder of a file benchmark (default $SDLORA_DATA/<name>)
    class_order_seed: int | None = None  # seed of the class order (None: `seed`); released: 1993
    normalise_inputs: bool = True  # mean/std normalisation inside the model (released code: off)
    amp: str = "none"  # 'none' or 'bf16' (CUDA autocast)
    num_workers: int = 4  # DataLoader workers for file benchmarks
    # a name in sdlora.backbone.BACKBONES or a timm ViT tag; by default the benchmark's own
    # foundation model (BENCHMARK_BACKBONES: glyphs40 -> glyph-vit, renditions20 -> embedded-vit)
    backbone: str = BY_BENCHMARK
    weights: str | None = None  # local weights file for the backbone (None: the backbone's own)
    method: str = "sd-lora"  # a name in METHODS
    tasks: int = 5  # equal tasks; must divide the benchmark's classes
    epochs: int = 4  # epochs per task (the embedded default; a run <= 3 min on 2 cores)
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
    holdout: str = "test"  # 'test', or 'validation': train on the training set minus a
    #   seeded stratified val_fraction of each class and evaluate on that (for tuning)
    val_fraction: float = 0.2
    joint_adapter: str = "lora"  # joint only: 'lora', 'sd-lora' or 'full-ft'
    variant: str = "paper"  # sd-lora only: 'paper' or 'released' (the authors' code, see README)
    magnitude_init: float = 1.0  # initial magnitude of a new component (Finding 2: one)
    # tasks >= 2: start of the new alpha_t; None: magnitude_init, i.e. 1 as the paper's Finding 2
    # (the default). 0.0 was this project's default until 2026-11-30 (chosen on renditions20).
    new_magnitude_init: float | None = None
    # head learning rate = lr * head_lr_scale; by default the method's (HEAD_LR_SCALE_DEFAULTS:
    # 0.1 for hide-prompt, as its released --larger_prompt_lr; else 1.0)
    head_lr_scale: float = BY_METHOD
    residual_every: int = 10  # record the current direction's residual every N steps (0: never)
    # Baselines (sdlora.methods.l2p, .dualprompt, .coda_prompt, .inflora; InfLoRA's rank is
    # `rank`).
    l2p_variant: str = "l2p"  # l2p only: 'l2p' or 'l2p++' (L2P_VARIANTS)
    # Pool and prompt length of the prompt methods (None: the method's, `prompt_shape`): l2p
    # prompts (10 x 5, l2p++ 30 x 20); dualprompt E-prompts (one per task x 20); coda-prompt
    # components (100 x 8)
    prompt_pool: int | None = None
    prompt_length: int | None = None
    prompt_top_k: int = 5  # l2p: prompts chosen per image
    # Weight of the key-query pull (l2p: loss -= w * sum cos / B; dualprompt: loss -= w * mean
    # cos with the task's key); by default the method's (PULL_WEIGHT_DEFAULTS: dualprompt 1.0,
    # else 0.1)
    pull_weight: float = BY_METHOD
    dualprompt_variant: str = "official"  # dualprompt only: 'official' or 'coda'
    g_prompt_length: int | None = None  # dualprompt: G-prompt length (None: 5 / 6 for 'coda')
    # coda-prompt: weight of the orthogonality penalty on K, A and P; 0.0 as the released code
    # now. The paper's 0.1 ran with the early code's hidden extra factor 1e-6 in the penalty
    # (GT-RIPL/CODA-Prompt #4), absent here: 1e-7 reproduces the paper's runs, and 0.1 here is
    # 10^6 times stronger than what the paper ran
    ortho_weight: float = 0.0
    # Clip the global gradient norm of what torch.optim steps to this value (None: no clip);
    # by default the method's (GRAD_CLIP_DEFAULTS: 1.0 for l2p, dualprompt and hide-prompt, as
    # their released code; else None)
    grad_clip: float | None = BY_METHOD
    gpm_eps_start: float = 0.98  # inflora: DualGPM energy threshold after the first task ...
    gpm_eps_end: float = 1.0  # ... rising linearly, eps_t = start + (end - start) * t / tasks
    # hide-prompt (sdlora.methods.hide_prompt; released ImageNet-R values unless said)
    hide_prompt_length: int = 20  # prefix key tokens (and as many value tokens) per block 0-4
    hide_prompt_momentum: float = 0.01  # prompt ensemble: (1 - m) p_t + m mean(p_<t)
    hide_contrast_weight: float = 0.5  # weight of the contrastive term against stored centroids
    hide_centroids: int = 10  # k-means clusters per class in the stored statistics
    # 'equal': the stages share the task's `epochs` passes over its images (20 : 150 as released,
    # alignments scaled alike; HIDE_BUDGETS above); 'released': the released 20 identity and 30
    # alignment epochs beside `epochs` of prompt training (an extra budget)
    hide_budget: str = "equal"
    hide_tii_epochs: int = 20  # hide_budget 'released': epochs of the task-identity stage
    hide_tii_lr: float | None = None  # its Adam rate (None: lr / 60, released 0.0005 : 0.03)
    hide_ca_epochs: int = 30  # hide_budget 'released': epochs of each classifier alignment
    # SGD rate of the task-identity stage's alignment (None: lr / 6; released 0.005 x 24 / 256
    # = 4.6875e-4 to the prompts' 0.0028125)
    hide_ca_lr: float | None = None
    # SGD rate of the final head's (TAP) alignment (None: lr x 0.005 / 0.0028125 = lr x 16 / 9;
    # released 0.005, not scaled by the batch, to the prompts' 0.0028125)
    hide_tap_lr: float | None = None
    hide_oracle_task: bool = False  # analysis only: test images get their true task's prompt
    device: str = "auto"  # 'auto', 'cpu' or 'cuda'
    eval_batch_size: int = 256
    extra: dict = field(default_factory=dict)  # free-form notes carried into the run folder

    def __post_init__(self) -> None:
        self.rr_ranks = tuple(self.rr_ranks)
        if self.backbone is BY_BENCHMARK:
            self.backbone = BENCHMARK_BACKBONES.get(self.benchmark, DEFAULT_BACKBONE)
        if self.grad_clip is BY_METHOD:
            self.grad_clip = GRAD_CLIP_DEFAULTS.get(self.method)
        if self.pull_weight is BY_METHOD:
            self.pull_weight = PULL_WEIGHT_DEFAULTS.get(self.method, 0.1)
        if self.head_lr_scale is BY_METHOD:
            self.head_lr_scale = HEAD_LR_SCALE_DEFAULTS.get(self.method, 1.0)
        self.validate()

    def validate(self) -> None:
        from .data import benchmark_names

        _choice("method", self.method, list(METHODS))
        _choice("benchmark", self.benchmark, benchmark_names())
        _choice("amp", self.amp, ["none", "bf16"])
        if isinstance(self.num_workers, bool) or not isinstance(self.num_workers, int) \
                or self.num_workers < 0:
            raise ConfigError(f"num_workers={self.num_workers!r} is not valid; it must be an "
                              f"integer >= 0")
        check_backbone(self.backbone)
        for name in ("seed", "class_order_seed"):
            value = getattr(self, name)
            if name == "class_order_seed" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= SEED_MAX:
                raise ConfigError(f"{name}={value!r} is not valid; it must be an integer from 0 "
                                  f"to {SEED_MAX}")
        for name in ("lr", "kd_tau", "head_lr_scale", "momentum", "weight_decay",
                     "magnitude_init"):
            _finite(name, getattr(self, name))
        _finite("new_magnitude_init", self.new_magnitude_init, optional=True)
        if self.grad_clip is not None:
            _finite("grad_clip", self.grad_clip, optional=True)
            _positive("grad_clip", self.grad_clip)
        _choice("optimizer", self.optimizer, ["adam", "sgd"])
        _choice("schedule", self.schedule, ["constant", "cosine"])
        _choice("variant", self.variant, ["paper", "released"])
        _choice("kd_absorb", self.kd_absorb, ["paper", "scaled"])
        _choice("joint_adapter", self.joint_adapter, JOINT_ADAPTERS)
        _choice("holdout", self.holdout, ["test", "validation"])
        if isinstance(self.val_fraction, bool) or not 0 < self.val_fraction < 1:
            raise ConfigError(f"val_fraction={self.val_fraction!r} is not valid; it must be a "
                              f"number in (0, 1)")
        _choice("kd_residual", self.kd_residual, ["relative", "absolute"])
        _choice("device", self.device, ["auto", "cpu", "cuda"])
        for name in ("tasks", "epochs", "batch_size", "rank", "rr_mu", "rr_nu", "eval_batch_size"):
            _positive(name, getattr(self, name), integer=True)
        if self.epochs > EPOCHS_MAX:
            raise ConfigError(f"epochs={self.epochs!r} is not valid; choose 1..{EPOCHS_MAX}")
        for name in ("lr", "kd_tau", "head_lr_scale"):
            _positive(name, getattr(self, name))
        _rate("lr", self.lr)
        if not LR_RANGE[0] <= self.lr * self.head_lr_scale <= LR_RANGE[1]:
            raise ConfigError(f"head_lr_scale={self.head_lr_scale!r} is not valid: the head's "
                              f"rate lr x head_lr_scale = {self.lr * self.head_lr_scale:g} must "
                              f"be from {LR_RANGE[0]:g} to {LR_RANGE[1]:g}")
        for name in ("magnitude_init", "new_magnitude_init"):
            value = getattr(self, name)
            if value is not None and abs(value) > MAGNITUDE_MAX:
                raise ConfigError(f"{name}={value!r} is not valid; it must be from "
                                  f"{-MAGNITUDE_MAX:g} to {MAGNITUDE_MAX:g} (a magnitude times "
                                  f"a unit-norm direction; the paper starts at 1)")
        if self.num_workers > WORKERS_MAX:
            raise ConfigError(f"num_workers={self.num_workers} is not valid; it must be from 0 "
                              f"to {WORKERS_MAX}")
        if len(self.rr_ranks) != 3:
            raise ConfigError(f"rr_ranks={self.rr_ranks!r} is not valid; give three ranks "
                              f"(r1, r_mu, r_nu)")
        for r in self.rr_ranks:
            _positive("rr_ranks", r, integer=True)
        if self.rr_nu < self.rr_mu:
            raise ConfigError(f"rr_nu={self.rr_nu} is before rr_mu={self.rr_mu}; Eqn. 6 needs "
                              f"mu <= nu")
        self._validate_ranks()
        if not 0 <= self.weight_decay <= WEIGHT_DECAY_MAX or not 0 <= self.momentum < 1:
            raise ConfigError(f"weight_decay={self.weight_decay} must be from 0 to "
                              f"{WEIGHT_DECAY_MAX:g} and momentum={self.momentum} in [0, 1)")
        if isinstance(self.residual_every, bool) or not isinstance(self.residual_every, int) \
                or self.residual_every < 0:
            raise ConfigError(f"residual_every={self.residual_every} must be >= 0")
        self._validate_baselines()
        self._validate_applicable()

    def _validate_ranks(self) -> None:
        """rank and rr_ranks within the backbone's width D (a LoRA product A B of D x D weights
        has rank <= D; 10^8 failed in the allocator)."""
        from .backbone import backbone_width

        width = backbone_width(self.backbone)
        for name, value in (("rank", self.rank), ("rr_ranks", max(self.rr_ranks))):
            if value > width:
                raise ConfigError(f"{name}={getattr(self, name)!r} is not valid: a rank above the "
                                  f"width {width} of backbone={self.backbone!r} adds nothing; "
                                  f"choose 1..{width}")

    def _validate_applicable(self) -> None:
        """An option of `APPLIES` changed from its default for a run it does not apply to."""
        for name in inapplicable(self):
            where, _, here = APPLIES[name]
            raise ConfigError(f"{name}={getattr(self, name)!r} applies to {where} only, not "
                              f"{here(self)}")

    def _validate_baselines(self) -> None:
        _choice("l2p_variant", self.l2p_variant, list(L2P_VARIANTS))
        _choice("dualprompt_variant", self.dualprompt_variant, list(DUALPROMPT_VARIANTS))
        for name in ("prompt_pool", "prompt_length", "g_prompt_length"):
            if getattr(self, name) is not None:
                _positive(name, getattr(self, name), integer=True)
        _positive("prompt_top_k", self.prompt_top_k, integer=True)
        self._validate_prompt_size()
        if isinstance(self.pull_weight, bool) or not isinstance(self.pull_weight, (int, float)) \
                or not math.isfinite(self.pull_weight) or not 0 <= self.pull_weight \
                <= LOSS_WEIGHT_MAX:
            raise ConfigError(f"pull_weight={self.pull_weight!r} is not valid; it must be a "
                              f"number from 0 to {LOSS_WEIGHT_MAX:g}")
        if isinstance(self.ortho_weight, bool) or not isinstance(self.ortho_weight, (int, float)) \
                or not math.isfinite(self.ortho_weight) or not 0 <= self.ortho_weight \
                <= LOSS_WEIGHT_MAX:
            raise ConfigError(f"ortho_weight={self.ortho_weight!r} is not valid; it must be a "
                              f"number from 0 to {LOSS_WEIGHT_MAX:g} (0.0 as the released "
                              f"CODA-Prompt; 1e-7 as the paper's runs, its 0.1 times the early "
                              f"code's hidden 1e-6)")
        if not 0 < self.gpm_eps_start <= self.gpm_eps_end <= 1:
            raise ConfigError(f"gpm_eps_start={self.gpm_eps_start}, gpm_eps_end="
                              f"{self.gpm_eps_end} are not valid; need 0 < start <= end <= 1")
        pool, length = self.prompt_shape()
        if self.method == "l2p":
            if self.prompt_top_k > pool:
                raise ConfigError(f"prompt_top_k={self.prompt_top_k} is more than the pool of "
                                  f"{pool} prompts; choose 1..{pool}")
            if self.l2p_variant == "l2p++" and length % 2:
                raise ConfigError(f"prompt_length={length} is odd; l2p++ splits a prompt into "
                                  f"equal key and value halves, so it must be even")
        elif self.method == "dualprompt":
            if pool < self.tasks:
                raise ConfigError(
                    f"prompt_pool={pool} is fewer than tasks={self.tasks}: DualPrompt trains "
                    f"one E-prompt per task (the released code then silently stops forcing the "
                    f"task's prompt); choose prompt_pool >= {self.tasks} or leave it unset")
            if self.dualprompt_variant == "coda":
                for name, value in (("prompt_length", length),
                                    ("g_prompt_length", self.g_length())):
                    if value % 2:
                        raise ConfigError(f"{name}={value} is odd; dualprompt_variant='coda' "
                                          f"splits a prompt into equal key and value halves, "
                                          f"so it must be even")
        elif self.method == "coda-prompt":
            if pool % self.tasks:
                fits = [m for m in (pool - pool % self.tasks, pool - pool % self.tasks
                                    + self.tasks) if m > 0]
                raise ConfigError(
                    f"prompt_pool={pool} does not split into tasks={self.tasks} equal parts: "
                    f"CODA-Prompt gives each task pool / tasks components; choose a multiple "
                    f"of {self.tasks} (e.g. {', '.join(map(str, fits))})")
            if length % 2:
                raise ConfigError(f"prompt_length={length} is odd; CODA-Prompt splits a "
                                  f"component into equal key and value halves, so it must be "
                                  f"even")
        self._validate_hide()

    def _validate_prompt_size(self) -> None:
        """Prompt tokens per block and the prompts' memory, estimated before anything is
        allocated (`PROMPT_TOKENS_MAX`, `PROMPT_POOL_MAX`, `PROMPT_BYTES_MAX`)."""
        if self.method not in ("l2p", "dualprompt", "coda-prompt"):
            return
        pool, length = self.prompt_shape()
        tokens = [("prompt_length", length, length)]
        if self.method == "l2p":
            tokens = [("prompt_length", length, length * min(self.prompt_top_k, pool))]
        if self.method == "dualprompt":
            tokens.append(("g_prompt_length", self.g_length(), self.g_length()))
        for name, value, added in tokens:
            if added > PROMPT_TOKENS_MAX:
                raise ConfigError(f"{name}={value} is not valid: it adds {added} tokens to a "
                                  f"block's sequence, more than {PROMPT_TOKENS_MAX}")
        if pool > PROMPT_POOL_MAX:
            raise ConfigError(f"prompt_pool={pool} is not valid; choose 1..{PROMPT_POOL_MAX}")
        from .backbone import backbone_width

        size = pool * length * backbone_width(self.backbone) * 4 * (5 if self.method != "l2p"
                                                                    else 1)
        if size > PROMPT_BYTES_MAX:
            raise ConfigError(f"prompt_pool={pool} x prompt_length={length} is not valid: the "
                              f"prompts would take about {size / 2**30:.1f} GiB, more than "
                              f"{PROMPT_BYTES_MAX / 2**30:g}")

    def _validate_hide(self) -> None:
        for name in ("hide_prompt_length", "hide_centroids", "hide_tii_epochs",
                     "hide_ca_epochs"):
            _positive(name, getattr(self, name), integer=True)
        if self.hide_prompt_length > PROMPT_TOKENS_MAX:
            raise ConfigError(f"hide_prompt_length={self.hide_prompt_length} is not valid; "
                              f"choose 1..{PROMPT_TOKENS_MAX} (tokens a prompt adds to a "
                              f"block's sequence)")
        if self.hide_centroids > HIDE_CENTROIDS_MAX:  # (classes, K, d) statistics, allocated
            raise ConfigError(f"hide_centroids={self.hide_centroids} is not valid; choose "
                              f"1..{HIDE_CENTROIDS_MAX} (k-means clusters per class; the "
                              f"released code uses 10)")
        for name in ("hide_tii_lr", "hide_ca_lr", "hide_tap_lr"):
            if getattr(self, name) is not None:
                _finite(name, getattr(self, name), optional=True)
                _positive(name, getattr(self, name))
                _rate(name, getattr(self, name))
        _finite("hide_prompt_momentum", self.hide_prompt_momentum)
        if not 0 <= self.hide_prompt_momentum < 1:
            raise ConfigError(f"hide_prompt_momentum={self.hide_prompt_momentum!r} is not "
                              f"valid; it must be a number in [0, 1)")
        _finite("hide_contrast_weight", self.hide_contrast_weight)
        if not 0 <= self.hide_contrast_weight <= LOSS_WEIGHT_MAX:
            raise ConfigError(f"hide_contrast_weight={self.hide_contrast_weight!r} is not "
                              f"valid; it must be a number from 0 to {LOSS_WEIGHT_MAX:g}")
        _choice("hide_budget", self.hide_budget, HIDE_BUDGETS)
        if self.hide_budget == "equal":
            for name in ("hide_tii_epochs", "hide_ca_epochs"):
                if getattr(self, name) != HIDE_OPTIONS[name]:
                    raise ConfigError(f"{name}={getattr(self, name)!r} applies to "
                                      f"hide_budget='released' only; with 'equal' the stages "
                                      f"share epochs={self.epochs} (HIDE_BUDGETS)")
            if self.method == "hide-prompt" and self.epochs < 2:
                raise ConfigError(f"epochs={self.epochs} is too few for hide-prompt with "
                                  f"hide_budget='equal': one epoch goes to the task-identity "
                                  f"stage and at least one to the prompts; give epochs >= 2 "
                                  f"or hide_budget='released'")
        if not isinstance(self.hide_oracle_task, bool):
            raise ConfigError(f"hide_oracle_task={self.hide_oracle_task!r} is not valid; "
                              f"choose one of: True, False")

    def hide_rates(self) -> tuple[float, float, float]:
        """hide-prompt's (task-identity Adam rate, task-identity alignment SGD rate, final-head
        (TAP) alignment SGD rate): the options, or `lr` in the released ImageNet-R script's
        ratios to the prompts' 0.0028125 (0.03 x 24 / 256): 4.6875e-5 (lr / 60) and 4.6875e-4
        (lr / 6), both scaled by the batch as released, and 0.005 (lr x 16 / 9), which the
        released stage 2 does not scale."""
        return (self.hide_tii_lr if self.hide_tii_lr is not None else self.lr / 60,
                self.hide_ca_lr if self.hide_ca_lr is not None else self.lr / 6,
                self.hide_tap_lr if self.hide_tap_lr is not None
                else self.lr * TAP_LR_RATIO)

    def hide_stages(self) -> dict[str, int]:
        """hide-prompt's epochs per task of each stage: `identity` (task-identity stage, on the
        task's images' frozen features), `prompts` (the training loop), `identity_alignment`
        and `final_alignment` (classifier alignments on sampled features, not images). With
        hide_budget 'equal' identity + prompts = `epochs` (HIDE_BUDGETS above)."""
        if self.hide_budget == "released":
            return dict(identity=self.hide_tii_epochs, prompts=self.epochs,
                        identity_alignment=self.hide_ca_epochs,
                        final_alignment=self.hide_ca_epochs)
        r = HIDE_RELEASED_EPOCHS
        identity = min(max(1, _rounded(self.epochs * r["identity"] / (r["identity"]
                                                                      + r["prompts"]))),
                       self.epochs - 1)
        prompts = self.epochs - identity
        return dict(identity=identity, prompts=prompts,
                    identity_alignment=max(1, _rounded(identity * r["alignment"]
                                                       / r["identity"])),
                    final_alignment=max(1, _rounded(prompts * r["alignment"] / r["prompts"])))

    def loop_epochs(self) -> int:
        """Epochs of the training loop per task: `epochs`, except hide-prompt's share of them
        under hide_budget 'equal' (its task-identity stage takes the rest)."""
        return self.hide_stages()["prompts"] if self.method == "hide-prompt" else self.epochs

    def prompt_shape(self) -> tuple[int, int]:
        """The prompt method's (pool, length): the options, or the method's defaults (l2p: the
        variant's; dualprompt: one E-prompt per task, length 20; coda-prompt: 100, 8)."""
        if self.method in PROMPT_SHAPES:
            pool, length = PROMPT_SHAPES[self.method]
            pool = self.tasks if pool is None else pool
        else:
            pool, length = L2P_VARIANTS[self.l2p_variant]
        return (self.prompt_pool if self.prompt_pool is not None else pool,
                self.prompt_length if self.prompt_length is not None else length)

    def g_length(self) -> int:
        """DualPrompt's G-prompt length: the option, or the variant's (5; 'coda' 6)."""
        return (self.g_prompt_length if self.g_prompt_length is not None
                else DUALPROMPT_VARIANTS[self.dualprompt_variant])

    def rank_for_task(self, task: int) -> int:
        """Rank of task `task` (0-based). Eqn. 6 for sd-lora-rr with 1-based mu, nu."""
        if self.method != "sd-lora-rr":
            return self.rank
        r1, r_mu, r_nu = self.rr_ranks
        one_based = task + 1
        return r_nu if one_based >= self.rr_nu else r_mu if one_based >= self.rr_mu else r1

    def with_options(self, **changes) -> "TrainConfig":
        """`dataclasses.replace(self, **changes)`, then every option that does not apply to
        the result (`APPLIES`) back to its default: a setting spread over several methods (a
        script's common settings) is kept where it means something. (`TrainConfig(...)` and
        `replace` refuse such an option: a flag given for nothing.)"""
        return type(self)(**_drop_inapplicable({**self.to_dict(), **changes}, warn=False))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["rr_ranks"] = list(self.rr_ranks)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """A config from a run's config.json (or one written like it). A key it lacks takes
        today's default, except `grad_clip`: a config saved before that setting existed ran
        without a clip, so a missing ``grad_clip`` is None (give it to clip, e.g. 1.0 for l2p);
        `hide_tap_lr`: a hide-prompt config saved before that option existed aligned its
        final head at the task-identity alignment's rate, so a missing one is that rate; and
        `hide_budget`: one saved before it existed ran the released stages, so a missing one is
        'released'. An option that does not apply to the run (`APPLIES`; older versions saved
        them) is dropped with a one-line warning when it is not at its default."""
        known = {f.name for f in fields(cls)}
        if not isinstance(d, dict):
            raise ConfigError(f"a configuration must be a JSON object of TrainConfig fields, "
                              f"not {type(d).__name__}")
        d = {"grad_clip": None, **d}
        if "hide_budget" not in d and d.get("method") == "hide-prompt":
            d["hide_budget"] = "released"
        if d.get("method") == "hide-prompt" and "hide_tap_lr" not in d:
            ca_lr, lr = d.get("hide_ca_lr"), d.get("lr", cls.lr)
            if ca_lr is None and isinstance(lr, (int, float)) and not isinstance(lr, bool):
                ca_lr = lr / 6
            d["hide_tap_lr"] = ca_lr  # validated with the rest below
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown config keys {sorted(unknown)}; valid: {sorted(known)}")
        d = _drop_inapplicable(d)
        try:
            return cls(**d)
        except TypeError as err:  # a wrong type compared or measured in validate()
            raise ConfigError(f"invalid configuration: {err}") from err


# hide-prompt's options and their defaults (any other method refuses a changed one).
HIDE_OPTIONS: dict[str, Any] = {f.name: f.default for f in fields(TrainConfig)
                                if f.name.startswith("hide_")}


def part_rates(config: TrainConfig) -> dict[str, float]:
    """{part: learning rate} of what `config` trains, from its base rate `lr`: {'lr': lr} for
    most methods; a head at another rate (`head_lr_scale`) adds 'head'; hide-prompt's five
    coupled rates (prompts, head, its task-identity stage's Adam and alignment, the final
    head's alignment: `hide_rates`)."""
    rates = {"prompts" if config.method == "hide-prompt" else "lr": config.lr}
    if config.head_lr_scale != 1:
        rates["head"] = config.lr * config.head_lr_scale
    if config.method == "hide-prompt":
        tii, tii_ca, tap = config.hide_rates()
        rates.update({"identity stage": tii, "identity alignment": tii_ca,
                      "final alignment": tap})
    return rates


# Options that apply to some runs only: name -> (what it applies to, the test, what this run
# is). A value other than the option's default for a run it does not apply to is refused
# (`TrainConfig.validate`), as a flag that would be saved and mean nothing; a saved config
# (`TrainConfig.from_dict`: a run's config.json, `--config`, files of older versions) loads
# with such a value dropped and a one-line warning. An option at its default is not given.
Applies = tuple[str, Callable[["TrainConfig"], bool], Callable[["TrainConfig"], str]]


def _methods(*methods: str) -> Applies:
    where = ("method " if len(methods) == 1 else "methods ") + ", ".join(map(repr, methods))
    return where, lambda c: c.method in methods, lambda c: repr(c.method)


def _joint_here(c: "TrainConfig") -> str:
    """The run an option was refused for: its method, and joint's adapter."""
    return repr(c.method) + (f" with joint_adapter={c.joint_adapter!r}"
                             if c.method == "joint" else "")


def _adapter_method(c: "TrainConfig") -> str:
    """The method whose adapter the run trains (`joint`: its `joint_adapter`)."""
    return c.joint_adapter if c.method == "joint" else c.method


def _magnitudes(later_tasks: bool) -> Applies:
    """magnitude_init (every method with learned magnitudes, the paper's variant) or
    new_magnitude_init (those that add a component on every task)."""
    def applies(c: "TrainConfig") -> bool:
        from .traits import TRAITS

        traits = TRAITS.get(_adapter_method(c))
        return (traits is not None and traits.adapter and traits.magnitudes
                and c.variant == "paper"
                and (not later_tasks or (traits.per_task and c.method != "joint")))

    def here(c: "TrainConfig") -> str:
        return _joint_here(c) + (f" with variant={c.variant!r}" if c.variant != "paper" else "")

    where = ("the methods that add a magnitude on every task (sd-lora, sd-lora-rr, sd-lora-kd, "
             "no-rescale, frozen-magnitudes; variant 'paper')" if later_tasks
             else "the methods with learned magnitudes (the sd-lora family, single-decoupled, "
                  "fixed-first-direction, joint with joint_adapter='sd-lora'; variant 'paper')")
    return where, applies, here


def _rank() -> Applies:
    """`rank`: the methods that train low-rank matrices of that rank (the LoRA family but
    sd-lora-rr, whose ranks are rr_ranks; inflora; joint with a LoRA adapter)."""
    def applies(c: "TrainConfig") -> bool:
        from .traits import TRAITS

        method = _adapter_method(c)
        traits = TRAITS.get(method)
        return method == "inflora" or (traits is not None and traits.adapter
                                       and method != "sd-lora-rr")

    from .traits import TRAITS

    ranked = [m for m, t in TRAITS.items() if t.adapter and m != "sd-lora-rr"] + ["inflora"]
    return ("the methods with low-rank adapters of rank `rank` (" + ", ".join(ranked)
            + "; joint with joint_adapter 'lora' or 'sd-lora'; sd-lora-rr's ranks are rr_ranks)",
            applies, _joint_here)


def _file_benchmark(c: "TrainConfig") -> bool:
    from .data import BENCHMARKS

    return c.benchmark not in BENCHMARKS


APPLIES: dict[str, Applies] = {
    "variant": _methods("sd-lora"),
    "rank": _rank(),
    "magnitude_init": _magnitudes(later_tasks=False),
    "new_magnitude_init": _magnitudes(later_tasks=True),
    **{name: _methods("sd-lora-kd") for name in ("kd_tau", "kd_residual", "kd_absorb")},
    **{name: _methods("sd-lora-rr") for name in ("rr_mu", "rr_nu", "rr_ranks")},
    "joint_adapter": _methods("joint"),
    "l2p_variant": _methods("l2p"),
    "prompt_top_k": _methods("l2p"),
    **{name: _methods("l2p", "dualprompt", "coda-prompt")
       for name in ("prompt_pool", "prompt_length")},
    "pull_weight": _methods("l2p", "dualprompt"),
    "dualprompt_variant": _methods("dualprompt"),
    "g_prompt_length": _methods("dualprompt"),
    "ortho_weight": _methods("coda-prompt"),
    **{name: _methods("inflora") for name in ("gpm_eps_start", "gpm_eps_end")},
    **{name: _methods("hide-prompt") for name in HIDE_OPTIONS},
    "data_root": ("the paper's benchmarks (read from a folder)", _file_benchmark,
                  lambda c: f"the embedded benchmark {c.benchmark!r}"),
    "val_fraction": ("holdout='validation'", lambda c: c.holdout == "validation",
                     lambda c: f"holdout={c.holdout!r}"),
    "amp": ("a CUDA device (autocast on the GPU; it does nothing on the CPU)",
            lambda c: c.device != "cpu", lambda c: f"device={c.device!r}"),
}


_DEFAULTS = {f.name: f.default for f in fields(TrainConfig)}


def _option_default(name: str, c) -> Any:
    if name == "pull_weight":
        return PULL_WEIGHT_DEFAULTS.get(c.method, 0.1)
    return _DEFAULTS[name]


def inapplicable(c) -> list[str]:
    """The options of `APPLIES` that `c` (a TrainConfig, or any object with its method,
    benchmark, holdout, device, variant and joint_adapter) changes from their default although
    they do not apply to it."""
    out = []
    for name, (_, applies, _) in APPLIES.items():
        value = getattr(c, name)
        default = _option_default(name, c)
        if name == "rr_ranks":
            value, default = tuple(value), tuple(default)
        if value != default and not applies(c):
            out.append(name)
    return out


_warned: set[str] = set()


def _drop_inapplicable(d: dict, warn: bool = True) -> dict:
    """`d` without the options of `APPLIES` it gives away from their default for a run they do
    not apply to; with `warn`, each dropped one is logged once (a saved config is read on
    every page)."""
    from types import SimpleNamespace

    context = SimpleNamespace(**{**_DEFAULTS, **d})
    try:
        dropped = [name for name in inapplicable(context) if name in d]
    except (TypeError, ValueError):  # a value of the wrong kind: validate() names it
        return d
    for name in dropped if warn else ():
        where, _, here = APPLIES[name]
        line = (f"{name}={d[name]!r} dropped from a saved configuration: it applies to {where} "
                f"only, not {here(context)}")
        if line not in _warned:
            _warned.add(line)
            log.warning(line)
    return {k: v for k, v in d.items() if k not in dropped}
