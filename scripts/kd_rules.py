"""How many directions SD-LoRA-KD absorbs on the embedded default under each rule, and what it
costs in accuracy: the scale-free relative residual (kd_residual='relative') against Algorithm 1
line 11's absolute residual of the unnormalised products (kd_residual='absolute').

    python scripts/kd_rules.py [--seeds 0 1 2] [--tau 9e-4] [--sd-lora-runs 'cache/demo/sd-lora-s{seed}']
        [--benchmark glyphs40] [--root cache/benchmark] [--train-kd]

How. SD-LoRA-KD trains exactly as SD-LoRA until its first absorption (the test at the end of a
task only reads the model), so the residuals of an SD-LoRA run at the end of each task are the
ones SD-LoRA-KD tests, up to its first absorption. For each seed and rule this script reads
them from the SD-LoRA run's checkpoints (`residuals_at_task_end`); where a rule absorbs nothing,
the KD run *is* the SD-LoRA run (0 directions absorbed, the same accuracy); where it would
absorb, the later decisions depend on the KD run's own path, so the KD run is trained (under
--root, reused when finished) and its recorded decisions and accuracy are used. --train-kd
trains the KD runs in every case (a check of the shortcut). The SD-LoRA runs given are only
read (each a finished sd-lora run of its seed, all of one benchmark, which the KD runs take);
SD-LoRA runs missing from --sd-lora-runs are trained there (on --benchmark, default the
embedded default, as scripts/results_table.py does). A KD run under --root made with other
settings is refused, not reused.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sdlora import argcheck  # noqa: E402
from sdlora.analysis import residuals_at_task_end  # noqa: E402
from sdlora.config import TrainConfig  # noqa: E402
from sdlora.runs import RunFolder  # noqa: E402
from sdlora.train import train  # noqa: E402

RULES = {"relative": "model", "absolute": "model (absolute)"}


def finished(path: Path, config: TrainConfig) -> RunFolder:
    run = RunFolder(path)
    if not run.exists():
        train(config, out=run.path, progress=False)
    elif run.completed_tasks() < config.tasks:
        train(resume=run.path, progress=False)
    return run


def sd_lora_configs(parser, args) -> dict[int, tuple[Path, TrainConfig]]:
    """Per seed the SD-LoRA run folder and its config: an existing run is read, never trained
    further (it must be a finished sd-lora run of that seed); a missing one will be trained
    there on --benchmark. Every run must be of one benchmark."""
    try:
        paths = {seed: Path(args.sd_lora_runs.format(seed=seed)) for seed in args.seeds}
    except (KeyError, IndexError, ValueError) as err:
        parser.error(f"--sd-lora-runs {args.sd_lora_runs!r}: {err!s} is not a field it may "
                     f"hold; give a path with {{seed}}, e.g. cache/demo/sd-lora-s{{seed}}")
    if len(set(paths.values())) < len(paths):
        parser.error(f"--sd-lora-runs {args.sd_lora_runs!r} names the same folder for several "
                     f"seeds; give a path with {{seed}}")
    out, benchmarks = {}, set()
    for seed, path in paths.items():
        config = argcheck.run_config(parser, path, "--sd-lora-runs")
        if config is not None:
            what = f"--sd-lora-runs {path}"
            if (config.method, config.variant, config.seed) != ("sd-lora", "paper", seed):
                parser.error(f"{what} is a {config.method} ({config.variant}) run of seed "
                             f"{config.seed}; expected an sd-lora run of seed {seed}")
            if args.benchmark not in (None, config.benchmark):
                parser.error(f"--benchmark {args.benchmark}: {what} is a {config.benchmark} "
                             f"run; the KD runs take the benchmark of the runs they are given")
            done = argcheck.checked(parser, RunFolder(path).completed_tasks)
            if done < config.tasks:
                parser.error(f"{what} is unfinished ({done}/{config.tasks} tasks); this script "
                             f"only reads it: finish it with `python -m sdlora train --resume "
                             f"{path}`")
            benchmarks.add(config.benchmark)
        out[seed] = (path, config)
    if len(benchmarks) > 1:
        parser.error(f"--sd-lora-runs {args.sd_lora_runs!r} holds runs of several benchmarks "
                     f"({', '.join(sorted(benchmarks))}); give one benchmark's runs")
    benchmark = args.benchmark or (benchmarks.pop() if benchmarks else TrainConfig().benchmark)
    for seed, (path, config) in out.items():
        if config is None:
            out[seed] = (path, argcheck.config(parser, method="sd-lora", seed=seed,
                                               benchmark=benchmark))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--tau", type=float, default=TrainConfig().kd_tau)
    parser.add_argument("--sd-lora-runs", default="cache/benchmark/sd-lora-s{seed}",
                        help="SD-LoRA run folder per seed ({seed} is replaced); existing ones "
                             "are only read")
    parser.add_argument("--benchmark", default=None,
                        help="of SD-LoRA runs to train where --sd-lora-runs has none (default: "
                             "that of the runs there, else the config's)")
    parser.add_argument("--root", default="cache/benchmark", help="where KD runs go")
    parser.add_argument("--train-kd", action="store_true",
                        help="train the SD-LoRA-KD runs even where no rule absorbs")
    args = parser.parse_args()
    argcheck.seeds(parser, args.seeds)
    argcheck.config(parser, {"kd_tau": "--tau"}, method="sd-lora-kd", kd_tau=args.tau)
    if args.benchmark is not None:
        argcheck.config(parser, benchmark=args.benchmark)
    bases = sd_lora_configs(parser, args)
    argcheck.output_folder(parser, args.root, "--root")
    kd_configs = {}  # a KD run folder made with other settings is never reused
    for seed, (_, config) in bases.items():
        for rule in RULES:
            name = "sd-lora-kd" + ("-absolute" if rule == "absolute" else "") + f"-s{seed}"
            # the KD run differs from its SD-LoRA run in the method and the rule only
            kd = argcheck.config(parser, **{**config.to_dict(), "method": "sd-lora-kd",
                                            "kd_residual": rule, "kd_tau": args.tau})
            argcheck.run_matches(parser, Path(args.root) / name, kd, "--root")
            kd_configs[seed, rule] = (name, kd)
    logging.basicConfig(level=logging.WARNING)
    rows = []
    for seed in args.seeds:
        base = finished(*bases[seed])
        table = residuals_at_task_end(base)
        ref = base.metrics()
        for rule, column in RULES.items():
            residuals = table[column].to_numpy()
            predicted = int((residuals < args.tau).sum())
            source = "sd-lora run (no absorption: identical)"
            m, absorbed = ref, 0
            if predicted or args.train_kd:
                name, config = kd_configs[seed, rule]
                m = finished(Path(args.root) / name, config).metrics()
                absorbed = sum(bool(t.get("absorbed")) for t in m["task_info"])
                source = f"trained {name}"
            rows.append(dict(seed=seed, rule=rule, absorbed=absorbed, tested=len(residuals),
                             smallest=residuals.min(),
                             largest=residuals.max(), acc=m["acc"], aaa=m["aaa"],
                             d_acc=m["acc"] - ref["acc"], d_aaa=m["aaa"] - ref["aaa"],
                             source=source))
            print(f"seed {seed} {rule:>8}: residuals at task ends "
                  f"{', '.join(f'{r:.4g}' for r in residuals)}; absorbed {absorbed} of "
                  f"{len(residuals)}; Acc {m['acc']:.2f} (sd-lora {ref['acc']:.2f}) "
                  f"[{source}]", file=sys.stderr)
    print(f"| rule | directions absorbed | residual range (tau = {args.tau:g}) | Acc cost | "
          f"AAA cost |\n|---|---|---|---|---|")
    for rule in RULES:
        part = [r for r in rows if r["rule"] == rule]
        lo, hi = min(r["smallest"] for r in part), max(r["largest"] for r in part)
        print(f"| {rule} | {sum(r['absorbed'] for r in part)} of "
              f"{sum(r['tested'] for r in part)} | {lo:.5g} - {hi:.5g} | "
              f"{np.mean([r['d_acc'] for r in part]):+.2f} | "
              f"{np.mean([r['d_aaa'] for r in part]):+.2f} |")
    benchmark = next(iter(bases.values()))[1].benchmark
    print(f"\n{benchmark}, seeds {args.seeds}; cost = SD-LoRA-KD minus SD-LoRA, mean over "
          f"seeds, points.")


if __name__ == "__main__":
    argcheck.quiet_on_closed_pipe(main)
