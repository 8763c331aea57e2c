"""Train the stability-plasticity sweeps and write results/tradeoff_<benchmark>.json.

    python scripts/make_tradeoff.py [--benchmark glyphs40] [--seeds 0 1 2] [--shard 0/2]
        [--no-train] [--root cache/benchmark/<benchmark>] [--json results/tradeoff_<benchmark>.json]

One knob at a time traces each method's curve in the plasticity/stability plane (the Trade-off
page draws them):

* the learning rate, over the tuning grid of sdlora/tuning.py with the step its search adds
  below the grid (0.0005, 0.002, 0.008, 0.03; full fine-tuning 1e-5, 1e-4, 1e-3), at the
  benchmark's default epochs, for lora, sd-lora, full-ft, frozen, inflora and coda-prompt;
* the epochs per task (1, 2, 4, 8) for lora and sd-lora at each one's validation-chosen rate
  (results/tuned_lr.json; the config's default where none was chosen).

Run folders are named as scripts/results_table.py names them (`<method>-lr<lr>-s<seed>`,
`<method>-e<E>-lr<lr>-s<seed>` for a non-default epoch count) under the same root, so the
results table's finished runs count as the points they are and the other way round. Finished
runs are reused, an interrupted one is resumed, a folder made with other settings stops the
script naming it; `--shard i/n` trains only every n-th run (one process per core), `--no-train`
only collects. The JSON holds, per sweep, method, knob value and seed: the run's accuracy matrix
and its settings (no checkpoints), and the runs still missing; it is written every time, with
"partial": true while any is missing.
"""
from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import asdict, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import results_table  # noqa: E402  (puts the repository on sys.path)
from sdlora import argcheck  # noqa: E402
from sdlora.config import METHODS, TrainConfig  # noqa: E402
from sdlora.analysis.tradeoff import (frontier_markdown, frontier_summary,  # noqa: E402
                                      others_markdown)
from sdlora.runs import REUSE_IGNORED, atomic_write_json  # noqa: E402
from sdlora.tuning import grid_for, search, tuned_lr  # noqa: E402

REPO = results_table.REPO
LR_METHODS = ["lora", "sd-lora", "full-ft", "frozen", "inflora", "coda-prompt"]
EPOCH_METHODS = ["lora", "sd-lora"]
EPOCHS = [1, 2, 4, 8]


def lr_grid(config: TrainConfig) -> list[float]:
    """The method's tuning grid with the step tuning's search adds below it (0.0005 below
    0.002, 0.008, 0.03); full fine-tuning's grid as it is (its search never left it)."""
    grid = list(grid_for(config))
    if config.method == "full-ft":
        return grid
    return search(grid, lambda lr: -lr, extend=1)  # the lowest rate "best": one step below


def sweep_jobs(benchmark: str, tuned: dict, seeds: list[int]) -> list[dict]:
    """One dict per run: knob, value, method, seed and the job results_table.run_seed takes
    (name, method, lr, overrides). A run on both sweeps (the default epochs at the chosen rate)
    is listed once per sweep and trained once."""
    base = TrainConfig(benchmark=benchmark)
    points = []
    for method in LR_METHODS:
        for lr in lr_grid(replace(base, method=method)):
            points.append(("lr", lr, method, lr, {}))
    for method in EPOCH_METHODS:
        lr = tuned_lr(tuned, replace(base, method=method)) or base.lr
        for epochs in EPOCHS:
            points.append(("epochs", epochs, method, lr,
                           {} if epochs == base.epochs else dict(epochs=epochs)))
    return [dict(knob=knob, value=value, method=method, seed=seed,
                 job=dict(name=results_table.run_name(method, {}, settings, lr), method=method,
                          lr=lr, overrides=settings))
            for seed in seeds for knob, value, method, lr, settings in points]


def settings_of(config: dict, benchmark: str) -> dict:
    """A run's settings as the values that differ from TrainConfig's defaults on its benchmark,
    plus method, lr, epochs and seed (TrainConfig(**settings) rebuilds the run's config)."""
    full = TrainConfig.from_dict(config).to_dict()
    default = asdict(TrainConfig(benchmark=benchmark))
    keep = {"benchmark", "method", "lr", "epochs", "seed", "tasks"}
    return {k: v for k, v in full.items() if k in keep or (
        k not in REUSE_IGNORED and k in default and default[k] != v)}


def collect(args) -> dict:
    root = Path(args.root)
    jobs = sweep_jobs(args.benchmark, args.tuned, args.seeds)
    sweeps: dict = {}
    missing: list[str] = []
    trained: dict[str, dict | None] = {}  # run name -> metrics, so a shared run is read once
    index = 0
    for item in jobs:
        name = f"{item['job']['name']}-s{item['seed']}"
        if name not in trained:
            mine = index % args.shards == args.shard and not args.no_train
            index += 1
            trained[name] = results_table.run_seed(root, item["job"], item["seed"],
                                                   args.benchmark, mine)
        metrics = trained[name]
        if metrics is None:
            if name not in missing:
                missing.append(name)
            continue
        entry = dict(run=name, accuracy_matrix=metrics["accuracy_matrix"],
                     settings=settings_of(metrics["config"], args.benchmark))
        sweeps.setdefault(item["knob"], {}).setdefault(item["method"], {}).setdefault(
            f"{item['value']:g}", {})[str(item["seed"])] = entry
    d = TrainConfig(benchmark=args.benchmark)
    return dict(benchmark=args.benchmark, tasks=d.tasks, default_epochs=d.epochs,
                seeds=args.seeds, partial=bool(missing),
                about=("Per sweep (lr: the learning rate at the default epochs; epochs: the "
                       "epochs per task at each method's validation-chosen rate), method, knob "
                       "value and seed: the run folder's name, its accuracy matrix R[i][j] (%) "
                       "and its settings (the values that differ from TrainConfig's defaults). "
                       "Written by scripts/make_tradeoff.py; 'missing' lists the runs not "
                       "finished when it was written."),
                sweeps=sweeps, missing=missing)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--benchmark", default=TrainConfig().benchmark)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--tuned", default=str(REPO / "results" / "tuned_lr.json"),
                        help="learning rates chosen on validation (the epochs sweep's rate)")
    parser.add_argument("--root", default=None,
                        help="run folders (default cache/benchmark/<benchmark>, shared with "
                             "scripts/results_table.py)")
    parser.add_argument("--shard", default="0/1",
                        help="i/n: train only the runs i, i+n, i+2n ... (others are read)")
    parser.add_argument("--no-train", action="store_true", help="only read finished runs")
    parser.add_argument("--json", default=None,
                        help="where to write (default results/tradeoff_<benchmark>.json)")
    args = parser.parse_args()
    # every bad value is one error line before anything trains (the JSON's file included)
    config = argcheck.config(parser, benchmark=args.benchmark)
    args.shard, args.shards = argcheck.shard(parser, args.shard)
    argcheck.seeds(parser, args.seeds)
    missing_methods = [m for m in LR_METHODS + EPOCH_METHODS if m not in METHODS]
    if missing_methods:
        parser.error(f"methods {missing_methods} are not known to sdlora")
    out = argcheck.output_file(parser, args.json or REPO / "results" /
                               f"tradeoff_{args.benchmark}.json", "--json")
    args.tuned = argcheck.tuned_file(parser, args.tuned, "--tuned")
    logging.basicConfig(level=logging.WARNING)
    args.root = args.root or str(REPO / "cache" / "benchmark" / args.benchmark)
    if not args.no_train:
        argcheck.output_folder(parser, args.root, "--root")
        argcheck.before_training(parser, config)  # data, task count, weights
    elif Path(args.root).exists() and not Path(args.root).is_dir():  # else 0 points written
        parser.error(f"--root {args.root} is a file; expected the folder of runs to read")
    data = collect(args)
    argcheck.checked(parser, atomic_write_json, out, data)  # a failed write: one error line
    found = sum(len(seeds) for methods in data["sweeps"].values()
                for values in methods.values() for seeds in values.values())
    print(f"{out}: {found} points (method, knob value, seed) from {args.root}"
          + (f"; {len(data['missing'])} runs missing: {', '.join(data['missing'])}"
             if data["missing"] else "; none missing"), file=sys.stderr)
    for knob in data["sweeps"]:  # the README's frontier paragraph: SD-LoRA's curve vs LoRA's
        print(f"\n{knob} sweep\n" + frontier_markdown(frontier_summary(data, knob)))
        print(f"\n{knob} sweep, the other methods against sd-lora's curve\n"
              + others_markdown(data, knob))


if __name__ == "__main__":
    argcheck.quiet_on_closed_pipe(main)
