"""Directions: the residual of each new direction against the earlier ones; relative distances."""
import streamlit as st

import ui

ui.route_through_app()  # a page opened by its own URL still runs through app.py

st.title("Directions")
st.markdown(
    "**Residual**: how much of what the current task learns lies *outside* the span of the "
    "earlier tasks' directions (least squares). It is measured two ways. The **relative** "
    "residual fits the normalised direction A_t B_t / ||A_t B_t|| (Eqn. 7) and divides by its "
    "norm: 0 = fully reusable, 1 = brand new, whatever the size of A_t B_t. The **absolute** "
    "residual is Algorithm 1 line 11 as written, ||A_t B_t − Σ c_k A_k B_k||_F of the "
    "*unnormalised* products, in the units of the weights. "
    + ui.paper_link("Fig. 3a") + ". "
    "**Distances**: weights fine-tuned on each task separately are closer to each other than "
    "to the pretrained weights (Finding 1), so a few shared directions can serve all tasks. "
    + ui.paper_link("Fig. 2a and Fig. 7") + ".")

# After the first paint: these imports load torch (seconds on a fresh server).
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sdlora.analysis import (absorption_table, cached, figures, relative_distances,  # noqa: E402
                             task_specific_weights)
from sdlora.config import TrainConfig  # noqa: E402
from sdlora.methods.lora import has_part, methods_with  # noqa: E402

WHY_TWO = (
    "**Why the two curves differ.** The relative residual only asks *which way* the new "
    "direction points, so it stays near 1 whenever the direction is nearly orthogonal to the "
    "earlier ones (as almost any rank-10 matrix is in 12 × 192 × 192 dimensions); the absolute "
    "residual is that same share times the size of A_t B_t, so it moves with how large the "
    "new factors grow or shrink during the task. The paper's Fig. 3a, which starts low and "
    "grows, is the absolute kind with A_t B_t starting at zero; here both factors start small "
    "and random (the direction must be defined from the first step), so the absolute curve "
    "starts at the size of that random product and follows its norm from there.")


def body() -> None:
    run = ui.selected_run()
    if run is None:
        ui.no_runs_message()
        return
    config = run.config()
    if not has_part(config, "directions"):
        st.info(f"Directions are SD-LoRA's: run {run.id} uses `{ui.method_label(config)}`, which "
                f"has no per-task directions to compare. The methods that add one per task are "
                f"{ui.code_list(methods_with('directions'))}; pick one of their runs in the "
                f"sidebar. The distances below hold for any run.")
        return
    series = ui.cached_analysis("residual_series", run)
    if series.empty:
        st.info("No residuals in this run yet: they are logged from the second task on, every "
                "`residual_every` steps.")
        return
    st.markdown(WHY_TWO)
    left, right = st.columns(2)
    with left:
        ui.show(figures.residual_figure(series, "relative"), series, "residual_series")
    with right:
        if series["residual_absolute"].notna().any():
            ui.show(figures.residual_figure(series, "absolute"), series,
                    "residual_series_absolute")
        else:
            st.info("This run's step logs have only the relative residual: the absolute one "
                    "(Algorithm 1 line 11) is logged by newer runs. Train this configuration "
                    "again to see it step by step; its end-of-task values are below.")
    table = ui.cached_analysis("residuals_at_task_end", run)
    if table.empty:
        return
    st.subheader("At the end of each task")
    if any(c.startswith("block") for c in table.columns):
        left, right = st.columns(2)
        with left:
            ui.show(figures.residual_bars(table, "relative"), table, "residuals_task_end")
        with right:
            ui.show(figures.residual_bars(table, "absolute"), table,
                    "residuals_task_end_absolute")
    kd = absorption_table(run, table)
    config = TrainConfig.from_dict(run.config())
    st.markdown(
        f"**SD-LoRA-KD's test** (Eqn. 7-8): a direction is absorbed into the earlier magnitudes "
        f"when its residual is below tau (this run's `kd_tau` = {config.kd_tau:g}; the paper's "
        f"9e-4). `kd_residual='relative'` tests the relative residual (scale-free), "
        f"`'absolute'` Algorithm 1 line 11's. The *tau needed* under a rule is the residual "
        f"itself: any tau above it would have absorbed the direction; the ratio says how many "
        f"times this run's tau that is.")
    st.dataframe(kd.style.format({c: "{:.4g}" for c in kd.columns
                                  if kd[c].dtype.kind == "f"}), hide_index=True)


def distances(run) -> None:
    st.subheader("Relative distances between task-specific weights")
    st.caption("Fine-tunes the whole backbone on each task of this run's benchmark alone "
               "(Adam, lr 1e-4, 2 epochs), then rel(i, j) = ||W_i* − W_j*|| / sqrt(||W_i* − "
               "W0|| · ||W_j* − W0||). Computed once per run, then cached.")
    key = f"distances-{run.id}"
    path = run.analyses_dir / "distances.json"
    if path.exists() or st.button("Compute distances (about a minute a task on a CPU)", key=key):
        config = TrainConfig.from_dict(run.config())
        bar = st.progress(0.0, text="fine-tuning task by task")
        value = cached(run, "distances", lambda: {
            scope: relative_distances(d).tolist() for scope, d in
            task_specific_weights(config, epochs=2, progress=bar.progress).items()})
        bar.empty()
        scope = ui.url_control(st.radio, "Weights", name="weights", default="all",
                               options=["all", "qv"], horizontal=True,
                               format_func=lambda s: {"all": "every weight matrix",
                                                      "qv": "query and value only"}[s])

        matrix = np.array(value[scope])
        ui.show(figures.distance_heatmap(matrix, f"Relative distances ({scope})"),
                pd.DataFrame(matrix), f"distances_{scope}")


def page() -> None:
    body()
    run = ui.selected_run()
    if run is not None:
        distances(run)


ui.guarded(page)
