"""DualPrompt (Wang et al., ECCV 2022, *DualPrompt: Complementary Prompting for Rehearsal-free
Continual Learning*), per BASELINES.md sections 3.2 and 6.

The backbone stays frozen. Two kinds of prefix prompts enter timm's attention (`prefix`): one
G-prompt ("general"), shared by every task, at blocks 0-1, and one E-prompt ("expert") per task
at blocks 2-4, each with a key. The query is the frozen, unprompted ViT's pre-logits class
token (`query.query_features`, one extra no-grad pass); the head reads the class token.

* Training task t: E-prompt t is used for every image (the released code's prompt mask) and
  its key is pulled toward the queries: `auxiliary_loss` is ``-pull_weight * mean over the
  batch of cos(query, key_t)`` (1.0 in the official ImageNet-R config). Trains: the G-prompt,
  E-prompt t, key t and task t's head rows; earlier E-prompts and keys are frozen.
* Test: each image takes the E-prompt whose key is most similar to its own query (top-1 per
  image, never a batch-wise vote), among the tasks seen so far.
* E-prompt t starts as a copy of E-prompt t-1 (the released ``shared_prompt_pool``); key t is
  drawn fresh (``shared_prompt_key`` off). Task 0 draws the G-prompt, E-prompt 0 and key 0.
* The pool holds `prompt_pool` E-prompts (default: one per task). More tasks than entries is a
  `ConfigError` (the released code then silently stops forcing the task's prompt).
* Gradient norm clipped at 1.0 as the official config (`grad_clip`'s default for dualprompt).

Variants (`dualprompt_variant`):

* ``'official'`` (google-research/l2p, JH-LEE-KR/dualprompt-pytorch): a prompt of length L
  gives L prefix keys and L prefix values; G length 5; one key per task for all three E layers;
  keys and prompts U(-1, 1). Parameters on ViT-B/16, 10 tasks: E 3 x 2 x 10 x 20 x 768 =
  921,600, G 2 x 2 x 5 x 768 = 15,360, keys 7,680.
* ``'coda'`` (GT-RIPL/CODA-Prompt's reimplementation, whose size is the SD-LoRA paper's
  Table 5 figure): length L is L/2 keys + L/2 values; G length 6; a key per E layer, each E
  layer choosing its own top-1 at test; prompts and keys U(0, 1) (its ``nn.init.uniform_``);
  pull ``pull_weight * sum over the batch and the 3 layers of (1 - cos(query, key))`` as that
  code (a sum, not a mean). One task trains 3 x 20 x 768 + 3 x 768 + 2 x 6 x 768 = 57,600.
  Unlike CODA's own DualPrompt, E-prompt t still starts from E-prompt t-1 here.

Not mergeable: the E-prompt depends on the image.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ConfigError
from .base import ContinualMethod, IncrementalHead, NotMergeable
from .prefix import run_blocks
from .prompt_tokens import embed
from .query import query_features

__all__ = ["DualPrompt"]

G_LAYERS = (0, 1)
E_LAYERS = (2, 3, 4)


class DualPrompt(ContinualMethod):
    forward_passes = 2  # the query pass and the prompted pass
    mergeable = False  # the E-prompt is chosen per image by a second pass: no plain-ViT form

    def __init__(self, backbone: nn.Module, config, mean, std) -> None:
        super().__init__(backbone, config, mean, std)
        depth = len(backbone.blocks)
        if depth <= max(E_LAYERS):
            raise ConfigError(f"backbone={config.backbone!r} has {depth} blocks; DualPrompt "
                              f"prompts blocks {G_LAYERS + E_LAYERS}, so it needs at least "
                              f"{max(E_LAYERS) + 1}")
        self.variant = config.dualprompt_variant
        self.pool, length = config.prompt_shape()
        halves = self.variant == "coda"  # length L = L/2 keys + L/2 values
        self.e_tokens = length // 2 if halves else length
        self.g_tokens = config.g_length() // 2 if halves else config.g_length()
        self.key_layers = len(E_LAYERS) if self.variant == "coda" else 1
        dim = backbone.embed_dim
        # (layer, key or value, tokens, D); one E-prompt and key(s) per pool entry
        self.g_prompt = nn.Parameter(torch.zeros(len(G_LAYERS), 2, self.g_tokens, dim))
        self.e_prompts = nn.ParameterList(
            [nn.Parameter(torch.zeros(len(E_LAYERS), 2, self.e_tokens, dim))
             for _ in range(self.pool)])
        self.e_keys = nn.ParameterList([nn.Parameter(torch.zeros(self.key_layers, dim))
                                        for _ in range(self.pool)])
        self.head = IncrementalHead(backbone.num_features)
        self._pull: torch.Tensor | None = None
        self.last_selection: torch.Tensor | None = None  # (B, key layers) E-prompt per image
        self.requires_grad_(False)

    # -- forward ---------------------------------------------------------------------------
    def select(self, query: torch.Tensor) -> torch.Tensor:
        """Each image's top-1 task by cos(query, key) among the tasks seen: (B, key layers)."""
        keys = torch.stack(list(self.e_keys[:self.task + 1]))  # (T, key layers, D)
        cos = torch.einsum("bd,tkd->bkt", F.normalize(query, dim=1), F.normalize(keys, dim=2))
        return cos.argmax(dim=2)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        vit = self.backbone
        x = self.normalise_input(x)
        b = x.shape[0]
        query = query_features(vit, x)  # (B, D), no gradient
        self._pull = None
        if self.training:  # the task's own E-prompt; its key pulled toward the queries
            idx = torch.full((b, self.key_layers), self.task, device=x.device)
            if torch.is_grad_enabled():
                cos = F.normalize(query, dim=1) @ F.normalize(self.e_keys[self.task], dim=1).T
                self._pull = (self.config.pull_weight * (1 - cos).sum() if self.variant == "coda"
                              else -self.config.pull_weight * cos.mean(0).sum())
        else:
            idx = self.select(query)
        self.last_selection = idx
        layer_task = idx.expand(b, len(E_LAYERS))  # (B, E layers): a task per image and layer
        prompts = torch.stack(list(self.e_prompts[:self.task + 1]))  # (T, E layers, 2, L, D)
        chosen = prompts[layer_task, torch.arange(len(E_LAYERS), device=x.device)]
        prefixes = {layer: (self.g_prompt[i, 0].expand(b, -1, -1),
                            self.g_prompt[i, 1].expand(b, -1, -1))
                    for i, layer in enumerate(G_LAYERS)}
        prefixes.update({layer: (chosen[:, i, 0], chosen[:, i, 1])
                         for i, layer in enumerate(E_LAYERS)})
        out = vit.norm(run_blocks(vit, embed(vit, x), prefixes))
        return vit.forward_head(out, pre_logits=True)  # (B, D) class token

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (B, classes seen)

    def auxiliary_loss(self) -> torch.Tensor | None:
        return self._pull

    # -- the contract ----------------------------------------------------------------------
    def _draw(self, shape, generator: torch.Generator) -> torch.Tensor:
        """U(-1, 1) as the official code, U(0, 1) as CODA-Prompt's ``nn.init.uniform_``."""
        low = 0.0 if self.variant == "coda" else -1.0
        return low + (1.0 - low) * torch.rand(shape, generator=generator)

    def begin_task(self, task: int, classes: int, generator: torch.Generator) -> None:
        if task >= self.pool:  # the config refuses this; a hand-made model gets it here
            raise ConfigError(f"task {task + 1} has no E-prompt: the pool holds {self.pool}; "
                              f"set prompt_pool >= tasks")
        with torch.no_grad():
            if task == 0:
                self.g_prompt.copy_(self._draw(self.g_prompt.shape, generator))
                self.e_prompts[0].copy_(self._draw(self.e_prompts[0].shape, generator))
            else:  # shared_prompt_pool: E_t starts where E_(t-1) ended
                self.e_prompts[task].copy_(self.e_prompts[task - 1])
            self.e_keys[task].copy_(self._draw(self.e_keys[task].shape, generator))
        self.requires_grad_(False)
        for p in (self.g_prompt, self.e_prompts[task], self.e_keys[task]):
            p.requires_grad_(True)
        self.task = task
        self.head.grow(classes, generator)

    def trainable_parameters(self) -> dict[str, list[nn.Parameter]]:
        return {"head": [p for p in self.head.parameters() if p.requires_grad],
                "prompts": [self.g_prompt, self.e_prompts[self.task], self.e_keys[self.task]]}

    def end_task(self) -> dict:
        self._pull = None
        self.e_prompts[self.task].requires_grad_(False)
        self.e_keys[self.task].requires_grad_(False)
        return {}

    # -- checkpoints -----------------------------------------------------------------------
    def checkpoint_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {f"head.{k}": v for k, v in self.head.state_dict().items()}
        tensors["prompt.g"] = self.g_prompt.data
        for t in range(self.task + 1):  # the tasks seen: later pool entries are unused
            tensors[f"prompt.e.{t}"] = self.e_prompts[t].data
            tensors[f"prompt.key.{t}"] = self.e_keys[t].data
        return tensors

    def checkpoint_meta(self) -> dict:
        """``trained``: the tensors the last task learned besides its head rows (Table 5)."""
        t = self.task
        return dict(trained=["prompt.g", f"prompt.e.{t}", f"prompt.key.{t}"])

    def load_checkpoint(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        self.head.restore(tensors, meta)
        with torch.no_grad():
            self.g_prompt.copy_(tensors["prompt.g"])
            for t in range(meta["task"] + 1):
                self.e_prompts[t].copy_(tensors[f"prompt.e.{t}"])
                self.e_keys[t].copy_(tensors[f"prompt.key.{t}"])
        self.requires_grad_(False)
        self.task = meta["task"]

    def merged(self) -> nn.Module:
        raise NotMergeable("DualPrompt chooses an E-prompt per image from a second, frozen "
                           "forward pass; it has no plain-ViT form (inference costs two ViT "
                           "passes)")
