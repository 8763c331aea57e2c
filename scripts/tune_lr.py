"""Choose each method's learning rate on a validation split of the training data.

    python scripts/tune_lr.py [--methods ...] [--benchmark glyphs40] [--seeds 0]
        [--root cache/benchmark/<benchmark>/tuning]

For each method, trains the benchmark (default: the embedded default) once per learning rate of its grid
(`sdlora.tuning.GRIDS`, grown past a winning end at most `MAX_EXTENSIONS` = 3 times) with
holdout='validation' and keeps the lr with the best validation Acc; the test set is never read.
A method with coupled rates (hide-prompt) is tuned on its base rate with the released ratios
fixed, and the summary lists every part's rate at the chosen one. A finished run folder is
reused only if it was made with the same settings; one made with others stops the tuning with
`error:` naming it (exit 2). Writes one JSON per method under --root and the summary
`results/tuned_lr.json` that scripts/results_table.py reads. Finished runs are reused; several
processes may tune different methods side by side (the summary is re-read and written under a
lock).
"""
from __future__ import annotations

import argparse
import fcntl
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sdlora import argcheck  # noqa: E402
from sdlora.config import JOINT_ADAPTERS, METHODS, TrainConfig  # noqa: E402
from sdlora.methods import method_class  # noqa: E402
from sdlora.runs import RunError, atomic_write_json  # noqa: E402
from sdlora.tables import coupled_rates  # noqa: E402
from sdlora.tuning import at_cap, load_tuned, tune  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SUMMARY = REPO / "results" / "tuned_lr.json"


def chosen_text(r: dict) -> str:
    """The chosen rate, marked when it is an end of the grid (the cap stopped it), with every
    part's rate for a method of several coupled rates."""
    return (f"{r['chosen_lr']:g}" + (" (at the grid's edge: cap reached)" if at_cap(r) else "")
            + coupled_rates(r.get("part_rates")))


def show(summary: dict) -> None:
    print("| method @ benchmark | validation Acc per learning rate (seed 0) | chosen |\n|---|---|---|")
    for key, r in sorted(summary.items()):
        cells = ", ".join(f"{lr}: {acc:.1f}" for lr, acc in sorted(
            r["validation_acc"].items(), key=lambda kv: float(kv[0])))
        print(f"| {key} | {cells} | {chosen_text(r)} |")


def main() -> None:
    trainable = [m for m in METHODS if method_class(m).trains_by_gradient]
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", nargs="+", default=trainable, choices=trainable)
    parser.add_argument("--joint-adapters", nargs="+", default=["lora", "sd-lora"],
                        choices=JOINT_ADAPTERS)
    parser.add_argument("--benchmark", default=TrainConfig().benchmark)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--root", default=None,
                        help="run folders (default cache/benchmark/<benchmark>/tuning)")
    parser.add_argument("--summary", default=str(SUMMARY))
    parser.add_argument("--hide-budget", default="equal", choices=["equal", "released"],
                        help="hide-prompt's budget (TrainConfig.hide_budget): 'equal' shares "
                             "the epochs with its task-identity stage; 'released' is the "
                             "extra budget of its released 20/30-epoch stages")
    parser.add_argument("--show", action="store_true",
                        help="print the summary as a markdown table (validation Acc per rate) "
                             "and train nothing")
    args = parser.parse_args()
    if args.show:
        show(argcheck.tuned_file(parser, args.summary, "--summary"))
        return
    # bad values, an unreadable summary or a folder it cannot write: one error line, up front
    argcheck.config(parser, benchmark=args.benchmark)
    argcheck.seeds(parser, args.seeds)
    argcheck.tuned_file(parser, args.summary, "--summary", required=False)
    argcheck.output_file(parser, args.summary, "--summary")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    root = args.root or REPO / "cache" / "benchmark" / args.benchmark / "tuning"
    argcheck.output_folder(parser, root, "--root")
    configs = []
    for method in args.methods:
        if method == "joint":
            configs += [TrainConfig(benchmark=args.benchmark, method="joint", joint_adapter=a)
                        for a in args.joint_adapters]
        else:
            configs.append(TrainConfig(benchmark=args.benchmark, method=method,
                                       **({"hide_budget": args.hide_budget}
                                          if method == "hide-prompt" else {})))
    summary_path = Path(args.summary)
    summary_path.parent.mkdir(parents=True, exist_ok=True)
    for config in configs:
        try:
            result = tune(config, root, seeds=tuple(args.seeds))
        except RunError as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
        with open(summary_path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            summary = load_tuned(summary_path)
            summary[result["key"]] = result
            argcheck.checked(parser, atomic_write_json, summary_path, summary)
        print(f"{result['label']}: validation Acc "
              + ", ".join(f"lr {lr}: {acc:.1f}" for lr, acc in result["validation_acc"].items())
              + f" -> lr {chosen_text(result)}")
    print(json.dumps({k: v["chosen_lr"] for k, v in summary.items()}))


if __name__ == "__main__":
    argcheck.quiet_on_closed_pipe(main)
