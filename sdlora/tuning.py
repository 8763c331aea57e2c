"""Choosing a method's learning rate on a validation split carved from the training data.

`tune` trains the method once per learning rate of a grid with ``holdout='validation'`` (the
training set minus a seeded, stratified part of each class; `sdlora.data.Benchmark.
validation_split`), scores each by its accuracy on that held-out part after the last task (Acc)
and picks the best; the test set is never read. Every run is a normal run folder under `root`,
so an interrupted tuning resumes and finished runs are reused, but only a folder made with the
very settings asked for (`sdlora.runs.check_same_settings`, the check scripts/results_table.py
makes too): one made with other settings (another epochs, clip, budget, ...) stops the tuning
with a RunError that names it and the settings that differ, and is neither reused nor retrained.

One rule for every method: when the best rate is at an end of the grid, the grid grows by one
step of its own ratio beyond that end, at most `MAX_EXTENSIONS` (3) times. A method with several
coupled rates (HiDe-Prompt: prompts, head, task-identity stage and two alignments; `part_rates`)
is tuned on its base rate `lr` with the released ratios between its parts fixed. A chosen rate
is an untested edge only when the cap was reached; the result says so (``at_cap``) and the
tables mark it.
"""
from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np

from .config import TrainConfig, part_rates
from .runs import RunFolder, atomic_write_json, check_same_settings

__all__ = ["GRIDS", "MAX_EXTENSIONS", "grid_for", "tune", "load_tuned", "tuned_lr",
           "summary_key", "at_cap", "tuned_path", "chosen_lr"]

log = logging.getLogger(__name__)

# Adam learning rates tried per method (the paper's 0.008 is in every adapter grid). Updating
# every weight of the backbone needs far smaller steps, so full fine-tuning gets its own grid.
DEFAULT_GRID = (0.002, 0.008, 0.03)
GRIDS: dict[str, tuple[float, ...]] = {"full-ft": (1e-5, 1e-4, 1e-3)}
# Steps the grid may grow beyond its ends while the best rate is at one (the same for every
# method); at 3 the default grid reaches 3.1e-5 below and 1.6 above.
MAX_EXTENSIONS = 3


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
    if config.method == "hide-prompt":  # its budget, always: folders before it ran 'released'
        label += f"-{config.hide_budget}"
    return label


def search(grid: list[float], score, extend: int = MAX_EXTENSIONS) -> list[float]:
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
         extend: int = MAX_EXTENSIONS) -> dict:
    """Train `config` at every lr of `grid` on the validation split; returns (and writes to
    ``root/<label>.json``) the grid, the validation Acc per lr (mean over `seeds`), the chosen
    lr and every part's rate at it (`part_rates`). When the best rate is at an end of the grid,
    the grid grows by one step of its own ratio beyond that end, at most `extend` times: the
    same rule for every method. ``at_cap`` is true when the chosen rate is still an end of the
    grid, an untested edge. A folder of the right name made with other settings raises
    RunError (`check_same_settings`)."""
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
                if run.exists():  # made with these very settings, or a RunError
                    check_same_settings(run, trial)
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
                  extended=len(grid) - given,
                  part_rates=part_rates(replace(config, lr=chosen)))
    result["at_cap"] = at_cap(result)
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


def at_cap(result: dict) -> bool:
    """True when a tuning result's chosen rate is an end of its grid (the grid stopped growing
    at its cap, so the best rate may lie beyond it)."""
    grid = [float(x) for x in result.get("grid") or []]
    return len(grid) > 1 and float(result["chosen_lr"]) in (min(grid), max(grid))


def tuned_path() -> Path:
    """The summary of chosen rates (scripts/tune_lr.py): results/tuned_lr.json (under
    $SDLORA_RESULTS when set)."""
    from .tables import results_dir

    return results_dir() / "tuned_lr.json"


def chosen_lr(config: TrainConfig, fallback: float | None = None,
              results: dict[str, dict] | None = None) -> tuple[float, str]:
    """The learning rate a run of `config` trains at when none is given, and why (one line):
    the rate chosen for its method on its benchmark's validation split (`results`, default the
    summary file) when there is one, else `fallback` (default the paper's 0.008). The one
    default of `python -m sdlora train` and the Train page."""
    unreadable = ""
    if results is None:
        try:
            results = load_tuned(tuned_path())
        except (OSError, ValueError) as err:  # a damaged summary: say so, use the fallback
            results, unreadable = {}, f"; it cannot be read: {' '.join(str(err).split())}"
    fallback = TrainConfig.lr if fallback is None else fallback
    lr = tuned_lr(results, config)
    where = f"{_label(config)} on {config.benchmark}"
    if lr is None:
        return fallback, (f"lr {fallback:g}: no rate chosen on validation for {where} "
                          f"(results/tuned_lr.json{unreadable}), so the "
                          + ("paper's rate" if fallback == TrainConfig.lr else "rate given"))
    mark = " (at the grid's edge: its cap)" if at_cap(results[summary_key(config)]) else ""
    return lr, (f"lr {lr:g}: chosen on the validation split for {where}{mark} "
                f"(results/tuned_lr.json); --lr overrides it")
