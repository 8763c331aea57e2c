"""Class-incremental training: forward -> loss -> backward -> step, task after task.

Protocol (as the paper's codebase): a seeded class order cut into equal tasks; one linear head
grown by each task's classes; the cross-entropy of task t sees only task t's logits (from the
second task on, earlier classes get no gradient); at test time argmax over every class seen.
A fresh optimiser per task over what the method trains (`ContinualViT.trainable_parameters`).

Determinism and resume: every random choice of task t (head and adapter initialisation, batch
order) comes from a generator seeded with (seed, t), and a task's only input from the past is
the checkpoint written after task t-1. So `--resume` rebuilds the model from the last finished
task's checkpoint, trains the remaining tasks, and ends with the numbers of an uninterrupted
run (same seed, same device). A finished task is never trained again.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from datetime import datetime
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .backbone import create_backbone, image_size
from .config import ConfigError, TrainConfig
from .data import ArrayDataset, Benchmark, TaskSplit, load_benchmark, make_task_split
from .distributed import barrier, context, shard, wrap
from .metrics import summarise
from .model import ContinualViT
from .runs import RunError, RunFolder, atomic_write_json, default_runs_root

__all__ = ["resolve_device", "build_model", "load_model", "evaluate", "train", "task_generator",
           "new_run_id", "load_data", "split_for"]

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' but no CUDA device is available; valid here: 'cpu', "
                          "'auto'")
    return torch.device(name)


def task_generator(seed: int, task: int) -> torch.Generator:
    """The generator of every random choice made for `task` (0-based)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + task)


def load_data(config: TrainConfig) -> Benchmark:
    """The run's benchmark, at its backbone's input size."""
    return load_benchmark(config.benchmark, config.data_root, image_size(config.backbone))


def split_for(config: TrainConfig, benchmark: Benchmark) -> TaskSplit:
    seed = config.seed if config.class_order_seed is None else config.class_order_seed
    return make_task_split(benchmark.num_classes, config.tasks, seed)


def build_model(config: TrainConfig, device: torch.device | str = "cpu") -> ContinualViT:
    backbone, spec = create_backbone(config.backbone, weights=config.weights)
    mean, std = (spec.mean, spec.std) if config.normalise_inputs else ((0.0,) * 3, (1.0,) * 3)
    return ContinualViT(backbone, config, mean, std).to(device)


def load_model(run: RunFolder | Path | str, task: int, device: torch.device | str = "cpu",
               ) -> ContinualViT:
    """The model of `run` at the end of `task` (0-based), rebuilt from its checkpoint."""
    run = run if isinstance(run, RunFolder) else RunFolder(run)
    tensors, meta = run.checkpoint(task)
    config = TrainConfig.from_dict(meta["config"])
    model = build_model(config, device)
    generator = torch.Generator().manual_seed(0)  # shapes only: the values are loaded below
    for t in range(task + 1):
        model.head.grow(meta["classes_per_task"], generator)
    model.task = task
    head = {k[len("head."):]: v for k, v in tensors.items() if k.startswith("head.")}
    model.head.load_state_dict(head)
    for layer in model.head.tasks:
        layer.requires_grad_(False)
    backbone = {k[len("backbone."):]: v for k, v in tensors.items() if k.startswith("backbone.")}
    if backbone:
        model.backbone.load_state_dict(backbone)
    if model.adapter is not None:
        adapter = {k[len("adapter."):]: v for k, v in tensors.items() if k.startswith("adapter.")}
        model.adapter.load_layout(meta["layout"], adapter)
    return model.to(device)


def _checkpoint_tensors(model: ContinualViT) -> dict[str, torch.Tensor]:
    tensors = {f"head.{k}": v for k, v in model.head.state_dict().items()}
    if model.adapter is not None:
        tensors.update({f"adapter.{k}": v for k, v in model.adapter.tensors().items()})
    if model.traits.backbone_trains:
        tensors.update({f"backbone.{k}": v for k, v in model.backbone.state_dict().items()})
    return tensors


def batches(data, batch_size: int, device: torch.device, order: torch.Tensor | None = None,
            num_workers: int = 0, ctx=None):
    """(images, labels) batches on `device`, in `order` (default: as stored); under torchrun
    (`ctx`) this rank's slice of each batch. In-memory data is indexed directly; file data goes
    through a DataLoader (workers, pinned memory)."""
    index = order if order is not None else torch.arange(len(data))
    plan = [index[i:i + batch_size] for i in range(0, len(index), batch_size)]
    if ctx is not None and ctx.active:
        plan = [shard(idx, ctx) for idx in plan]
    if isinstance(data, ArrayDataset):
        for idx in plan:
            idx = idx.to(data.images.device)
            yield data.images[idx].to(device), data.labels[idx].to(device)
        return
    loader = torch.utils.data.DataLoader(data, batch_sampler=[idx.tolist() for idx in plan],
                                         num_workers=num_workers,
                                         pin_memory=device.type == "cuda")
    for x, y in loader:
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


@torch.no_grad()
def evaluate(model: ContinualViT, split: TaskSplit, data, upto: int,
             device: torch.device, batch_size: int = 256, num_workers: int = 0,
             amp: str = "none") -> list[float]:
    """Accuracy (percent) on each task 0..upto's test data, argmax over every class seen."""
    model.eval()
    row = []
    for task in range(upto + 1):
        subset = split.task_data(data, task)
        correct = 0
        for x, y in batches(subset, batch_size, torch.device(device), num_workers=num_workers):
            with _autocast(device, amp):
                correct += (model(x).argmax(1) == y).sum().item()
        row.append(100.0 * correct / max(len(subset), 1))
    return row


def _autocast(device, amp: str):
    """bf16 autocast on CUDA when asked for; a no-op otherwise."""
    device = torch.device(device)
    return torch.autocast(device.type, dtype=torch.bfloat16,
                          enabled=amp == "bf16" and device.type == "cuda")


def _optimizer(groups: dict[str, list], config: TrainConfig) -> torch.optim.Optimizer:
    param_groups = [dict(params=p, lr=config.lr * (config.head_lr_scale if name == "head" else 1),
                         name=name) for name, p in groups.items() if p]
    if config.optimizer == "adam":
        return torch.optim.Adam(param_groups, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(param_groups, lr=config.lr, momentum=config.momentum,
                           weight_decay=config.weight_decay)


def new_run_id(config: TrainConfig) -> str:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")[:-3]
    return f"{config.method}-{config.benchmark}-t{config.tasks}-s{config.seed}-{stamp}"


class _Status:
    """Throttled, atomic writes of status.json for live progress."""

    def __init__(self, run: RunFolder, total_steps: int, every: float = 1.0,
                 enabled: bool = True) -> None:
        self.run, self.total, self.every, self.enabled = run, total_steps, every, enabled
        self.last = 0.0
        self.start = time.time()
        self.steps_here = 0

    def write(self, state: str, force: bool = False, **fields) -> None:
        now = time.time()
        if not self.enabled or (not force and now - self.last < self.every):
            return
        self.last = now
        done = fields.get("global_step", 0)
        rate = (now - self.start) / max(self.steps_here, 1)
        eta = rate * max(self.total - done, 0) if self.steps_here else None
        atomic_write_json(self.run.status_path, dict(state=state, updated=now, pid=os.getpid(),
                                                     total_steps=self.total, eta_seconds=eta,
                                                     **fields))


def train(config: TrainConfig | None = None, out: Path | str | None = None,
          resume: Path | str | None = None, progress: bool = True,
          benchmark: Benchmark | None = None,
          on_task_end: Callable[[int, dict], None] | None = None) -> RunFolder:
    """Train a run task by task; returns its folder.

    Args:
        config: the run's configuration (ignored with `resume`, which reads the run's own).
        out: the run folder (default: ``cache/runs/<new id>``).
        resume: an existing run folder to continue.
        progress: show tqdm bars.
        benchmark: an already loaded benchmark (tests); default: load `config.benchmark`.
        on_task_end: called with (task, metrics) after each task.
    """
    if resume is not None:
        run = RunFolder(resume)
        if not run.exists():
            raise RunError(f"cannot resume {run.path}: {run.config_path} is missing")
        config = TrainConfig.from_dict(run.config())
    else:
        config = config or TrainConfig()
        run = RunFolder(out if out is not None else default_runs_root() / new_run_id(config))
        if run.exists() and run.completed_tasks() > 0:
            raise RunError(f"{run.path} already holds a run; pass --resume {run.path} to "
                           f"continue it or choose another --out")
        if context().is_main:
            atomic_write_json(run.config_path, config.to_dict())
    device = resolve_device(config.device)
    ctx = context(device.type)
    if ctx.active and device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    benchmark = benchmark or load_data(config)
    split = split_for(config, benchmark)
    model = build_model(config, device)
    done = run.completed_tasks()
    metrics = run.metrics(required=False) if done else None
    matrix = metrics["accuracy_matrix"][:done] if metrics else []
    task_info = metrics.get("task_info", [])[:done] if metrics else []
    if done:
        log.info("resuming %s after task %d of %d", run.id, done, config.tasks)
        model = load_model(run, done - 1, device)
    counts = [len(split.task_data(benchmark.test, t)) for t in range(config.tasks)]
    train_sizes = [len(split.task_data(benchmark.train, t)) for t in range(config.tasks)]
    steps_per_task = [config.epochs * math.ceil(n / config.batch_size) for n in train_sizes]
    global_step = sum(steps_per_task[:done])
    status = _Status(run, sum(steps_per_task), enabled=ctx.is_main)
    status.write("running", force=True, task=done, tasks=config.tasks, global_step=global_step)
    try:
        for task in range(done, config.tasks):
            generator = task_generator(config.seed, task)
            record = _train_task(model, config, split, benchmark, task, generator, run, status,
                                 global_step, device, progress)
            global_step += steps_per_task[task]
            row = evaluate(model, split, benchmark.test, task, device, config.eval_batch_size,
                           config.num_workers, config.amp)
            matrix.append(row)
            task_info.append(record)
            metrics = _metrics(config, benchmark, split, matrix, counts, task_info)
            if ctx.is_main:
                run.save_checkpoint(task, _checkpoint_tensors(model), dict(
                    config=config.to_dict(), layout=model.adapter.layout() if model.adapter else [],
                    task=task, classes_per_task=split.classes_per_task,
                    class_order=list(split.class_order)))
                atomic_write_json(run.metrics_path, metrics)
            barrier(ctx)
            log.info("task %d/%d: R row %s, seen accuracy %.2f", task + 1, config.tasks,
                     ["%.1f" % v for v in row], metrics["seen_accuracy"][-1])
            if on_task_end is not None:
                on_task_end(task, metrics)
    except BaseException as err:
        status.write("cancelled" if isinstance(err, KeyboardInterrupt) else "failed",
                     force=True, error=repr(err), task=len(matrix), tasks=config.tasks,
                     global_step=global_step)
        raise
    status.write("finished", force=True, task=config.tasks, tasks=config.tasks,
                 global_step=global_step)
    return run


def _metrics(config, benchmark, split, matrix, counts, task_info) -> dict:
    summary = summarise(matrix, counts)
    return dict(method=config.method, variant=config.variant, benchmark=config.benchmark,
                seed=config.seed, backbone=config.backbone, tasks=config.tasks,
                config=config.to_dict(), tasks_done=len(matrix),
                accuracy_matrix=matrix, test_counts=counts[: len(matrix)],
                class_order=list(split.class_order), class_names=benchmark.class_names,
                task_info=task_info, **summary)


def _train_task(model: ContinualViT, config: TrainConfig, split: TaskSplit, benchmark: Benchmark,
                task: int, generator: torch.Generator, run: RunFolder, status: _Status,
                global_step: int, device: torch.device, progress: bool) -> dict:
    """Train one task; writes its step log; returns what end_task reported."""
    classes = split.task_classes(task)
    model.begin_task(task, len(classes), generator)
    groups = model.trainable_parameters()
    # The frozen components' magnitudes step in one fused pass with their gradients
    # (sdlora/fused.py); everything else through torch.optim.
    fused = model.fuse_frozen()  # parks those magnitudes' requires_grad while it owns them
    groups = {name: [p for p in group if p.requires_grad] for name, group in groups.items()}
    optimizer = _optimizer(groups, config)
    optimizers = [optimizer] + ([fused] if fused is not None and fused.trains else [])
    data = split.task_data(benchmark.train, task)
    data = data.with_labels(data.labels - classes.start)
    if isinstance(data, ArrayDataset):
        data = ArrayDataset(data.images.to(device), data.labels.to(device))
    steps_per_epoch = math.ceil(len(data) / config.batch_size)
    total = config.epochs * steps_per_epoch
    schedulers = ([torch.optim.lr_scheduler.CosineAnnealingLR(o, total) for o in optimizers]
                  if config.schedule == "cosine" else [])
    ctx = context()
    log_path = run.steps_path(task) if ctx.is_main else Path(os.devnull)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    net = wrap(model, ctx, device)  # DistributedDataParallel under torchrun, for this task
    bar = tqdm(total=total, desc=f"task {task + 1}/{config.tasks}", disable=not progress,
               leave=False)
    step = 0
    with open(log_path, "w") as steps_log:
        try:
            for epoch in range(config.epochs):
                model.train()
                order = torch.randperm(len(data), generator=generator)
                start = time.perf_counter()
                for b, (x, y) in enumerate(batches(data, config.batch_size, device, order,
                                                   config.num_workers, ctx)):
                    with _autocast(device, config.amp):
                        logits = net(x)[:, classes.start:classes.stop]  # current task only
                    if ctx.active:
                        # DDP averages the ranks' gradients; each rank's sum over its slice,
                        # times world / (whole batch), makes that the whole batch's mean
                        # gradient exactly, however unevenly the batch splits.
                        whole = min(config.batch_size, len(data) - b * config.batch_size)
                        summed = F.cross_entropy(logits.float(), y, reduction="sum")
                        objective = summed * (ctx.world / whole)
                        loss = summed.detach() / max(len(y), 1)  # logged: this rank's mean
                    else:
                        objective = loss = F.cross_entropy(logits.float(), y)
                    for o in optimizers:
                        o.zero_grad(set_to_none=True)
                    objective.backward()
                    for o in optimizers:
                        o.step()
                    for scheduler in schedulers:
                        scheduler.step()
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    seconds = time.perf_counter() - start
                    record = dict(task=task, epoch=epoch, step=step,
                                  global_step=global_step + step, loss=round(loss.item(), 6),
                                  lr=optimizer.param_groups[0]["lr"], seconds=round(seconds, 5))
                    adapter = model.adapter
                    if adapter is not None and adapter.use_magnitudes:
                        record["magnitudes"] = adapter.magnitudes()
                    if (config.residual_every and adapter is not None and adapter.current
                            is not None and adapter.frozen_components
                            and step % config.residual_every == 0):
                        # Fig. 3a both ways: the scale-free residual of the normalised
                        # direction and Algorithm 1 line 11's of the unnormalised product
                        residuals = adapter.residuals_of_current()
                        record["residual"] = residuals["relative"]
                        record["residual_absolute"] = residuals["absolute"]
                    steps_log.write(json.dumps(record) + "\n")
                    step += 1
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss.item():.3f}")
                    status.steps_here += 1
                    status.write("running", task=task, tasks=config.tasks, epoch=epoch,
                                 epochs=config.epochs, step=step, steps=total,
                                 global_step=global_step + step, loss=loss.item(),
                                 magnitudes=record.get("magnitudes", {}))
                    start = time.perf_counter()
        finally:
            if fused is not None:  # the magnitudes are written back every step
                fused.close()
        bar.close()
        info = model.end_task()
        if model.adapter is not None and model.adapter.use_magnitudes:
            info["magnitudes_after"] = model.adapter.magnitudes()
        info["components"] = len(model.adapter.components) if model.adapter else 0
        steps_log.flush()
    return info
