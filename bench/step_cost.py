"""Does a training step cost the same at task 1, 20 and 100? Is merged inference a plain ViT?

Measured side by side in one run, interleaved (round-robin over the settings, median of the
repeats), on the embedded ViT:

1. SD-LoRA training step as the training loop takes it (forward, backward, Adam step, the
   frozen magnitudes in `sdlora.fused`'s single pass; batch 64) with 0, 19 and 99 earlier frozen
   components: ratio to the task-1 step. Beside it, the same model with autograd and torch.optim
   handling the frozen magnitudes too (two passes over the frozen directions per step).
2. The work in a step that grows with the tasks, timed alone: the fused pass (the magnitudes'
   gradients, their Adam step and the new cached sum), as a share of the task-1 step. This is
   the floor for an exact method: every frozen direction must be read once a step to get its
   magnitude's gradient.
3. The released code's way: one low-rank branch per earlier component on every token, at the
   same task counts: ratio to its own task-1 step.
4. Inference: `ContinualViT.merged()` after 100 tasks against the plain timm ViT: ratio.

    python bench/step_cost.py [--batch 64] [--repeats 7] [--device cpu] [--json PATH]

With --json the same result is also written as data (date, device, settings, load average,
per-task-count step times and ratios, the fused pass, inference); the app's Efficiency page
plots `bench/results/step_cost.json`.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sdlora.backbone import image_size  # noqa: E402
from sdlora.machine import cpu_model  # noqa: E402
from sdlora.config import TrainConfig  # noqa: E402
from sdlora.methods.lora import ContinualViT  # noqa: E402
from sdlora.train import build_model, task_generator  # noqa: E402


BACKBONE: dict = {}  # backbone / weights for every model of the run (set by --backbone)


def sd_lora_at(tasks: int, device) -> ContinualViT:
    """An SD-LoRA model on its `tasks`-th task: tasks-1 frozen components and a current one."""
    model = build_model(TrainConfig(method="sd-lora", tasks=1, benchmark="digits", **BACKBONE),
                        device)
    for t in range(tasks):
        if t:
            model.end_task()
        model.begin_task(t, 4, task_generator(0, t))
    return model


class BranchQKV(nn.Module):
    """The released code's forward: W0 x + sum_k alpha_k (A_k B_k x) / (||A_k|| ||B_k||) + A_t B_t x,
    one low-rank branch per component, per token."""

    def __init__(self, base: nn.Linear, adapter, block: int) -> None:
        super().__init__()
        self.base, self.adapter, self.block = base, adapter, block

    def forward(self, x):  # (B, N, D)
        out = self.base(x)  # (B, N, 3D)
        a, d = self.adapter, self.base.in_features
        q, v = out[..., :d], out[..., 2 * d:]
        for c in a.components:
            for j, target in ((0, q), (1, v)):
                p = 2 * self.block + j
                A, B = a.A[c.key][p], a.B[c.key][p]  # (D, r), (r, D)
                branch = (x @ B.T) @ A.T  # (B, N, D)
                if c.frozen:
                    branch = a.magnitude[c.key] * branch / (A.norm() * B.norm())
                target = target + branch
                if j == 0:
                    q = target
                else:
                    v = target
        return torch.cat([q, out[..., d:2 * d], v], dim=-1)


def released_at(tasks: int, device) -> nn.Module:
    model = sd_lora_at(tasks, device)
    backbone = model.backbone
    for i, block in enumerate(backbone.blocks):
        block.attn.qkv = BranchQKV(block.attn.qkv, model.adapter, i)
    model.adapter.requires_grad_(False)
    for c in model.adapter.components:
        model.adapter.magnitude[c.key].requires_grad_(True)
        if not c.frozen:
            model.adapter.A[c.key].requires_grad_(True)
            model.adapter.B[c.key].requires_grad_(True)

    def forward(x):
        return model.head(backbone((x - model.mean) / model.std))
    return model, forward


def step_timer(model: nn.Module, forward, batch: torch.Tensor, labels: torch.Tensor,
               fused=None):
    """One training step: forward, backward, Adam. With `fused` (the training loop's way), the
    frozen magnitudes step in `sdlora.fused.FrozenMagnitudes`' single pass; without it,
    autograd and torch.optim.Adam handle them (two passes over the frozen directions)."""
    # The fused step parks its magnitudes' requires_grad; its sum M is a parameter it steps.
    params = [p for p in model.parameters()
              if p.requires_grad and (fused is None or p is not fused.sum)]
    optimizers = [torch.optim.Adam(params, lr=1e-4)] + ([fused] if fused is not None else [])

    def step() -> float:
        start = time.perf_counter()
        loss = F.cross_entropy(forward(batch), labels)
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for optimizer in optimizers:
            optimizer.step()
        if batch.is_cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start
    return step


def pass_timer(fused):
    """The one part of a step whose work grows with the tasks: the fused pass over the frozen
    directions (gradients of the frozen magnitudes, their Adam step, the new cached sum)."""
    grad = torch.randn_like(fused.sum)

    def run() -> float:
        fused.sum.grad = grad
        start = time.perf_counter()
        fused.step()
        if grad.is_cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start
    return run


def inference_timer(forward, batch):
    @torch.no_grad()
    def run() -> float:
        start = time.perf_counter()
        forward(batch)
        if batch.is_cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start
    return run


def interleaved(timers: dict, repeats: int, inner: int) -> dict[str, list[float]]:
    """Round-robin: every round times each setting once (mean of `inner` calls), so settings
    compared with each other are measured seconds apart; returns each setting's rounds."""
    for timer in timers.values():  # warm-up
        timer()
    samples = {k: [] for k in timers}
    for _ in range(repeats):
        for name, timer in timers.items():
            samples[name].append(sum(timer() for _ in range(inner)) / inner)
    return samples


def ratio(samples: dict, name: str, reference: str) -> float:
    """Median over rounds of the per-round ratio: slow drifts of the machine cancel."""
    return statistics.median(a / b for a, b in zip(samples[name], samples[reference]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--inner", type=int, default=3)
    parser.add_argument("--tasks", type=int, nargs="+", default=[1, 10, 20, 50, 100])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-released", action="store_true",
                        help="leave out the released-style model (its per-token branches need "
                             "about 24 GB at batch 128 and 100 tasks)")
    parser.add_argument("--backbone", default="embedded-vit",
                        help="a name of sdlora.backbone.BACKBONES or a timm ViT tag")
    parser.add_argument("--weights", default=None, help="local weights file for --backbone")
    parser.add_argument("--json", default=None, metavar="PATH",
                        help="also write the result as JSON here (the Efficiency page reads "
                             "bench/results/step_cost.json)")
    parser.add_argument("--note", default="",
                        help="a line kept in the JSON, e.g. what else the machine was doing")
    args = parser.parse_args()
    load_before = os.getloadavg()
    device = torch.device(args.device)
    BACKBONE.update(backbone=args.backbone, weights=args.weights)
    size = image_size(args.backbone)
    torch.manual_seed(0)
    x = torch.rand(args.batch, 3, size, size, device=device)
    y = torch.randint(0, 4, (args.batch,), device=device)

    timers = {}
    kinds = ("sd-lora", "autograd", "pass") + (() if args.skip_released else ("released",))
    for kind in kinds:
        for n in args.tasks:
            if kind == "released":
                released, fwd = released_at(n, device)
                timers[f"released@{n}"] = step_timer(released, lambda b, f=fwd: f(b)[:, -4:],
                                                     x, y)
                continue
            m = sd_lora_at(n, device)
            m.trainable_parameters()
            fused = m.fuse_frozen() if kind != "autograd" else None
            if kind == "pass":
                if fused is not None:
                    timers[f"pass@{n}"] = pass_timer(fused)
                continue
            timers[f"{kind}@{n}"] = step_timer(m, lambda b, m=m: m(b)[:, -4:], x, y, fused)
    final = sd_lora_at(max(args.tasks), device).eval()
    merged = final.merged().eval()
    plain = build_model(TrainConfig(method="frozen", benchmark="digits", **BACKBONE),
                        device).backbone.eval()
    plain.reset_classifier(final.head.num_classes)
    timers["infer merged"] = inference_timer(merged, x)
    timers["infer plain timm ViT"] = inference_timer(plain, x)
    timers["infer unmerged"] = inference_timer(final, x)
    samples = interleaved(timers, args.repeats, args.inner)
    t = {k: statistics.median(v) for k, v in samples.items()}

    first = min(args.tasks)
    device_name = (torch.cuda.get_device_name(device) if device.type == "cuda"
                   else f"cpu ({cpu_model()}, {os.cpu_count()} cores)")

    def curve(kind: str) -> dict:
        return dict(step_ms=[round(1e3 * t[f"{kind}@{n}"], 2) for n in args.tasks],
                    ratio=[round(ratio(samples, f"{kind}@{n}", f"{kind}@{first}"), 4)
                           for n in args.tasks])

    base = t[f"sd-lora@{first}"]
    result = dict(
        date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        command="python bench/step_cost.py " + " ".join(sys.argv[1:]),
        device=device_name, torch=torch.__version__,
        settings=dict(backbone=args.backbone, image_size=size, batch=args.batch,
                      repeats=args.repeats, inner=args.inner,
                      torch_threads=torch.get_num_threads()),
        load_average=dict(before=[round(x, 2) for x in load_before],
                          after=[round(x, 2) for x in os.getloadavg()]),
        note=args.note,
        ratio_to=f"the task-{first} step of the same kind (median over rounds of the "
                 "per-round ratio)",
        tasks=args.tasks,
        sd_lora=curve("sd-lora"), autograd=curve("autograd"),
        released=None if args.skip_released else curve("released"),
        fused_pass=dict(tasks=[n for n in args.tasks if f"pass@{n}" in t],
                        ms=[round(1e3 * t[f"pass@{n}"], 3) for n in args.tasks
                            if f"pass@{n}" in t],
                        share_of_first_step=[round(t[f"pass@{n}"] / base, 4)
                                             for n in args.tasks if f"pass@{n}" in t]),
        inference=dict(tasks=max(args.tasks),
                       merged_ms=round(1e3 * t["infer merged"], 2),
                       plain_vit_ms=round(1e3 * t["infer plain timm ViT"], 2),
                       unmerged_ms=round(1e3 * t["infer unmerged"], 2),
                       merged_ratio=round(ratio(samples, "infer merged",
                                                "infer plain timm ViT"), 4),
                       unmerged_ratio=round(ratio(samples, "infer unmerged",
                                                  "infer plain timm ViT"), 4)))
    print_result(result)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.json}")


def print_result(r: dict) -> None:
    """The table this script has always printed, from the result's data."""
    s = r["settings"]
    first = r["tasks"][0]
    print(f"backbone {s['backbone']} at {s['image_size']} px, device {r['device']}, batch "
          f"{s['batch']}, median of {s['repeats']} rounds x {s['inner']}, torch threads "
          f"{s['torch_threads']}; ratio = median over rounds of the per-round ratio to the "
          f"task-{first} step; load average {r['load_average']['before']}")
    print(f"{'tasks':>6} {'SD-LoRA step ms':>16} {'ratio':>6} {'autograd-only ms':>17} "
          f"{'ratio':>6} {'released-style ms':>18} {'ratio':>6}")
    for i, n in enumerate(r["tasks"]):
        rel = r["released"]
        released = (f"{'-':>18} {'-':>6}" if rel is None else
                    f"{rel['step_ms'][i]:18.1f} {rel['ratio'][i]:6.3f}")
        print(f"{n:>6} {r['sd_lora']['step_ms'][i]:16.1f} {r['sd_lora']['ratio'][i]:6.3f} "
              f"{r['autograd']['step_ms'][i]:17.1f} {r['autograd']['ratio'][i]:6.3f} {released}")
    print("the work that grows with the tasks (frozen magnitudes' fused pass), timed alone:")
    p = r["fused_pass"]
    for n, ms, share in zip(p["tasks"], p["ms"], p["share_of_first_step"]):
        print(f"{n:>6} tasks: {ms:.1f} ms = {100 * share:.1f}% of the task-{first} step")
    i = r["inference"]
    print(f"inference after {i['tasks']} tasks: merged {i['merged_ms']:.1f} ms, plain timm ViT "
          f"{i['plain_vit_ms']:.1f} ms, ratio {i['merged_ratio']:.3f}; unmerged "
          f"{i['unmerged_ms']:.1f} ms ({i['unmerged_ratio']:.3f})")


if __name__ == "__main__":
    main()
