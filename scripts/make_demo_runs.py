"""Make the demo runs that ship in cache/demo, with their analyses precomputed.

    python scripts/make_demo_runs.py [--extra]

On the embedded default (glyphs40, glyph-vit), each method at the learning rate chosen for it on
a validation split (results/tuned_lr.json, scripts/tune_lr.py): vanilla LoRA and SD-LoRA with
seeds 0-2 (Fig. 2b/c's comparison), SimpleCIL and the joint upper bound (SD-LoRA's adapter)
with seed 0; other folders in cache/demo are removed; `--extra` adds fixed-first-direction
(seeds 0-2), SD-LoRA-RR and SD-LoRA-KD (seed 0). `--tuned FILE` (default
results/tuned_lr.json) must exist and hold a rate for every planned method that trains by
gradient: checked before anything is removed. A run already finished by
scripts/results_table.py (cache/benchmark/<benchmark>, same config) is copied instead of
retrained: same numbers. Then every analysis the app shows is computed once and stored in the
run folder (the path plane of the LoRA and SD-LoRA runs: about a CPU minute and a half each).
Demo runs from another benchmark or settings are
replaced.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sdlora.analysis import (cached, efficiency, interpolate, magnitude_series,  # noqa: E402
                             residuals_at_task_end, within_task_accuracy)
from sdlora.analysis.core import INTERPOLATION_POINTS  # noqa: E402
from sdlora.analysis.plane import path_plane, plane_name  # noqa: E402
from sdlora.config import TrainConfig  # noqa: E402
from sdlora.methods import method_class  # noqa: E402
from sdlora.runs import RunError, RunFolder, check_same_settings, demo_runs_root  # noqa: E402
from sdlora.train import train  # noqa: E402
from sdlora.tuning import load_tuned, summary_key, tuned_lr  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
# (method, overrides, seeds, demo folder prefix)
DEMO = [("lora", {}, (0, 1, 2), "lora"), ("sd-lora", {}, (0, 1, 2), "sd-lora"),
        ("simplecil", {}, (0,), "simplecil"),
        ("joint", dict(joint_adapter="sd-lora"), (0,), "joint")]
EXTRA = [("fixed-first-direction", {}, (0, 1, 2), "fixed-first-direction"),
         ("sd-lora-rr", {}, (0,), "sd-lora-rr"), ("sd-lora-kd", {}, (0,), "sd-lora-kd")]
ALL_BOUNDARIES = {"lora-s0", "sd-lora-s0"}  # the others get the first boundary precomputed


def same_config(run: RunFolder, config: TrainConfig) -> bool:
    try:
        check_same_settings(run, config)
    except RunError:
        return False
    return True


def planned_lr(tuned: dict, method: str, seed: int, overrides: dict) -> float | None:
    """The rate a demo run trains at: its method's tuned rate (SD-LoRA's for the variants of
    EXTRA), None for the default."""
    config = TrainConfig(method=method, seed=seed, **overrides)
    return tuned_lr(tuned, config) or (tuned_lr(tuned, TrainConfig(method="sd-lora"))
                                       if method in ("fixed-first-direction", "sd-lora-rr",
                                                     "sd-lora-kd") else None)


def read_tuned(parser: argparse.ArgumentParser, name: str, plan: list) -> dict:
    """The tuning results of --tuned, checked before any demo run is touched: a missing,
    unreadable or malformed file, or one without a rate for a planned method that trains by
    gradient, is an `error:` line (exit 2), not 'nothing tuned' (which would retrain the
    shipped runs at the default rate)."""
    path = Path(name)
    what = "expected the tuning results written by scripts/tune_lr.py (results/tuned_lr.json)"
    if not path.is_file():
        parser.error(f"--tuned {path}: {'a folder' if path.is_dir() else 'no such file'}; "
                     f"{what}")
    try:
        tuned = load_tuned(path)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        parser.error(f"--tuned {path} cannot be read as JSON ({' '.join(str(err).split())}); "
                     f"{what}")
    if not isinstance(tuned, dict):
        parser.error(f"--tuned {path} holds a JSON {type(tuned).__name__}; {what}: an "
                     f"object of method@benchmark -> result")
    for key, entry in tuned.items():
        lr = entry.get("chosen_lr") if isinstance(entry, dict) else None
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (
                math.isfinite(lr) and lr > 0):
            parser.error(f"--tuned {path}: entry {key!r} has chosen_lr {lr!r}; expected a "
                         f"positive number, as scripts/tune_lr.py writes")
    for method, overrides, seeds, _ in plan:
        if method_class(method).trains_by_gradient and planned_lr(
                tuned, method, seeds[0], overrides) is None:
            key = summary_key(TrainConfig(method=method, **overrides))
            parser.error(f"--tuned {path} has no learning rate for {key}; the demo runs "
                         f"train at the rates chosen on validation (scripts/tune_lr.py)")
    return tuned


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--extra", action="store_true",
                        help="also fixed-first-direction (seeds 0-2), sd-lora-rr, sd-lora-kd")
    parser.add_argument("--tuned", default=str(REPO / "results" / "tuned_lr.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    plan = DEMO + (EXTRA if args.extra else [])
    tuned = read_tuned(parser, args.tuned, plan)  # before anything is deleted
    root = demo_runs_root()
    table_root = REPO / "cache" / "benchmark" / TrainConfig().benchmark
    wanted = {f"{prefix}-s{seed}" for _, _, seeds, prefix in plan for seed in seeds}
    for old in sorted(root.iterdir()) if root.exists() else []:
        if old.is_dir() and old.name not in wanted:  # demo runs of an earlier default
            logging.info("%s: not a demo run any more, removed", old.name)
            shutil.rmtree(old)
    for method, overrides, seeds, prefix in plan:
        for seed in seeds:
            name = f"{prefix}-s{seed}"
            config = TrainConfig(method=method, seed=seed, **overrides)
            lr = planned_lr(tuned, method, seed, overrides)
            if lr is not None:
                config = TrainConfig(method=method, seed=seed, lr=lr, **overrides)
            run = RunFolder(root / name)
            if run.exists() and not same_config(run, config):
                logging.info("%s: made with other settings, replaced", name)
                shutil.rmtree(run.path)
            suffix = "".join(f"-{v}" for v in overrides.values())
            done = RunFolder(table_root / f"{method}{suffix}-lr{config.lr:g}-s{seed}")
            tasks = 1 if method == "joint" else config.tasks
            if (not run.exists() and done.exists() and done.completed_tasks() == tasks
                    and same_config(done, config)):
                shutil.copytree(done.path, run.path, ignore=shutil.ignore_patterns("analyses"))
            elif not run.exists():
                train(config, out=run.path, progress=False)
            elif run.completed_tasks() < tasks:
                train(resume=run.path, progress=False)
            cached(run, "efficiency", lambda: efficiency(run))
            cached(run, "within_task_accuracy",
                   lambda: within_task_accuracy(run).to_dict("records"))
            if method_class(method).mergeable and tasks > 1:
                last = config.tasks + 1 if name in ALL_BOUNDARIES else 3
                for task in range(2, last):
                    cached(run, f"interpolation_task{task}_{INTERPOLATION_POINTS}",
                           lambda: interpolate(run, task, INTERPOLATION_POINTS)
                           .to_dict("records"))
            if method in ("lora", "sd-lora"):  # the Interpolation page's path plane (Fig. 4a)
                cached(run, plane_name(config.tasks), lambda: path_plane(run))
            if run.metrics().get("task_info") and method not in ("simplecil", "joint"):
                magnitude_series(run)
                residuals_at_task_end(run)
            logging.info("%s ready", name)


if __name__ == "__main__":
    main()
