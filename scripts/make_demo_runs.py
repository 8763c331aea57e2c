"""Make the demo runs that ship in cache/demo, with their analyses precomputed.

    python scripts/make_demo_runs.py

Vanilla LoRA, SD-LoRA and fixed-first-direction with 3 seeds each (Fig. 2b/c's comparison),
SD-LoRA-RR, SD-LoRA-KD and frozen with seed 0, all on the embedded default, trained by the engine itself. A run already
finished by scripts/results_table.py (cache/benchmark) is copied instead of retrained: same
config, same numbers. Then every analysis the app shows is computed once and stored in the
run folder.
"""
from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sdlora.analysis import (cached, efficiency, interpolate, magnitude_series,  # noqa: E402
                             residuals_at_task_end)
from sdlora.config import TrainConfig  # noqa: E402
from sdlora.runs import RunFolder, demo_runs_root  # noqa: E402
from sdlora.train import train  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DEMO = [(m, s) for m in ("lora", "sd-lora", "fixed-first-direction") for s in (0, 1, 2)] + [
    ("sd-lora-rr", 0), ("sd-lora-kd", 0), ("frozen", 0)]
ALL_BOUNDARIES = {"lora-s0", "sd-lora-s0"}  # the others get the first boundary precomputed


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    root = demo_runs_root()
    for method, seed in DEMO:
        name = f"{method}-s{seed}"
        run = RunFolder(root / name)
        config = TrainConfig(method=method, seed=seed)
        done = RunFolder(REPO / "cache" / "benchmark" / name)
        if not run.exists() and done.exists() and done.completed_tasks() == config.tasks:
            shutil.copytree(done.path, run.path, ignore=shutil.ignore_patterns("analyses"))
        elif not run.exists():
            train(config, out=run.path, progress=False)
        elif run.completed_tasks() < config.tasks:
            train(resume=run.path, progress=False)
        cached(run, "efficiency", lambda: efficiency(run))
        for task in range(2, config.tasks + 1 if name in ALL_BOUNDARIES else 3):
            cached(run, f"interpolation_task{task}_11",
                   lambda: interpolate(run, task, 11).to_dict("records"))
        magnitude_series(run)
        residuals_at_task_end(run)
        logging.info("%s ready", name)


if __name__ == "__main__":
    main()
