"""HiDe-Prompt's optimiser steps per task under each budget (TrainConfig.hide_budget), counted
from the benchmark's task sizes; nothing is trained.

    python scripts/hide_budget.py [--benchmark glyphs40] [--epochs 4] [--holdout test]

Per task: the task-identity stage's Adam steps and the prompts' steps (one a batch of the task's
images an epoch), the two classifier alignments' SGD steps on sampled features (one per earlier
class an epoch), and beside them the steps every other method takes (`epochs` passes over the
task's images). `sdlora.methods.hide_prompt.optimiser_steps` gives the counts; a test counts
every optimiser step of a small run and checks it against them.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sdlora import argcheck  # noqa: E402
from sdlora.config import HIDE_BUDGETS, TrainConfig  # noqa: E402
from sdlora.methods.hide_prompt import optimiser_steps  # noqa: E402
from sdlora.train import load_data, split_for  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--benchmark", default=TrainConfig().benchmark)
    parser.add_argument("--epochs", type=int, default=TrainConfig().epochs)
    parser.add_argument("--tasks", type=int, default=TrainConfig().tasks)
    parser.add_argument("--holdout", default="test", choices=["test", "validation"])
    args = parser.parse_args()
    base = argcheck.config(parser, benchmark=args.benchmark, method="lora", epochs=args.epochs,
                           tasks=args.tasks, holdout=args.holdout)
    configs = [argcheck.config(parser, benchmark=args.benchmark, method="hide-prompt",
                               epochs=args.epochs, tasks=args.tasks, holdout=args.holdout,
                               hide_budget=budget) for budget in HIDE_BUDGETS]
    bench = argcheck.checked(parser, load_data, base)  # missing data: one error line
    split = argcheck.checked(parser, split_for, base, bench)  # a task count that cannot divide
    sizes = [len(split.task_data(bench.train, t)) for t in range(split.num_tasks)]
    classes = split.classes_per_task
    print(f"{args.benchmark}, {split.num_tasks} tasks of {classes} classes, epochs "
          f"{args.epochs}, batch {base.batch_size}, holdout {args.holdout}")
    print("| budget | stages (epochs) | task | images | identity | prompts | identity "
          "alignment | final alignment | all | every other method |\n|" + "---|" * 10)
    for budget, config in zip(HIDE_BUDGETS, configs):
        stages = " / ".join(f"{v}" for v in config.hide_stages().values())
        for task, images in enumerate(sizes):
            steps = optimiser_steps(config, images, classes, task)
            other = args.epochs * -(-images // base.batch_size)
            print(f"| {budget} | {stages} | {task + 1} | {images} | "
                  + " | ".join(str(v) for v in steps.values())
                  + f" | {sum(steps.values())} | {other} |")


if __name__ == "__main__":
    argcheck.quiet_on_closed_pipe(main)
