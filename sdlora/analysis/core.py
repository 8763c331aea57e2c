"""Analyses over run folders: magnitudes, residuals, distances, interpolation, efficiency.

Definitions (written once, used by the app, the CLI and the tests):

* Direction residual (Fig. 3a, Eqn. 7): `sdlora.adapters.least_squares_residual`, the
  Frobenius norm of what the new normalised direction leaves outside the span of the earlier
  ones, divided by the norm of the direction itself, with one coefficient per earlier task shared
  by all adapted projections ("model" residual, the one SD-LoRA-KD compares with tau), or fitted
  per projection ("per projection", block i q or v). 0 = inside the span, 1 = orthogonal.
* Relative distance (Fig. 2a): for task-specific weights W_i* fine-tuned from W0 on task i
  alone, rel(i, j) = ||W_i* - W_j*||_F / sqrt(||W_i* - W0||_F ||W_j* - W0||_F) over the backbone's
  weight matrices. 1 means the two are as far from each other as from W0; the paper's Finding 1
  is that every off-diagonal entry is well below 1.
* Interpolation (Fig. 4b/c): models at lambda in [0, 1] on the straight line between the
  merged weights after task t-1 (lambda = 0) and after task t (lambda = 1). Earlier tasks' head
  rows are frozen, so they are the same at both ends. Task t's rows exist only at lambda = 1:
  along the path their logits get + log(lambda), i.e. the new classes enter with prior weight
  lambda. At lambda = 0 they are excluded (-inf) and the path reproduces checkpoint t-1's
  accuracies exactly; at lambda = 1 checkpoint t's.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..adapters import absolute_residual, least_squares_residual, normalise
from ..config import HIDE_OPTIONS, TrainConfig
from ..runs import RunError, RunFolder, atomic_write_json

__all__ = [
    "absorption_table", "accuracy_matrix_frame", "accuracy_table", "cached", "efficiency",
    "interpolate", "magnitude_series", "magnitudes_at_task_end", "relative_distances",
    "residual_series", "residuals_at_task_end", "seed_groups", "stored", "table5_row",
    "task_identity_matrix", "task_specific_weights", "within_task_accuracy",
]

log = logging.getLogger(__name__)
ANALYSIS_VERSION = 1
INTERPOLATION_POINTS = 5  # the CLI's and the app's default, so the two share cached results
# Each point is one pass over the test data for each task boundary; 101 is a step of 0.01 in
# lambda (the app offers up to 21)
INTERPOLATION_POINTS_MAX = 101


def _run(run: RunFolder | str | Path) -> RunFolder:
    run = run if isinstance(run, RunFolder) else RunFolder(run)
    if not run.exists():
        raise RunError(f"{run.config_path} is missing: {run.path} is not a run folder")
    run.config()  # a corrupt config fails here, naming the file
    return run


def cached(run: RunFolder | str | Path, name: str, compute: Callable[[], object],
           key: dict | None = None) -> object:
    """`compute()` once per run (and `key`, e.g. the task and the number of points), kept as
    ``analyses/<name>.json``; recomputed when the run has finished more tasks since."""
    run = _run(run)
    value = stored(run, name, key)
    if value is None:
        value = compute()
        atomic_write_json(run.analyses_dir / f"{name}.json", dict(stamp=_stamp(run, key),
                                                                  value=value))
    return value


def _stamp(run: RunFolder, key: dict | None) -> dict:
    metrics = run.metrics(required=False) or {}
    return dict(version=ANALYSIS_VERSION, tasks_done=metrics.get("tasks_done", 0), key=key or {})


def stored(run: RunFolder | str | Path, name: str, key: dict | None = None) -> object | None:
    """What `cached` keeps for `name` (and `key`) when it is up to date, else None: a page can
    show a stored analysis at once and offer to compute a missing one instead of computing it
    unasked."""
    run = _run(run)
    path = run.analyses_dir / f"{name}.json"
    if path.exists():
        try:
            kept = json.loads(path.read_text())
            if kept.get("stamp") == _stamp(run, key):
                return kept["value"]
        except (json.JSONDecodeError, KeyError, AttributeError):
            log.warning("recomputing %s: the cached file is corrupt", path)
    return None


# -- accuracy ----------------------------------------------------------------------------------
def accuracy_matrix_frame(matrix: list[list[float]]) -> pd.DataFrame:
    """R as a table: rows 'after T<i>', columns 'T<j>', blank above the diagonal."""
    n = len(matrix)
    padded = [list(row) + [np.nan] * (n - len(row)) for row in matrix]
    frame = pd.DataFrame(padded, columns=[f"T{j + 1}" for j in range(n)],
                         index=[f"after T{i + 1}" for i in range(n)])
    frame.index.name = "model"
    return frame


def task_identity_matrix(metrics: dict) -> list[list[float]] | None:
    """For a method that infers each test image's task (HiDe-Prompt's first stage): row i is the
    share (%) of each task's test images given their own task by the model after task i, as
    `sdlora.train.evaluate` recorded it in ``task_info``; None for the other methods (or a run
    that recorded none)."""
    rows = [info.get("task_identity_accuracy") if isinstance(info, dict) else None
            for info in metrics.get("task_info", [])]
    return rows if rows and all(isinstance(r, list) for r in rows) else None


def accuracy_table(runs: list[RunFolder]) -> pd.DataFrame:
    """One row per run and task: seen accuracy after that task, plus the run's Acc and AAA."""
    rows = []
    for run in runs:
        m = run.metrics(required=False)
        if not m:
            continue
        for i, seen in enumerate(m["seen_accuracy"]):
            rows.append(dict(run=run.id, method=m["method"], seed=m["seed"], task=i + 1,
                             seen_accuracy=seen, acc=m["acc"], aaa=m["aaa"]))
    return pd.DataFrame(rows, columns=["run", "method", "seed", "task", "seen_accuracy", "acc",
                                       "aaa"])


# Settings that cannot change a run's numbers (where it ran, how it loaded and logged), left out
# when runs are grouped over seeds; every other setting must match.
NOT_COMPARED = ("seed", "device", "num_workers", "eval_batch_size", "residual_every", "data_root",
                "extra")


def _settings(run: RunFolder) -> dict:
    """The run's configuration without the seed and NOT_COMPARED, with today's defaults for keys
    an older run folder lacks (the values those runs ran with)."""
    raw = run.config()
    try:
        full = TrainConfig.from_dict(raw).to_dict()
    except ValueError:  # a config this version cannot read: compare what it says
        full = dict(raw)
    return {k: v for k, v in full.items() if k not in NOT_COMPARED}


def _short(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def seed_groups(runs: list[RunFolder]) -> list[dict]:
    """Finished runs grouped by their whole configuration except the seed (and the settings of
    NOT_COMPARED): the input of Fig. 2b/c's mean +- standard error bands. Runs that differ in
    anything else (variant, benchmark, epochs, learning rate, ...) are never averaged together.

    Returns one dict per group, in the order first seen: ``label`` (the method, then every
    setting whose value differs between the groups, e.g. 'sd-lora · lr=0.0001'), ``method``,
    ``settings`` (those differing settings), ``runs`` (ids), ``seeds``, ``seen`` (array
    (runs, tasks) of the accuracy on all seen classes after each task), ``acc``, ``aaa``."""
    groups: dict[str, dict] = {}
    for run in runs:
        m = run.metrics(required=False)
        if not m or m["tasks_done"] != m["tasks"]:
            continue
        settings = _settings(run)
        key = json.dumps(settings, sort_keys=True, default=str)
        group = groups.setdefault(key, dict(method=m["method"], config=settings, runs=[],
                                            seeds=[], seen=[], acc=[], aaa=[]))
        group["runs"].append(run.id)
        group["seeds"].append(m["seed"])
        group["seen"].append(m["seen_accuracy"])
        group["acc"].append(m["acc"])
        group["aaa"].append(m["aaa"])
    configs = [g["config"] for g in groups.values()]
    keys = sorted({k for c in configs for k in c})
    differ = [k for k in keys if k != "method"
              and len({json.dumps(c.get(k), default=str) for c in configs}) > 1]
    out = []
    for g in groups.values():
        settings = {k: g["config"].get(k) for k in differ}
        label = " · ".join([g["method"]] + [f"{k}={_short(v)}" for k, v in settings.items()])
        out.append(dict(label=label, method=g["method"], settings=settings, runs=g["runs"],
                        seeds=g["seeds"], seen=np.array(g["seen"]), acc=g["acc"], aaa=g["aaa"]))
    return out


# -- magnitudes (Fig. 3b/c, Fig. 6) ------------------------------------------------------------
def magnitude_series(run: RunFolder | str | Path) -> pd.DataFrame:
    """alpha_k at every optimiser step: global_step, task (1-based, being trained), epoch,
    component (1-based task that added it), alpha. Empty for methods without magnitudes."""
    rows = [(s["global_step"], s["task"] + 1, s["epoch"], int(k), v)
            for s in _run(run).steps() for k, v in s.get("magnitudes", {}).items()]
    return pd.DataFrame(rows, columns=["global_step", "task", "epoch", "component", "alpha"])


def magnitudes_at_task_end(run: RunFolder | str | Path) -> pd.DataFrame:
    """Rows: after task i (1-based); columns: alpha of each component (NaN before it exists)."""
    m = _run(run).metrics(required=False) or {}
    rows = {i + 1: {int(k): v for k, v in info.get("magnitudes_after", {}).items()}
            for i, info in enumerate(m.get("task_info", []))}
    frame = pd.DataFrame.from_dict(rows, orient="index").sort_index(axis=1)
    frame.index.name = "after task"
    return frame


# -- residuals (Fig. 3a, Eqn. 7) ---------------------------------------------------------------
def residual_series(run: RunFolder | str | Path) -> pd.DataFrame:
    """The current direction's residuals as the engine recorded them during training:
    ``residual`` (relative, of the normalised direction) and ``residual_absolute`` (Algorithm 1
    line 11, of the unnormalised product; NaN in runs made before it was logged)."""
    rows = [(s["global_step"], s["task"] + 1, s["epoch"], s["residual"],
             s.get("residual_absolute", math.nan))
            for s in _run(run).steps() if "residual" in s]
    return pd.DataFrame(rows, columns=["global_step", "task", "epoch", "residual",
                                       "residual_absolute"])


def _products(tensors: dict, layout: list[dict]) -> dict[int, torch.Tensor]:
    """Unnormalised product A B (P, m, n) of every component in a checkpoint, by 0-based task."""
    return {c["task"]: tensors[f"adapter.A.{c['key']}"] @ tensors[f"adapter.B.{c['key']}"]
            for c in layout}


def _directions(tensors: dict, layout: list[dict], normalisation: str) -> dict[int, torch.Tensor]:
    """Normalised direction (P, m, n) of every component in a checkpoint, by 0-based task."""
    out = {}
    for c in layout:
        A, B = tensors[f"adapter.A.{c['key']}"], tensors[f"adapter.B.{c['key']}"]
        out[c["task"]] = normalise(A @ B, A, B, normalisation)
    return out


PER_TASK_DIRECTIONS = ("sd-lora", "sd-lora-rr", "sd-lora-kd", "no-rescale", "frozen-magnitudes")


def residuals_at_task_end(run: RunFolder | str | Path) -> pd.DataFrame:
    """Residual of task t's direction against tasks 1..t-1's at the end of task t (t >= 2).

    Columns: ``model`` (relative: `least_squares_residual` of the normalised directions, one
    coefficient per task shared by all projections), ``model (absolute)`` (Algorithm 1 line 11:
    `absolute_residual` of the unnormalised products, shared coefficients), ``product norm``
    (||A_t B_t||_F over all projections), ``absorbed`` (SD-LoRA-KD dropped the direction; then
    only the residuals it recorded are known), and per projection 'block i q' / 'block i v'
    (relative) and 'block i q (absolute)' ... (each projection fitted on its own)."""
    run = _run(run)
    config = TrainConfig.from_dict(run.config())
    if config.method not in PER_TASK_DIRECTIONS:
        return pd.DataFrame()
    normalisation = "factors" if config.variant == "released" else "product"
    m = run.metrics(required=False) or {}
    rows = []
    for t in range(1, run.completed_tasks()):
        info = m["task_info"][t]
        if info.get("absorbed"):  # SD-LoRA-KD dropped it; its residuals were recorded
            rows.append({"after task": t + 1, "model": info["residual"],
                         "model (absolute)": info.get("residual_absolute", math.nan),
                         "product norm": info.get("product_norm", math.nan), "absorbed": True})
            continue
        tensors, meta = run.checkpoint(t)
        directions = _directions(tensors, meta["layout"], normalisation)
        products = _products(tensors, meta["layout"])
        target, product = directions[t], products[t]
        earlier = sorted(k for k in directions if k < t)
        basis = torch.stack([directions[k] for k in earlier])
        basis_products = torch.stack([products[k] for k in earlier])
        row = {"after task": t + 1, "model": least_squares_residual(target, basis)[1],
               "model (absolute)": absolute_residual(product, basis_products)[1],
               "product norm": float(torch.linalg.vector_norm(product)), "absorbed": False}
        for p in range(target.shape[0]):
            name = f"block {p // 2} {'qv'[p % 2]}"
            row[name] = least_squares_residual(target[p:p + 1], basis[:, p:p + 1])[1]
            row[f"{name} (absolute)"] = absolute_residual(product[p:p + 1],
                                                          basis_products[:, p:p + 1])[1]
        rows.append(row)
    return pd.DataFrame(rows)


def absorption_table(run: RunFolder | str | Path, residuals: pd.DataFrame | None = None,
                     ) -> pd.DataFrame:
    """SD-LoRA-KD's test at the end of each task t >= 2, both ways: the relative and the
    absolute residual (`residuals_at_task_end`), the threshold tau that would have absorbed the
    direction under each rule (any tau above the residual; Algorithm 1 line 11 reads '<= tau'),
    how many times larger than this run's `kd_tau` that is, and, in SD-LoRA-KD runs, the rule
    the run used and what it decided."""
    run = _run(run)
    config = TrainConfig.from_dict(run.config())
    table = residuals_at_task_end(run) if residuals is None else residuals
    if table.empty:
        return pd.DataFrame()
    tau = config.kd_tau
    out = pd.DataFrame({
        "after task": table["after task"],
        "relative residual": table["model"],
        "absolute residual": table["model (absolute)"],
        "||A_t B_t||_F": table["product norm"],
        "tau": tau,
        "relative rule absorbs at this tau": table["model"] < tau,
        "absolute rule absorbs at this tau": table["model (absolute)"] < tau,
        "tau needed / tau (relative)": table["model"] / tau,
        "tau needed / tau (absolute)": table["model (absolute)"] / tau,
    })
    if config.method == "sd-lora-kd":
        out["rule of this run"] = config.kd_residual
        out["absorbed in this run"] = table["absorbed"].to_numpy()
    return out

# -- interpolation (Fig. 4b/c) -----------------------------------------------------------------
def _plain(model, method: str, what: str = "interpolation"):
    """`model.merged()` (its plain-ViT form); ValueError naming the method when it has none."""
    from ..methods import NotMergeable

    try:
        return model.merged()
    except NotMergeable as err:
        raise ValueError(f"method {method!r} has no plain-ViT form, so there are no weight "
                         f"vectors to draw a line or a plane through ({err}); {what} is for "
                         f"methods whose tasks end as plain weights (the LoRA family, InfLoRA, "
                         f"SimpleCIL)") from None


def _body(plain) -> dict[str, torch.Tensor]:
    """Every weight of a plain model (`_plain`) but the head's, by its state-dict name."""
    return {k: v.detach().clone() for k, v in plain.model.state_dict().items()
            if not k.startswith("head.")}


def _line_ends(before, after, method: str):
    """The two checkpoints in their plain-ViT form (`merged()`): the weights at each end of the
    line (every parameter but the head) and the later model, whose head is used all along."""
    start_model, end_model = _plain(before, method), _plain(after, method)
    return end_model, _body(start_model), _body(end_model)


@torch.no_grad()
def interpolate(run: RunFolder | str | Path, task: int, points: int = INTERPOLATION_POINTS,
                device: str = "cpu", progress: Callable[[float], None] | None = None,
                benchmark=None, measured_ends: bool = True) -> pd.DataFrame:
    """Accuracy along the line from the model after task `task`-1 to after `task` (1-based
    `task` >= 2; see the module docstring for the head). Columns: lambda, old (accuracy on
    tasks 1..task-1's test data), new (task `task`'s), and 'task j' for each.

    The ends of the line are the two checkpoints. With `measured_ends` their accuracies are the
    run's own, from its accuracy matrix (measured when each task ended), instead of two more
    passes over the test data; `measured_ends=False` recomputes them (the tests check that both
    give the same numbers)."""
    from ..train import batches, load_data, load_model, split_for

    if not 2 <= points <= INTERPOLATION_POINTS_MAX:
        raise ValueError(f"points={points}; from 2 (the two checkpoints) to "
                         f"{INTERPOLATION_POINTS_MAX}")
    run = _run(run)
    done = run.completed_tasks()
    if not 2 <= task <= done:
        raise ValueError(f"task={task} is not valid for run {run.id}: choose a finished task "
                         f"from 2 to {done}" if done >= 2 else
                         f"run {run.id} has {done} finished task(s); interpolation needs two")
    config = TrainConfig.from_dict(run.config())
    benchmark = benchmark or load_data(config)
    split = split_for(config, benchmark)
    before, after = load_model(run, task - 2, device), load_model(run, task - 1, device)
    model, start, end = _line_ends(before, after, config.method)
    model = model.to(device).eval()
    k = split.classes_per_task
    new = slice((task - 1) * k, task * k)
    data = [split.task_data(benchmark.test, j) for j in range(task)]
    sizes = [len(d) for d in data]
    R = run.metrics()["accuracy_matrix"] if measured_ends else None
    rows = []
    for i, lam in enumerate(np.linspace(0.0, 1.0, points)):
        if R is not None and lam in (0.0, 1.0):  # a checkpoint: its accuracies as measured
            accs = list(R[task - 2][:task - 1]) + [0.0] if lam == 0 else list(R[task - 1][:task])
        else:
            model.model.load_state_dict({n: (1 - lam) * start[n] + lam * end[n] for n in start},
                                        strict=False)  # the head stays the later checkpoint's
            accs = []
            for j, subset in enumerate(data):
                hits = 0
                # At lambda = 0 task t's classes are excluded (-inf): none of its images can
                # be right, so its accuracy is 0 by construction and they are not evaluated.
                if lam > 0 or j < task - 1:
                    for x, y in batches(subset, 512, torch.device(device)):
                        logits = model(x)
                        logits[:, new] += math.log(lam) if lam > 0 else -math.inf
                        hits += (logits.argmax(1) == y).sum().item()
                accs.append(100.0 * hits / len(subset))
        row = {"lambda": float(lam), **{f"task {j + 1}": a for j, a in enumerate(accs)}}
        row["old"] = sum(a * n for a, n in zip(accs[:-1], sizes)) / sum(sizes[:-1])
        row["new"] = accs[-1]
        rows.append(row)
        if progress is not None:
            progress((i + 1) / points)
    return pd.DataFrame(rows)


# -- distances (Fig. 2a, Fig. 7) ---------------------------------------------------------------
def within_task_accuracy(run: RunFolder | str | Path, device: str = "cpu",
                         benchmark=None) -> pd.DataFrame:
    """Where the accuracy of a finished run goes: for each task's test data, the final model's
    accuracy with the argmax over every class seen (class-incremental, what Acc counts) and over
    that task's own classes only (task-incremental: the task given). A large difference means
    the classes are still told apart within each task but the tasks' logits are not on one
    scale (the head learned each task's rows against that task only); a small one means the
    features themselves lost the old tasks. A `joint` run is scored on the tasks of the
    incremental protocol it bounds (the class order is the same permutation).
    Columns: task (1-based), class_il, task_il, images."""
    from ..data import make_task_split
    from ..train import batches, load_data, load_model

    run = _run(run)
    config = TrainConfig.from_dict(run.config())
    done = run.completed_tasks()
    last = 1 if config.method == "joint" else config.tasks
    if done < last:
        raise ValueError(f"run {run.id} has {done} of {last} tasks finished; the analysis reads "
                         f"the final model")
    benchmark = benchmark or load_data(config)
    seed = config.seed if config.class_order_seed is None else config.class_order_seed
    split = make_task_split(benchmark.num_classes, config.tasks, seed)
    model = load_model(run, done - 1, device).eval()
    k = split.classes_per_task
    rows = []
    with torch.no_grad():
        for task in range(config.tasks):
            own = slice(task * k, (task + 1) * k)
            data = split.task_data(benchmark.test, task)
            class_il = task_il = 0
            for x, y in batches(data, 512, torch.device(device)):
                logits = model(x)
                class_il += (logits.argmax(1) == y).sum().item()
                task_il += (logits[:, own].argmax(1) + own.start == y).sum().item()
            rows.append(dict(task=task + 1, class_il=100.0 * class_il / max(len(data), 1),
                             task_il=100.0 * task_il / max(len(data), 1), images=len(data)))
    return pd.DataFrame(rows)


def task_specific_weights(config: TrainConfig, epochs: int | None = None, lr: float = 1e-4,
                          device: str = "cpu", benchmark=None,
                          progress: Callable[[float], None] | None = None,
                          ) -> dict[str, list[np.ndarray]]:
    """Fine-tune the whole backbone from W0 on each task alone (Adam, `lr`, the run's epochs
    and batch size) and return, per task, W_i* - W0 of every weight matrix (flattened, as one
    vector), plus the same restricted to the q and v slices that the adapters touch."""
    from ..train import batches, build_model, load_data, split_for, task_generator

    benchmark = benchmark or load_data(config)
    split = split_for(config, benchmark)
    ft = TrainConfig.from_dict({**{k: v for k, v in config.to_dict().items()
                                   if k not in HIDE_OPTIONS},  # hide-prompt's own options
                                "method": "full-ft", "variant": "paper"})
    epochs = epochs or config.epochs
    out = {"all": [], "qv": []}
    for task in range(config.tasks):
        model = build_model(ft, device)
        w0 = {n: p.detach().clone() for n, p in model.backbone.named_parameters() if p.ndim == 2}
        generator = task_generator(config.seed, task)
        model.begin_task(0, split.classes_per_task, generator)
        params = [p for group in model.trainable_parameters().values() for p in group]
        optimizer = torch.optim.Adam(params, lr=lr)
        data = split.task_data(benchmark.train, task)
        data = data.with_labels(data.labels - task * split.classes_per_task)
        model.train()
        for _ in range(epochs):
            order = torch.randperm(len(data), generator=generator)
            for x, y in batches(data, config.batch_size, torch.device(device), order,
                                config.num_workers):
                loss = F.cross_entropy(model(x), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        delta = {n: (p.detach() - w0[n]) for n, p in model.backbone.named_parameters() if n in w0}
        out["all"].append(torch.cat([d.flatten() for d in delta.values()]).cpu().numpy())
        d = model.backbone.embed_dim
        qv = [torch.cat([v[:d].flatten(), v[2 * d:].flatten()])
              for n, v in delta.items() if n.endswith("attn.qkv.weight")]
        out["qv"].append(torch.cat(qv).cpu().numpy())
        if progress is not None:
            progress((task + 1) / config.tasks)
    return out


def relative_distances(deltas: list[np.ndarray]) -> np.ndarray:
    """rel(i, j) = ||D_i - D_j|| / sqrt(||D_i|| ||D_j||) for D_i = W_i* - W0 (module docstring);
    the diagonal is 0."""
    n = len(deltas)
    norms = [float(np.linalg.norm(d)) for d in deltas]
    out = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            if i != j:
                out[i, j] = np.linalg.norm(deltas[i] - deltas[j]) / math.sqrt(norms[i] * norms[j])
    return out


# -- efficiency (Table 5) ----------------------------------------------------------------------
def efficiency(run: RunFolder | str | Path) -> dict:
    """Parameters learned per task and stored after each task, inference GFLOPs of the merged
    model against the plain ViT, stored samples (none: rehearsal-free), and the median
    training-step time of each task.

    Every method of `sdlora.methods`: ``learnable`` is what trains on the task besides the head
    (the LoRA family: the task's A, B and magnitudes; InfLoRA: the task's B, its A is fixed;
    L2P: the prompt pool and keys; DualPrompt: the G-prompt and the task's E-prompt and key;
    CODA-Prompt: the task's components, as its checkpoint's ``trained`` names them;
    HiDe-Prompt: the task's prompt, as Table 5 counts it, though its task-identity MLP trains
    on every task too); ``stored_features`` what is kept besides weights (InfLoRA's DualGPM
    bases, HiDe-Prompt's class statistics: Table 5's 'stored features'); ``stored_head`` the
    heads or prototypes (with HiDe-Prompt's task-identity MLP and head); ``stored`` everything
    kept besides the
    pretrained backbone (adapter or prompts, head or prototypes, a trained backbone's copy,
    stored features); ``gflops_per_image`` what one test image costs,
    counting the frozen query pass of prompt methods (``forward_passes`` 2), which have no
    merged form (``gflops_merged`` NaN)."""
    from torch.utils.flop_counter import FlopCounterMode

    from ..backbone import create_backbone
    from ..methods import NotMergeable
    from ..train import load_model

    run = _run(run)
    done = run.completed_tasks()
    if done == 0:
        raise RunError(f"{run.path}: no finished task yet, nothing to measure")
    config = TrainConfig.from_dict(run.config())
    per_task = []
    for t in range(done):
        tensors, meta = run.checkpoint(t)

        def stored(*prefixes: str) -> int:
            return sum(v.numel() for k, v in tensors.items() if k.startswith(prefixes))

        components, learnable = 0, 0
        if "layout" in meta:  # the LoRA family
            layout = meta["layout"]
            components = len(layout)
            current = [c for c in layout if c["task"] == t]
            learnable = sum(tensors[f"adapter.{f}.{c['key']}"].numel() for c in current
                            for f in ("A", "B"))
            learnable += sum(1 for k in tensors if k.startswith("adapter.magnitude."))
        elif "components" in meta:  # InfLoRA: the task's B trains, its A is fixed
            components = len(meta["components"])
            learnable = tensors[f"adapter.B.{meta['components'][-1]}"].numel()
        elif "trained" in meta:  # DualPrompt, CODA-Prompt: the tensors the task trained
            learnable = sum(tensors[k].numel() for k in meta["trained"])
        elif config.method == "l2p":
            learnable = stored("prompt.")
        elif config.method == "hide-prompt":  # the task's prompt (its TII MLP: stored_head)
            learnable = tensors[f"prompt.task{t}"].numel()
        per_task.append(dict(task=t + 1, components=components, learnable=learnable,
                             stored_adapter=stored("adapter.", "prompt."),
                             stored_head=stored("head.", "prototypes.", "tii."),
                             stored_backbone=stored("backbone."),
                             stored_features=stored("gpm.", "stats.")))
    for row in per_task:
        if config.method == "full-ft":
            row["learnable"] = row["stored_backbone"]
        row["stored"] = sum(row[k] for k in ("stored_adapter", "stored_head", "stored_backbone",
                                             "stored_features"))
    steps = pd.DataFrame(run.steps())
    step_ms = (steps.groupby("task")["seconds"].median() * 1e3).round(2).tolist() if len(steps) else []
    model = load_model(run, done - 1).eval()
    classes = done * run.checkpoint(done - 1)[1]["classes_per_task"]
    plain, _ = create_backbone(config.backbone, pretrained=False)
    plain.reset_classifier(classes)
    x = torch.rand(1, 3, *plain.patch_embed.img_size)

    def gflops(net) -> float:
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            net(x)
        return counter.get_total_flops() / 1e9

    try:
        gflops_merged, mergeable = gflops(model.merged().eval()), True
    except NotMergeable:
        gflops_merged, mergeable = float("nan"), False
    gflops_unmerged = gflops(model)
    last = per_task[-1]
    return dict(method=config.method, per_task=per_task, step_ms_median=step_ms,
                gflops_merged=gflops_merged, gflops_plain=gflops(plain),
                gflops_unmerged=gflops_unmerged, mergeable=mergeable,
                gflops_per_image=gflops_merged if mergeable else gflops_unmerged,
                forward_passes=getattr(model, "forward_passes", 1), stored_samples=0,
                backbone_params=sum(p.numel() for p in plain.parameters()),
                table5=dict(gflops=gflops_merged if mergeable else gflops_unmerged,
                            learnable_m=last["learnable"] / 1e6,
                            stored_m=last["stored"] / 1e6,
                            stored_features_m=last["stored_features"] / 1e6))


def table5_row(eff: dict) -> dict:
    """One run's row of Table 5 from `efficiency(run)` (as computed or as cached): GFLOPs per
    test image (``forward_passes`` of the backbone: a prompt method's frozen query pass
    counted), parameters learned on the last task besides the head, and everything stored after
    it besides the pretrained backbone (adapter or prompts and keys, head or prototypes, a
    trained backbone's copy, stored features), with its parts. An efficiency cached before a
    column existed was a LoRA-family run's: one pass, its merged model's cost, no features."""
    last = eff["per_task"][-1]
    features = last.get("stored_features", 0)
    stored = last.get("stored", last["stored_adapter"] + last["stored_head"]
                      + last["stored_backbone"] + features)
    return dict(method=eff["method"], tasks=last["task"],
                gflops_per_image=round(eff.get("gflops_per_image", eff["gflops_merged"]), 4),
                forward_passes=eff.get("forward_passes", 1),
                learnable_params=last["learnable"], stored_params=stored,
                stored_adapter=last["stored_adapter"], stored_head=last["stored_head"],
                stored_backbone_copy=last["stored_backbone"], stored_features=features,
                stored_samples=eff["stored_samples"], components=last["components"],
                gflops_merged=round(eff["gflops_merged"], 4),
                gflops_plain_vit=round(eff["gflops_plain"], 4))
