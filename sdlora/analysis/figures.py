"""Plotly figure builders for every analysis; usable outside the app.

Colours are consistent across figures: one per method (`METHOD_COLOURS`), one per task
(`task_colour`).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative

__all__ = [
    "METHOD_COLOURS", "task_colour", "accuracy_heatmap", "accuracy_curves", "forgetting_curves",
    "magnitude_figure", "residual_figure", "residual_bars", "distance_heatmap",
    "interpolation_figure", "path_plane_figure", "theorem_figure", "landscape_figure",
    "step_cost_figure", "mean_curve_figure", "step_cost_curve_figure", "tradeoff_figure",
    "task_tradeoff_bars",
]

METHOD_COLOURS = {
    "sd-lora": "#d62728", "sd-lora-rr": "#ff7f0e", "sd-lora-kd": "#8c564b",
    "lora": "#1f77b4", "full-ft": "#7f7f7f", "frozen": "#2ca02c",
    "inflora": "#8c6d31", "coda-prompt": "#637939",
    "fixed-first-direction": "#9467bd", "single-decoupled": "#e377c2", "no-rescale": "#17becf",
    "frozen-magnitudes": "#393b79",
}


def task_colour(task: int) -> str:
    """Colour of 1-based task `task`."""
    palette = qualitative.Dark24
    return palette[(task - 1) % len(palette)]


def method_colour(method: str) -> str:
    return METHOD_COLOURS.get(method, "#bcbd22")


def _layout(fig: go.Figure, title: str, x: str, y: str, **kw) -> go.Figure:
    fig.update_layout(title=title, xaxis_title=x, yaxis_title=y, template="plotly_white",
                      legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0),
                      margin=dict(t=80, l=60, r=20, b=50), **kw)
    return fig


def accuracy_heatmap(matrix: list[list[float]], title: str = "Accuracy matrix") -> go.Figure:
    """R[i][j]: accuracy (%) on task j's test data after training task i."""
    n = len(matrix)
    z = np.full((n, n), np.nan)
    for i, row in enumerate(matrix):
        z[i, :len(row)] = row
    labels = [f"T{j + 1}" for j in range(n)]
    fig = go.Figure(go.Heatmap(
        z=z, x=labels, y=[f"after T{i + 1}" for i in range(n)], zmin=0, zmax=100,
        colorscale="Viridis", colorbar=dict(title="accuracy (%)"),
        text=[[f"{v:.1f}" if not np.isnan(v) else "" for v in r] for r in z],
        texttemplate="%{text}",
        hovertemplate="after task %{y}<br>test data of %{x}<br>accuracy %{z:.1f}%<extra></extra>"))
    fig.update_yaxes(autorange="reversed")
    return _layout(fig, title, "test data of task", "model after task")


def accuracy_curves(runs: list[dict]) -> go.Figure:
    """Seen accuracy after each task, one line per run (dicts: label, method, metrics), with
    the run's Acc (last point) and AAA (dotted level) marked."""
    fig = go.Figure()
    span = max([len(r["metrics"]["seen_accuracy"]) for r in runs
                if r["metrics"]["method"] != "joint"] or [1])
    for r in runs:
        m = r["metrics"]
        seen = m["seen_accuracy"]
        colour = method_colour(m["method"])
        if m["method"] == "joint":
            # The upper bound learns every class at once (one task): a level across the plot,
            # the accuracy that the incremental runs would reach without forgetting or bias.
            adapter = (m.get("config") or {}).get("joint_adapter", "")
            fig.add_trace(go.Scatter(
                x=[1, max(span, 2)], y=[m["acc"]] * 2, mode="lines", line=dict(color=colour,
                dash="dash", width=3), name=f"{r['label']} (joint upper bound"
                + (f", {adapter} adapter)" if adapter else ")"),
                hovertemplate=f"joint upper bound {m['acc']:.1f}%<extra>{r['label']}</extra>"))
            continue
        fig.add_trace(go.Scatter(
            x=list(range(1, len(seen) + 1)), y=seen, mode="lines+markers", name=r["label"],
            line=dict(color=colour),
            hovertemplate="after task %{x}<br>accuracy on all seen classes %{y:.1f}%<extra>"
                          + r["label"] + "</extra>"))
        fig.add_trace(go.Scatter(
            x=[1, len(seen)], y=[m["aaa"]] * 2, mode="lines", showlegend=False,
            line=dict(color=colour, dash="dot"), name=f"{r['label']} AAA",
            hovertemplate=f"AAA {m['aaa']:.1f}%<extra>{r['label']}</extra>"))
    return _layout(fig, "Accuracy on all seen classes after each task (dotted: AAA; last "
                        "point: Acc; dashed: a joint run, all classes at once)", "after task",
                   "accuracy (%)", yaxis_range=[0, 100])


def forgetting_curves(matrix: list[list[float]], title: str = "Per-task accuracy") -> go.Figure:
    """Accuracy on each task's test data as later tasks are learned (drops = forgetting)."""
    fig = go.Figure()
    for j in range(len(matrix)):
        xs = list(range(j + 1, len(matrix) + 1))
        ys = [matrix[i][j] for i in range(j, len(matrix))]
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", name=f"task {j + 1}",
                                 line=dict(color=task_colour(j + 1)),
                                 hovertemplate="after task %{x}: %{y:.1f}%<extra>task "
                                               f"{j + 1}</extra>"))
    return _layout(fig, title, "after task", "accuracy on the task's test data (%)",
                   yaxis_range=[0, 100])


def within_task_figure(frame: pd.DataFrame, title: str) -> go.Figure:
    """Each task's final accuracy over every class seen (Acc's) and with the task given
    (`sdlora.analysis.within_task_accuracy`): the gap between the bars is what the tasks'
    heads lose by not being on one scale."""
    fig = go.Figure()
    for column, name, colour in (("class_il", "all classes seen (as Acc counts)", "#d62728"),
                                 ("task_il", "the task given (its own classes only)", "#1f77b4")):
        fig.add_trace(go.Bar(x=[f"task {t}" for t in frame["task"]], y=frame[column], name=name,
                             marker_color=colour,
                             hovertemplate="%{x}: %{y:.1f}%<extra>" + name + "</extra>"))
    fig.update_layout(barmode="group")
    return _layout(fig, title, "task", "final accuracy on the task's test data (%)",
                   yaxis_range=[0, 100])


def mean_curve_figure(curves: dict[str, np.ndarray], title: str) -> go.Figure:
    """Mean +- standard error over seeds of per-task curves: {method: array (seeds, tasks)}."""
    fig = go.Figure()
    for method, values in curves.items():
        values = np.asarray(values, dtype=float)
        mean = values.mean(0)
        se = values.std(0, ddof=1) / np.sqrt(len(values)) if len(values) > 1 else 0 * mean
        x = list(range(1, values.shape[1] + 1))
        colour = method_colour(method.split(" · ")[0])  # a seed_groups label starts with it
        fig.add_trace(go.Scatter(x=x + x[::-1], y=list(mean + se) + list((mean - se)[::-1]),
                                 fill="toself", line=dict(width=0), fillcolor=colour,
                                 opacity=0.2, showlegend=False, hoverinfo="skip"))
        fig.add_trace(go.Scatter(x=x, y=mean, mode="lines+markers", line=dict(color=colour),
                                 name=f"{method} ({len(values)} seeds)",
                                 hovertemplate="after task %{x}: %{y:.1f}%<extra>" + method
                                               + "</extra>"))
    return _layout(fig, title, "after task", "accuracy on all seen classes (%)")


REFERENCE_METHODS = ("joint", "frozen", "simplecil")  # the trade-off plane's reference marks
_REFERENCE_SYMBOLS = {"joint": "star", "frozen": "square", "simplecil": "diamond"}


def tradeoff_figure(points: pd.DataFrame, title: str, lines: bool = False) -> go.Figure:
    """The stability-plasticity plane: x = plasticity (mean learning accuracy), y = forgetting
    (mean over the earlier tasks) on a reversed axis, so up is stable and right is plastic.
    `points`: label, method, plasticity, forgetting, optional plasticity_se / forgetting_se
    (error bars), text (shown beside the point), key (customdata: what choosing it selects).
    One trace per method; joint, frozen and simplecil as reference marks. With `lines`, each
    method's points are joined in their order (a sweep's curve)."""
    fig = go.Figure()
    for method, group in points.groupby("method", sort=False):
        reference = method in _REFERENCE_SYMBOLS
        error = {axis: dict(type="data", array=group[f"{name}_se"].fillna(0), thickness=1)
                 for axis, name in (("error_x", "plasticity"), ("error_y", "forgetting"))
                 if f"{name}_se" in group}
        fig.add_trace(go.Scatter(
            x=group["plasticity"], y=group["forgetting"], name=method,
            mode=("lines+markers" if lines and not reference else "markers")
            + ("+text" if "text" in group else ""),
            text=group.get("text"), textposition="top center",
            customdata=group.get("key", group["label"]),
            marker=dict(color=method_colour(method), size=16 if reference else 11,
                        symbol=_REFERENCE_SYMBOLS.get(method, "circle"),
                        line=dict(color="black", width=1.5 if reference else 0.5)),
            line=dict(color=method_colour(method)), **error,
            hovertext=group["label"],
            hovertemplate="%{hovertext}<br>plasticity (mean learning accuracy) %{x:.1f}%<br>"
                          "forgetting (mean over earlier tasks) %{y:.1f} pts<extra></extra>"))
    fig.update_yaxes(autorange="reversed")
    return _layout(fig, title, "plasticity: mean accuracy on each task right after it "
                               "was learned (%) →",
                   "forgetting: mean points lost by the earlier tasks (less ↑)")


def task_tradeoff_bars(frame: pd.DataFrame, title: str) -> go.Figure:
    """Per task: what it learned (accuracy right after it) beside what was kept of it."""
    fig = go.Figure()
    for column, name, colour in (("learning_accuracy", "learned (right after the task)",
                                  "#1f77b4"),
                                 ("final_accuracy", "kept (after the last task shown)",
                                  "#d62728")):
        fig.add_trace(go.Bar(x=[f"task {t}" for t in frame["task"]], y=frame[column], name=name,
                             marker_color=colour,
                             hovertemplate="%{x}: %{y:.1f}%<extra>" + name + "</extra>"))
    fig.update_layout(barmode="group")
    fig = _layout(fig, title, "task", "accuracy on the task's test data (%)",
                  yaxis_range=[0, 100])
    return fig.update_layout(legend=dict(orientation="h", yanchor="top", y=-0.2, x=0))


def magnitude_figure(series: pd.DataFrame, title: str = "Learned magnitudes") -> go.Figure:
    """alpha_k against optimiser steps, one line per component, task boundaries dashed."""
    fig = go.Figure()
    for component, part in series.groupby("component"):
        fig.add_trace(go.Scatter(
            x=part["global_step"], y=part["alpha"], mode="lines",
            name=f"alpha_{component}", line=dict(color=task_colour(component)),
            hovertemplate="step %{x}<br>alpha %{y:.3f}<extra>alpha_" + str(component)
                          + "</extra>"))
    if len(series):
        for _, first in series.groupby("task")["global_step"].min().items():
            fig.add_vline(x=first, line=dict(color="#999", dash="dash", width=1))
    return _layout(fig, title + " (dashed: task boundaries)", "optimiser step", "magnitude alpha")


def residual_figure(series: pd.DataFrame, kind: str = "relative") -> go.Figure:
    """The current direction's residual against the earlier ones during training: ``relative``
    (the normalised direction's, Eqn. 7, 0 to 1) or ``absolute`` (the unnormalised product's,
    Algorithm 1 line 11, in the weights' units)."""
    column = "residual" if kind == "relative" else "residual_absolute"
    fig = go.Figure()
    for task, part in series.dropna(subset=[column]).groupby("task"):
        fig.add_trace(go.Scatter(x=part["global_step"], y=part[column], mode="lines+markers",
                                 name=f"task {task}", line=dict(color=task_colour(task)),
                                 marker=dict(size=4),
                                 hovertemplate="step %{x}<br>residual %{y:.4g}<extra>task "
                                               f"{task}</extra>"))
    if kind == "relative":
        return _layout(fig, "Relative residual of the new direction D_t against D_1..D_t-1 "
                            "(Eqn. 7)", "optimiser step",
                       "relative residual (0 = in their span, 1 = orthogonal)",
                       yaxis_range=[0, 1.05])
    return _layout(fig, "Absolute residual of the new product A_t B_t against A_1 B_1.. "
                        "(Algorithm 1 line 11)", "optimiser step",
                   "||A_t B_t - sum_k c_k A_k B_k||_F", yaxis_rangemode="tozero")


def residual_bars(table: pd.DataFrame, kind: str = "relative") -> go.Figure:
    """Per-projection residual at the end of each task (heatmap: task x projection), relative
    (0 to 1) or absolute (the unnormalised products', each projection fitted on its own)."""
    columns = [c for c in table.columns if c.startswith("block ") and not c.endswith(")")]
    shown = columns if kind == "relative" else [f"{c} (absolute)" for c in columns]
    z = table[shown].to_numpy(dtype=float)
    scale = dict(zmin=0, zmax=1) if kind == "relative" else dict(zmin=0)
    fig = go.Figure(go.Heatmap(
        z=z, x=columns, y=[f"task {t}" for t in table["after task"]], colorscale="Magma",
        colorbar=dict(title="residual"), **scale,
        hovertemplate="%{y}, %{x}<br>residual %{z:.4g}<extra></extra>"))
    title = ("Relative residual per adapted projection at the end of each task" if kind ==
             "relative" else "Absolute residual (unnormalised products) per adapted projection "
             "at the end of each task")
    return _layout(fig, title, "adapted projection", "direction of")


def distance_heatmap(matrix: np.ndarray, title: str = "Relative distances") -> go.Figure:
    n = len(matrix)
    labels = [f"W{i + 1}*" for i in range(n)]
    fig = go.Figure(go.Heatmap(
        z=matrix, x=labels, y=labels, zmin=0, zmax=max(1.0, float(np.max(matrix))),
        colorscale="Blues", colorbar=dict(title="relative distance"),
        text=[[f"{v:.2f}" for v in row] for row in matrix], texttemplate="%{text}",
        hovertemplate="%{y} vs %{x}: %{z:.3f}<extra></extra>"))
    fig.update_yaxes(autorange="reversed")
    return _layout(fig, title + " (< 1: closer to each other than to W0)", "task weights",
                   "task weights")


def interpolation_figure(panels: dict[str, pd.DataFrame], task: int) -> go.Figure:
    """Accuracy of the old tasks and the new one along the path, one panel per run."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=list(panels), shared_yaxes=True)
    for col, (label, frame) in enumerate(panels.items(), start=1):
        old = f"tasks 1-{task - 1}" if task > 2 else "task 1"
        for key, colour, name in (("old", "#555", old),
                                  ("new", task_colour(task), f"task {task}")):
            fig.add_trace(go.Scatter(x=frame["lambda"], y=frame[key], mode="lines+markers",
                                     name=name, line=dict(color=colour), showlegend=col == 1,
                                     hovertemplate="lambda %{x:.2f}<br>%{y:.1f}%<extra>" + name
                                                   + "</extra>"), row=1, col=col)
        fig.update_xaxes(title_text=f"lambda (0: after task {task - 1}, 1: after task {task})",
                         row=1, col=col)
    fig.update_yaxes(title_text="accuracy (%)", range=[0, 100], row=1, col=1)
    fig.update_layout(title="Accuracy along the straight line between two task checkpoints",
                      template="plotly_white", margin=dict(t=90))
    return fig


def path_plane_figure(panels: dict[str, dict], segment: int | None = None) -> go.Figure:
    """`path_plane` results side by side, one column per run: task 1's accuracy surface above,
    the latest task's below, each with the run's path (W0, then the model after each task) on
    top; `segment` t (>= 2) draws the straight line from task t-1 to t (the Interpolation
    page's line) thicker."""
    from plotly.subplots import make_subplots

    labels = list(panels)
    titles = [f"{label}: task 1" for label in labels] + [
        f"{label}: task {panels[label]['tasks']}" for label in labels]
    fig = make_subplots(rows=2, cols=len(labels), subplot_titles=titles,
                        horizontal_spacing=0.08, vertical_spacing=0.12)
    for col, label in enumerate(labels, start=1):
        r = panels[label]
        path = np.array(r["path"])
        colour = method_colour(r.get("method", ""))
        for row, key in ((1, "task1"), (2, "latest")):
            task = 1 if key == "task1" else r["tasks"]
            fig.add_trace(go.Contour(
                x=r["a"], y=r["b"], z=r[key], zmin=0, zmax=100, colorscale="Viridis",
                contours=dict(coloring="heatmap", start=0, end=100, size=10),
                showscale=row == 1 and col == 1, colorbar=dict(title="accuracy (%)"),
                hovertemplate=f"task {task}: " + "%{z:.1f}%<br>(%{x:.2f}, %{y:.2f})<extra></extra>"),
                row=row, col=col)
            names = ["W0"] + [f"T{t}" for t in range(1, len(path))]
            fig.add_trace(go.Scatter(
                x=path[:, 0], y=path[:, 1], mode="lines+markers+text", text=names,
                textposition="top center", textfont=dict(color="white"),
                line=dict(color=colour, width=3),
                marker=dict(color=colour, size=9, line=dict(color="white", width=1.5)),
                name=r.get("method", label), showlegend=False,
                hovertemplate="%{text}<extra>" + label + "</extra>"), row=row, col=col)
            if segment is not None and 2 <= segment < len(path):
                ends = path[[segment - 1, segment]]
                fig.add_trace(go.Scatter(
                    x=ends[:, 0], y=ends[:, 1], mode="lines", showlegend=False,
                    line=dict(color="white", width=5, dash="dot"),
                    hovertemplate=f"straight line, task {segment - 1} to {segment}<extra></extra>"),
                    row=row, col=col)
        fig.update_xaxes(title_text="u (toward task 1's model)", row=2, col=col)
        for row in (1, 2):
            fig.update_yaxes(title_text="v (toward the end)", row=row, col=col)
    for i in range(1, 2 * len(labels) + 1):  # one unit is as long on both axes: true angles
        suffix = "" if i == 1 else str(i)
        fig.layout[f"yaxis{suffix}"].update(scaleanchor=f"x{suffix}", scaleratio=1)
        fig.layout[f"xaxis{suffix}"].update(constrain="domain")
    fig.update_layout(title="Each run's path across tasks on a plane through its start, task 1's "
                            "model and its end", template="plotly_white",
                      height=760, margin=dict(t=90))
    return fig


def theorem_figure(result: dict) -> go.Figure:
    """Singular values of A B over gradient-descent iterations against the target's."""
    fig = go.Figure()
    values = np.array(result["singular_values"])
    for j in range(values.shape[1]):
        colour = task_colour(j + 1)
        fig.add_trace(go.Scatter(x=result["iterations"], y=values[:, j], mode="lines",
                                 name=f"sigma_{j + 1}(AB)", line=dict(color=colour),
                                 hovertemplate="iteration %{x}<br>%{y:.3f}<extra></extra>"))
        fig.add_hline(y=result["target"][j], line=dict(color=colour, dash="dot", width=1))
    return _layout(fig, "Gradient descent learns the principal components one after another "
                        "(dotted: target)", "iteration", "singular value")


def landscape_figure(result: dict, which: str = "sum") -> go.Figure:
    """Loss contours over the 2-D weight space with the paths of both methods."""
    loss = {"task 1": np.array(result["loss1"]), "task 2": np.array(result["loss2"])}
    z = loss["task 1"] + loss["task 2"] if which == "sum" else loss[which]
    fig = go.Figure(go.Contour(x=result["x"], y=result["y"], z=np.log10(z + 1e-3),
                               colorscale="Greys", reversescale=True, showscale=True,
                               colorbar=dict(title="log10 loss"),
                               contours=dict(coloring="heatmap"),
                               hovertemplate="w = (%{x:.2f}, %{y:.2f})<br>log10 loss %{z:.2f}"
                                             "<extra></extra>"))
    steps = result["steps"]
    for method, path in result["paths"].items():
        p = np.array(path)
        fig.add_trace(go.Scatter(x=p[:, 0], y=p[:, 1], mode="lines", name=method,
                                 line=dict(color=method_colour(method), width=3)))
        fig.add_trace(go.Scatter(x=p[[steps, -1], 0], y=p[[steps, -1], 1], mode="markers+text",
                                 text=["W1", "W2"], textposition="top center",
                                 marker=dict(color=method_colour(method), size=10),
                                 showlegend=False))
    fig.add_trace(go.Scatter(x=[0], y=[0], mode="markers+text", text=["W0"],
                             textposition="bottom center", marker=dict(color="black", size=10),
                             showlegend=False))
    return _layout(fig, f"Toy loss landscape ({which}) and the two methods' paths",
                   "weight 1", "weight 2")


def step_cost_figure(rows: list[dict]) -> go.Figure:
    """Median training-step time per task, one line per run."""
    fig = go.Figure()
    for r in rows:
        fig.add_trace(go.Scatter(x=list(range(1, len(r["step_ms"]) + 1)), y=r["step_ms"],
                                 mode="lines+markers", name=r["label"],
                                 line=dict(color=method_colour(r["method"])),
                                 hovertemplate="task %{x}: %{y:.1f} ms<extra></extra>"))
    return _layout(fig, "Median training-step time against the number of tasks learned",
                   "task", "step time (ms)")


def step_cost_curve_figure(result: dict) -> go.Figure:
    """`bench/step_cost.py --json`'s result: a training step's cost against the number of tasks
    learned, as a ratio to the first task's step, for SD-LoRA as trained here and for the
    released code's per-task branches (and SD-LoRA with autograd handling the frozen
    magnitudes, dotted). Hover shows the milliseconds."""
    fig = go.Figure()
    curves = [("sd_lora", "SD-LoRA here (composed weights, fused pass)", "solid",
               method_colour("sd-lora")),
              ("autograd", "SD-LoRA, autograd for the frozen magnitudes", "dot", "#ff9896"),
              ("released", "released code: one branch per task on every token", "solid",
               "#1f77b4")]
    for key, name, dash, colour in curves:
        curve = result.get(key)
        if not curve:
            continue
        fig.add_trace(go.Scatter(
            x=result["tasks"], y=curve["ratio"], mode="lines+markers", name=name,
            line=dict(color=colour, dash=dash), customdata=curve["step_ms"],
            hovertemplate="%{x} tasks: %{y:.3f}x the first task's step (%{customdata:.1f} ms)"
                          "<extra></extra>"))
    fig.add_hline(y=1.0, line=dict(color="#999", dash="dash", width=1))
    return _layout(fig, "Training-step cost against the number of tasks learned",
                   "number of tasks learned (the step is on the last one)",
                   "step time / first task's step time")
