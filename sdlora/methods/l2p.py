"""L2P (Wang et al., CVPR 2022, *Learning to Prompt for Continual Learning*), per BASELINES.md
section 6.

The backbone stays frozen. A pool of M prompts (each L tokens) with one key each, all drawn
U(-1, 1), is shared by every task. For an image, the query is the frozen, unprompted ViT's
pre-logits class token (one extra no-grad pass, `query.query_features`); the N keys of highest
cosine similarity to it choose N prompts *per image*: no batch-wise majority vote, so a
sample's prediction never depends on the other images of its batch.

* ``l2p_variant='l2p'`` (PILOT / the L2P PyTorch port): the N x L chosen tokens go after the
  class token with the class token's position embedding (`prompt_tokens`); the head reads the
  mean of the final-norm outputs at the prompt positions. Pool 10, length 5, top 5.
* ``'l2p++'`` (CODA-Prompt's L2P++, whose size is the paper's Table 5 figure): each chosen
  prompt's first L/2 tokens are prefix keys and the last L/2 prefix values of block 0's
  attention (`prefix`); the head reads the class token. Pool 30, length 20, top 5.

Loss: the loop's cross-entropy over the current task's logits, plus `auxiliary_loss`:
``-pull_weight * sum over the batch and the chosen keys of cos(query, key) / B`` (0.1 as in
the PyTorch port and PILOT), which pulls the chosen keys toward the queries. The gradient norm
is clipped at 1.0 as in the released code (`grad_clip`, whose default for l2p is
`sdlora.config.GRAD_CLIP_DEFAULTS`'s 1.0; None turns it off). Trains: prompts,
keys and the current task's head rows. Not mergeable: prompts depend on the input.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import ContinualMethod, IncrementalHead, NotMergeable
from .prefix import run_blocks
from .prompt_tokens import embed, insert_after_cls
from .query import query_features

__all__ = ["L2P"]


class L2P(ContinualMethod):
    forward_passes = 2  # the query pass and the prompted pass
    mergeable = False  # prompts chosen per image by a second pass: no plain-ViT form

    def __init__(self, backbone: nn.Module, config, mean, std) -> None:
        super().__init__(backbone, config, mean, std)
        self.variant = config.l2p_variant
        self.pool, self.length = config.prompt_shape()
        self.top_k = config.prompt_top_k
        dim = backbone.embed_dim
        self.prompts = nn.Parameter(torch.zeros(self.pool, self.length, dim))
        self.keys = nn.Parameter(torch.zeros(self.pool, dim))
        self.head = IncrementalHead(backbone.num_features)
        self._pull: torch.Tensor | None = None
        self.last_selection: torch.Tensor | None = None  # (B, top_k) pool indices

    # -- forward ---------------------------------------------------------------------------
    def select(self, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image top-k keys: (indices (B, k), cosine similarities (B, k))."""
        cos = F.normalize(query, dim=1) @ F.normalize(self.keys, dim=1).T  # (B, M)
        idx = cos.detach().topk(self.top_k, dim=1).indices
        return idx, cos.gather(1, idx)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        vit = self.backbone
        x = self.normalise_input(x)
        idx, cos = self.select(query_features(vit, x))
        self.last_selection = idx
        self._pull = (-self.config.pull_weight * cos.sum() / x.shape[0]
                      if torch.is_grad_enabled() else None)
        chosen = self.prompts[idx]  # (B, k, L, D), each image its own prompts
        b, k, length, dim = chosen.shape
        tokens = embed(vit, x)
        if self.variant == "l2p":
            tokens = insert_after_cls(vit, tokens, chosen.reshape(b, k * length, dim))
            out = vit.norm(run_blocks(vit, tokens))
            return out[:, 1:1 + k * length].mean(dim=1)  # (B, D) mean of the prompt outputs
        half = length // 2
        prefix = (chosen[:, :, :half].reshape(b, k * half, dim),
                  chosen[:, :, half:].reshape(b, k * half, dim))
        out = vit.norm(run_blocks(vit, tokens, {0: prefix}))
        return vit.forward_head(out, pre_logits=True)  # (B, D) class token

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (B, classes seen)

    def auxiliary_loss(self) -> torch.Tensor | None:
        return self._pull

    # -- the contract ----------------------------------------------------------------------
    def begin_task(self, task: int, classes: int, generator: torch.Generator) -> None:
        if task == 0:  # the pool is shared by all tasks: drawn once, U(-1, 1)
            with torch.no_grad():
                values = torch.rand(self.pool * (self.length + 1), self.keys.shape[1],
                                    generator=generator) * 2 - 1
                self.prompts.copy_(values[:self.pool * self.length].view_as(self.prompts))
                self.keys.copy_(values[self.pool * self.length:])
        self.task = task
        self.head.grow(classes, generator)

    def trainable_parameters(self) -> dict[str, list[nn.Parameter]]:
        return {"head": [p for p in self.head.parameters() if p.requires_grad],
                "prompts": [self.prompts, self.keys]}

    def end_task(self) -> dict:
        self._pull = None
        return {}

    # -- checkpoints -----------------------------------------------------------------------
    def checkpoint_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {f"head.{k}": v for k, v in self.head.state_dict().items()}
        tensors.update({"prompt.prompts": self.prompts.data, "prompt.keys": self.keys.data})
        return tensors

    def load_checkpoint(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        self.head.restore(tensors, meta)
        with torch.no_grad():
            self.prompts.copy_(tensors["prompt.prompts"])
            self.keys.copy_(tensors["prompt.keys"])
        self.task = meta["task"]

    def merged(self) -> nn.Module:
        raise NotMergeable("L2P chooses prompts per image from a second, frozen forward pass; "
                           "it has no plain-ViT form (inference costs two ViT passes)")
