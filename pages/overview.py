"""Overview: what SD-LoRA is, the runs available, where to start."""
import streamlit as st

import ui


ui.route_through_app()  # a page opened by its own URL still runs through app.py

st.title("SD-LoRA Lab")
st.markdown(
    "A foundation model learns classes task after task and must not forget the earlier ones: "
    "the **stability-plasticity trade-off**. *SD-LoRA* (Wu et al., ICLR 2025) adapts the query "
    "and value projections of a ViT with one new low-rank **direction** per task, normalised to "
    "unit norm, and learns one **magnitude** per task that every projection shares. Earlier "
    "directions stay fixed while all magnitudes keep learning, so later tasks mostly rescale "
    "what earlier tasks found. Vanilla LoRA keeps training one update and forgets.")
st.latex(r"W = W_0 + \sum_{k=1}^{t} \alpha_k \,\frac{A_k B_k}{\lVert A_k B_k \rVert_F}"
         r"\qquad\text{(Eqn. 4; on task } t\text{, train } \alpha_1..\alpha_t, A_t, B_t)")

# After the first paint: these imports load torch (seconds on a fresh server).
from sdlora.analysis import figures, toy_landscape  # noqa: E402


@st.cache_data(show_spinner=False)
def picture():
    return toy_landscape()


left, right = st.columns([3, 2])
with left:
    st.plotly_chart(figures.landscape_figure(picture()), width="stretch")
    st.page_link("pages/interpolation.py", icon=":material/linear_scale:",
                 label="The measured counterpart: real LoRA and SD-LoRA paths over the tasks' "
                       "accuracy, on the Interpolation page")
with right:
    st.markdown(
        "**The picture** (a toy, computed live): two tasks whose low-loss valleys cross. Both "
        "methods are trained on task 1, then on task 2 only. " + ui.paper_link("Fig. 4a") +
        " draws this idea; the **Theory** page lets you move the valleys.\n\n"
        "**Where to start**\n"
        "1. **Train**: launch *vanilla LoRA vs SD-LoRA* on the embedded benchmark (minutes on a "
        "CPU).\n"
        "2. **Accuracy**: forgetting, task by task.\n"
        "3. **Magnitudes** and **Directions**: what SD-LoRA learned.\n"
        "4. **Interpolation**: the straight line between two checkpoints, and each run's "
        "whole path over the first and the latest task's accuracy.\n"
        "5. **Efficiency**: what it costs.")

st.markdown(
    "**Two benchmarks, two lessons.** On `glyphs40` (the default: glyph classes in typefaces "
    "and styles that its foundation model `glyph-vit` never saw) the frozen features do not "
    "suffice: `simplecil` (frozen backbone, one class-mean prototype per class, no training "
    "step) stays far below a `joint` run that adapts the backbone on all classes at once, and "
    "SD-LoRA, learning the classes task by task, lands between the two, as on ImageNet-R in the "
    "paper: adaptation pays, and incrementality costs part of it. On `renditions20` (Fashion-MNIST "
    "and digit renditions with `embedded-vit`) the pretrained features already separate the 20 "
    "classes, and `simplecil` beats every adapted method: where the features suffice, stability "
    "is all you need. Queue `simplecil`, `joint` and `sd-lora` on either benchmark from "
    "**Train** and compare them on **Accuracy** (the joint run is the dashed level); the "
    "README's results give the measured numbers with paired tests, Holm-adjusted over each "
    "table.")

st.subheader("Measured results")
from sdlora.config import TrainConfig  # noqa: E402
from sdlora.tables import (TableError, display_rows, load_table, results_dir,  # noqa: E402
                           versus_reference)

DEFAULT_TABLE = f"table_{TrainConfig().benchmark}"
tables = sorted(results_dir().glob("table_*.json"),
                key=lambda p: (p.stem != DEFAULT_TABLE, p.stem))  # the default first
if not tables:
    st.info("No measured table yet: `python scripts/results_table.py` trains every method on "
            f"the default benchmark and writes results/{DEFAULT_TABLE}.json.")
labels = [p.stem.removeprefix("table_") for p in tables]
tabs = ui.url_control(st.tabs, labels, name="table", default=labels[0],
                      parse=ui.one_of(labels), on_change="rerun", hideable=False) if tables else []
for path, tab in zip(tables, tabs):
    with tab:
        try:
            data = load_table(path)
        except TableError as e:
            st.warning(f"This table cannot be shown: {e}")
            continue
        st.dataframe(display_rows(data), hide_index=True, width="stretch")
        tests = sum(1 for t in versus_reference(data["rows"]) if t and t["p"] == t["p"])
        missing = data.get("missing") or []
        st.caption(
            f"{len(data['rows'])} methods on `{data.get('benchmark', path.stem)}` "
            f"({data.get('tasks', '?')} tasks, {data.get('epochs', '?')} epochs a task), mean ± "
            "standard error over the seeds listed. A learning rate without a note was chosen on "
            "a validation split of this benchmark's training data (scripts/tune_lr.py), never "
            "on the test set; a note says where else it came from (SD-LoRA's rate, another "
            "benchmark's validation split, or the config's default: *not tuned*). **Acc**: "
            "accuracy on all classes "
            "after the last task; **AAA**: the mean of the accuracies after each task; "
            "**forgetting**: how far each task fell from its best. The last column is a paired "
            "t-test against SD-LoRA over the same seeds (a seed fixes the class order for "
            "every method): its p-value, then the p-value adjusted by Holm's method over "
            f"the table's {tests} tests, which the verdict at 0.05 uses (with many "
            "comparisons some raw p-values fall under 0.05 by chance). A row marked *extra "
            "budget* trained for more passes over the images than the others. Regenerate "
            "with `python scripts/results_table.py`."
            + (f" {len(missing)} runs were not finished when it was written." if missing
               else ""))

st.subheader("Runs")
table = ui.run_table()
if table.empty:
    ui.no_runs_message()
else:
    st.dataframe(table.drop(columns=["path"]), hide_index=True, width="stretch")
