"""The trap of the normalised direction: what a new task's first step does to earlier tasks.

A new direction A_t B_t / ||A_t B_t||_F has unit norm whatever the initial scale, so with its
magnitude at 1 every new task starts by adding a random unit-norm matrix to every adapted
projection. This script measures, on the embedded default:

1. accuracy on the earlier tasks right after task t-1, and right at the start of task t (before
   any optimiser step) with alpha_t = 0 and alpha_t = 1: the difference between the two is the
   new direction's own effect, since both have the new task's (untrained) head rows, which take
   some of the earlier tasks' images in the argmax over every class seen;
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

from sdlora import argcheck  # noqa: E402
from sdlora.backbone import image_size  # noqa: E402
from sdlora.config import TrainConfig  # noqa: E402
from sdlora.data import load_benchmark, make_task_split  # noqa: E402
from sdlora.runs import RunFolder  # noqa: E402
from sdlora.train import evaluate, load_model, task_generator, train  # noqa: E402


def name_of(tag: str, seed: int, start: float) -> str:
    return f"sd-lora{tag}-s{seed}" if start == 0.0 else f"sd-lora-alpha1{tag}-s{seed}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--benchmark", default=TrainConfig().benchmark)
    parser.add_argument("--epochs", type=int, default=TrainConfig().epochs)
    parser.add_argument("--lr", type=float, default=None,
                        help="learning rate (default the config's, 0.008)")
    parser.add_argument("--root", default=None)
    args = parser.parse_args()
    common = dict(benchmark=args.benchmark, epochs=args.epochs)
    tag = ""
    if args.lr is not None:
        common["lr"], tag = args.lr, f"-lr{args.lr:g}"
    argcheck.config(parser, method="sd-lora", **common)
    argcheck.seeds(parser, args.seeds)
    args.root = args.root or f"cache/benchmark/{args.benchmark}/magnitude_start"
    argcheck.output_folder(parser, args.root, "--root")
    for seed in args.seeds:  # a run folder made with other settings is never reused
        for start in (0.0, 1.0):
            argcheck.run_matches(parser, Path(args.root) / name_of(tag, seed, start), TrainConfig(
                method="sd-lora", seed=seed, new_magnitude_init=start, **common), "--root")
    logging.basicConfig(level=logging.WARNING)
    bench = argcheck.checked(parser, load_benchmark, args.benchmark,
                             image_size=image_size(TrainConfig(**common).backbone))
    cpu = torch.device("cpu")
    # per run and task t >= 2: the earlier tasks' mean accuracy right after task t-1 (before),
    # and right at the start of task t with the new head rows and the new direction in place,
    # alpha_t = 0 and alpha_t = 1 (the same rows, the same direction: only alpha_t differs)
    heads, directions = [], []
    finals = {1.0: [], 0.0: []}
    for seed in args.seeds:
        for start in (0.0, 1.0):
            run = RunFolder(Path(args.root) / name_of(tag, seed, start))
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
                after = {}
                for alpha in (0.0, 1.0):
                    with torch.no_grad():
                        model.adapter.magnitude[model.adapter.current.key].fill_(alpha)
                    after[alpha] = np.mean(evaluate(model, split, bench.test, t - 1, cpu)[:t])
                heads.append(after[0.0] - before)
                directions.append(after[1.0] - after[0.0])
    h, d = np.array(heads), np.array(directions)
    print(f"at the first step of a task (before any optimiser step), the earlier tasks' mean "
          f"accuracy changes by {h.mean():+.2f} points (min {h.min():+.2f}) from the new task's "
          f"head rows (alpha_t = 0), and by a further {d.mean():+.2f} points (min {d.min():+.2f}) "
          f"from the new unit-norm direction at alpha_t = 1 ({len(d)} task starts, seeds "
          f"{args.seeds})")
    for start in (1.0, 0.0):
        f = np.array(finals[start])
        print(f"whole runs with alpha_t starting at {start:.0f}: final Acc {f[:, 0].mean():.1f}, "
              f"AAA {f[:, 1].mean():.1f} (seeds {args.seeds})")


if __name__ == "__main__":
    argcheck.quiet_on_closed_pipe(main)
