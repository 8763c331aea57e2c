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

from .backbone import create_backbone, image_size, weights_file, weights_sha256
from .config import ConfigError, TrainConfig
from .data import ArrayDataset, Benchmark, TaskSplit, load_benchmark, make_task_split
from .distributed import barrier, context, shard, wrap
from .metrics import summarise
from .methods import ContinualMethod, build_method
from .runs import RunError, RunFolder, atomic_write_json, default_runs_root

__all__ = ["resolve_device", "build_model", "load_model", "evaluate", "train", "task_generator",
           "new_run_id", "load_data", "split_for", "backbone_record",
           "check_backbone_weights"]

log = logging.getLogger(__name__)
_REPO = Path(__file__).resolve().parent.parent


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
    """The run's benchmark, at its backbone's input size; with ``holdout='validation'`` its
    training set split into train and validation (the validation part in place of test)."""
    benchmark = load_benchmark(config.benchmark, config.data_root, image_size(config.backbone))
    return holdout_split(config, benchmark)


def holdout_split(config: TrainConfig, benchmark: Benchmark) -> Benchmark:
    if config.holdout == "validation":
        return benchmark.validation_split(config.val_fraction, seed=config.seed)
    return benchmark


def split_for(config: TrainConfig, benchmark: Benchmark) -> TaskSplit:
    """The run's class order and tasks; `joint` learns every class as one task (its
    `config.tasks` names the incremental protocol it is the upper bound of)."""
    seed = config.seed if config.class_order_seed is None else config.class_order_seed
    make_task_split(benchmark.num_classes, config.tasks, seed)  # checks the task count
    tasks = 1 if config.method == "joint" else config.tasks
    return make_task_split(benchmark.num_classes, tasks, seed)


def build_model(config: TrainConfig, device: torch.device | str = "cpu") -> ContinualMethod:
    """The method of `config` (`sdlora.methods`) on a fresh backbone, before its first task."""
    backbone, spec = create_backbone(config.backbone, weights=config.weights)
    mean, std = (spec.mean, spec.std) if config.normalise_inputs else ((0.0,) * 3, (1.0,) * 3)
    return build_method(backbone, config, mean, std).to(device)


def backbone_record(config: TrainConfig) -> dict:
    """What a run records in ``backbone.json`` when it begins: the backbone, the local weights
    file it loads (None: timm's hub weights) and that file's sha256."""
    file = weights_file(config.backbone, config.weights)
    shown = None if file is None else str(file)
    if file is not None and file.resolve().is_relative_to(_REPO):  # a shipped file: repo path
        shown = str(file.resolve().relative_to(_REPO))
    return dict(backbone=config.backbone, weights=shown,
                sha256=weights_sha256(file) if file is not None and file.is_file() else None)


def check_backbone_weights(run: RunFolder, config: TrainConfig | None = None) -> None:
    """RunError when `run` recorded its backbone weights' sha256 and the file its config
    loads today has another one: its checkpoints hold no frozen backbone, so they are only
    valid with the file they were trained on. A run without a record (made before runs
    recorded one) is not checked."""
    record = run.backbone()
    if record is None or record["sha256"] is None:
        return
    config = config or TrainConfig.from_dict(run.config())
    file = weights_file(config.backbone, config.weights)
    if file is None or not file.is_file():  # building the backbone names a missing file
        return
    now = weights_sha256(file)
    if now != record["sha256"]:
        raise RunError(f"run {run.path} was trained on the backbone weights {file} with "
                       f"sha256 {record['sha256']} (recorded in {run.backbone_path}), but that "
                       f"file now has sha256 {now}: its checkpoints hold no backbone and are "
                       f"only valid with the file they were trained on; restore that file "
                       f"(e.g. `git checkout -- {file}`) or train the run again")


def load_model(run: RunFolder | Path | str, task: int, device: torch.device | str = "cpu",
               ) -> ContinualMethod:
    """The model of `run` at the end of `task` (0-based), rebuilt from its checkpoint; RunError
    if the backbone weights file changed since the run was made (`check_backbone_weights`)."""
    run = run if isinstance(run, RunFolder) else RunFolder(run)
    tensors, meta = run.checkpoint(task)
    config = TrainConfig.from_dict(meta["config"])
    check_backbone_weights(run, config)
    model = build_model(config, device)
    model.load_checkpoint(tensors, meta)
    return model.to(device)


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
def evaluate(model: ContinualMethod, split: TaskSplit, data, upto: int,
             device: torch.device, batch_size: int = 256, num_workers: int = 0,
             amp: str = "none", task_identity: list[float] | None = None) -> list[float]:
    """Accuracy (percent) on each task 0..upto's test data, argmax over every class seen.

    For a method that infers each image's task (``model.last_task_prediction`` set by its
    forward pass: HiDe-Prompt), the share of task t's test images given task t is appended to
    `task_identity` (percent, one entry per task), when a list is passed. A model with
    ``oracle_task`` gets each image's true task (``forward(x, task_ids=...)``)."""
    model.eval()
    row = []
    for task in range(upto + 1):
        subset = split.task_data(data, task)
        correct, identified, inferred = 0, 0, False
        for x, y in batches(subset, batch_size, torch.device(device), num_workers=num_workers):
            with _autocast(device, amp):
                if getattr(model, "oracle_task", False):
                    logits = model(x, task_ids=torch.full((len(x),), task, device=x.device))
                else:
                    logits = model(x)
                correct += (logits.argmax(1) == y).sum().item()
            predicted = getattr(model, "last_task_prediction", None)
            if predicted is not None:
                inferred = True
                identified += (predicted == task).sum().item()
        row.append(100.0 * correct / max(len(subset), 1))
        if task_identity is not None and inferred:
            task_identity.append(100.0 * identified / max(len(subset), 1))
    return row


def _autocast(device, amp: str):
    """bf16 autocast on CUDA when asked for; a no-op otherwise."""
    device = torch.device(device)
    return torch.autocast(device.type, dtype=torch.bfloat16,
                          enabled=amp == "bf16" and device.type == "cuda")


def _clip_gradients(optimizer: torch.optim.Optimizer, max_norm: float) -> torch.Tensor:
    """Scale the gradients of everything `optimizer` steps so their global L2 norm is at most
    `max_norm` (`config.grad_clip`; L2P's released code: 1.0). The frozen magnitudes that
    `sdlora.fused` steps are outside it: their gradient is formed inside that fused step."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    return torch.nn.utils.clip_grad_norm_(params, max_norm)


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
    claim = None
    if resume is not None:
        run = RunFolder(resume)
        if not run.exists():
            raise RunError(f"cannot resume {run.path}: {run.config_path} is missing")
        try:
            config = TrainConfig.from_dict(run.config())
        except (ConfigError, TypeError) as err:
            raise RunError(f"{run.config_path} is not a valid run configuration: {err}") from err
        if context().is_main:
            claim = run.claim(new=False)
    else:
        config = config or TrainConfig()
        run = RunFolder(out if out is not None else default_runs_root() / new_run_id(config))
        if context().is_main:
            claim = run.claim(new=True)  # refuses a folder holding anything it did not write
    try:
        if resume is None and context().is_main:
            atomic_write_json(run.config_path, config.to_dict())
            atomic_write_json(run.backbone_path, backbone_record(config))
        return _train_claimed(run, config, resume is not None, progress, benchmark, on_task_end)
    finally:
        if claim is not None:
            claim.release()


def _known_rows(run: RunFolder) -> tuple[int, dict | None]:
    """(finished tasks, metrics) of a run being resumed. A missing or empty metrics.json (0
    bytes, ``{}`` or ``[]``) is rebuilt from the checkpoints by the caller; a damaged one, or
    a metrics row without its checkpoint, is refused (nothing is overwritten)."""
    try:
        text = run.metrics_path.read_text() if run.metrics_path.exists() else ""
        raw = json.loads(text) if text.strip() else None  # a 0-byte file is an empty one
    except (json.JSONDecodeError, UnicodeDecodeError):
        raw = "corrupt"
    if raw in (None, [], {}):
        return 0, None
    if raw == "corrupt":
        run.metrics()  # raises, naming the file
    try:
        metrics = run.metrics()
    except RunError as err:
        raise RunError(f"{err}; move it aside and --resume again to rebuild it from the "
                       f"checkpoints") from err
    rows = len(metrics["accuracy_matrix"])
    run.check_checkpoints(rows)
    return rows, metrics


def _train_claimed(run: RunFolder, config: TrainConfig, resuming: bool, progress: bool,
                   benchmark: Benchmark | None, on_task_end) -> RunFolder:
    if resuming:  # refusals before any work
        check_backbone_weights(run, config)
    rows, metrics = _known_rows(run) if resuming else (0, None)
    device = resolve_device(config.device)
    ctx = context(device.type)
    if ctx.active and device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    benchmark = holdout_split(config, benchmark) if benchmark is not None else load_data(config)
    split = split_for(config, benchmark)
    n_tasks = split.num_tasks  # 1 for joint
    model = build_model(config, device)
    matrix = metrics["accuracy_matrix"][:rows] if metrics else []
    task_info = metrics.get("task_info", [])[:rows] if metrics else []
    counts = [len(split.task_data(benchmark.test, t)) for t in range(n_tasks)]
    done = rows
    if resuming:
        # checkpoints written after the last metrics row (a kill between the two writes, or a
        # lost metrics.json): their rows are rebuilt by evaluating those checkpoints
        done = max(rows, min(run.checkpoint_tasks(), n_tasks))
        for task in range(rows, done):
            log.info("rebuilding task %d's metrics row from %s", task + 1,
                     run.checkpoint_path(task))
            rebuilt = load_model(run, task, device)
            matrix.append(evaluate(rebuilt, split, benchmark.test, task, device,
                                   config.eval_batch_size, config.num_workers, config.amp))
            _, meta = run.checkpoint(task)
            info = meta.get("info") or dict(components=len(meta.get("layout", [])))
            task_info.append(dict(info, rebuilt_from_checkpoint=True))
        if done > rows and ctx.is_main:
            atomic_write_json(run.metrics_path,
                              _metrics(config, benchmark, split, matrix, counts, task_info))
    if done:
        log.info("resuming %s after task %d of %d", run.id, done, n_tasks)
        model = load_model(run, done - 1, device)
    train_sizes = [len(split.task_data(benchmark.train, t)) for t in range(n_tasks)]
    steps_per_task = [config.loop_epochs() * math.ceil(n / config.batch_size)
                      if model.trains_by_gradient else 0 for n in train_sizes]
    global_step = sum(steps_per_task[:done])
    status = _Status(run, sum(steps_per_task), enabled=ctx.is_main)
    status.write("running", force=True, task=done, tasks=n_tasks, global_step=global_step)
    finished = done  # tasks whose checkpoint and metrics row are written
    try:
        for task in range(done, n_tasks):
            generator = task_generator(config.seed, task)
            record = _train_task(model, config, split, benchmark, task, generator, run, status,
                                 global_step, device, progress)
            global_step += steps_per_task[task]
            identity: list[float] = []  # task-identity accuracy per task, if it infers one
            row = evaluate(model, split, benchmark.test, task, device, config.eval_batch_size,
                           config.num_workers, config.amp, task_identity=identity)
            if identity:
                record["task_identity_accuracy"] = identity
            matrix.append(row)
            task_info.append(record)
            metrics = _metrics(config, benchmark, split, matrix, counts, task_info)
            if ctx.is_main:
                run.save_checkpoint(task, model.checkpoint_tensors(), dict(
                    config=config.to_dict(), **model.checkpoint_meta(), task=task,
                    classes_per_task=split.classes_per_task,
                    class_order=list(split.class_order), info=record))
                atomic_write_json(run.metrics_path, metrics)
            finished = task + 1
            barrier(ctx)
            log.info("task %d/%d: R row %s, seen accuracy %.2f", task + 1, n_tasks,
                     ["%.1f" % v for v in row], metrics["seen_accuracy"][-1])
            if on_task_end is not None:
                on_task_end(task, metrics)
    except BaseException as err:
        try:  # on a full disk this may fail too; the first error is the one to report
            status.write("cancelled" if isinstance(err, KeyboardInterrupt) else "failed",
                         force=True, error=str(err) or repr(err), task=finished,
                         tasks=n_tasks, global_step=sum(steps_per_task[:finished]))
        except OSError:
            pass
        raise
    status.write("finished", force=True, task=n_tasks, tasks=n_tasks,
                 global_step=global_step)
    return run


def _metrics(config, benchmark, split, matrix, counts, task_info) -> dict:
    summary = summarise(matrix, counts)
    return dict(method=config.method, variant=config.variant, benchmark=config.benchmark,
                seed=config.seed, backbone=config.backbone, tasks=split.num_tasks,
                config=config.to_dict(), tasks_done=len(matrix),
                accuracy_matrix=matrix, test_counts=counts[: len(matrix)],
                class_order=list(split.class_order), class_names=benchmark.class_names,
                task_info=task_info, **summary)


def _train_task(model: ContinualMethod, config: TrainConfig, split: TaskSplit, benchmark: Benchmark,
                task: int, generator: torch.Generator, run: RunFolder, status: _Status,
                global_step: int, device: torch.device, progress: bool) -> dict:
    """Train one task; writes its step log; returns what end_task reported."""
    classes = split.task_classes(task)
    model.begin_task(task, len(classes), generator)
    if not model.trains_by_gradient:
        return _fit_task(model, config, split, benchmark, task, run, device)
    data = split.task_data(benchmark.train, task)
    data = data.with_labels(data.labels - classes.start)
    if isinstance(data, ArrayDataset):
        data = ArrayDataset(data.images.to(device), data.labels.to(device))
    # A pass over the task's data before the first step, for methods that need one (InfLoRA).
    model.prepare_task(lambda: batches(data, config.batch_size, device,
                                       num_workers=config.num_workers))
    groups = model.trainable_parameters()
    # The frozen components' magnitudes step in one fused pass with their gradients
    # (sdlora/fused.py); everything else through torch.optim.
    fused = model.fuse_frozen()  # parks those magnitudes' requires_grad while it owns them
    groups = {name: [p for p in group if p.requires_grad] for name, group in groups.items()}
    optimizer = _optimizer(groups, config)
    optimizers = [optimizer] + ([fused] if fused is not None and fused.trains else [])
    steps_per_epoch = math.ceil(len(data) / config.batch_size)
    epochs = config.loop_epochs()  # hide-prompt: its share of `epochs` (TrainConfig.hide_budget)
    total = epochs * steps_per_epoch
    schedulers = ([torch.optim.lr_scheduler.CosineAnnealingLR(o, total) for o in optimizers]
                  if config.schedule == "cosine" else [])
    ctx = context()
    log_path = run.steps_path(task) if ctx.is_main else Path(os.devnull)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    net = wrap(model, ctx, device)  # DistributedDataParallel under torchrun, for this task
    bar = tqdm(total=total, desc=f"task {task + 1}/{split.num_tasks}", disable=not progress,
               leave=False)
    step = 0
    with open(log_path, "w") as steps_log:
        try:
            for epoch in range(epochs):
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
                    auxiliary = model.auxiliary_loss()
                    if auxiliary is not None:  # e.g. a key-query pull; logged in the loss
                        objective = objective + auxiliary
                        loss = loss + auxiliary.detach()
                    for o in optimizers:
                        o.zero_grad(set_to_none=True)
                    objective.backward()
                    if config.grad_clip is not None:
                        _clip_gradients(optimizer, config.grad_clip)
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
                    status.write("running", task=task, tasks=split.num_tasks, epoch=epoch,
                                 epochs=epochs, step=step, steps=total,
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


def _fit_task(model: ContinualMethod, config: TrainConfig, split: TaskSplit,
              benchmark: Benchmark, task: int, run: RunFolder, device: torch.device) -> dict:
    """A task for a method without gradient steps: it sees the task's training images once,
    under the test transform, in stored order (its step log is empty)."""
    data = split.task_data(benchmark.train_for_fitting(), task)
    ctx = context()
    if ctx.is_main:
        run.steps_path(task).parent.mkdir(parents=True, exist_ok=True)
        run.steps_path(task).write_text("")
    model.eval()
    with torch.no_grad():
        model.fit_task(batches(data, config.eval_batch_size, device,
                               num_workers=config.num_workers))
    return model.end_task()
