"""Interpolation: accuracy along the straight line between two task checkpoints."""
import streamlit as st

import ui

ui.route_through_app()  # a page opened by its own URL still runs through app.py

st.title("Interpolation")
st.markdown(
    "Walk the straight line in weight space from the model after task *t−1* (λ = 0) to the "
    "model after task *t* (λ = 1) and measure both the earlier tasks and the new one. With "
    "vanilla LoRA the new task gains **at the expense** of the old ones (forgetting); the "
    "paper finds SD-LoRA's path keeps the old tasks while the new one improves: it moves into "
    "a region that is good for both. " + ui.paper_link("Fig. 4b/c") + ". New-task classes "
    "enter the prediction with weight λ (their logits get + log λ), so both ends reproduce the "
    "checkpoints' accuracies exactly.")

# After the first paint: these imports load torch (seconds on a fresh server).
import pandas as pd  # noqa: E402
from sdlora.analysis import cached, figures, interpolate  # noqa: E402
from sdlora.analysis.core import INTERPOLATION_POINTS  # noqa: E402
from sdlora.methods import method_class  # noqa: E402
from sdlora.runs import RunFolder  # noqa: E402


def body() -> None:
    paths = sorted(p for p in ui.runs_with_results() if RunFolder(p).completed_tasks() >= 2)
    if not paths:
        st.info("Interpolation needs a run with at least two finished tasks. " 
                "Queue *vanilla LoRA vs SD-LoRA* on the **Train** page.")
        return
    methods = {p: RunFolder(p).config()["method"] for p in paths}
    lineless = sorted({m for m in methods.values() if not method_class(m).mergeable})
    if lineless:
        st.caption(f"Not listed: runs of {', '.join(lineless)}. Its model is not a plain set of "
                   "weights (prompts are chosen per image by a second pass), so there is no "
                   "straight line between two of its checkpoints.")
        paths = [p for p in paths if methods[p] not in lineless]
        if not paths:
            return
    default = ([next(p for p in paths if methods[p] == "lora")] if "lora" in methods.values() else []) + \
              ([next(p for p in paths if methods[p] == "sd-lora")] if "sd-lora" in methods.values() else [])
    chosen = ui.url_control(st.multiselect, "Runs (side by side)", name="runs", many=True,
                            options=paths, default=default or paths[:1], fmt=ui.run_token,
                            format_func=ui.label)
    if not chosen:
        st.caption("Choose at least one run.")
        return
    lines(chosen, methods)


@st.fragment
def lines(chosen: list[str], methods: dict[str, str]) -> None:
    """The sliders and everything they change: a move reruns only this part (st.fragment),
    not the run listing, the page's text or the sidebar (guarded again: a fragment's rerun
    is outside the page's guard)."""
    ui.guarded(lambda: _lines(chosen, methods))


def _lines(chosen: list[str], methods: dict[str, str]) -> None:
    most = min(RunFolder(p).completed_tasks() for p in chosen)
    c1, c2 = st.columns(2)
    task = ui.url_control(c1.slider, "Task boundary t (from t−1 to t)", name="task",
                          default=2, min_value=2, max_value=most) if most > 2 else 2
    points = ui.url_control(c2.slider, "Points on the line", name="points",
                            default=INTERPOLATION_POINTS, min_value=3, max_value=21, step=2,
                            help="Each point is one pass over the test data of the tasks "
                                 "so far.")
    panels = {}
    for p in chosen:
        run = RunFolder(p)
        name = f"interpolation_task{task}_{points}"
        fresh = not (run.analyses_dir / f"{name}.json").exists()
        bar = st.progress(0.0, text=f"{run.id}: evaluating {points} models on the line") \
            if fresh else None
        records = cached(run, name, lambda: interpolate(
            run, task, points, progress=bar.progress if bar else None).to_dict("records"))
        if bar:
            bar.empty()
        panels[f"{methods[p]}: {run.id}"] = pd.DataFrame(records)
    stamps = tuple((p, ui.run_stamp(RunFolder(p))) for p in chosen)
    fig, frame = line_view(stamps, task, points, panels)
    ui.show(fig, frame, f"interpolation_task{task}")
    path_plane_section(chosen, methods, task)


@st.cache_resource(show_spinner=False, max_entries=64)
def line_view(stamps: tuple, task: int, points: int, _panels: dict) -> tuple:
    """The interpolation figure and its numbers, built once per runs (and their writes), task
    and points: a slider moved back and forth redraws without rebuilding (`_panels`, the
    records, follow from the key)."""
    fig = figures.interpolation_figure(_panels, task)
    return fig, pd.concat([f.assign(run=k) for k, f in _panels.items()])


@st.cache_resource(show_spinner=False, max_entries=64)
def plane_view(stamps: tuple, task: int, _panels: dict):
    """The path-plane figure, built once per runs (and their writes) and task (~70 ms)."""
    return figures.path_plane_figure(_panels, task)


def path_plane_section(chosen: list[str], methods: dict[str, str], task: int) -> None:
    """Fig. 4a measured: each chosen run's path across all its finished tasks on a plane through
    its checkpoints, over task 1's and the latest task's accuracy (`sdlora.analysis.path_plane`),
    stored in the run folder; computed here on request for a run that has none stored."""
    from sdlora.analysis import path_plane, stored
    from sdlora.analysis.plane import (PLANE_GRID, PLANE_IMAGES, path_frame, plane_name,
                                       plane_summary)

    st.subheader("The whole path across tasks")
    st.markdown(
        "Each run's weights at the start (W0, pretrained) and after every task (T1, T2, ...), on "
        "the plane through W0, the model after task 1 and the final model (those three lie on "
        "it exactly; the others are projected), over the final model's accuracy on task 1 "
        "(top) and on its latest task (bottom), each with the head's rows of that task's own "
        "classes. **What to look for**: a path that ends inside task 1's bright region while "
        "reaching the latest task's has found the overlap the paper's schematic "
        + ui.paper_link("Fig. 4a") + " draws; a path that walks out of task 1's region has "
        f"forgotten it. The dotted segment is the straight line above (task {task - 1} to "
        f"{task}), as the plane sees it. Each run has its own plane; one unit on either axis "
        "is one unit of the weights' Frobenius norm.")
    panels, missing = {}, []
    for p in chosen:
        run = RunFolder(p)
        name = plane_name(run.completed_tasks(), PLANE_GRID, PLANE_IMAGES)
        value = stored(run, name)
        if value is None:
            missing.append(p)
        else:
            panels[f"{methods[p]}: {run.id}"] = value
    for p in missing:
        run = RunFolder(p)
        if not st.button(f"Compute the path of {run.id} ({PLANE_GRID} x {PLANE_GRID} models on "
                         f"{PLANE_IMAGES} test images per task: about 1-2 minutes of one CPU core)",
                         key=f"plane-{p}"):
            continue
        bar = st.progress(0.0, text=f"{run.id}: evaluating the models on the plane")
        try:
            value = cached(run, plane_name(run.completed_tasks(), PLANE_GRID, PLANE_IMAGES),
                           lambda: path_plane(run, grid=PLANE_GRID, images=PLANE_IMAGES,
                                              progress=bar.progress))
        except ValueError as err:  # a backbone that never moved (SimpleCIL): no path
            st.info(f"{run.id}: {err}")
            continue
        finally:
            bar.empty()
        panels[f"{methods[p]}: {run.id}"] = value
    if not panels:
        return
    labels = {f"{methods[p]}: {RunFolder(p).id}": p for p in chosen}
    stamps = tuple(sorted((label, ui.run_stamp(RunFolder(labels[label]))) for label in panels))
    ui.show(plane_view(stamps, task, panels), path_frame(panels), "path_plane")
    st.caption(" ".join(
        f"**{label}**: the plane holds {100 * r['variance_share']:.0f}% of the path's variance "
        f"(the best plane, its first two principal directions, {100 * r['pca_share']:.0f}%); "
        f"task 1 at the end {s['end_task1']:.1f}%, its best on the plane "
        f"{s['best_task1']:.1f}%; the two tasks' mean at the end {s['end_mean']:.1f}%, its best "
        f"on the plane {s['best_mean']:.1f}% ({r['images']} test images per task)."
        for label, r in panels.items() for s in [plane_summary(r)]))


ui.guarded(body)
