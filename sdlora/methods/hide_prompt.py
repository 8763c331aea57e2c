"""HiDe-Prompt (Wang et al., NeurIPS 2023, *Hierarchical Decomposition of Prompt-Based Continual
Learning: Rethinking Obscured Sub-optimality*), per BASELINES.md sections 3.4 and 6, checked
against the released code (thu-ml/HiDe-Prompt: engines/hide_tii_engine.py,
engines/hide_promtp_wtp_and_tap_engine.py, vits/hide_prompt_vision_transformer.py,
peft/prompt/hide_prompt.py, training_scripts/train_imr_vit.sh).

The backbone stays frozen. Three parts:

* **Task-identity inference (TII)**, the released code's first training run, here in
  `prepare_task` before the prompts train. The frozen, unprompted ViT's pre-logits class token
  (`query.query_features`, the second pass every prompt method pays) goes through a residual MLP
  (`ResidualMlp`: d -> 2d -> d, GELU, plus its input, LayerNorm) and a linear head over every
  class seen. Per task: the stage's epochs (`TrainConfig.hide_stages`, below) of Adam
  (`TrainConfig.hide_rates`) on the
  cross-entropy of the current task's logits, gradient norm clipped at `grad_clip`; then each new
  class's frozen features are summarised by k-means (`hide_centroids` clusters, `kmeans`) as the
  mean and the diagonal variance of every cluster (`ClassStatistics`); from the second task on,
  classifier alignment (`_align`): its epochs of SGD (momentum 0.9, cosine; rate
  `hide_ca_lr`, default lr / 6, released 0.005 x 24 / 256 to the prompts' 0.03 x 24 / 256) on
  the MLP and every seen class's row, on Gaussian features N(mean, diag(var) + 1e-4) drawn from the
  centroids of every class seen; an epoch is one step per class of the earlier tasks, with
  `batch_size` features a step.
* **Within-task prediction (WTP)**, the loop's gradient epochs. One prefix prompt per task at
  blocks 0-4 (`prefix`; `hide_prompt_length` key tokens and as many value tokens a block, the
  released convention), the current task's forced at training: U(-1, 1) for the first task, a
  copy of the previous task's after that. From the second task on the prompt used is the
  ensemble (1 - m) p_t + m mean(p_0..p_{t-1}) with the earlier ones detached (m =
  `hide_prompt_momentum`); after training it is folded into p_t (as the released engine does),
  so test uses what training used. Loss: the loop's cross-entropy on the current task's logits
  plus `auxiliary_loss`, `hide_contrast_weight` x the cross-entropy of M M^T / 0.8 against the
  identity, M = [stored centroids of the earlier classes' prompted features; this batch's
  prompted class tokens], unnormalised as released: the batch's features are pushed away from the
  old classes' centroids and from each other. The head trains at `head_lr_scale` (0.1 for this
  method) x the prompts' rate (released ``--larger_prompt_lr``).
* **Task-adaptive prediction (TAP)**, in `end_task`: the statistics of the task's prompted
  features (its own prompt), and from the second task on the same alignment on the final head
  (all seen rows; `5 x batch_size` features a step, as released) at its own rate `hide_tap_lr`
  (default lr x 16 / 9: the released stage 2 aligns at ca_lr 0.005 unscaled by the batch, to
  the prompts' 0.0028125).

Budget (`TrainConfig.hide_budget`, issue 21). Every method makes `epochs` passes over each task's
images. With 'equal' (the default) HiDe-Prompt's two image stages share them in the released
ImageNet-R script's ratio, 20 task-identity epochs to 150 prompt epochs, with at least one
epoch each: identity = max(1, round(epochs x 20 / 170)), prompts = epochs - identity (4 epochs:
1 + 3; `epochs` must be at least 2). The classifier alignments train on sampled features, not
images, and keep the released 30 epochs in proportion to the stage they follow: round(identity x
30 / 20) after the identity stage and round(prompts x 30 / 150) after the prompts, at least one
each (4 epochs: 2 and 1). With 'released' the stages are the released ones, `hide_tii_epochs`
(20) and `hide_ca_epochs` (30, both alignments), beside the loop's `epochs` for the prompts: an
extra budget (at 4 epochs, five times the passes over the images of every other method), kept
as an option and labelled as such in the tables. `optimiser_steps` counts a task's steps per
stage (`scripts/hide_budget.py` prints them per benchmark). Forward-only passes (the frozen
features before the identity stage, the prompted features for the statistics) are not counted
as training passes.

Inference: the query pass, the MLP and the TII head give each image's class and so its task;
that task's prompt in the prompted pass; the final head's argmax over every class seen. Two ViT
passes. Every step is per image, nothing voted or reshaped across the batch (BASELINES.md 2.7:
the released hide_prompt.py reshapes (layers, 2, B, ...) without a permute, which gives a test
image other images' prompts), so a sample's logits are the same alone and in any batch.
`last_task_prediction` keeps each image's inferred task, from which `sdlora.train.evaluate`
records the task-identity accuracy per task (the released "Acc@task"). `hide_oracle_task`
(analysis only, off by default) gives every test image its true task's prompt instead; the TII
prediction is still made and recorded.

Sizes on ViT-B/16 (tests/test_hide_prompt.py): a task's prompt 5 x 2 x 20 x 768 = 153,600
(the paper's Table 5 gives 0.08M, which is 5 x 20 x 768 = 76,800: a length of 20 split into 10
key and 10 value tokens, ``--hide-prompt-length 10`` here); the TII MLP 2,363,136 and two heads
of 769 per class; statistics per set classes x 10 x (2 x 768 + 1) (means, variances and counts
of the centroids), two sets (frozen and prompted features). The paper's 0.15M stored features is
200 x 768, one vector per class (inferred); no images are stored.

Where this differs from the released code, and why:
* No torch.distributed: statistics are gathered in one process (the released _compute_mean
  calls dist.barrier / all_gather unconditionally).
* Prompts per image at test (above).
* k-means is this module's (k-means++ seeding from the task's generator, Lloyd iterations in
  float64), not sklearn's; a class with fewer images than centroids gets one cluster per image.
  Clusters of zero variance are skipped when sampling, as released, unless all of a class's are
  (then they are sampled with the 1e-4 floor, so the class stays in the alignment; the released
  k-means would have failed first).
* The alignment draws each step's features afresh, centroid uniform over the eligible ones; the
  released code draws `batch` features for every centroid each epoch, shuffles, and uses the
  first steps x batch of them: the same distribution without the epoch-sized tensor (6e8 floats
  an epoch on ImageNet-R's last task).
* The TII stage trains on the frozen features of one pass over the task's data (kept), not a
  fresh augmented view each epoch: the same for the in-memory benchmarks, which have no
  augmentation; one view per image on file benchmarks.
* Weight decay 0 in the alignments: the released flags --weight-decay (0.0) and --weight_decay
  (5e-4) share one argparse dest, whose first default wins, and the alignment's parameter group
  carries it over SGD's 5e-4. The TII stage and the prompts use `weight_decay` (default 0).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import ContinualMethod, IncrementalHead, NotMergeable
from .prefix import run_blocks
from .prompt_tokens import embed
from .query import query_features

__all__ = ["HiDePrompt", "ResidualMlp", "ClassStatistics", "kmeans", "PROMPT_LAYERS",
           "optimiser_steps"]

PROMPT_LAYERS = (0, 1, 2, 3, 4)  # blocks given the task prompt (released e_prompt_layer_idx)
TEMPERATURE = 0.8  # of the contrastive term's similarity matrix
VARIANCE_FLOOR = 1e-4  # added to every sampled variance
ALIGN_MOMENTUM = 0.9  # SGD momentum of the classifier alignments
TAP_BATCH_FACTOR = 5  # TAP alignment batch = 5 x batch_size; TII's = batch_size


def optimiser_steps(config, images: int, classes_per_task: int, task: int) -> dict[str, int]:
    """The optimiser steps of each stage of 0-based `task` (`images` training images, every task
    `classes_per_task` classes) under `config` (`TrainConfig.hide_stages`): the identity stage
    and the prompts step once per batch of images, an alignment once per earlier class an
    epoch (none on the first task)."""
    stages = config.hide_stages()
    batches = -(-images // config.batch_size)
    earlier = classes_per_task * task
    return dict(identity=stages["identity"] * batches, prompts=stages["prompts"] * batches,
                identity_alignment=stages["identity_alignment"] * earlier,
                final_alignment=stages["final_alignment"] * earlier)


def kmeans(points: torch.Tensor, k: int, generator: torch.Generator,
           iterations: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means with k-means++ seeding on (n, d) float64 `points` (CPU), k <= n:
    (assignment (n,), centres (k, d))."""
    n = len(points)
    first = int(torch.randint(n, (1,), generator=generator))
    centres = [points[first]]
    d2 = ((points - centres[0]) ** 2).sum(1)
    for _ in range(1, k):
        total = float(d2.sum())
        i = (int(torch.multinomial(d2 / total, 1, generator=generator)) if total > 0
             else int(torch.randint(n, (1,), generator=generator)))
        centres.append(points[i])
        d2 = torch.minimum(d2, ((points - points[i]) ** 2).sum(1))
    centres = torch.stack(centres)
    for _ in range(iterations):
        assign = torch.cdist(points, centres).argmin(1)
        moved = centres.clone()
        for j in range(k):
            members = assign == j
            if members.any():
                moved[j] = points[members].mean(0)
        if torch.equal(moved, centres):
            break
        centres = moved
    return torch.cdist(points, centres).argmin(1), centres


class ResidualMlp(nn.Module):
    """The TII stage's mapping (released MlpMapping, hidden [2]):
    LayerNorm(x + fc2(GELU(fc1(x))))."""

    def __init__(self, dim: int, hidden: int = 2) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, dim * hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(dim * hidden, dim)
        self.norm = nn.LayerNorm(dim)

    def reset(self, generator: torch.Generator) -> None:
        """timm's init of the released model's Linear layers (normal, std 0.02; bias 0), drawn
        from `generator`; the norm starts as the identity."""
        with torch.no_grad():
            for layer in (self.fc1, self.fc2):
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * 0.02)
                layer.bias.zero_()
            self.norm.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, d) -> (B, d)
        return self.norm(x + self.fc2(self.act(self.fc1(x))))


class ClassStatistics(nn.Module):
    """Per class, `centroids` Gaussian clusters of a feature: means and diagonal variances
    (classes, K, d), member counts (classes, K); a cluster with count 0 does not exist."""

    def __init__(self, dim: int, centroids: int) -> None:
        super().__init__()
        self.centroids = centroids
        self.register_buffer("mean", torch.zeros(0, centroids, dim))
        self.register_buffer("var", torch.zeros(0, centroids, dim))
        self.register_buffer("count", torch.zeros(0, centroids))

    @property
    def num_classes(self) -> int:
        return int(self.count.shape[0])

    def grow(self, classes: int) -> None:
        k, d = self.mean.shape[1:]
        self.mean = torch.cat([self.mean, self.mean.new_zeros(classes, k, d)])
        self.var = torch.cat([self.var, self.var.new_zeros(classes, k, d)])
        self.count = torch.cat([self.count, self.count.new_zeros(classes, k)])

    @torch.no_grad()
    def fit(self, features: torch.Tensor, labels: torch.Tensor, classes: range,
            generator: torch.Generator) -> None:
        """k-means statistics of `classes` from `features` (N, d) with class ids `labels`."""
        features, labels = features.detach().cpu().double(), labels.cpu()
        for c in classes:
            points = features[labels == c]
            if not len(points):
                raise ValueError(f"class {c} has no training image, so it has no statistics")
            assign, _ = kmeans(points, min(self.centroids, len(points)), generator)
            mean = torch.zeros(self.centroids, points.shape[1], dtype=torch.float64)
            var, count = torch.zeros_like(mean), torch.zeros(self.centroids, dtype=torch.float64)
            for j in range(int(assign.max()) + 1):
                members = points[assign == j]
                if len(members):
                    mean[j], count[j] = members.mean(0), len(members)
                    var[j] = members.var(0, unbiased=False)  # numpy's var, as released
            self.mean[c], self.var[c] = mean.to(self.mean), var.to(self.var)
            self.count[c] = count.to(self.count)

    def centres(self, classes: int) -> torch.Tensor:
        """(n, d) means of the existing clusters of classes 0..classes-1."""
        return self.mean[:classes][self.count[:classes] > 0]

    def eligible(self, classes: int) -> torch.Tensor:
        """Flat indices (class * K + cluster) of the clusters sampled: existing, of positive
        variance, or every existing one of a class whose clusters all have zero variance."""
        exists = self.count[:classes] > 0
        spread = exists & (self.var[:classes].mean(-1) > 0)
        spread |= exists & ~spread.any(1, keepdim=True)
        return spread.flatten().nonzero().squeeze(1)

    def sample(self, n: int, eligible: torch.Tensor, generator: torch.Generator,
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """`n` features drawn from N(mean, diag(var) + 1e-4) of clusters picked uniformly from
        `eligible` (with replacement), and their classes."""
        pick = eligible[torch.randint(len(eligible), (n,), generator=generator).to(
            eligible.device)]
        k = self.centroids
        cls, j = pick // k, pick % k
        noise = torch.randn(n, self.mean.shape[2], generator=generator).to(self.mean.device)
        return self.mean[cls, j] + (self.var[cls, j] + VARIANCE_FLOOR).sqrt() * noise, cls


class HiDePrompt(ContinualMethod):
    forward_passes = 2  # the query pass (task identity) and the prompted pass
    mergeable = False  # a prompt chosen per image by a second pass: no plain-ViT form

    def __init__(self, backbone: nn.Module, config, mean, std) -> None:
        super().__init__(backbone, config, mean, std)
        if len(backbone.blocks) < len(PROMPT_LAYERS):
            raise ValueError(f"hide-prompt puts its prompts at blocks {list(PROMPT_LAYERS)}; "
                             f"this backbone has {len(backbone.blocks)} blocks")
        dim = backbone.embed_dim
        self.length = config.hide_prompt_length
        self.momentum = config.hide_prompt_momentum
        self.prompts = nn.ParameterList()  # task t: (layers, 2 [keys, values], length, d)
        self.head = IncrementalHead(backbone.num_features)  # the prompted model's (TAP)
        self.tii_mlp = ResidualMlp(backbone.num_features)
        self.tii_head = IncrementalHead(backbone.num_features)
        self.tii_mlp.requires_grad_(False)
        self.tii_stats = ClassStatistics(backbone.num_features, config.hide_centroids)
        self.wtp_stats = ClassStatistics(backbone.num_features, config.hide_centroids)
        self.register_buffer("class_task", torch.zeros(0, dtype=torch.long), persistent=False)
        self.oracle_task = config.hide_oracle_task
        self._fitting = False  # between prepare_task and end_task: prompt t forced
        self._batches: Callable[[], Iterable] | None = None
        self._generator: torch.Generator | None = None
        self._contrast: torch.Tensor | None = None
        self._info: dict = {}

    # -- forward ---------------------------------------------------------------------------
    def class_offset(self, task: int) -> int:
        return sum(layer.out_features for layer in self.head.tasks[:task])

    def infer_task(self, query: torch.Tensor) -> torch.Tensor:
        """(B, d) frozen query features -> (B,) the task of the TII head's top class."""
        return self.class_task[self.tii_head(self.tii_mlp(query)).argmax(1)]

    def training_prompt(self) -> torch.Tensor:
        """The current task's prompt as training uses it: from the second task on the
        ensemble with the earlier prompts' mean (detached)."""
        prompt = self.prompts[self.task]
        if self.task > 0 and self.momentum > 0:
            past = torch.stack([self.prompts[t] for t in range(self.task)]).detach().mean(0)
            prompt = (1 - self.momentum) * prompt + self.momentum * past
        return prompt

    def prompted_features(self, x: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
        """Normalised images (B, 3, H, W) with per-image prompts (B, layers, 2, length, d) ->
        (B, d) the class token after the final norm."""
        vit = self.backbone
        prefixes = {layer: (prompts[:, i, 0], prompts[:, i, 1])
                    for i, layer in enumerate(PROMPT_LAYERS)}
        out = vit.norm(run_blocks(vit, embed(vit, x), prefixes))
        return vit.forward_head(out, pre_logits=True)

    def forward(self, x: torch.Tensor, task_ids: torch.Tensor | None = None) -> torch.Tensor:
        """(B, classes seen). Training a task: its prompt for every image, no task inference.
        Otherwise each image's task from the TII stage, or `task_ids` (the oracle)."""
        x = self.normalise_input(x)
        if self.training and self._fitting:
            prompts = self.training_prompt().expand(x.shape[0], *self.prompts[self.task].shape)
            features = self.prompted_features(x, prompts)
            self._contrast = (self.contrastive_loss(features) if torch.is_grad_enabled()
                              and self.config.hide_contrast_weight > 0 else None)
            return self.head(features)
        predicted = self.infer_task(query_features(self.backbone, x))
        self.last_task_prediction = predicted
        ids = predicted if task_ids is None else task_ids.to(predicted)
        return self.head(self.prompted_features(x, torch.stack(list(self.prompts))[ids]))

    def contrastive_loss(self, features: torch.Tensor) -> torch.Tensor:
        """weight x CE(M M^T / 0.8, identity), M = [stored centroids of the earlier classes'
        prompted features; `features` (B, d)] (the released orth_loss)."""
        m = torch.cat([self.wtp_stats.centres(self.class_offset(self.task)), features.float()])
        sim = m @ m.T / TEMPERATURE
        target = torch.arange(len(m), device=m.device)
        return self.config.hide_contrast_weight * F.cross_entropy(sim, target)

    def auxiliary_loss(self) -> torch.Tensor | None:
        return self._contrast

    # -- the contract ----------------------------------------------------------------------
    def begin_task(self, task: int, classes: int, generator: torch.Generator) -> None:
        device = self.mean.device
        if task == 0:
            self.tii_mlp.reset(generator)
            values = torch.rand(len(PROMPT_LAYERS), 2, self.length, self.backbone.embed_dim,
                                generator=generator) * 2 - 1  # U(-1, 1), released init
        else:
            values = self.prompts[task - 1].detach()  # shared_prompt_pool: copy of the last
        for p in self.prompts:
            p.requires_grad_(False)
        self.prompts.append(nn.Parameter(torch.empty(values.shape, device=device)))
        with torch.no_grad():
            self.prompts[task].copy_(values)
        self.task = task
        self.head.grow(classes, generator)
        self.tii_head.grow(classes, generator)
        self.tii_head.tasks[-1].requires_grad_(False)
        self.tii_stats.grow(classes)
        self.wtp_stats.grow(classes)
        self.class_task = torch.cat([self.class_task, torch.full(
            (classes,), task, dtype=torch.long, device=self.class_task.device)])
        # this task's own stream for shuffles, k-means and sampled features
        self._generator = torch.Generator().manual_seed(
            int(torch.randint(2 ** 62, (1,), generator=generator)))
        self._fitting, self._batches, self._info = False, None, {}

    def prepare_task(self, batches: Callable[[], Iterable]) -> None:
        """The TII stage of this task (training, statistics, alignment); then the prompts may
        train. `batches()` is kept for the TAP statistics in `end_task`."""
        self._batches = batches
        self._info = dict(tii=self.train_task_identity(batches()))
        self._fitting = True

    @staticmethod
    @contextmanager
    def _stage(params: list[nn.Parameter]):
        """Gradients on, and requires_grad on `params` only for one stage (off again after)."""
        for p in params:
            p.requires_grad_(True)
        try:
            with torch.enable_grad():
                yield
        finally:
            for p in params:
                p.requires_grad_(False)

    @torch.no_grad()
    def _features(self, batches: Iterable, prompted: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, d) features of the task's images and their class ids: the frozen query feature,
        or the prompted one with this task's prompt."""
        was = self.training
        self.eval()
        features, labels = [], []
        start = self.class_offset(self.task)
        for x, y in batches:
            x = self.normalise_input(x)
            if prompted:
                prompt = self.prompts[self.task]
                features.append(self.prompted_features(x, prompt.expand(len(x), *prompt.shape)))
            else:
                features.append(query_features(self.backbone, x))
            labels.append(y + start)
        self.train(was)
        return torch.cat(features).float(), torch.cat(labels)

    def train_task_identity(self, batches: Iterable) -> dict:
        """Stage 1 on the current task: the MLP and the task's TII rows by Adam on the current
        task's logits; the frozen features' statistics; the alignment from the second task on."""
        features, labels = self._features(batches, prompted=False)
        start = self.class_offset(self.task)
        tii_lr, tii_ca_lr, _ = self.config.hide_rates()
        params = list(self.tii_mlp.parameters()) + list(self.tii_head.tasks[-1].parameters())
        size, losses = self.config.batch_size, []
        with self._stage(params):
            optimiser = torch.optim.Adam(params, lr=tii_lr,
                                         weight_decay=self.config.weight_decay)
            for _ in range(self.config.hide_stages()["identity"]):
                order = torch.randperm(len(features), generator=self._generator)
                order = order.to(features.device)
                total = 0.0
                for i in range(0, len(order), size):
                    idx = order[i:i + size]
                    logits = self.tii_head(self.tii_mlp(features[idx]))[:, start:]
                    loss = F.cross_entropy(logits, labels[idx] - start)
                    optimiser.zero_grad(set_to_none=True)
                    loss.backward()
                    if self.config.grad_clip is not None:
                        torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip)
                    optimiser.step()
                    total += loss.item() * len(idx)
                losses.append(total / len(order))
        classes = range(start, start + self.head.tasks[-1].out_features)
        self.tii_stats.fit(features, labels, classes, self._generator)
        steps = self._align(self.tii_stats, lambda f: self.tii_head(self.tii_mlp(f)),
                            list(self.tii_mlp.parameters()) + list(self.tii_head.parameters()),
                            self.config.batch_size, tii_ca_lr,
                            self.config.hide_stages()["identity_alignment"])
        return dict(loss=round(losses[-1], 6), aligned_steps=steps)

    def _align(self, stats: ClassStatistics, logits: Callable[[torch.Tensor], torch.Tensor],
               params: list[nn.Parameter], batch: int, lr: float, epochs: int) -> int:
        """Classifier alignment on features sampled from `stats` of every class seen (from the
        second task on): `epochs` epochs of SGD at `lr`, momentum 0.9, cosine over the epochs;
        an epoch is one step per class of the earlier tasks. Returns the steps taken."""
        if self.task == 0:
            return 0
        seen, earlier = self.head.num_classes, self.class_offset(self.task)
        eligible = stats.eligible(seen)
        steps = 0
        was = self.training
        self.train()
        with self._stage(params):
            optimiser = torch.optim.SGD(params, lr=lr, momentum=ALIGN_MOMENTUM,
                                        weight_decay=0.0)
            schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, epochs)
            for _ in range(epochs):
                for _ in range(earlier):
                    x, y = stats.sample(batch, eligible, self._generator)
                    loss = F.cross_entropy(logits(x), y)
                    optimiser.zero_grad(set_to_none=True)
                    loss.backward()
                    optimiser.step()
                    steps += 1
                schedule.step()
        self.train(was)
        return steps

    def trainable_parameters(self) -> dict[str, list[nn.Parameter]]:
        """The current task's prompt and head rows (the loop's WTP stage)."""
        if not self._fitting:
            raise RuntimeError("HiDe-Prompt needs prepare_task(batches) before training a "
                               "task: its task-identity stage learns from the task's data")
        self.prompts[self.task].requires_grad_(True)
        return {"head": [p for p in self.head.tasks[-1].parameters()],
                "prompts": [self.prompts[self.task]]}

    def end_task(self) -> dict:
        """Fold the ensemble into p_t, freeze it, keep the statistics of the task's prompted
        features and align the final head (TAP)."""
        self._fitting, self._contrast = False, None
        prompt = self.prompts[self.task]
        prompt.requires_grad_(False)
        if self.task > 0 and self.momentum > 0:
            with torch.no_grad():
                prompt.copy_(self.training_prompt())
        info = dict(self._info)
        if self._batches is not None:
            features, labels = self._features(self._batches(), prompted=True)
            start = self.class_offset(self.task)
            self.wtp_stats.fit(features, labels, range(start, self.head.num_classes),
                               self._generator)
            steps = self._align(self.wtp_stats, self.head, list(self.head.parameters()),
                                TAP_BATCH_FACTOR * self.config.batch_size,
                                self.config.hide_rates()[2],
                                self.config.hide_stages()["final_alignment"])
            info["tap"] = dict(aligned_steps=steps)
            self._batches = None
        for layer in self.head.tasks:
            layer.requires_grad_(False)
        info["centroids"] = dict(tii=int((self.tii_stats.count > 0).sum()),
                                 wtp=int((self.wtp_stats.count > 0).sum()))
        return info

    # -- checkpoints -----------------------------------------------------------------------
    def checkpoint_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {f"head.{k}": v for k, v in self.head.state_dict().items()}
        tensors.update({f"tii.head.{k}": v for k, v in self.tii_head.state_dict().items()})
        tensors.update({f"tii.mlp.{k}": v for k, v in self.tii_mlp.state_dict().items()})
        tensors.update({f"prompt.task{t}": p.data for t, p in enumerate(self.prompts)})
        for name, stats in (("tii", self.tii_stats), ("wtp", self.wtp_stats)):
            tensors.update({f"stats.{name}.{k}": v for k, v in stats.state_dict().items()})
        return tensors

    def load_checkpoint(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        device = self.mean.device
        self.head.restore(tensors, meta)
        self.tii_head.restore({k[len("tii."):]: v for k, v in tensors.items()
                               if k.startswith("tii.head.")}, meta)
        self.tii_mlp.load_state_dict({k[len("tii.mlp."):]: v for k, v in tensors.items()
                                      if k.startswith("tii.mlp.")})
        self.prompts = nn.ParameterList([
            nn.Parameter(tensors[f"prompt.task{t}"].to(device), requires_grad=False)
            for t in range(meta["task"] + 1)])
        for name, stats in (("tii", self.tii_stats), ("wtp", self.wtp_stats)):
            prefix = f"stats.{name}."
            for k in ("mean", "var", "count"):
                setattr(stats, k, tensors[prefix + k].to(device, torch.float32))
        sizes = torch.tensor([layer.out_features for layer in self.head.tasks])
        self.class_task = torch.repeat_interleave(torch.arange(len(sizes)), sizes).to(device)
        self.task = meta["task"]
        self._fitting = False

    def merged(self) -> nn.Module:
        raise NotMergeable("HiDe-Prompt picks each image's task prompt from a second, frozen "
                           "forward pass (its task-identity stage); it has no plain-ViT form "
                           "(inference costs two ViT passes)")
