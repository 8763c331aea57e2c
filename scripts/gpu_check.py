"""The prepared device check: the CUDA path end to end, timed, in one command.

For a machine with a GPU and no network (the device machines lent to this project): nothing is
downloaded. It

1. writes a randomly initialised ViT-B/16 as a local safetensors file and loads it back through
   timm's real local-file path (``--weights``), so the paper's architecture runs at its size;
2. writes a small ImageNet-R-format folder (200 class folders of generated JPEGs; the images are
   learnable: each class has its own colour and stripe pattern);
3. trains `sd-lora` class-incrementally on it from the command line (`--device cuda --amp bf16`,
   workers, pinned memory) and reads the step times from the run's step logs: images/s and the
   step time at the first and the last task;
4. runs ``bench/step_cost.py`` on the same backbone at 1, 20 and 100 tasks.

Everything it measured goes to ``summary.json`` (and stdout) under --out.

    python scripts/gpu_check.py --out $OUT            # on the GPU machine, ~5-8 minutes
    python scripts/gpu_check.py --device cpu --backbone vit_tiny_patch16_224 --quick --out /tmp/x
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sdlora import argcheck  # noqa: E402

CLASSES = 200  # ImageNet-R's


def make_weights(backbone: str, path: Path) -> Path:
    """A randomly initialised timm model of `backbone`'s architecture, as safetensors."""
    import timm
    from safetensors.torch import save_file

    from sdlora.backbone import BACKBONES, BackboneSpec

    spec = BACKBONES.get(backbone) or BackboneSpec(backbone)
    model = timm.create_model(spec.arch, pretrained=False, **spec.kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def make_imagenet_r(root: Path, classes: int, per_class: int, size: int = 256) -> Path:
    """`classes` folders of `per_class` JPEGs each, in ImageNet-R's published layout."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    for c in range(classes):
        folder = root / f"n{c:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        colour = rng.integers(40, 215, 3)
        angle, freq = rng.uniform(0, np.pi), rng.uniform(0.02, 0.2)
        stripes = np.sin(freq * (np.cos(angle) * xx + np.sin(angle) * yy))
        for i in range(per_class):
            noise = rng.normal(0, 30, (size, size, 3))
            image = colour + 50 * stripes[..., None] + noise
            Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(folder / f"{i}.jpg")
    return root


def run(cmd: list[str], log: Path) -> float:
    print("$", " ".join(cmd), flush=True)
    start = time.perf_counter()
    with open(log, "w") as out:
        result = subprocess.run(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        print(log.read_text()[-4000:])
        raise SystemExit(f"failed ({result.returncode}) after {seconds:.0f} s: {' '.join(cmd)}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--backbone", default="vit_base_patch16_224.augreg2_in21k_ft_in1k")
    parser.add_argument("--tasks", type=int, default=10)
    parser.add_argument("--per-class", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=48)
    parser.add_argument("--bench-tasks", type=int, nargs="+", default=[1, 20, 100])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to test the script")
    args = parser.parse_args()
    if args.quick:
        args.per_class, args.batch_size, args.bench_tasks = 3, 8, [1, 3]
    # every bad value is one error line before anything is written or timed
    argcheck.config(parser, benchmark="imagenet-r", backbone=args.backbone, tasks=args.tasks,
                    batch_size=args.batch_size, device=args.device)
    if CLASSES % args.tasks:
        parser.error(f"--tasks {args.tasks} does not divide the {CLASSES} classes; choose a "
                     f"divisor, e.g. 10 or 20")
    for flag, values in (("--per-class", [args.per_class]), ("--bench-tasks", args.bench_tasks)):
        if any(v < 1 for v in values):
            parser.error(f"{flag} {' '.join(map(str, values))}: give positive integers")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch.cuda.is_available() is False; give --device cpu")
    out = argcheck.output_folder(parser, args.out, "--out")
    out.mkdir(parents=True, exist_ok=True)
    summary: dict = dict(device=args.device, torch=torch.__version__,
                         cuda=torch.version.cuda, backbone=args.backbone)
    if args.device == "cuda":
        summary["gpu"] = torch.cuda.get_device_name(0)
    print(json.dumps(summary), flush=True)

    start = time.perf_counter()
    weights = make_weights(args.backbone, out / "work" / "weights.safetensors")
    data = make_imagenet_r(out / "work" / "imagenet-r", CLASSES, args.per_class)
    summary["prepare_seconds"] = round(time.perf_counter() - start, 1)

    run_dir = out / "run"
    amp = ["--amp", "bf16"] if args.device == "cuda" else []
    cmd = [sys.executable, "-m", "sdlora", "train", "--backbone", args.backbone,
           "--weights", str(weights), "--benchmark", "imagenet-r", "--data-root", str(data),
           "--tasks", str(args.tasks), "--epochs", "1", "--batch-size", str(args.batch_size),
           "--device", args.device, "--num-workers", "4", "--quiet", "--out", str(run_dir),
           *amp]
    summary["train_seconds"] = round(run(cmd, out / "train.log"), 1)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    summary["acc"], summary["aaa"] = metrics["acc"], metrics["aaa"]
    per_task = []
    for t in range(args.tasks):
        rows = [json.loads(line) for line in (run_dir / "steps" / f"task_{t:03d}.jsonl").open()]
        steady = [r["seconds"] for r in rows[1:]] or [rows[0]["seconds"]]  # first: warm-up
        per_task.append(statistics.median(steady))
    summary["step_seconds_per_task"] = [round(s, 5) for s in per_task]
    summary["images_per_second_first_task"] = round(args.batch_size / per_task[0], 1)
    summary["step_ratio_last_to_first_task"] = round(per_task[-1] / per_task[0], 3)

    bench = [sys.executable, "bench/step_cost.py", "--device", args.device, "--backbone",
             args.backbone, "--weights", str(weights), "--batch", str(args.batch_size),
             "--repeats", "5", "--inner", "2", "--tasks", *map(str, args.bench_tasks)]
    summary["bench_seconds"] = round(run(bench, out / "bench.log"), 1)
    summary["bench"] = (out / "bench.log").read_text().splitlines()
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    argcheck.quiet_on_closed_pipe(main)
