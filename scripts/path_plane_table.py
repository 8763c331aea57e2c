"""Where each method's path ends relative to task 1's high-accuracy region (issue 22): for the
demo runs of vanilla LoRA and SD-LoRA (seeds 0-2 of the default, glyphs40), `path_plane` over
all five tasks, and task 1's accuracy at the path's end (the final model, on the plane) against
its best on the plane; then the mean of task 1's and task 5's accuracy at the end against its
best on the plane (`plane_summary`: a point above the end is better for both together).

    OMP_NUM_THREADS=1 nice -n 10 python scripts/path_plane_table.py [--runs cache/demo/lora-s0 ...]

Each run's result is read from its analyses folder (``analyses/path_plane_task5_15_40.json``,
committed for the demo runs) or computed and stored there first, one run at a time (about 2 CPU
minutes each). Prints one row per run, the mean of each method over its seeds, and (for two
methods) a paired t-test over the seeds of the gap between task 1's best and its end.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sdlora import argcheck  # noqa: E402
from sdlora.analysis import cached, path_plane, stored  # noqa: E402
from sdlora.analysis.plane import check_plane, plane_name, plane_summary  # noqa: E402
from sdlora.runs import RunFolder, demo_runs_root  # noqa: E402
from sdlora.tables import paired_test  # noqa: E402

COLUMNS = [("end_task1", "task 1 at the end"), ("best_task1", "task 1's best on the plane"),
           ("end_latest", "latest task at the end"), ("end_mean", "mean of both at the end"),
           ("best_mean", "its best on the plane"), ("variance_share", "plane's variance share"),
           ("pca_share", "best plane's share")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", nargs="+", default=[
        str(demo_runs_root() / f"{m}-s{s}") for m in ("lora", "sd-lora") for s in (0, 1, 2)],
        help="run folders (default: the demo runs lora-s0..s2 and sd-lora-s0..s2)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    runs = []  # every folder checked before any is computed (about 2 CPU minutes each)
    for path in args.runs:
        run = RunFolder(path)
        if not run.exists():
            parser.error(f"--runs {path} is not a run folder (no config.json); "
                         f"`python -m sdlora runs` lists them")
        name = plane_name(argcheck.checked(parser, run.completed_tasks))
        argcheck.checked(parser, check_plane, run)  # a path needs two finished tasks
        if stored(run, name) is None:  # computed here, then kept in its analyses folder
            argcheck.output_folder(parser, run.analyses_dir, "--runs")
        runs.append((run, name))
    rows = []
    for run, name in runs:
        result = argcheck.checked(parser, cached, run, name, lambda: path_plane(run))
        rows.append(dict(result, run=run.id) | plane_summary(result))
    head = f"{'run':<14}" + "".join(f" | {label}" for _, label in COLUMNS)
    print(head)
    for r in rows:
        print(f"{r['run']:<14}" + "".join(_cell(r[key], label) for key, label in COLUMNS))
    for method in dict.fromkeys(r["method"] for r in rows):
        group = [r for r in rows if r["method"] == method]
        mean = {k: sum(r[k] for r in group) / len(group) for k, _ in COLUMNS
                if all(r[k] is not None for r in group)}
        print(f"{method + ' mean':<14}" + "".join(_cell(mean.get(k), label)
                                                  for k, label in COLUMNS)
              + f"   ({len(group)} runs, {group[0]['images']} test images per task, "
                f"{group[0]['grid']} x {group[0]['grid']} grid)")
    methods = list(dict.fromkeys(r["method"] for r in rows))
    if len(methods) == 2:  # the gap between task 1's best on the plane and the end, paired
        first, second = ({r["seed"]: r["best_task1"] - r["end_task1"] for r in rows
                          if r["method"] == m} for m in methods)
        seeds = sorted(set(first) & set(second))
        if seeds:
            test = paired_test([first[s] for s in seeds], [second[s] for s in seeds])
            print(f"task 1's best on the plane minus its accuracy at the end, {methods[0]} - "
                  f"{methods[1]} over seeds {seeds}: {test['diff']:+.1f} points, paired t-test "
                  f"p = {test['p']:.2f} ({test['verdict']})")
    return 0


def _cell(value, label: str) -> str:
    width = len(label) + 3
    if value is None:
        return f"{'-':>{width}}"
    text = f"{value:.2f}" if "share" in label else f"{value:.1f}"
    return f"{text:>{width}}"


if __name__ == "__main__":
    argcheck.quiet_on_closed_pipe(main)
