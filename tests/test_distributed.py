"""Two CPU processes through torchrun (gloo) against one process: same run within tolerance."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _train(out: Path, nproc: int) -> dict:
    args = ["-m", "sdlora", "train", "--benchmark", "digits", "--tasks", "2", "--epochs", "1",
            "--method", "sd-lora", "--out", str(out), "--quiet", "--device", "cpu"]
    cmd = [sys.executable] + (["-m", "torch.distributed.run", "--standalone",
                               f"--nproc_per_node={nproc}"] + args if nproc > 1 else args)
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((out / "metrics.json").read_text())


def test_two_processes_match_one(tmp_path):
    one = _train(tmp_path / "one", 1)
    two = _train(tmp_path / "two", 2)
    # Same batches, gradients summed over ranks: equal up to float summation order. Stated
    # tolerance: magnitudes within 1e-3, accuracies within 1 point.
    for a, b in zip(one["task_info"], two["task_info"]):
        for k in a["magnitudes_after"]:
            assert b["magnitudes_after"][k] == pytest.approx(a["magnitudes_after"][k], abs=1e-3)
    for ra, rb in zip(one["accuracy_matrix"], two["accuracy_matrix"]):
        assert rb == pytest.approx(ra, abs=1.0)
    # Only rank 0 wrote the run folder: one step log per task, one record per global step.
    steps_one = sum(1 for _ in open(tmp_path / "one" / "steps" / "task_000.jsonl"))
    steps_two = sum(1 for _ in open(tmp_path / "two" / "steps" / "task_000.jsonl"))
    assert steps_one == steps_two
