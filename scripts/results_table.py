"""Regenerate the README's results table: every method on an embedded benchmark, seeds 0-4.

    python scripts/results_table.py [--benchmark glyphs40] [--seeds 0 1 2 3 4] [--methods ...]
        [--tuned results/tuned_lr.json] [--root cache/benchmark/<benchmark>] [--shard 0/2]
        [--variant-released] [--kd-absolute] [--json results/table_<benchmark>.json]

Each method trains at the learning rate that `scripts/tune_lr.py` chose for it on a validation
split of the training data (the file given by --tuned; the test split never chooses anything).
SD-LoRA's ablations and variants use SD-LoRA's chosen rate (they change one part of SD-LoRA and
keep its settings, as the paper's Table 4 does); a method without a tuned rate runs at the
config's default and its row says "not tuned". `--tuned-from BENCHMARK` takes the rates chosen
on another benchmark's validation split instead (the 10-task preset `glyphs80-10` runs at the
rates chosen on glyphs40: `--benchmark glyphs80 --set tasks=10 --tuned-from glyphs40`); each
row then says where its rate came from.

Runs that already finished under --root are reused (delete the folder to recompute); an
interrupted run is resumed. `--shard i/n` trains only every n-th job (start one process per
shard side by side; each run folder is claimed, so shards never share one), `--no-train` only
reads finished runs. Prints a markdown table of Acc, AAA and forgetting, mean +- standard error
over seeds, and per method a paired t-test against SD-LoRA over the seeds (the same seed gives
both the same class order): the difference in Acc, its p-value and what it says at 0.05.
"""
from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sdlora.config import METHODS, TrainConfig  # noqa: E402
from sdlora.methods import method_class  # noqa: E402
from sdlora.runs import RunFolder, atomic_write_json  # noqa: E402
from sdlora.tables import display_rows, paired_test  # noqa: E402
from sdlora.train import train  # noqa: E402
from sdlora.tuning import load_tuned, tuned_lr  # noqa: E402

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


def parse_settings(pairs: list[str]) -> dict:
    """KEY=VALUE pairs as TrainConfig values of the field's type (a bad one names the field)."""
    import dataclasses

    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    defaults = TrainConfig()
    out = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or key not in fields:
            raise SystemExit(f"--set {pair!r} is not valid; give KEY=VALUE with KEY a TrainConfig "
                             f"field, e.g. new_magnitude_init=0")
        current = getattr(defaults, key)
        kind = type(current) if current is not None else float
        out[key] = None if text == "None" else kind(text)
    return out


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
            return own, "tuned" + where
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
    specs += [e for e in EXTRA if e[0] in args.methods]
    jobs = []
    for method, overrides, label in specs:
        config = base.with_options(method=method, **overrides)  # --set where it applies
        lr, source = lr_of(config)
        suffix = "".join(f"-{v}" if k in ("variant", "kd_residual", "joint_adapter")
                         else f"-{k}{v}" for k, v in overrides.items())
        reference = method == REFERENCE and not overrides
        for key, value in settings.items():  # in the name even where it does not apply,
            if getattr(config, key) == value:  # as the folders made before issue 23
                overrides = dict(overrides, **{key: value})
            suffix += f"-e{value}" if key == "epochs" else f"-{key}{value:g}" \
                if isinstance(value, float) else f"-{key}{value}"
        jobs.append(dict(label=label, method=method, overrides=overrides, lr=lr,
                         lr_source=source, name=f"{method}{suffix}-lr{lr:g}",
                         reference=reference))
    return jobs


IGNORED = {"device", "num_workers", "eval_batch_size", "extra", "amp"}


def run_seed(root: Path, job: dict, seed: int, benchmark: str, may_train: bool) -> dict | None:
    run = RunFolder(root / f"{job['name']}-s{seed}")
    config = TrainConfig(benchmark=benchmark, method=job["method"], seed=seed, lr=job["lr"],
                         **job["overrides"])
    if run.exists():  # a folder of the same name made with other settings is never reused
        saved = TrainConfig.from_dict(run.config()).to_dict()
        wanted = config.to_dict()
        differ = {k: (saved[k], wanted[k]) for k in wanted
                  if k not in IGNORED and saved.get(k) != wanted[k]}
        if differ:
            raise SystemExit(f"{run.path} was made with other settings (saved, wanted): "
                             f"{differ}; move it away or name the settings with --set")
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
    parser.add_argument("--variant-released", action="store_true",
                        help="also run sd-lora with variant='released'")
    parser.add_argument("--kd-absolute", action="store_true",
                        help="also run sd-lora-kd with kd_residual='absolute' (Algorithm 1 "
                             "line 11 as written)")
    args = parser.parse_args()
    try:
        shard, shards = (int(x) for x in args.shard.split("/"))
        assert 0 <= shard < shards
    except (ValueError, AssertionError):
        parser.error(f"--shard {args.shard!r} is not valid; give i/n with 0 <= i < n, e.g. 0/2")
    logging.basicConfig(level=logging.WARNING)
    root = Path(args.root or REPO / "cache" / "benchmark" / args.benchmark)
    tuned = load_tuned(args.tuned)
    if args.tuned_from is not None and not any(k.endswith(f"@{args.tuned_from}") for k in tuned):
        known = sorted({k.split("@", 1)[1] for k in tuned})
        parser.error(f"--tuned-from {args.tuned_from!r}: {args.tuned} has no rate chosen on it; "
                     f"benchmarks with chosen rates: {', '.join(known) or 'none'}")
    jobs = build_jobs(args, tuned)
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
    ref_label = next((j["label"] for j in jobs if j["reference"]), None)
    ref = {r["seed"]: r["acc"] for r in results.get(ref_label, [])}
    rows = []
    for job in jobs:
        rs = results.get(job["label"])
        if not rs:
            continue
        acc = [r["acc"] for r in rs]
        seeds = [r["seed"] for r in rs]
        test = None
        if ref_label and job["label"] != ref_label and all(s in ref for s in seeds):
            test = paired_test(acc, [ref[s] for s in seeds])
        rows.append(dict(label=job["label"], method=job["method"], lr=job["lr"],
                         lr_source=job["lr_source"], seeds=seeds, acc=acc,
                         aaa=[r["aaa"] for r in rs], forgetting=[r["forgetting"] for r in rs],
                         versus_sd_lora=test))
    shown = display_rows(dict(rows=rows))
    if shown:
        print("| " + " | ".join(shown[0]) + " |\n|" + "---|" * len(shown[0]))
        for row in shown:
            print("| " + " | ".join(row.values()) + " |")
    d = replace(TrainConfig(benchmark=args.benchmark), **parse_settings(args.set),
                **({} if args.epochs is None else dict(epochs=args.epochs)))
    tuned_any = any(j["lr_source"] != "not tuned" for j in jobs)
    print(f"\nmean ± standard error over seeds {args.seeds}; {args.benchmark} ({d.backbone}, "
          f"{d.tasks} tasks, {d.epochs} epochs, Adam, batch {d.batch_size}); "
          + ("learning rates chosen on a validation split of the training data "
             "(scripts/tune_lr.py) unless the row says otherwise." if tuned_any else
             "no learning rate tuned on this benchmark (the config's default for every row)."))
    suffix = "" if d.tasks == TrainConfig(benchmark=args.benchmark).tasks else f"-{d.tasks}"
    out = args.json or (None if missing else
                        str(REPO / "results" / f"table_{args.benchmark}{suffix}.json"))
    if out:
        atomic_write_json(Path(out), dict(benchmark=args.benchmark, seeds=args.seeds,
                                          tasks=d.tasks, epochs=d.epochs, rows=rows,
                                          missing=missing))


if __name__ == "__main__":
    main()
