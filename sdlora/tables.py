"""The results table of a benchmark: statistics over seeds and the rows as people read them.

`scripts/results_table.py` trains the runs and writes ``results/table_<benchmark>.json``; the
app's Overview page shows the same rows. Both format them here, so the README and the app can
never disagree about a number. No torch, no pandas: cheap to import.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

__all__ = ["mean_se", "fmt", "paired_test", "holm", "versus_reference", "coupled_rates",
           "load_table",
           "display_rows", "results_dir", "TableError", "REFERENCE", "ALPHA"]

REFERENCE = "sd-lora"  # the row every other row is tested against (its label)
ALPHA = 0.05  # the level of every verdict, on Holm-adjusted p-values


def results_dir() -> Path:
    """Where the measured tables live: $SDLORA_RESULTS, else the repository's results/."""
    return Path(os.environ.get("SDLORA_RESULTS")
                or Path(__file__).resolve().parent.parent / "results")


class TableError(ValueError):
    """A results table that cannot be read (names the file and what is wrong)."""


def mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (sample sd / sqrt n; nan for one value)."""
    v = np.asarray(values, dtype=float)
    return float(v.mean()), float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")


def fmt(values: list[float]) -> str:
    m, se = mean_se(values)
    return f"{m:.1f}" if np.isnan(se) else f"{m:.1f} ± {se:.1f}"


def verdict(diff: float, p: float) -> str:
    return ("no significant difference" if not p < ALPHA
            else "higher" if diff > 0 else "lower")


def paired_test(a: list[float], b: list[float]) -> dict:
    """Paired t-test of a - b over seeds: mean difference, p-value, and the verdict at 0.05
    for this one test alone (a table corrects for its many: `versus_reference`)."""
    from scipy import stats

    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if len(diff) < 2:
        return dict(diff=float(diff.mean()), p=float("nan"), verdict="one seed: no test")
    if np.allclose(diff, diff[0]):  # constant difference: the t statistic is undefined
        p = 0.0 if diff[0] != 0 else 1.0
    else:
        p = float(stats.ttest_rel(a, b).pvalue)
    return dict(diff=float(diff.mean()), p=p, verdict=verdict(float(diff.mean()), p))


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjustment of `pvalues` (family-wise error over all of them), in the
    order given: the k-th smallest of m becomes max over j <= k of min(1, (m - j + 1) p_(j)).
    A nan (no test) stays nan and is not counted in m."""
    tested = [i for i, p in enumerate(pvalues) if p == p]
    m, running = len(tested), 0.0
    out = [float("nan")] * len(pvalues)
    for k, i in enumerate(sorted(tested, key=lambda i: pvalues[i])):
        running = max(running, min(1.0, (m - k) * pvalues[i]))
        out[i] = running
    return out


def versus_reference(rows: list[dict]) -> list[dict | None]:
    """Per row, the paired t-test of its Acc against the reference row's (`REFERENCE`) over the
    seeds both have (a row with a seed the reference lacks is not tested), from the rows'
    per-seed values, and Holm's adjustment over every test of the table: diff, p (raw), p_holm,
    tests (how many the adjustment counted) and the verdict at 0.05 on p_holm. Without a
    reference row the tests stored in the rows (``versus_sd_lora``) are adjusted instead."""
    ref = next((r for r in rows if r["label"] == REFERENCE), None)
    tests: list[dict | None] = []
    for row in rows:
        if ref is None:
            stored = row.get("versus_sd_lora")
            tests.append(dict(stored) if stored else None)
        elif row is ref:
            tests.append(None)
        else:
            by_seed = dict(zip(ref["seeds"], ref["acc"]))
            tests.append(paired_test(row["acc"], [by_seed[s] for s in row["seeds"]])
                         if all(s in by_seed for s in row["seeds"]) else None)
    adjusted = holm([t["p"] if t else float("nan") for t in tests])
    count = sum(1 for p in adjusted if p == p)
    for test, p in zip(tests, adjusted):
        if test:
            test.update(p_holm=p, tests=count)
            if p == p:
                test["verdict"] = verdict(test["diff"], p)
    return tests


ROW_KEYS = ("label", "method", "lr", "lr_source", "seeds", "acc", "aaa", "forgetting")


def load_table(path: str | Path) -> dict:
    """Read a table written by scripts/results_table.py; a damaged one raises TableError."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise TableError(f"{path} does not exist; write it with scripts/results_table.py")
    except (OSError, ValueError) as e:
        raise TableError(f"{path} is not a readable JSON table ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
        raise TableError(f"{path} has no list of 'rows'; write it with scripts/results_table.py")
    for i, row in enumerate(data["rows"]):
        lacking = [k for k in ROW_KEYS if not isinstance(row, dict) or k not in row]
        if lacking:
            raise TableError(f"{path}: row {i} lacks {lacking}")
        if not (len(row["acc"]) == len(row["aaa"]) == len(row["forgetting"])
                == len(row["seeds"]) > 0):
            raise TableError(f"{path}: row {row['label']!r} has unequal or empty lists of "
                             f"seeds, acc, aaa and forgetting")
    return data


def coupled_rates(parts: dict[str, float] | None) -> str:
    """'; head 0.0112, ...': the rates of a method's other parts (`sdlora.config.part_rates`,
    whose first is the base rate `lr`), empty for a method of one rate."""
    if not parts or len(parts) < 2:
        return ""
    return "; " + ", ".join(f"{k} {v:.3g}" for k, v in list(parts.items())[1:])


def _p(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"= {p:.3f}"


def display_rows(data: dict) -> list[dict[str, str]]:
    """One dict of strings per row, the columns the README and the app show; the tests against
    SD-LoRA recomputed from the rows' per-seed values with Holm's adjustment over the table
    (`versus_reference`): raw and adjusted p, the verdict on the adjusted one."""
    out = []
    for row, test in zip(data["rows"], versus_reference(data["rows"])):
        if row["method"] == "simplecil":
            lr = "—"
        else:
            lr = f"{row['lr']:g}" + ("" if row["lr_source"] == "tuned"
                                     else f" ({row['lr_source']})")
            lr += coupled_rates(row.get("part_rates"))
        versus = "" if not test else (
            f"{test['diff']:+.1f}" + ("" if test["p"] != test["p"]  # nan: one seed
                                      else f", p {_p(test['p'])}, Holm p {_p(test['p_holm'])}")
            + f": {test['verdict']}")
        out.append({"method": row["label"], "lr (validation)": lr,
                    "seeds": " ".join(str(s) for s in row["seeds"]),
                    "Acc": fmt(row["acc"]), "AAA": fmt(row["aaa"]),
                    "forgetting": fmt(row["forgetting"]),
                    "Acc vs SD-LoRA (paired t, Holm)": versus})
    return out
