"""Efficiency: the measured step cost against the number of tasks; the Table 5 view per run."""
import json
import os
from pathlib import Path

import streamlit as st

import ui

ui.route_through_app()  # a page opened by its own URL still runs through app.py

STEP_COST = Path(os.environ.get(
    "SDLORA_STEP_COST",
    Path(__file__).resolve().parent.parent / "bench" / "results" / "step_cost.json"))

st.title("Efficiency")
st.markdown(
    "SD-LoRA composes its update in weight space, so the forward pass is a plain ViT's whatever "
    "the number of tasks; the one part of a training step that grows with the tasks is a single "
    "pass over the frozen directions for their magnitudes' gradients. The released code instead "
    "runs one low-rank branch per earlier task on every token. The curve below is measured side "
    "by side by `bench/step_cost.py` (its latest committed result); the table below it is what "
    "each run learns and stores per task, and the inference cost of the merged model against a "
    "plain ViT. No samples are stored. " + ui.paper_link("Table 5") + ".")

# After the first paint: these imports load torch (seconds on a fresh server).
import pandas as pd  # noqa: E402
from sdlora.analysis import cached, efficiency, figures, table5_row  # noqa: E402
from sdlora.runs import RunFolder  # noqa: E402


@st.cache_data(show_spinner=False)
def step_cost_result(path: str, mtime: float) -> dict:
    """The bench's JSON (re-read when the file changes)."""
    result = json.loads(Path(path).read_text())
    missing = [k for k in ("tasks", "sd_lora", "settings", "device", "date") if k not in result]
    if missing:
        raise ValueError(f"{path} lacks {missing}: rerun `python bench/step_cost.py --json "
                         f"{path}`")
    return result


def step_cost() -> None:
    st.subheader("Training-step cost against the number of tasks")
    if not STEP_COST.exists():
        st.info(f"No measurement yet: `python bench/step_cost.py --json {STEP_COST}` "
                "writes it.")
        return
    r = step_cost_result(str(STEP_COST), STEP_COST.stat().st_mtime)
    frame = pd.DataFrame({"tasks": r["tasks"], "sd_lora_ms": r["sd_lora"]["step_ms"],
                          "sd_lora_ratio": r["sd_lora"]["ratio"]})
    for key in ("autograd", "released"):
        if r.get(key):
            frame[f"{key}_ms"], frame[f"{key}_ratio"] = r[key]["step_ms"], r[key]["ratio"]
    last = r["tasks"][-1]
    cols = st.columns(3)
    cols[0].metric(f"SD-LoRA step at {last} tasks", f"{r['sd_lora']['ratio'][-1]:.2f}x",
                   help="relative to the first task's step time")
    if r.get("released"):
        cols[1].metric(f"Released code's step at {last} tasks",
                       f"{r['released']['ratio'][-1]:.2f}x")
    inference = r.get("inference")
    if inference:
        cols[2].metric(f"Merged model's inference after {inference['tasks']} tasks",
                       f"{inference['merged_ratio']:.2f}x", help="relative to a plain timm ViT")
    ui.show(figures.step_cost_curve_figure(r), frame, "step_cost_curve")
    s = r["settings"]
    passes = r.get("fused_pass", {})
    share = (f" The growing part, the fused pass over the frozen directions, timed alone: "
             f"{passes['ms'][-1]:.1f} ms at {passes['tasks'][-1]} tasks, "
             f"{100 * passes['share_of_first_step'][-1]:.1f}% of a first-task step."
             if passes.get("ms") else "")
    st.caption(
        f"`{r.get('command', 'python bench/step_cost.py')}`, {r['date'][:10]}, on {r['device']}: "
        f"{s['backbone']} at {s['image_size']} px, batch {s['batch']}, {s['torch_threads']} "
        f"torch thread(s), median of {s['repeats']} interleaved rounds; each ratio is the "
        f"median of the per-round ratios to the first task's step of the same kind." + share
        + (f" Load average during the run: {r['load_average']['before'][0]:.1f} before, "
           f"{r['load_average']['after'][0]:.1f} after." if r.get("load_average") else "")
        + (f" {r['note']}" if r.get("note") else ""))


def per_run() -> None:
    st.subheader("What each run learns and stores")
    paths = ui.runs_with_results()
    if not paths:
        ui.no_runs_message()
        return
    damaged = ui.damaged_runs()  # offered too: a chosen one is a row saying what is wrong
    chosen = ui.url_control(st.multiselect, "Runs", name="runs", many=True,
                            options=paths + list(damaged), default=paths[:3], fmt=ui.run_token,
                            format_func=ui.label)
    rows, costs = [], []
    for p in chosen:
        run = RunFolder(p)
        if p in damaged:
            rows.append(dict(run=run.id, damaged=damaged[p]))
            continue
        try:
            eff = cached(run, "efficiency", lambda: efficiency(run))
        except Exception as err:  # noqa: BLE001 - one damaged run never hides the others
            rows.append(dict(run=run.id, damaged=ui.what_is_wrong(err)))
            continue
        rows.append(dict(run=run.id, **table5_row(eff)))
        costs.append(dict(label=run.id, method=eff["method"], step_ms=eff["step_ms_median"]))
    if rows:
        table = pd.DataFrame(rows)
        if "damaged" in table:  # the measured columns first, what is wrong last
            table = table[[c for c in table if c != "damaged"] + ["damaged"]]
            st.warning(f"{table['damaged'].notna().sum()} of the chosen runs cannot be "
                       f"measured: the `damaged` column says what is wrong with each.")
        st.caption("Table 5's columns first: GFLOPs per test image (the prompt methods, L2P, "
                   "DualPrompt, CODA-Prompt and HiDe-Prompt, pay a second, frozen query pass: "
                   "`forward_passes` 2), parameters learned on the last task besides the head, "
                   "and parameters stored after it besides the pretrained backbone; then what "
                   "the stored ones are. HiDe-Prompt's learned parameters are the task's prompt "
                   "(as Table 5 counts them); its task-identity MLP and head are in "
                   "`stored_head`, its class statistics (cluster means, variances, counts) in "
                   "`stored_features`.")
        st.dataframe(table, hide_index=True, width="stretch")
        st.download_button("Table (CSV)", table.to_csv(index=False), file_name="efficiency.csv")
        with st.expander("Step time task by task in these runs' own logs (noisy)"):
            st.caption("Wall-clock medians from the training logs: they move with whatever "
                       "else the machine was doing during each task, so read the measured "
                       "curve above for how the cost grows.")
            if costs:
                ui.show(figures.step_cost_figure(costs), None, "step_cost")


ui.guarded(step_cost)
ui.guarded(per_run)
