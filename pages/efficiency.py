"""Efficiency: the Table 5 view and the per-step cost against the number of tasks."""
import pandas as pd
import streamlit as st

import ui
from sdlora.analysis import cached, efficiency, figures
from sdlora.runs import RunFolder


ui.route_through_app()  # a page opened by its own URL still runs through app.py

st.title("Efficiency")
st.markdown(
    "What each method learns per task, what it stores after N tasks (SD-LoRA-KD stores fewer "
    "directions when it absorbs them), the inference cost of the merged model against a plain "
    "ViT (identical: every component folds into the weights) and the training-step time task "
    "after task. The update is composed in weight space, so the forward pass is a plain ViT's "
    "whatever the number of tasks; the one part of a step that grows is a single pass over the "
    "frozen directions for their magnitudes' gradients (`python bench/step_cost.py` measures "
    "it: on 2 CPU cores a step costs 1.02x the first task's at 20 tasks and 1.06-1.08x at "
    "100, against 2.3x and 8.0x for the released code's per-token branches). No samples are "
    "stored. " + ui.paper_link("Table 5") + ".")


def body() -> None:
    paths = ui.runs_with_results()
    if not paths:
        ui.no_runs_message()
        return
    chosen = st.multiselect("Runs", paths, default=paths[:3], format_func=ui.label)
    rows, costs = [], []
    for p in chosen:
        run = RunFolder(p)
        eff = cached(run, "efficiency", lambda: efficiency(run))
        last = eff["per_task"][-1]
        rows.append(dict(run=run.id, method=eff["method"], tasks=last["task"],
                         learnable_last_task=last["learnable"],
                         stored_adapter=last["stored_adapter"], stored_head=last["stored_head"],
                         stored_backbone_copy=last["stored_backbone"],
                         components=last["components"],
                         gflops_merged=round(eff["gflops_merged"], 4),
                         gflops_plain_vit=round(eff["gflops_plain"], 4),
                         stored_samples=eff["stored_samples"]))
        costs.append(dict(label=run.id, method=eff["method"], step_ms=eff["step_ms_median"]))
    if rows:
        table = pd.DataFrame(rows)
        st.dataframe(table, hide_index=True, width="stretch")
        st.download_button("Table (CSV)", table.to_csv(index=False), file_name="efficiency.csv")
        ui.show(figures.step_cost_figure(costs), None, "step_cost")


ui.guarded(body)
