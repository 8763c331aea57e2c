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
    fig = figures.interpolation_figure(panels, task)
    frame = pd.concat([f.assign(run=k) for k, f in panels.items()])
    ui.show(fig, frame, f"interpolation_task{task}")


ui.guarded(body)
