"""Accuracy: the accuracy matrix, accuracy over tasks, forgetting; several runs overlaid."""
import streamlit as st

import ui

ui.route_through_app()  # a page opened by its own URL still runs through app.py

st.title("Accuracy")
st.markdown(
    "Row *i* of the accuracy matrix is the model after task *i*; column *j* is task *j*'s test "
    "data, with the prediction made over every class seen so far. Values that fade down a "
    "column are **forgetting** (stability lost); a weak diagonal is missing **plasticity**. "
    "`frozen` is the stability end of the trade-off and `full-ft` the plasticity end. "
    + ui.paper_link("Tables 2-4 and Fig. 2b/c") + ".")

# After the first paint: these imports load torch (seconds on a fresh server).
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sdlora.analysis import (accuracy_matrix_frame, accuracy_table, cached,  # noqa: E402
                             figures, seed_groups, task_identity_matrix, within_task_accuracy)
from sdlora.runs import RunFolder  # noqa: E402


def body() -> None:
    paths = ui.runs_with_results()
    if not paths:
        ui.no_runs_message()
        return
    run = ui.selected_run()
    m = run.metrics()
    cols = st.columns(4)
    cols[0].metric("Acc (after the last task)", f"{m['acc']:.1f}%")
    cols[1].metric("AAA", f"{m['aaa']:.1f}%")
    cols[2].metric("Forgetting", f"{m['forgetting']:.1f} pts")
    cols[3].metric("Tasks finished", f"{m['tasks_done']} / {m['tasks']}")
    if m["tasks_done"] < m["tasks"]:
        st.info("This run is not finished: the matrix shows the tasks done so far.")
    left, right = st.columns(2)
    with left:
        R = m["accuracy_matrix"]
        ui.show(figures.accuracy_heatmap(R, f"Accuracy matrix: {run.id}"),
                accuracy_matrix_frame(R).reset_index(),
                "accuracy_matrix")
    with right:
        ui.show(figures.forgetting_curves(R, "Each task's accuracy as later tasks arrive"),
                None, "per_task_accuracy")
    task_identity(run, m)
    within_task(run, m)

    compare(paths)


@st.fragment
def compare(paths: list[str]) -> None:
    """Runs overlaid: a change of the runs chosen reruns only this part (st.fragment), not the
    chosen run's charts or the sidebar (guarded again: a fragment's rerun is outside the
    page's guard)."""
    ui.guarded(lambda: _compare(paths))


def _compare(paths: list[str]) -> None:
    st.subheader("Compare runs")
    finished = {p: m for p in paths if (m := RunFolder(p).metrics(required=False))}
    default = list(finished)[:4]
    # ... and the upper bound, drawn as a dashed level, when there is one
    default += [p for p, m in finished.items() if m["method"] == "joint" and p not in default][:1]
    chosen = ui.url_control(st.multiselect, "Runs to overlay", name="runs", many=True,
                            options=paths, default=default, fmt=ui.run_token,
                            format_func=ui.label, key=ui.COMPARE_RUNS)
    if not chosen:
        st.caption("Choose runs to overlay.")
        return
    runs = [RunFolder(p) for p in chosen]
    curves = [dict(label=r.id, method=r.metrics()["method"], metrics=r.metrics()) for r in runs]
    table = accuracy_table(runs)
    ui.show(figures.accuracy_curves(curves), table, "accuracy_curves")
    groups = seed_groups(runs)
    if any(len(g["runs"]) > 1 for g in groups):
        st.markdown("**Mean ± standard error over seeds**: finished runs whose whole "
                    "configuration is the same except the seed (device and logging settings "
                    "aside); a label names the settings in which its group differs from the "
                    "others. fixed-first-direction against lora is Fig. 2b/c.")
        fig = figures.mean_curve_figure({g["label"]: g["seen"] for g in groups},
                                        "Accuracy on all seen classes, mean ± s.e. over seeds")
        ui.show(fig, None, "accuracy_mean")
    summary = pd.DataFrame([dict(group=g["label"], runs=len(g["runs"]),
                                 seeds=", ".join(map(str, g["seeds"])),
                                 acc=float(np.mean(g["acc"])), aaa=float(np.mean(g["aaa"])))
                            for g in groups], columns=["group", "runs", "seeds", "acc", "aaa"])
    st.dataframe(summary, hide_index=True)


def within_task(run: RunFolder, m: dict) -> None:
    """Acc split into what the features lost and what the tasks' heads lose against each other."""
    if m["tasks_done"] < m["tasks"]:
        return
    st.subheader("Where the accuracy goes")
    st.markdown(
        "Each task's test images scored by the final model twice: with the argmax over **every "
        "class seen** (what Acc counts) and over **the task's own classes** only (the task "
        "given). Where the second is high and the first low, the features still tell the "
        "classes apart, but the tasks' head rows are not on one scale: from the second task on "
        "the loss sees only the current task's logits (the paper's protocol), so no row is ever "
        "weighed against another task's. Where both are low, the backbone itself forgot.")
    name = "within_task_accuracy"
    if not (run.analyses_dir / f"{name}.json").exists() and not st.button(
            "Compute (one pass of the final model over the test set)", key="within-task"):
        return
    with st.spinner("Evaluating the final model ..."):
        records = cached(run, name, lambda: within_task_accuracy(run).to_dict("records"))
    frame = pd.DataFrame(records)
    cols = st.columns(2)
    cols[0].metric("Mean over tasks, all classes seen", f"{frame['class_il'].mean():.1f}%")
    cols[1].metric("Mean over tasks, the task given", f"{frame['task_il'].mean():.1f}%")
    ui.show(figures.within_task_figure(frame, f"Task given or not: {run.id}"), frame,
            "within_task")


def task_identity(run: RunFolder, m: dict) -> None:
    """HiDe-Prompt's first stage: how often each task's test images got their own task."""
    identity = task_identity_matrix(m)
    if identity is None:
        return
    st.subheader("Task identity")
    st.markdown(
        "HiDe-Prompt first infers each test image's task (frozen ViT, residual MLP and a head "
        "aligned on features sampled from class statistics), then uses that task's prompt. "
        "Row *i*, column *j*: the share of task *j*'s test images given task *j* by the model "
        "after task *i* (the released code's Acc@task). An image sent to another task's prompt "
        "is rarely classified right, so this row bounds the accuracy row above.")
    if m.get("config", {}).get("hide_oracle_task"):
        st.warning("This run was evaluated with the oracle task (`hide_oracle_task`): every "
                   "test image got its true task's prompt, so its accuracies are not "
                   "class-incremental. The inferred tasks below were recorded all the same.")
    last = identity[-1]
    st.metric("Task identified (after the last task, mean over tasks)",
              f"{sum(last) / len(last):.1f}%")
    frame = accuracy_matrix_frame(identity)
    left, right = st.columns(2)
    with left:
        ui.show(figures.accuracy_heatmap(identity, f"Task-identity accuracy: {run.id}"),
                frame.reset_index(), "task_identity")
    with right:
        st.dataframe(frame.round(1))


ui.guarded(body)
