"""Probe a benchmark design: SimpleCIL, joint and SD-LoRA Acc side by side, seed by seed.

Every row is a real run of the package's own method (`python -m sdlora train --method ...`):
`simplecil` (frozen backbone, class-mean prototypes), `joint` (all classes as one task, the
adapter given by --joint-adapter) and the incremental methods named by --methods. The figures
issue 9 asks of a default are printed at the end: joint - simplecil and joint - SD-LoRA.

    python scripts/probe_default.py --benchmark glyphs40 --backbone glyph-vit --seeds 0 1 2
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sdlora import argcheck  # noqa: E402
from sdlora.config import METHODS, TrainConfig  # noqa: E402
from sdlora.runs import RunFolder  # noqa: E402
from sdlora.train import holdout_split, load_data, train  # noqa: E402


def run_acc(bench=None, **overrides) -> tuple[float, float]:
    cfg = TrainConfig().with_options(**overrides)  # new_magnitude_init where it applies
    with tempfile.TemporaryDirectory() as tmp:
        start = time.time()
        run = train(cfg, out=f"{tmp}/run", progress=False,
                    benchmark=holdout_split(cfg, bench) if bench is not None else load_data(cfg))
        return RunFolder(run.path).metrics()["acc"], time.time() - start


def mean_se(values: list[float]) -> tuple[float, float]:
    se = statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else float("nan")
    return statistics.mean(values), se


def main() -> None:
    d = TrainConfig()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--benchmark", default=d.benchmark)
    p.add_argument("--backbone", default=None, help="default: the benchmark's foundation model")
    p.add_argument("--weights", default=None)
    p.add_argument("--tasks", type=int, default=d.tasks)
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--new-magnitude-init", type=float, default=None,
                   help="start of a new alpha_t (default: the paper's 1; the README's design "
                        "table was probed with 0)")
    p.add_argument("--holdout", default="test", choices=["test", "validation"])
    p.add_argument("--joint-adapter", default="sd-lora", choices=["lora", "sd-lora", "full-ft"])
    p.add_argument("--methods", nargs="+", default=["simplecil", "joint", "sd-lora"],
                   choices=list(METHODS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--bench-kwargs", default=None,
                   help="JSON arguments of the benchmark's builder (a design being probed), "
                        "e.g. '{\"classes\": 40}'")
    args = p.parse_args()
    common = dict(benchmark=args.benchmark, weights=args.weights, epochs=args.epochs,
                  tasks=args.tasks, lr=args.lr, new_magnitude_init=args.new_magnitude_init,
                  holdout=args.holdout, **({"backbone": args.backbone} if args.backbone else {}))
    # every bad value is one error line before the first run
    for method in args.methods:
        extra = dict(joint_adapter=args.joint_adapter) if method == "joint" else {}
        argcheck.config(p, method=method, **common, **extra)
    argcheck.seeds(p, args.seeds)
    if args.weights is not None:
        argcheck.weights(p, args.weights)
    bench = None
    if not args.bench_kwargs:  # the data, the task count, the backbone: as `sdlora train`
        argcheck.before_training(p, TrainConfig(method=args.methods[0], **common))
    if args.bench_kwargs:
        from sdlora.data import BENCHMARKS
        if args.benchmark not in BENCHMARKS:
            p.error(f"--bench-kwargs: --benchmark {args.benchmark} is not built in code; "
                    f"the embedded benchmarks are {', '.join(BENCHMARKS)}")
        try:
            kwargs = json.loads(args.bench_kwargs)
        except json.JSONDecodeError as err:
            p.error(f"--bench-kwargs {args.bench_kwargs!r} is not JSON ({err}); expected an "
                    f"object of the builder's arguments, e.g. '{{\"classes\": 40}}'")
        if not isinstance(kwargs, dict):
            p.error(f"--bench-kwargs {args.bench_kwargs!r} is a JSON {type(kwargs).__name__}; "
                    f"expected an object of the builder's arguments, e.g. '{{\"classes\": 40}}'")
        try:
            bench = BENCHMARKS[args.benchmark](**kwargs)
        except Exception as err:  # noqa: BLE001 - any failure of the builder on these arguments
            p.error(f"--bench-kwargs {args.bench_kwargs}: {args.benchmark}'s builder refused "
                    f"them ({' '.join(str(err).split())})")
    rows: dict[str, list[float]] = {}
    for seed in args.seeds:
        for method in args.methods:
            extra = dict(joint_adapter=args.joint_adapter) if method == "joint" else {}
            acc, secs = run_acc(bench, method=method, seed=seed, **common, **extra)
            rows.setdefault(method, []).append(acc)
            print(json.dumps({"seed": seed, "method": method, "acc": round(acc, 2),
                              "seconds": round(secs, 1)}), flush=True)
    for name, values in rows.items():
        m, se = mean_se(values)
        print(f"{name:22s} Acc {m:6.2f} +- {se:.2f}  (n={len(values)})")
    if "joint" in rows:
        j = statistics.mean(rows["joint"])
        for name in rows:
            if name != "joint":
                print(f"joint - {name:14s} {j - statistics.mean(rows[name]):+6.2f}")


if __name__ == "__main__":
    argcheck.quiet_on_closed_pipe(main)
