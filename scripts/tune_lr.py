"""Choose each method's learning rate on a validation split of the training data.

    python scripts/tune_lr.py [--methods ...] [--seeds 0] [--root cache/benchmark/tuning]

For each method, trains the embedded default once per learning rate of its grid
(`sdlora.tuning.GRIDS`) with holdout='validation' and keeps the lr with the best validation
Acc; the test set is never read. Writes one JSON per method under --root and the summary
`results/tuned_lr.json` that scripts/results_table.py reads. Finished runs are reused.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sdlora.config import METHODS, TrainConfig  # noqa: E402
from sdlora.methods import method_class  # noqa: E402
from sdlora.runs import atomic_write_json  # noqa: E402
from sdlora.tuning import load_tuned, tune  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SUMMARY = REPO / "results" / "tuned_lr.json"


def main() -> None:
    trainable = [m for m in METHODS if method_class(m).trains_by_gradient]
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", nargs="+", default=trainable, choices=trainable)
    parser.add_argument("--joint-adapters", nargs="+", default=["lora", "sd-lora"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--root", default=str(REPO / "cache" / "benchmark" / "tuning"))
    parser.add_argument("--summary", default=str(SUMMARY))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    summary = load_tuned(args.summary)
    configs = []
    for method in args.methods:
        if method == "joint":
            configs += [TrainConfig(method="joint", joint_adapter=a) for a in args.joint_adapters]
        else:
            configs.append(TrainConfig(method=method))
    for config in configs:
        result = tune(config, args.root, seeds=tuple(args.seeds))
        summary[result["label"]] = result
        atomic_write_json(Path(args.summary), summary)
        print(f"{result['label']}: validation Acc "
              + ", ".join(f"lr {lr}: {acc:.1f}" for lr, acc in result["validation_acc"].items())
              + f" -> lr {result['chosen_lr']:g}")
    print(json.dumps({k: v["chosen_lr"] for k, v in summary.items()}))


if __name__ == "__main__":
    main()
