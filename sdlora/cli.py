"""Command line: ``python -m sdlora {train,runs,show,pretrain,analyse} ...``."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .config import METHODS, ConfigError, TrainConfig
from .data import DataError

log = logging.getLogger("sdlora")


def _train_parser(sub) -> None:
    p = sub.add_parser("train", help="train a class-incremental run (the embedded default "
                                     "when flags are omitted)")
    defaults = TrainConfig()
    p.add_argument("--benchmark", default=defaults.benchmark)
    p.add_argument("--backbone", default=defaults.backbone)
    p.add_argument("--weights", default=None, help="local weights file for the backbone")
    p.add_argument("--method", default=defaults.method, help=f"one of: {', '.join(METHODS)}")
    p.add_argument("--variant", default=defaults.variant,
                   help="sd-lora only: 'paper' (default) or 'released' (the authors' code)")
    p.add_argument("--tasks", type=int, default=defaults.tasks)
    p.add_argument("--epochs", type=int, default=defaults.epochs)
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--optimizer", default=defaults.optimizer, help="adam or sgd")
    p.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    p.add_argument("--schedule", default=defaults.schedule, help="constant or cosine")
    p.add_argument("--rank", type=int, default=defaults.rank)
    p.add_argument("--kd-tau", type=float, default=defaults.kd_tau)
    p.add_argument("--new-magnitude-init", type=float, default=defaults.new_magnitude_init)
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--device", default=defaults.device, help="auto, cpu or cuda")
    p.add_argument("--out", default=None, help="the run folder (exactly this path)")
    p.add_argument("--resume", default=None, metavar="RUN",
                   help="continue an interrupted run (a run folder or id); other flags ignored")
    p.add_argument("--config", default=None, metavar="JSON",
                   help="a TrainConfig as JSON (as in a run's config.json); other flags ignored")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _resolve_run(name: str) -> Path:
    from .runs import default_runs_root

    path = Path(name)
    if path.exists():
        return path
    candidate = default_runs_root() / name
    if candidate.exists():
        return candidate
    raise ConfigError(f"run {name!r} not found (neither a folder nor an id under "
                      f"{default_runs_root()}); `python -m sdlora runs` lists them")


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _cmd_train(args) -> int:
    import signal

    from .train import train

    signal.signal(signal.SIGTERM, _interrupt)  # a cancelled job records 'cancelled' and stops

    if args.resume:
        run = train(resume=_resolve_run(args.resume), progress=not args.quiet)
    elif args.config:
        config = TrainConfig.from_dict(json.loads(Path(args.config).read_text()))
        _check_before_training(config)
        run = train(config, out=args.out, progress=not args.quiet)
    else:
        config = TrainConfig(benchmark=args.benchmark, backbone=args.backbone,
                             weights=args.weights, method=args.method, variant=args.variant,
                             tasks=args.tasks, epochs=args.epochs, batch_size=args.batch_size,
                             lr=args.lr, optimizer=args.optimizer, weight_decay=args.weight_decay,
                             schedule=args.schedule, rank=args.rank, kd_tau=args.kd_tau,
                             new_magnitude_init=args.new_magnitude_init, seed=args.seed,
                             device=args.device)
        _check_before_training(config)
        run = train(config, out=args.out, progress=not args.quiet)
    print(format_run(run.path))
    return 0


def _check_before_training(config: TrainConfig) -> None:
    """Everything that can fail before training: data, task count, device, weights."""
    from .backbone import BACKBONES
    from .data import load_benchmark, make_task_split
    from .train import resolve_device

    resolve_device(config.device)
    benchmark = load_benchmark(config.benchmark)
    try:
        make_task_split(benchmark.num_classes, config.tasks, config.seed)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    spec = BACKBONES.get(config.backbone)
    weights = config.weights or (spec.weights if spec else None)
    if weights is not None and not Path(weights).exists():
        raise ConfigError(f"weights file {weights} not found")


def format_run(path: Path) -> str:
    """The final table: R (percent) per task, then Acc, AAA, forgetting, BWT."""
    from .runs import RunFolder

    run = RunFolder(path)
    m = run.metrics()
    n = len(m["accuracy_matrix"])
    lines = [f"run {run.id}  ({run.path})",
             f"method {m['method']}  benchmark {m['benchmark']}  seed {m['seed']}  "
             f"tasks {n}/{m['tasks']}",
             "after task | " + " ".join(f"T{j + 1:>5}" for j in range(n)) + " |  seen"]
    for i, row in enumerate(m["accuracy_matrix"]):
        cells = " ".join(f"{v:6.1f}" for v in row) + "       " * (n - len(row))
        lines.append(f"{i + 1:>10} | {cells} | {m['seen_accuracy'][i]:5.1f}")
    lines.append(f"Acc {m['acc']:.2f}  AAA {m['aaa']:.2f}  forgetting {m['forgetting']:.2f}  "
                 f"BWT {m['bwt']:.2f}")
    kd = [t for t in m.get("task_info", []) if "absorbed" in t]
    if kd:
        lines.append("KD: " + ", ".join(f"residual {t['residual']:.2e} "
                                        f"{'absorbed' if t['absorbed'] else 'kept'}" for t in kd))
    return "\n".join(lines)


def _cmd_runs(args) -> int:
    from .runs import RunError, list_runs

    runs = list_runs(args.root)
    if not runs:
        print("no runs yet; start one with `python -m sdlora train`")
        return 0
    print(f"{'run':58} {'method':22} {'state':11} {'tasks':>5} {'Acc':>6} {'AAA':>6}")
    for run in runs:
        try:
            s = run.summary()
        except RunError as err:
            print(f"{run.id:58} unreadable: {err}")
            continue
        acc = f"{s['acc']:.1f}" if s["acc"] is not None else "-"
        aaa = f"{s['aaa']:.1f}" if s["aaa"] is not None else "-"
        print(f"{s['id']:58} {s['method']:22} {s['state']:11} {s['done']:>2}/{s['tasks']:<2} "
              f"{acc:>6} {aaa:>6}")
    return 0


def _cmd_show(args) -> int:
    from .runs import RunFolder

    path = _resolve_run(args.run)
    if args.json:
        print(json.dumps(RunFolder(path).metrics(), indent=1))
    else:
        print(format_run(path))
    return 0


def _cmd_pretrain(args) -> int:
    from .pretrain import pretrain

    print(json.dumps(pretrain(epochs=args.epochs, seed=args.seed), indent=1))
    return 0


def _cmd_worker(args) -> int:
    from .jobs import worker_loop

    worker_loop(idle_exit=args.idle_exit)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sdlora", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _train_parser(sub)
    p = sub.add_parser("runs", help="list runs")
    p.add_argument("--root", default=None)
    p = sub.add_parser("show", help="print one run's results")
    p.add_argument("run")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("worker", help="run the queue of training jobs (the app starts it)")
    p.add_argument("--idle-exit", type=float, default=30.0)
    p = sub.add_parser("pretrain", help="pretrain the embedded foundation model")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    try:
        from .analysis.cli import add_parser as add_analyse
        add_analyse(sub)
    except ImportError:
        pass
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    commands = dict(train=_cmd_train, runs=_cmd_runs, show=_cmd_show, pretrain=_cmd_pretrain,
                    worker=_cmd_worker)
    handler = commands.get(args.command) or args.handler
    try:
        return handler(args)
    except (ConfigError, DataError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; continue with --resume", file=sys.stderr)
        return 130
    except Exception as err:
        from .runs import RunError
        if isinstance(err, RunError):
            print(f"error: {err}", file=sys.stderr)
            return 2
        raise
