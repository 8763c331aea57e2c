"""Directions: the residual of each new direction against the earlier ones; relative distances."""
import streamlit as st

import ui

ui.route_through_app()  # a page opened by its own URL still runs through app.py

st.title("Directions")
st.markdown(
    "**Residual**: how much of the direction learned on the current task lies *outside* the "
    "span of the earlier tasks' directions (least squares, Eqn. 7; 0 = fully reusable, 1 = "
    "brand new). In the paper it starts low and grows during a task: a new task first reuses "
    "old directions, then adds a little of its own. " + ui.paper_link("Fig. 3a") + ". "
    "**Distances**: weights fine-tuned on each task separately are closer to each other than "
    "to the pretrained weights (Finding 1), so a few shared directions can serve all tasks. "
    + ui.paper_link("Fig. 2a and Fig. 7") + ".")

# After the first paint: these imports load torch (seconds on a fresh server).
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sdlora.analysis import (cached, figures, relative_distances, residual_series,  # noqa: E402
                             residuals_at_task_end, task_specific_weights)
from sdlora.config import TrainConfig  # noqa: E402


def body() -> None:
    run = ui.selected_run()
    if run is None:
        ui.no_runs_message()
        return
    series = residual_series(run)
    if series.empty:
        st.info("No residuals in this run: they need a method that adds a direction per task "
                "(sd-lora, -rr, -kd, no-rescale) and at least two tasks.")
    else:
        ui.show(figures.residual_figure(series), series, "residual_series")
        table = residuals_at_task_end(run)
        if not table.empty and any(c.startswith("block") for c in table.columns):
            ui.show(figures.residual_bars(table), table, "residuals_task_end")
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
        scope = st.radio("Weights", ["all", "qv"], horizontal=True,
                         format_func=lambda s: {"all": "every weight matrix",
                                                "qv": "query and value only"}[s])

        matrix = np.array(value[scope])
        ui.show(figures.distance_heatmap(matrix, f"Relative distances ({scope})"),
                pd.DataFrame(matrix), f"distances_{scope}")


ui.guarded(body)
