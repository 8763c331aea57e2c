"""The stability-plasticity trade-off as numbers: what each task learned, what it kept, and the
sweeps that trace each method's curve (``results/tradeoff_<benchmark>.json``).

Definitions (R[i][t]: accuracy in percent on task t's test data after task i, over every class
seen then; tasks numbered from 1; N = the last finished task, or the task chosen by `after`):

* learning accuracy of task t = R[t][t], right after it was learned (plasticity);
* final accuracy = R[N][t];
* forgetting = max over i < N of R[i][t] - R[N][t] (NaN for t = N: nothing after it yet);
* retention = R[N][t] / max over i <= N of R[i][t] (1 = kept all it ever had);
* the run's point: plasticity = mean learning accuracy over t <= N, forgetting = mean forgetting
  over t < N (instability; `sdlora.metrics.summarise`'s forgetting; 0 when N = 1).

No torch: cheap to import.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from ..metrics import summarise
from ..runs import RunFolder
from ..tables import mean_se

__all__ = ["stability_plasticity", "task_tradeoff", "tradeoff_point", "tradeoff_points",
           "SweepError", "load_sweep", "sweep_points", "frontier", "dominance", "KNOBS"]

COLUMNS = ["task", "learning_accuracy", "final_accuracy", "forgetting", "retention"]
KNOBS = {"lr": "learning rate", "epochs": "epochs per task"}


def task_tradeoff(matrix: list[list[float]], after: int | None = None) -> pd.DataFrame:
    """The per-task table of a lower-triangular accuracy matrix R, as the model after task
    `after` (1-based; default the last row) sees it."""
    n = len(matrix) if after is None else after
    if not 1 <= n <= len(matrix):
        raise ValueError(f"after task {after}: the matrix has {len(matrix)} finished tasks "
                         f"(give 1..{len(matrix)})")
    R = matrix[:n]
    rows = []
    for t in range(n):
        column = [R[i][t] for i in range(t, n)]
        final = R[n - 1][t]
        forgetting = max(column[:-1]) - final if t < n - 1 else math.nan
        best = max(column)
        rows.append(dict(task=t + 1, learning_accuracy=R[t][t], final_accuracy=final,
                         forgetting=forgetting,
                         retention=final / best if best > 0 else math.nan))
    return pd.DataFrame(rows, columns=COLUMNS)


def stability_plasticity(run: RunFolder | str | Path, after: int | None = None) -> pd.DataFrame:
    """One row per finished task of `run` (a run folder or its path): task, learning_accuracy,
    final_accuracy, forgetting, retention (module docstring)."""
    run = run if isinstance(run, RunFolder) else RunFolder(run)
    return task_tradeoff(run.metrics()["accuracy_matrix"], after)


def tradeoff_point(matrix: list[list[float]], after: int | None = None) -> dict:
    """The run's point in the plane: plasticity (mean learning accuracy) and forgetting (mean
    over t < N, 0 when N = 1), with N, the task it was taken after."""
    n = len(matrix) if after is None else after
    if not 1 <= n <= len(matrix):
        raise ValueError(f"after task {after}: the matrix has {len(matrix)} finished tasks "
                         f"(give 1..{len(matrix)})")
    return dict(plasticity=float(np.mean([matrix[t][t] for t in range(n)])),
                forgetting=summarise(matrix[:n], [1] * n)["forgetting"], after=n)


def tradeoff_points(matrices: dict[str, list[list[float]]]) -> pd.DataFrame:
    """Every run's point after every one of its tasks: columns key, after, plasticity,
    forgetting (what a page filters by its "after task" control)."""
    rows = [dict(key=key, **tradeoff_point(matrix, after))
            for key, matrix in matrices.items() for after in range(1, len(matrix) + 1)]
    return pd.DataFrame(rows, columns=["key", "plasticity", "forgetting", "after"])


# -- sweeps (results/tradeoff_<benchmark>.json, written by scripts/make_tradeoff.py) ------------
class SweepError(ValueError):
    """A sweep file that cannot be read (names the file and what is wrong)."""


def load_sweep(path: str | Path) -> dict:
    """Read a sweep file; a missing or damaged one raises SweepError saying how to remake it."""
    path = Path(path)
    remake = "remake it with `python scripts/make_tradeoff.py`"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise SweepError(f"{path} does not exist; {remake}") from None
    except (OSError, ValueError) as e:
        raise SweepError(f"{path} is not readable JSON ({e}); {remake}") from None
    sweeps = data.get("sweeps") if isinstance(data, dict) else None
    if not isinstance(sweeps, dict):
        raise SweepError(f"{path} has no 'sweeps' object; {remake}")
    for knob, methods in sweeps.items():
        if knob not in KNOBS or not isinstance(methods, dict):
            raise SweepError(f"{path}: sweep {knob!r} is not one of {sorted(KNOBS)} with a "
                             f"method -> value -> seed table; {remake}")
        for method, values in methods.items():
            for value, seeds in values.items() if isinstance(values, dict) else [("?", None)]:
                entries = seeds.values() if isinstance(seeds, dict) else [None]
                if not _is_number(value) or not all(map(_is_number, seeds or ["?"])) or not all(
                        isinstance(e, dict) and _is_matrix(e.get("accuracy_matrix"))
                        for e in entries):
                    raise SweepError(f"{path}: {knob} sweep of {method} at {value}: expected a "
                                     f"numeric value -> seed -> {{accuracy_matrix, settings}}; "
                                     f"{remake}")
    return data


def _is_number(text) -> bool:
    try:
        return math.isfinite(float(text))
    except (TypeError, ValueError):
        return False


def _is_matrix(matrix) -> bool:
    return (isinstance(matrix, list) and len(matrix) > 0
            and all(isinstance(row, list) and len(row) == i + 1
                    and all(isinstance(v, (int, float)) for v in row)
                    for i, row in enumerate(matrix)))


def sweep_points(data: dict) -> pd.DataFrame:
    """Every run of a sweep file after every one of its tasks: knob, method, value (float),
    seed, run, after, plasticity, forgetting."""
    rows = []
    for knob, methods in data["sweeps"].items():
        for method, values in methods.items():
            for value, seeds in values.items():
                for seed, entry in seeds.items():
                    for after in range(1, len(entry["accuracy_matrix"]) + 1):
                        rows.append(dict(knob=knob, method=method, value=float(value),
                                         seed=int(seed), run=entry.get("run", ""),
                                         **tradeoff_point(entry["accuracy_matrix"], after)))
    return pd.DataFrame(rows, columns=["knob", "method", "value", "seed", "run", "after",
                                       "plasticity", "forgetting"])


def frontier(points: pd.DataFrame, knob: str, after: int) -> pd.DataFrame:
    """Mean and standard error over seeds of each method's point at each value of `knob`,
    after task `after` (runs with fewer tasks left out): method, value, plasticity,
    plasticity_se, forgetting, forgetting_se, seeds (how many), in order of the value."""
    chosen = points[(points["knob"] == knob) & (points["after"] == after)]
    rows = []
    for (method, value), group in chosen.groupby(["method", "value"], sort=True):
        p, p_se = mean_se(group["plasticity"].tolist())
        f, f_se = mean_se(group["forgetting"].tolist())
        rows.append(dict(method=method, value=value, plasticity=p, plasticity_se=p_se,
                         forgetting=f, forgetting_se=f_se, seeds=len(group)))
    return pd.DataFrame(rows, columns=["method", "value", "plasticity", "plasticity_se",
                                       "forgetting", "forgetting_se", "seeds"])


def dominance(curve: pd.DataFrame, other: pd.DataFrame) -> dict:
    """How many of `other`'s points (rows with plasticity and forgetting) some point of `curve`
    dominates: at least as plastic and at most as forgetful, better in one (means only)."""
    a = curve[["plasticity", "forgetting"]].to_numpy()
    beaten = [bool(np.any((a[:, 0] >= p) & (a[:, 1] <= f) & ((a[:, 0] > p) | (a[:, 1] < f))))
              for p, f in other[["plasticity", "forgetting"]].to_numpy()]
    return dict(dominated=int(sum(beaten)), of=len(beaten))


def rate_effect(curve: pd.DataFrame, collapse: float = 0.5) -> dict | None:
    """What raising a knob does to the old tasks along one method's curve (rows with value,
    plasticity and forgetting, as `frontier` gives them; rows with a NaN left out): the change
    in forgetting (`change`) from the lowest value (`low`) to the most plastic one (`high`; of
    tied values the highest), and the values past the most plastic one whose plasticity fell
    below `collapse` times the best (`collapsed`). A collapsed point forgets little only because
    it learned little, so it does not answer "what does a higher rate do to what was learned".
    Where the lowest value is itself the most plastic (`at_peak` False), `high` is the next
    value that did not collapse (the next value when all did). None with fewer than two
    points."""
    curve = curve.dropna(subset=["value", "plasticity", "forgetting"])
    if len(curve) < 2:
        return None
    curve = curve.sort_values("value").reset_index(drop=True)
    plasticity = curve["plasticity"].to_numpy()
    best = float(plasticity.max())
    peak = int(np.flatnonzero(plasticity == best)[-1])
    collapsed = [float(v) for v, p in zip(curve["value"].iloc[peak + 1:], plasticity[peak + 1:])
                 if p < collapse * best]
    if peak > 0:
        high = peak
    else:
        kept = [i for i in range(1, len(curve)) if float(curve["value"].iloc[i]) not in collapsed]
        high = kept[0] if kept else 1
    low, high_row = curve.iloc[0], curve.iloc[high]
    return dict(low=low, high=high_row, change=float(high_row.forgetting - low.forgetting),
                collapsed=collapsed, at_peak=peak > 0)


def frontier_summary(data: dict, knob: str, method: str = "sd-lora",
                     other: str = "lora") -> dict:
    """Whether `method`'s curve along `knob` lies beyond `other`'s in the plasticity/forgetting
    plane after the last task, from a sweep file's runs: the two curves' points (mean ± s.e.
    over seeds, only knob values every seed of both has), `dominance` of the means both ways,
    and per seed the same counts on that seed's own points (so the claim can be read seed by
    seed). Points of values that some seed lacks are left out and listed as `incomplete`."""
    points = sweep_points(data)
    points = points[(points["knob"] == knob) & points["method"].isin([method, other])]
    if points.empty:
        return dict(knob=knob, method=method, other=other, curves={}, seeds=[], means={},
                    per_seed={}, incomplete=[])
    after = int(points["after"].max())
    last = points[points["after"] == after]
    seeds = sorted(set(last["seed"]))
    full = {m: {v for v, g in last[last["method"] == m].groupby("value")
                if set(g["seed"]) == set(seeds)} for m in (method, other)}
    incomplete = sorted({(m, v) for m in (method, other)
                         for v in set(last[last["method"] == m]["value"]) - full[m]})
    last = last[[v in full[m] for m, v in zip(last["method"], last["value"])]]
    curves = {m: frontier(last[last["method"] == m], knob, after) for m in (method, other)}
    means = dict(beyond=dominance(curves[method], curves[other]),
                 behind=dominance(curves[other], curves[method]))
    per_seed = {}
    for seed in seeds:
        mine = {m: last[(last["method"] == m) & (last["seed"] == seed)] for m in (method, other)}
        per_seed[seed] = dict(beyond=dominance(mine[method], mine[other]),
                              behind=dominance(mine[other], mine[method]))
    return dict(knob=knob, method=method, other=other, after=after, seeds=seeds,
                curves=curves, means=means, per_seed=per_seed, incomplete=incomplete)


def frontier_markdown(summary: dict) -> str:
    """`frontier_summary` as a README paragraph's table and one line per seed."""
    if not summary["curves"]:
        return f"{summary['knob']}: no finished runs of {summary['method']} or {summary['other']}"
    lines = [f"| method | {summary['knob']} | seeds | plasticity | forgetting |",
             "|---|---|---|---|---|"]
    for m, curve in summary["curves"].items():
        for r in curve.itertuples():
            lines.append(f"| {m} | {r.value:g} | {r.seeds} | {r.plasticity:.1f} ± "
                         f"{r.plasticity_se:.1f} | {r.forgetting:.1f} ± {r.forgetting_se:.1f} |")
    b, w = summary["means"]["beyond"], summary["means"]["behind"]
    lines.append("")
    lines.append(f"Means after task {summary['after']}: {b['dominated']} of {b['of']} of "
                 f"{summary['other']}'s points are dominated by a point of {summary['method']}'s "
                 f"curve; {w['dominated']} of {w['of']} of {summary['method']}'s by "
                 f"{summary['other']}'s.")
    for seed, d in summary["per_seed"].items():
        lines.append(f"Seed {seed}: {d['beyond']['dominated']} of {d['beyond']['of']} "
                     f"dominated by {summary['method']}; {d['behind']['dominated']} of "
                     f"{d['behind']['of']} the other way.")
    if summary["incomplete"]:
        lines.append("Left out (not every seed finished): " + ", ".join(
            f"{m} {v:g}" for m, v in summary["incomplete"]))
    return "\n".join(lines)


def others_markdown(data: dict, knob: str, method: str = "sd-lora",
                    skip: tuple[str, ...] = ("lora",)) -> str:
    """Where every other method of the sweep sits against `method`'s curve along `knob` (the
    README's "where the others sit"): each one's points (mean ± s.e. over seeds, values every
    seed has) and `dominance` of the means both ways, from `frontier_summary`. `skip`: methods
    already shown (LoRA's own paragraph)."""
    others = sorted(set(data.get("sweeps", {}).get(knob, {})) - {method, *skip})
    lines = [f"| method | {knob} | seeds | plasticity | forgetting |", "|---|---|---|---|---|"]
    verdicts, skipped = [], []
    for other in others:
        summary = frontier_summary(data, knob, method, other)
        curve = summary["curves"].get(other)
        if curve is None or curve.empty:  # no value that every seed of both methods has
            skipped.append(other)
            continue
        for r in curve.itertuples():
            lines.append(f"| {other} | {r.value:g} | {r.seeds} | {r.plasticity:.1f} ± "
                         f"{r.plasticity_se:.1f} | {r.forgetting:.1f} ± {r.forgetting_se:.1f} |")
        b, w = summary["means"]["beyond"], summary["means"]["behind"]
        left_out = [f"{m} {v:g}" for m, v in summary["incomplete"]]
        verdicts.append(f"{other}: {b['dominated']} of {b['of']} of its points dominated by a "
                        f"point of {method}'s curve; {w['dominated']} of {w['of']} of "
                        f"{method}'s by its points"
                        + (f" (left out, not every seed finished: {', '.join(left_out)})"
                           if left_out else "") + ".")
    note = ([f"Left out, no value finished at every seed of both it and {method}: "
             + ", ".join(skipped) + "."] if skipped else [])
    if not verdicts:
        return "\n".join([f"{knob}: no other method's points to compare"] + note)
    return "\n".join(lines + [""] + verdicts + note)
