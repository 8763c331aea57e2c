"""Choosing a method's learning rate on a validation split carved from the training data.

`tune` trains the method once per learning rate of a grid with ``holdout='validation'`` (the
training set minus a seeded, stratified part of each class; `sdlora.data.Benchmark.
validation_split`), scores each by its accuracy on that held-out part after the last task (Acc)
and picks the best; the test set is never read. Every run is a normal run folder under `root`,
so an interrupted tuning resumes and finished runs are reused.
"""
from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np

from .config import TrainConfig
from .runs import RunFolder, atomic_write_json

__all__ = ["GRIDS", "grid_for", "tune", "load_tuned", "tuned_lr", "summary_key"]

log = logging.getLogger(__name__)

# Adam learning rates tried per method (the paper's 0.008 is in every adapter grid). Updating
# every weight of the backbone needs far smaller steps, so full fine-tuning gets its own grid.
DEFAULT_GRID = (0.002, 0.008, 0.03)
GRIDS: dict[str, tuple[float, ...]] = {"full-ft": (1e-5, 1e-4, 1e-3)}


def grid_for(config: TrainConfig) -> tuple[float, ...]:
    if config.method == "full-ft" or (config.method == "joint"
                                      and config.joint_adapter == "full-ft"):
        return GRIDS["full-ft"]
    return GRIDS.get(config.method, DEFAULT_GRID)


def _label(config: TrainConfig) -> str:
    label = config.method
    if config.method == "joint":
        label += f"-{config.joint_adapter}"
    if config.variant != "paper":
        label += f"-{config.variant}"
    if config.new_magnitude_init is not None:  # not the paper's start (alpha_t = magnitude_init)
        label += f"-init{config.new_magnitude_init:g}"
    return label


def search(grid: list[float], score, extend: int = 1) -> list[float]:
    """Score every rate of `grid`; while the best is at an end, add one step of the grid's own
    ratio beyond that end (at most `extend` times). Returns the grid as tried, ascending."""
    grid = sorted(grid)
    for lr in grid:
        score(lr)
    for _ in range(extend if len(grid) > 1 else 0):
        best = max(grid, key=score)
        if best == grid[0]:
            grid.insert(0, float(f"{grid[0] ** 2 / grid[1]:.3g}"))
            score(grid[0])
        elif best == grid[-1]:
            grid.append(float(f"{grid[-1] ** 2 / grid[-2]:.3g}"))
            score(grid[-1])
        else:
            break
    return grid


def tune(config: TrainConfig, root: Path | str, grid: tuple[float, ...] | None = None,
         seeds: tuple[int, ...] = (0,), train_kwargs: dict | None = None,
         extend: int = 1) -> dict:
    """Train `config` at every lr of `grid` on the validation split; returns (and writes to
    ``root/<label>.json``) the grid, the validation Acc per lr (mean over `seeds`) and the
    chosen lr. When the best rate is at an end of the grid, the grid grows by one step of its
    own ratio beyond that end (at most `extend` times), so that the chosen rate is never an
    untested edge: the same rule for every method."""
    from .train import train

    root = Path(root)
    grid = sorted(grid or grid_for(config))
    label = _label(config)
    scores: dict[str, list[float]] = {}

    def score(lr: float) -> float:
        if f"{lr:g}" not in scores:
            for seed in seeds:
                trial = replace(config, lr=lr, seed=seed, holdout="validation")
                run = RunFolder(root / f"{label}-lr{lr:g}-s{seed}")
                tasks = 1 if trial.method == "joint" else trial.tasks
                if not run.exists():
                    train(trial, out=run.path, progress=False, **(train_kwargs or {}))
                elif run.completed_tasks() < tasks:
                    train(resume=run.path, progress=False, **(train_kwargs or {}))
                metrics = run.metrics()
                scores.setdefault(f"{lr:g}", []).append(metrics["acc"])
                log.info("%s lr %g seed %d: validation Acc %.2f", label, lr, seed,
                         metrics["acc"])
        return float(np.mean(scores[f"{lr:g}"]))

    given = len(grid)
    grid = search(grid, score, extend)
    means = {f"{lr:g}": score(lr) for lr in grid}
    chosen = max(grid, key=score)
    result = dict(method=config.method, label=label, grid=list(grid), seeds=list(seeds),
                  validation_acc=means, chosen_lr=chosen, val_fraction=config.val_fraction,
                  benchmark=config.benchmark, tasks=config.tasks, epochs=config.epochs,
                  extended=len(grid) - given)
    result["key"] = summary_key(config)
    atomic_write_json(root / f"{label}.json", result)
    return result


def summary_key(config: TrainConfig) -> str:
    """The key of `config`'s tuning result in the summary file: label@benchmark."""
    return f"{_label(config)}@{config.benchmark}"


def load_tuned(path: Path | str) -> dict[str, dict]:
    """The tuning results file written by scripts/tune_lr.py: summary_key -> result."""
    path = Path(path)
    return json.loads(path.read_text()) if path.exists() else {}


def tuned_lr(results: dict[str, dict], config: TrainConfig) -> float | None:
    """The learning rate chosen for `config`'s method on its benchmark, or None if untuned."""
    entry = results.get(summary_key(config))
    return None if entry is None else float(entry["chosen_lr"])
