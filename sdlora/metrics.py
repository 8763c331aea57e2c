"""Class-incremental metrics over the accuracy matrix.

R[i][j] is the accuracy (percent) on task j's test data after training task i, for j <= i,
with argmax over every class seen up to task i. `counts[j]` is the number of test samples of
task j.

* Acc: accuracy over all seen test samples after the last task
  (= sum_j counts[j] R[N-1][j] / sum_j counts[j]).
* AAA: mean over i of the accuracy over all seen test samples after task i.
* Forgetting: mean over j < N-1 of max_{i < N-1} R[i][j] - R[N-1][j] (Chaudhry et al., 2018).
* BWT (backward transfer): mean over j < N-1 of R[N-1][j] - R[j][j].
"""
from __future__ import annotations

import numpy as np

__all__ = ["seen_accuracy", "summarise"]


def seen_accuracy(row: list[float], counts: list[int]) -> float:
    """Accuracy over all seen test samples from one row of R (sample-weighted)."""
    n = np.asarray(counts[: len(row)], dtype=float)
    return float(np.dot(np.asarray(row, dtype=float), n) / n.sum())


def summarise(matrix: list[list[float]], counts: list[int]) -> dict:
    """acc, aaa, per-task seen accuracy, forgetting and bwt from R (percent)."""
    if not matrix:
        raise ValueError("the accuracy matrix is empty: no task has finished")
    seen = [seen_accuracy(row, counts) for row in matrix]
    last = len(matrix) - 1
    if last == 0:
        forgetting = bwt = 0.0
    else:
        forgetting = float(np.mean([max(matrix[i][j] for i in range(j, last)) - matrix[last][j]
                                    for j in range(last)]))
        bwt = float(np.mean([matrix[last][j] - matrix[j][j] for j in range(last)]))
    return dict(acc=seen[-1], aaa=float(np.mean(seen)), seen_accuracy=seen,
                forgetting=forgetting, bwt=bwt)
