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

__all__ = ["mean_se", "fmt", "paired_test", "load_table", "display_rows", "results_dir",
           "TableError"]


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


def paired_test(a: list[float], b: list[float]) -> dict:
    """Paired t-test of a - b over seeds: mean difference, p-value, and the verdict at 0.05."""
    from scipy import stats

    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if len(diff) < 2:
        return dict(diff=float(diff.mean()), p=float("nan"), verdict="one seed: no test")
    if np.allclose(diff, diff[0]):  # constant difference: the t statistic is undefined
        p = 0.0 if diff[0] != 0 else 1.0
    else:
        p = float(stats.ttest_rel(a, b).pvalue)
    verdict = ("no significant difference" if p >= 0.05
               else "higher" if diff.mean() > 0 else "lower")
    return dict(diff=float(diff.mean()), p=p, verdict=verdict)


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


def display_rows(data: dict) -> list[dict[str, str]]:
    """One dict of strings per row, the columns the README and the app show."""
    out = []
    for row in data["rows"]:
        if row["method"] == "simplecil":
            lr = "—"
        else:
            lr = f"{row['lr']:g}" + ("" if row["lr_source"] == "tuned"
                                     else f" ({row['lr_source']})")
            parts = row.get("part_rates") or {}
            if len(parts) > 1:  # coupled rates (hide-prompt): every part's, the first is `lr`
                lr += "; " + ", ".join(f"{k} {v:.3g}" for k, v in list(parts.items())[1:])
        test = row.get("versus_sd_lora")
        versus = "" if not test else (
            f"{test['diff']:+.1f}" + ("" if test["p"] != test["p"]  # nan: one seed
                                      else ", p < 0.001" if test["p"] < 0.001
                                      else f", p = {test['p']:.3f}") + f": {test['verdict']}")
        out.append({"method": row["label"], "lr (validation)": lr,
                    "seeds": " ".join(str(s) for s in row["seeds"]),
                    "Acc": fmt(row["acc"]), "AAA": fmt(row["aaa"]),
                    "forgetting": fmt(row["forgetting"]), "Acc vs SD-LoRA (paired t)": versus})
    return out
