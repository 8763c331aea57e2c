"""The trap of the normalised direction: what a new task's first step does to earlier tasks.

A new direction A_t B_t / ||A_t B_t||_F has unit norm whatever the initial scale, so with its
magnitude at 1 every new task starts by adding a random unit-norm matrix to every adapted
projection. This script measures, on the embedded default:

1. accuracy on the earlier tasks right after task t-1, and right at the start of task t (before
   any optimiser step) with alpha_t = 1 and with alpha_t = 0;
2. the final Acc / AAA of whole runs with `new_magnitude_init` 1.0 and 0.0.

    python scripts/magnitude_start.py [--seeds 0 1 2] [--benchmark glyphs40] [--epochs N] [--lr LR]

(The README gives both: `--benchmark renditions20 --epochs 5`, the default until 2026-11-30,
at lr 0.008, and glyphs40 at `--lr 0.002`, SD-LoRA's rate chosen on its validation split; runs
land under cache/benchmark/<benchmark>/magnitude_start, named with the rate when --lr is given.)
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sdlora.backbone import image_size  # noqa: E402
from sdlora.config import TrainConfig  # noqa: E402
from sdlora.data import load_benchmark, make_task_split  # noqa: E402
from sdlora.runs import RunFolder  # noqa: E402
from sdlora.train import evaluate, load_model, task_generator, train  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--benchmark", default=TrainConfig().benchmark)
    parser.add_argument("--epochs", type=int, default=TrainConfig().epochs)
    parser.add_argument("--lr", type=float, default=None,
                        help="learning rate (default the config's, 0.008)")
    parser.add_argument("--root", default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    common = dict(benchmark=args.benchmark, epochs=args.epochs)
    tag = ""
    if args.lr is not None:
        common["lr"], tag = args.lr, f"-lr{args.lr:g}"
    args.root = args.root or f"cache/benchmark/{args.benchmark}/magnitude_start"
    bench = load_benchmark(args.benchmark, image_size=image_size(TrainConfig(**common).backbone))
    cpu = torch.device("cpu")
    jumps = {1.0: [], 0.0: []}
    finals = {1.0: [], 0.0: []}
    for seed in args.seeds:
        for start in (0.0, 1.0):
            name = f"sd-lora{tag}-s{seed}" if start == 0.0 else f"sd-lora-alpha1{tag}-s{seed}"
            run = RunFolder(Path(args.root) / name)
            config = TrainConfig(method="sd-lora", seed=seed, new_magnitude_init=start, **common)
            if not run.exists():
                train(config, out=run.path, progress=False)
            elif run.completed_tasks() < config.tasks:
                train(resume=run.path, progress=False)
            m = run.metrics()
            finals[start].append((m["acc"], m["aaa"]))
            split = make_task_split(bench.num_classes, config.tasks, seed)
            for t in range(1, config.tasks):
                model = load_model(run, t - 1)
                before = np.mean(evaluate(model, split, bench.test, t - 1, cpu))
                model.begin_task(t, split.classes_per_task, task_generator(seed, t))
                with torch.no_grad():
                    model.adapter.magnitude[model.adapter.current.key].fill_(start)
                after = np.mean(evaluate(model, split, bench.test, t - 1, cpu)[:t])
                jumps[start].append(after - before)
    for start in (1.0, 0.0):
        j = np.array(jumps[start])
        f = np.array(finals[start])
        print(f"alpha_t starts at {start:.0f}: earlier tasks' mean accuracy changes by "
              f"{j.mean():+.2f} points at the first step of a task (min {j.min():+.2f}); "
              f"final Acc {f[:, 0].mean():.1f}, AAA {f[:, 1].mean():.1f} "
              f"(seeds {args.seeds})")


if __name__ == "__main__":
    main()
