"""Fig. 4a measured: a run's path across tasks, drawn on a plane through its own weights over the
accuracy surfaces of the first task and the latest one.

The paper's Fig. 4a is a schematic: SD-LoRA's updates lead into the overlap of the tasks'
low-loss regions, vanilla LoRA's leave the first task's region. `path_plane` draws the measured
counterpart from a run's checkpoints.

* **The path**: the backbone's weights in their plain-ViT form (`merged()`, W0 + the update over
  every adapted parameter) at the start (W0, pretrained) and after each task 1..T. Runs keep one
  checkpoint per task (no per-epoch or per-step snapshots), so the path has T + 1 points and is
  drawn as straight segments between them; the segment from task t-1 to t is exactly the
  Interpolation page's straight line (`interpolate`), projected.
* **The plane**: through W0, the weights after task 1 and the weights after task T; in update
  coordinates (W - W0) the span of the update after task 1 and the one after task T,
  orthonormalised (Gram-Schmidt, in that order). Three points of the path lie on it exactly:
  the start, task 1's own solution (the centre of task 1's high-accuracy region as training
  found it) and the end. So the accuracy drawn at the path's end *is* the final model's, and
  "task 1's accuracy at the end against its best on the plane" compares the real final model
  with real models, not with a projection. The points after tasks 2..T-1 are projected
  (orthogonally); ``variance_share`` says how much of the trajectory the plane holds:
  1 - sum_i dist(p_i, plane)^2 / sum_i ||p_i - mean||^2 over the T + 1 points (1 when every
  point lies on it), and ``pca_share`` what the best plane could hold (the first two principal
  directions of the same points, the same formula). The first two principal directions were not
  used: their plane need not pass through any checkpoint, so no accuracy drawn on it would be a
  model the run had.
* **The surfaces**: on a square grid over the plane (`grid` x `grid`, in units of the update's
  Frobenius norm, centred on the path and twice its larger extent, so the path fills about half
  of it), the accuracy on task 1's and on task T's test images, each with the final model's
  head restricted to that task's own classes (the task given: the head's scale across tasks
  does not blur the picture of the features). One forward pass per grid point over a fixed
  subsample of `images` test images per task (drawn with the run's seed), both tasks in one
  batch; the weights at a grid point are W0 + a u + b v built in one vectorised step and passed
  with `torch.func.functional_call` (the model itself is never changed).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch.func import functional_call

from ..config import TrainConfig
from ..runs import RunFolder
from .core import _body, _plain, _run

__all__ = ["check_plane", "path_plane", "plane_coordinates", "plane_name", "plane_summary", "path_frame",
           "PLANE_GRID", "PLANE_IMAGES"]

PLANE_GRID = 15  # grid points per side (the app's and the CLI's default: they share the cache)
PLANE_IMAGES = 40  # test images per task at each grid point


def plane_name(tasks: int, grid: int = PLANE_GRID, images: int = PLANE_IMAGES) -> str:
    """The name `path_plane`'s result is cached under (``analyses/<name>.json``)."""
    return f"path_plane_task{tasks}_{grid}_{images}"


def plane_coordinates(points: np.ndarray) -> dict:
    """The plane of the module docstring for `points` (K >= 3, D): point 0 the start (W0, the
    origin of the update coordinates), point 1 after task 1, point K-1 the end.

    Returns ``basis`` (2, D) orthonormal rows u, v; ``coords`` (K, 2) each point's orthogonal
    projection in that basis; ``off_plane`` (K,) each point's distance from the plane;
    ``variance_share`` and ``pca_share`` (module docstring). ValueError when the updates after
    task 1 and at the end do not span a plane (one is zero, or they are parallel)."""
    P = np.asarray(points, dtype=np.float64) - np.asarray(points[0], dtype=np.float64)
    if P.ndim != 2 or len(P) < 3:
        raise ValueError(f"points has shape {np.shape(points)}; expected (K >= 3, D): the start, "
                         f"after task 1, ..., the end")
    first, last = P[1], P[-1]
    n1 = np.linalg.norm(first)
    if n1 == 0:
        raise ValueError("the weights after task 1 equal the start: the run never moved its "
                         "backbone's weights (a frozen backbone has no path to draw)")
    u = first / n1
    w = last - (last @ u) * u
    nw = np.linalg.norm(w)
    if nw <= 1e-9 * max(np.linalg.norm(last), n1):
        raise ValueError("the update at the end is parallel to the one after task 1: the path "
                         "is a straight line, with no plane to draw it on")
    v = w / nw
    v -= (v @ u) * u  # a second pass keeps u, v orthogonal to rounding
    v /= np.linalg.norm(v)
    basis = np.stack([u, v])
    coords = P @ basis.T  # (K, 2)
    residual = P - coords @ basis
    off = np.linalg.norm(residual, axis=1)
    centred = P - P.mean(0)
    total = float((centred ** 2).sum())
    singular = np.linalg.svd(centred, compute_uv=False)
    return dict(basis=basis, coords=coords, off_plane=off,
                variance_share=1.0 - float((off ** 2).sum()) / total,
                pca_share=float((singular[:2] ** 2).sum()) / total)


def path_frame(panels: dict[str, dict]) -> pd.DataFrame:
    """`path_plane` results (by label) as a table: one row per run and path point, with its
    coordinates on the plane, its distance from it, and its own accuracies (the CSV beside the
    figure)."""
    rows = []
    for label, r in panels.items():
        for i, (ab, off) in enumerate(zip(r["path"], r["off_plane"])):
            rows.append(dict(run=label, point="W0" if i == 0 else f"after task {i}", a=ab[0],
                             b=ab[1], off_plane=off, task1=r["path_task1"][i],
                             latest=r["path_latest"][i], latest_task=r["tasks"]))
    return pd.DataFrame(rows)


def _subsample(data, n: int, generator: torch.Generator, device: torch.device):
    """A fixed random `n` of a task's test images (all of them if it has fewer), one batch."""
    from ..train import batches

    order = torch.randperm(len(data), generator=generator)[:n]
    return next(batches(data, len(order), device, order))


@torch.inference_mode()
def check_plane(run: RunFolder | str | Path, tasks: int | None = None, grid: int = PLANE_GRID,
                images: int = PLANE_IMAGES) -> int:
    """The tasks `path_plane` would draw (default every finished one); a ValueError (a RunError
    for a damaged run) saying why it cannot, before anything is loaded or computed."""
    run = _run(run)
    done = run.completed_tasks()
    tasks = done if tasks is None else tasks
    if done < 2 or not 2 <= tasks <= done:
        raise ValueError(f"tasks={tasks} is not valid for run {run.id}: choose a finished task "
                         f"from 2 to {done}" if done >= 2 else
                         f"run {run.id} has {done} finished task(s); a path needs two")
    if grid < 3:
        raise ValueError(f"grid={grid}; at least 3 points per side (15 or more for a picture)")
    if images < 1:
        raise ValueError(f"images={images}; at least 1 test image per task")
    return tasks


def path_plane(run: RunFolder | str | Path, tasks: int | None = None, grid: int = PLANE_GRID,
               images: int = PLANE_IMAGES, device: str = "cpu",
               progress: Callable[[float], None] | None = None, benchmark=None) -> dict:
    """The path of the first `tasks` tasks (1-based, >= 2; default every finished one) on the
    plane of the module docstring, over task 1's and task `tasks`' accuracy surfaces.

    Returns a JSON-ready dict: ``tasks``; ``a``, ``b`` (the grid's axes); ``task1``, ``latest``
    (grid rows b by columns a of accuracies, %); ``path`` ([a, b] of the start and of the model
    after each task); ``off_plane`` (each path point's distance from the plane, same units);
    ``path_task1``, ``path_latest`` (the accuracies of the checkpoints themselves, on the same
    images); ``variance_share``, ``pca_share``; the end against the best on the plane
    (`plane_summary`); ``images`` (per task), ``parameters`` (the adapted weights' count)."""
    from ..train import build_model, load_data, load_model, split_for

    run = _run(run)
    tasks = check_plane(run, tasks, grid, images)
    config = TrainConfig.from_dict(run.config())
    dev = torch.device(device)
    end = None
    bodies = []
    for t in range(tasks):
        model = _plain(load_model(run, t, device), config.method, "the path plane")
        bodies.append(_body(model))
        end = model
    start = {k: v for k, v in build_model(config, device).backbone.state_dict().items()
             if k in bodies[0]}
    names = [k for k in start if any(not torch.equal(b[k], start[k]) for b in bodies)]
    if not names:
        raise ValueError(f"run {run.id} ({config.method}) never changed its backbone's weights: "
                         f"there is no path to draw")

    def flat(state: dict) -> torch.Tensor:
        return torch.cat([state[k].flatten() for k in names])

    points = torch.stack([flat(start)] + [flat(b) for b in bodies])  # (T + 1, D) float32
    del bodies
    plane = plane_coordinates(points.double().cpu().numpy())
    shapes = [start[k].shape for k in names]
    sizes = [s.numel() for s in shapes]
    points = points.to(dev)
    base = points[0]
    u, v = (torch.from_numpy(plane["basis"][i]).float().to(dev) for i in range(2))

    benchmark = benchmark or load_data(config)
    split = split_for(config, benchmark)
    k = split.classes_per_task
    generator = torch.Generator().manual_seed(config.seed)
    xs, ys, owns = [], [], []
    for j in (0, tasks - 1):
        x, y = _subsample(split.task_data(benchmark.test, j), images, generator, dev)
        xs.append(x)
        ys.append(y)
        owns.append(slice(j * k, (j + 1) * k))
    x, y = torch.cat(xs), torch.cat(ys)
    rows = [slice(0, len(ys[0])), slice(len(ys[0]), len(y))]
    end = end.to(dev).eval()

    def accuracies(weights: torch.Tensor) -> tuple[float, float]:
        """Task 1's and task `tasks`' accuracy (%) of the final model with these weights (a flat
        vector over `names`) in place of its own, each with the head's rows of its own classes."""
        params = {f"model.{n}": w.view(s)
                  for n, w, s in zip(names, torch.split(weights, sizes), shapes)}
        logits = functional_call(end, params, (x,), strict=False)
        return tuple(round(100.0 * (logits[r, own].argmax(1) + own.start == y[r]).sum().item()
                           / (r.stop - r.start), 2) for r, own in zip(rows, owns))

    coords = plane["coords"]
    centre = (coords.max(0) + coords.min(0)) / 2
    half = float((coords.max(0) - coords.min(0)).max())  # the path spans half of each side
    axis_a = np.linspace(centre[0] - half, centre[0] + half, grid)
    axis_b = np.linspace(centre[1] - half, centre[1] + half, grid)
    total = grid * grid + len(points)
    task1 = np.zeros((grid, grid))
    latest = np.zeros((grid, grid))
    for i, b in enumerate(axis_b):
        for j, a in enumerate(axis_a):
            task1[i, j], latest[i, j] = accuracies(base + float(a) * u + float(b) * v)
            if progress is not None:
                progress((i * grid + j + 1) / total)
    # The path's own models (the start, task 1's and the end lie on the plane; the others are
    # evaluated at their own weights, not at their projections).
    path_acc = []
    for p, point in enumerate(points):
        path_acc.append(accuracies(point))
        if progress is not None:
            progress((grid * grid + p + 1) / total)
    result = dict(
        tasks=tasks, method=config.method, seed=config.seed, grid=grid, images=images,
        parameters=int(sum(sizes)), a=axis_a.round(6).tolist(), b=axis_b.round(6).tolist(),
        task1=task1.tolist(), latest=latest.tolist(), path=coords.round(6).tolist(),
        off_plane=plane["off_plane"].round(6).tolist(),
        path_task1=[a for a, _ in path_acc], path_latest=[b for _, b in path_acc],
        variance_share=round(plane["variance_share"], 6), pca_share=round(plane["pca_share"], 6))
    return result | plane_summary(result)


def plane_summary(result: dict) -> dict:
    """Where the path ends against the best on its plane, from a `path_plane` result:
    ``end_task1``, ``end_latest`` (the final model's accuracies), ``best_task1`` (task 1's best
    on the plane: the grid and the path's points that lie on it, the start, task 1's model and
    the end), ``end_mean``, ``best_mean`` (the mean of the two tasks' accuracies at the end and
    its best on the plane: a point above the end's is better for both tasks together)."""
    on = [i for i, off in enumerate(result["off_plane"]) if off <= 1e-6]
    task1 = [v for row in result["task1"] for v in row] + [result["path_task1"][i] for i in on]
    latest = [v for row in result["latest"] for v in row] + [result["path_latest"][i] for i in on]
    mean = [(a + b) / 2 for a, b in zip(task1, latest)]
    end = (result["path_task1"][-1], result["path_latest"][-1])
    return dict(end_task1=end[0], end_latest=end[1], best_task1=max(task1),
                end_mean=sum(end) / 2, best_mean=max(mean))
