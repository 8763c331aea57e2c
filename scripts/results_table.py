"""Regenerate the README's results table: every method on an embedded benchmark, seeds 0-4.

    python scripts/results_table.py [--benchmark glyphs40] [--seeds 0 1 2 3 4] [--methods ...]
        [--tuned results/tuned_lr.json] [--root cache/benchmark/<benchmark>] [--shard 0/2]
        [--variant-released] [--kd-absolute] [--hide-released] [--merge-into JSON]
        [--json results/table_<benchmark>.json]

Each method trains at the learning rate that `scripts/tune_lr.py` chose for it on a validation
split of the training data (the file given by --tuned; the test split never chooses anything).
HiDe-Prompt's row has the equal budget (`TrainConfig.hide_budget`: its task-identity stage
shares the `epochs` passes over a task's images with the prompts; run folders named
`hide-prompt-equal-...`); `--hide-released` adds a row with its released 20/30-epoch stages,
labelled as an extra budget (`hide-prompt-released-...`). A rate the tuning chose at the edge
of its grid (the cap reached) is marked in the row, and a method of several coupled rates lists
every part's rate. SD-LoRA's ablations and variants use SD-LoRA's chosen rate (they change one
part of SD-LoRA and keep its settings, as the paper's Table 4 does); a method without a tuned rate runs at the
config's default and its row says "not tuned". `--tuned-from BENCHMARK` takes the rates chosen
on another benchmark's validation split instead (the 10-task preset `glyphs80-10` runs at the
rates chosen on glyphs40: `--benchmark glyphs80 --set tasks=10 --tuned-from glyphs40`); each
row then says where its rate came from.

Runs that already finished under --root are reused (delete the folder to recompute); an
interrupted run is resumed. `--shard i/n` trains only every n-th job (start one process per
shard side by side; each run folder is claimed, so shards never share one), `--no-train` only
reads finished runs. Prints a markdown table of Acc, AAA and forgetting, mean +- standard error
over seeds, and per method a paired t-test against SD-LoRA over the seeds (the same seed gives
both the same class order): the difference in Acc, its p-value, the p-value adjusted by Holm's
method over all of the table's tests, and what the adjusted one says at 0.05.

`--merge-into results/table_<benchmark>.json` (re)trains only the --methods given and merges
their rows into that table: a row of the same label replaced, the others kept as they are (their
run folders need not be on this machine), the tests recomputed over the merged rows.
"""
from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sdlora import argcheck  # noqa: E402
from sdlora.argcheck import parse_settings  # noqa: E402
from sdlora.config import METHODS, TrainConfig, part_rates  # noqa: E402
from sdlora.methods import method_class  # noqa: E402
from sdlora.runs import RunError, RunFolder, atomic_write_json, check_same_settings  # noqa: E402
from sdlora.tables import (TableError, display_rows, load_table,  # noqa: E402
                           versus_reference)
from sdlora.train import train  # noqa: E402
from sdlora.tuning import at_cap, summary_key, tuned_lr  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
ORDER = ["simplecil", "frozen", "full-ft", "lora", "sd-lora", "sd-lora-rr", "sd-lora-kd",
         "fixed-first-direction", "single-decoupled", "no-rescale", "frozen-magnitudes",
         "inflora", "l2p", "dualprompt", "coda-prompt", "hide-prompt", "joint"]
ORDER = [m for m in ORDER if m in METHODS] + [m for m in METHODS if m not in ORDER]
# Methods that change one part of SD-LoRA: they run at SD-LoRA's chosen learning rate.
SD_LORA_FAMILY = {"sd-lora-rr", "sd-lora-kd", "fixed-first-direction", "single-decoupled",
                  "no-rescale", "frozen-magnitudes"}
REFERENCE = "sd-lora"
# Extra rows (method, overrides, label) run beside the methods named, when their method is.
EXTRA: list = []
# HiDe-Prompt with its released 20/30-epoch stages beside `epochs` of prompts (--hide-released):
# more passes over the images than every other row, so its label says so.
RELEASED_HIDE_LABEL = "hide-prompt (released 20/30-epoch stages: extra budget)"


def build_jobs(args, tuned: dict) -> list[dict]:
    """One dict per table row: label, method, overrides, the lr and where it came from."""
    base = TrainConfig(benchmark=args.benchmark)
    settings = parse_settings(getattr(args, "set", []))
    if args.epochs is not None:
        settings["epochs"] = args.epochs
    base = replace(base, **settings)

    tuned_from = getattr(args, "tuned_from", None)

    def lr_of(config: TrainConfig) -> tuple[float, str]:
        where = "" if tuned_from is None else f" on {tuned_from}"
        if tuned_from is not None:
            config = replace(config, benchmark=tuned_from)
        own = tuned_lr(tuned, config)
        if own is not None:
            edge = ", at the grid's edge (cap)" if at_cap(tuned[summary_key(config)]) else ""
            return own, "tuned" + where + edge
        if config.method in SD_LORA_FAMILY:
            ref = tuned_lr(tuned, config.with_options(method=REFERENCE, variant="paper"))
            if ref is not None:
                return ref, "sd-lora's" + where
        if config.method == "sd-lora" and config.variant != "paper":
            ref = tuned_lr(tuned, replace(config, variant="paper"))
            if ref is not None:
                return ref, "sd-lora's" + where
        return base.lr, "not tuned"

    specs = []
    for method in args.methods:
        if method == "joint":
            for adapter in args.joint_adapters:
                specs.append((method, dict(joint_adapter=adapter), f"joint ({adapter} adapter)"))
        else:
            specs.append((method, {}, method))
    if args.variant_released:
        specs.append(("sd-lora", dict(variant="released"), "sd-lora (released code's variant)"))
    if args.kd_absolute:
        specs.append(("sd-lora-kd", dict(kd_residual="absolute"),
                      "sd-lora-kd (absolute residual, Algorithm 1 line 11)"))
    if getattr(args, "hide_released", False):
        specs.append(("hide-prompt", dict(hide_budget="released"), RELEASED_HIDE_LABEL))
    specs += [e for e in EXTRA if e[0] in args.methods]
    jobs = []
    for method, overrides, label in specs:
        # made afresh, so the method's own defaults (head rate, clip) resolve as run_seed's do;
        # --set where it applies to the method (with_options)
        config = TrainConfig(benchmark=args.benchmark, method=method).with_options(
            **settings, **overrides)
        lr, source = lr_of(config)
        reference = method == REFERENCE and not overrides
        # --set is in the name even where it does not apply, as the folders made before issue 23
        applied = {k: v for k, v in settings.items() if getattr(config, k) == v}
        jobs.append(dict(label=label, method=method, overrides={**overrides, **applied}, lr=lr,
                         lr_source=source,
                         name=run_name(method, overrides, settings, lr, config.hide_budget),
                         reference=reference, part_rates=part_rates(replace(config, lr=lr))))
    return jobs


def run_name(method: str, overrides: dict, settings: dict, lr: float,
             hide_budget: str = "equal") -> str:
    """A run folder's name without its seed: the method, the row's own `overrides` (variant,
    residual rule, joint adapter, HiDe-Prompt's budget), then the `settings` every row shares
    (epochs as -e<E>), then the learning rate: e.g. 'sd-lora-lr0.002', 'lora-e8-lr0.002',
    'hide-prompt-equal-lr0.008'. HiDe-Prompt's budget is always named (folders from before the
    budget existed ran the released stages and are never picked up for the equal budget).
    scripts/make_tradeoff.py names its runs the same way, so the two scripts share folders."""
    suffix = "".join(f"-{v}" if k in ("variant", "kd_residual", "joint_adapter", "hide_budget")
                     else f"-{k}{v}" for k, v in overrides.items())
    if method == "hide-prompt" and "hide_budget" not in {**overrides, **settings}:
        suffix += f"-{hide_budget}"
    for key, value in settings.items():
        suffix += f"-e{value}" if key == "epochs" else f"-{key}{value:g}" \
            if isinstance(value, float) else f"-{key}{value}"
    return f"{method}{suffix}-lr{lr:g}"


def run_seed(root: Path, job: dict, seed: int, benchmark: str, may_train: bool) -> dict | None:
    run = RunFolder(root / f"{job['name']}-s{seed}")
    config = TrainConfig(benchmark=benchmark, method=job["method"], seed=seed, lr=job["lr"],
                         **job["overrides"])
    if run.exists():  # a folder of the same name made with other settings is never reused
        try:
            check_same_settings(run, config)
        except RunError as err:
            raise SystemExit(f"error: {err}") from None
    tasks = 1 if config.method == "joint" else config.tasks
    if may_train:
        if not run.exists():
            train(config, out=run.path, progress=False)
        elif run.completed_tasks() < tasks:
            train(resume=run.path, progress=False)
    if not run.exists() or run.completed_tasks() < tasks:
        return None
    return run.metrics()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--benchmark", default=TrainConfig().benchmark)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs a task (default the config's; renditions20's table was "
                             "made with 5)")
    parser.add_argument("--methods", nargs="+", default=ORDER, choices=list(METHODS))
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="config values for every row (named in the run folders), e.g. "
                             "new_magnitude_init=0 as renditions20's table was made")
    parser.add_argument("--joint-adapters", nargs="+", default=["sd-lora"],
                        choices=["lora", "sd-lora", "full-ft"])
    parser.add_argument("--tuned", default=str(REPO / "results" / "tuned_lr.json"),
                        help="learning rates chosen on validation (scripts/tune_lr.py)")
    parser.add_argument("--tuned-from", default=None, metavar="BENCHMARK",
                        help="use the rates chosen on this benchmark's validation split (e.g. "
                             "glyphs40 for the 10-task preset on glyphs80)")
    parser.add_argument("--root", default=None,
                        help="run folders (default cache/benchmark/<benchmark>)")
    parser.add_argument("--shard", default="0/1",
                        help="i/n: train only the jobs i, i+n, i+2n ... (others are read)")
    parser.add_argument("--no-train", action="store_true", help="only read finished runs")
    parser.add_argument("--json", default=None,
                        help="also write the table here (default results/table_<benchmark>.json "
                             "when every run is finished)")
    parser.add_argument("--merge-into", default=None, metavar="JSON",
                        help="merge the rows of the --methods run here into this table (e.g. "
                             "results/table_glyphs40.json): rows of the same label replaced, "
                             "the others kept (their run folders need not be here), the tests "
                             "and Holm's adjustment recomputed; written back to it")
    parser.add_argument("--variant-released", action="store_true",
                        help="also run sd-lora with variant='released'")
    parser.add_argument("--hide-released", action="store_true",
                        help="also run hide-prompt with its released 20/30-epoch stages "
                             "(hide_budget='released'), a row labelled as an extra budget; "
                             "the hide-prompt row itself has the equal budget")
    parser.add_argument("--kd-absolute", action="store_true",
                        help="also run sd-lora-kd with kd_residual='absolute' (Algorithm 1 "
                             "line 11 as written)")
    args = parser.parse_args()
    shard, shards = argcheck.shard(parser, args.shard)
    # every bad value is one error line before anything trains (the table's file included)
    given = dict(benchmark=args.benchmark,
                 **({} if args.epochs is None else dict(epochs=args.epochs)))
    given.update(argcheck.settings(parser, args.set, **given))
    argcheck.seeds(parser, args.seeds)
    if args.json:
        argcheck.output_file(parser, args.json, "--json")
    tuned = argcheck.tuned_file(parser, args.tuned, "--tuned")
    logging.basicConfig(level=logging.WARNING)
    root = Path(args.root or REPO / "cache" / "benchmark" / args.benchmark)
    if not args.no_train:
        argcheck.output_folder(parser, root, "--root")
        argcheck.before_training(parser, TrainConfig(**given))  # data, task count, weights
    if args.tuned_from is not None and not any(k.endswith(f"@{args.tuned_from}") for k in tuned):
        known = sorted({k.split("@", 1)[1] for k in tuned})
        parser.error(f"--tuned-from {args.tuned_from!r}: {args.tuned} has no rate chosen on it; "
                     f"benchmarks with chosen rates: {', '.join(known) or 'none'}")
    jobs = argcheck.checked(parser, build_jobs, args, tuned)
    results: dict[str, list[dict]] = {}
    missing = []
    index = 0
    for seed in args.seeds:  # seed-major: every method has seed 0 before any has seed 1
        for job in jobs:
            if method_class(job["method"]).trains_by_gradient:  # shards share the long runs
                mine = index % shards == shard
                index += 1
            else:  # prototype methods take seconds: shard 0's
                mine = shard == 0
            mine = mine and not args.no_train
            m = run_seed(root, job, seed, args.benchmark, mine)
            if m is None:
                missing.append(f"{job['name']}-s{seed}")
                continue
            results.setdefault(job["label"], []).append({**m, "seed": seed})
            print(f"{job['name']}-s{seed}: Acc {m['acc']:.1f} AAA {m['aaa']:.1f}",
                  file=sys.stderr)
    if missing:
        print(f"{len(missing)} runs not finished (other shards, or --no-train): "
              f"{', '.join(missing)}", file=sys.stderr)
    rows = []
    for job in jobs:
        rs = results.get(job["label"])
        if not rs:
            continue
        rows.append(dict(label=job["label"], method=job["method"], lr=job["lr"],
                         lr_source=job["lr_source"], part_rates=job["part_rates"],
                         seeds=[r["seed"] for r in rs], acc=[r["acc"] for r in rs],
                         aaa=[r["aaa"] for r in rs], forgetting=[r["forgetting"] for r in rs]))
    d = replace(TrainConfig(benchmark=args.benchmark), **parse_settings(args.set),
                **({} if args.epochs is None else dict(epochs=args.epochs)))
    table = dict(benchmark=args.benchmark, seeds=args.seeds, tasks=d.tasks, epochs=d.epochs,
                 rows=rows, missing=missing)
    if args.merge_into:
        try:
            table = merge_table(load_table(args.merge_into), table, jobs)
        except (TableError, ValueError) as err:
            parser.error(f"--merge-into {args.merge_into}: {err}")
    rows = table["rows"]
    for row, test in zip(rows, versus_reference(rows)):  # every row's, Holm over the table
        row["versus_sd_lora"] = test
    shown = display_rows(table)
    if shown:
        print("| " + " | ".join(shown[0]) + " |\n|" + "---|" * len(shown[0]))
        for row in shown:
            print("| " + " | ".join(row.values()) + " |")
    tuned_any = any(j["lr_source"] != "not tuned" for j in jobs)
    print(f"\nmean ± standard error over seeds {args.seeds}; {args.benchmark} ({d.backbone}, "
          f"{d.tasks} tasks, {d.epochs} epochs, Adam, batch {d.batch_size}); "
          + ("learning rates chosen on a validation split of the training data "
             "(scripts/tune_lr.py) unless the row says otherwise." if tuned_any else
             "no learning rate tuned on this benchmark (the config's default for every row).")
          + " Paired t-tests against SD-LoRA; verdicts at 0.05 on p-values adjusted by Holm's "
            "method over all the table's tests.")
    suffix = "" if d.tasks == TrainConfig(benchmark=args.benchmark).tasks else f"-{d.tasks}"
    out = args.json or args.merge_into or (
        None if missing else str(REPO / "results" / f"table_{args.benchmark}{suffix}.json"))
    if out:  # a write that fails here (a full disk) is one error line; the runs are kept
        argcheck.checked(parser, atomic_write_json, Path(out), table)


def merge_table(existing: dict, new: dict, jobs: list[dict]) -> dict:
    """`existing` (a table JSON) with `new`'s rows merged in: a row of the same label replaced
    in place, another inserted after the last row of a method that comes before it in ORDER;
    every other row kept as it was (their run folders need not be here). The seeds are the
    union, `missing` keeps the existing entries of the rows not retrained. The tests against
    SD-LoRA are recomputed afterwards over the merged rows (`versus_reference`). A table of
    another benchmark, task count or epochs is refused (ValueError)."""
    for key in ("benchmark", "tasks", "epochs"):
        if key in existing and existing[key] != new[key]:
            raise ValueError(f"it has {key} {existing[key]!r}, these runs {new[key]!r}; merge "
                             f"only runs made with the table's settings")
    rows = [dict(r) for r in existing["rows"]]
    rank = {m: i for i, m in enumerate(ORDER)}
    for row in new["rows"]:
        at = next((i for i, r in enumerate(rows) if r["label"] == row["label"]), None)
        if at is not None:
            rows[at] = row
            continue
        before = [i for i, r in enumerate(rows)
                  if rank.get(r["method"], len(ORDER)) <= rank.get(row["method"], len(ORDER))]
        rows.insert(before[-1] + 1 if before else 0, row)
    names = tuple(f"{j['name']}-s" for j in jobs)
    missing = [m for m in existing.get("missing") or [] if not m.startswith(names)]
    return dict(existing, seeds=sorted(set(existing.get("seeds") or []) | set(new["seeds"])),
                rows=rows, missing=missing + new["missing"])


if __name__ == "__main__":
    argcheck.quiet_on_closed_pipe(main)
