"""Magnitudes: alpha_k over the whole run, task boundaries marked."""
import streamlit as st

import ui


ui.route_through_app()  # a page opened by its own URL still runs through app.py

st.title("Magnitudes")
st.markdown(
    "One line per task's component: its magnitude α at every optimiser step; dashed lines "
    "mark where a new task starts. In the paper the magnitudes of the **first** tasks grow "
    "while later ones stay small: later tasks mostly **reuse and rescale** early directions "
    "rather than adding new ones, which is how SD-LoRA stays stable and still learns. "
    + ui.paper_link("Fig. 3b/c and Fig. 6") + ".")

# After the first paint: these imports load torch (seconds on a fresh server).
from sdlora.analysis import figures  # noqa: E402
from sdlora.methods.lora import has_part, methods_with  # noqa: E402


def body() -> None:
    run = ui.selected_run()
    if run is None:
        ui.no_runs_message()
        return
    config = run.config()
    if not has_part(config, "magnitudes"):
        st.info(f"Magnitudes are SD-LoRA's: run {run.id} uses `{ui.method_label(config)}`, which "
                f"has no magnitudes. The methods that learn them are "
                f"{ui.code_list(methods_with('magnitudes'))} (and `joint` with the sd-lora "
                f"adapter); pick one of their runs in the sidebar.")
        return
    series = ui.cached_analysis("magnitude_series", run)
    if series.empty:
        st.info(f"Run {run.id} logged no magnitudes yet: it has not taken a step.")
        return
    ui.show(figures.magnitude_figure(series, f"Learned magnitudes: {run.id}"), series,
            "magnitudes")
    st.subheader("Magnitudes at the end of each task")
    table = ui.cached_analysis("magnitudes_at_task_end", run)
    st.dataframe(table.style.format("{:.3f}", na_rep=""), width="stretch")
    st.download_button("Table (CSV)", table.to_csv(), file_name="magnitudes_task_end.csv")


ui.guarded(body)
