"""Trade-off: every run as a point in the plasticity/stability plane, the sweeps' frontiers, and
a guided lesson.

The page's whole state is the session-state / widget keys listed below (KEYS, plus ANSWER per
lesson step), each bound to the URL by `ui.url_control` (ui.py's docstring): ?view=Lesson&step=3
&answer=..., ?after=2&grouped=true&shown=demo/lora-s1, ?view=Frontiers&knob=epochs
&frontier_after=3. A move inside a view reruns only its fragment and writes the URL from there;
a bad value falls back to the default with a one-line note.
"""
import streamlit as st

import ui

ui.route_through_app()  # a page opened by its own URL still runs through app.py

# This page's state: one key per choice (widget keys), named once.
VIEW = "tradeoff_view"  # "Plane", "Frontiers" or "Lesson"
AFTER = "tradeoff_after"  # the plane's "after task t" (1-based)
GROUPED = "tradeoff_grouped"  # the plane: mean ± s.e. over seeds instead of every run
RUN = "tradeoff_run"  # the run whose per-task bars are shown (its path)
KNOB = "tradeoff_knob"  # the frontiers' knob: "lr" or "epochs"
FRONTIER_AFTER = "tradeoff_frontier_after"  # the frontiers' "after task t"
STEP = "tradeoff_step"  # the lesson's step (1-based)
CURVES = "tradeoff_curves"  # the frontiers' methods drawn
ANSWER = "tradeoff_answer_{}"  # the student's answer at lesson step {} (1-based)
KEYS = [VIEW, AFTER, GROUPED, RUN, KNOB, FRONTIER_AFTER, CURVES, STEP]
VIEWS = ["Plane", "Frontiers", "Lesson"]

st.title("The stability-plasticity trade-off")
st.markdown(
    "Each run is a point: **right** = it learned each new task well (plasticity: the task's "
    "accuracy right after it was learned), **up** = it kept the earlier tasks (stability: few "
    "points forgotten). No method gets the top-right corner for free. Move *after task t* to "
    "watch the points move as tasks arrive; choose a point to see its tasks.")

# After the first paint: these imports load torch (seconds on a fresh server).
import json  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sdlora.analysis import figures, seed_groups  # noqa: E402
from sdlora.analysis.tradeoff import (KNOBS, SweepError, dominance, frontier,  # noqa: E402
                                      load_sweep, rate_effect, sweep_points,
                                      task_tradeoff, tradeoff_points)
from sdlora.config import TrainConfig  # noqa: E402
from sdlora.runs import RunFolder  # noqa: E402
from sdlora.tables import mean_se, results_dir  # noqa: E402

BENCHMARK = TrainConfig().benchmark
REFERENCE = figures.REFERENCE_METHODS


# -- what the page reads (cached; re-read when a run writes) -----------------------------------
# Figures are kept as objects (st.cache_resource: a plotly figure rebuilt or unpickled costs
# a few hundred ms on a loaded CPU), so a slider moved back to a value answers at once.
def runs_key() -> tuple:
    """(path, stamp) of every run with results: changes whenever one of them writes."""
    return tuple((p, ui.run_stamp(RunFolder(p))) for p in ui.runs_with_results())


@st.cache_data(show_spinner=False, max_entries=8)
def finished(stamped: tuple) -> dict:
    """path -> dict(method, label, matrix, seed, group) of every finished run (group: its seed
    group's label, `sdlora.analysis.seed_groups`)."""
    runs = {}
    folders = []
    for path, _ in stamped:
        run = RunFolder(path)
        m = run.metrics(required=False)
        if not m or m["tasks_done"] != m["tasks"]:
            continue
        runs[path] = dict(method=m["method"], label=run.id, matrix=m["accuracy_matrix"],
                          seed=m["seed"], group=None)
        folders.append(run)
    by_id = {info["label"]: info for info in runs.values()}
    for group in seed_groups(folders):
        for run_id in group["runs"]:
            by_id[run_id]["group"] = group["label"]
    return runs


@st.cache_data(show_spinner=False, max_entries=8)
def plane_points(stamped: tuple) -> pd.DataFrame:
    """Every finished run's point after every task it has (joint: its one task)."""
    runs = finished(stamped)
    frame = tradeoff_points({p: r["matrix"] for p, r in runs.items()})
    frame["method"] = frame["key"].map(lambda p: runs[p]["method"])
    frame["label"] = frame["key"].map(lambda p: runs[p]["label"])
    frame["group"] = frame["key"].map(lambda p: runs[p]["group"] or runs[p]["label"])
    return frame


def at_task(frame: pd.DataFrame, after: int) -> pd.DataFrame:
    """Each run's point after task `after`, or after its last task when it has fewer."""
    last = frame.groupby("key")["after"].transform("max")
    return frame[frame["after"] == np.minimum(after, last)]


def grouped(points: pd.DataFrame) -> pd.DataFrame:
    """Mean ± s.e. over the runs of each seed group (a point per group; key: its first run)."""
    rows = []
    for label, g in points.groupby("group", sort=False):
        p, p_se = mean_se(g["plasticity"].tolist())
        f, f_se = mean_se(g["forgetting"].tolist())
        rows.append(dict(label=f"{label} ({len(g)} runs)", method=g["method"].iloc[0],
                         plasticity=p, plasticity_se=p_se, forgetting=f, forgetting_se=f_se,
                         key=g["key"].iloc[0]))
    return pd.DataFrame(rows)


@st.cache_resource(show_spinner=False, max_entries=64)
def plane_view(stamped: tuple, after: int, mean: bool) -> tuple:
    """The plane after task `after` (each run, or each seed group's mean): figure and numbers."""
    points = at_task(plane_points(stamped), after)
    shown = grouped(points) if mean else points
    fig = figures.tradeoff_figure(shown, f"Plasticity against forgetting after task {after}")
    return fig, shown.drop(columns=["key", "group"], errors="ignore")


@st.cache_resource(show_spinner=False, max_entries=64)
def bars_view(stamped: tuple, path: str, after: int):
    info = finished(stamped)[path]
    detail = task_tradeoff(info["matrix"], min(after, len(info["matrix"])))
    return figures.task_tradeoff_bars(detail, f"{info['label']}: learned vs kept")


def sweep_path() -> Path:
    return results_dir() / f"tradeoff_{BENCHMARK}.json"


def sweep_stamp() -> tuple:
    path = sweep_path()
    return str(path), path.stat().st_mtime_ns if path.exists() else None


def sweep() -> tuple[dict | None, pd.DataFrame | None, str | None]:
    """The shipped sweep file, its points, or what is wrong with it."""
    return _sweep(*sweep_stamp())


@st.cache_data(show_spinner=False, max_entries=4)
def _sweep(path: str, stamp) -> tuple:
    try:
        data = load_sweep(path)
        return data, sweep_points(data), None
    except SweepError as err:
        return None, None, str(err)


# -- the plane ----------------------------------------------------------------------------------
@st.fragment
def plane() -> None:
    stamped = runs_key()
    runs = finished(stamped)
    if not runs:
        ui.no_runs_message()
        return
    most = int(plane_points(stamped)["after"].max())
    c1, c2 = st.columns([3, 2])
    after = ui.url_control(
        c1.slider, "After task t", name="after", key=AFTER, default=most, min_value=1,
        max_value=max(most, 2), parse=ui.number(int, 1, most), disabled=most < 2,
        help="Every point as the model after task t sees it: plasticity over tasks 1..t, "
             "forgetting of tasks 1..t-1.")
    mean = ui.url_control(
        c2.toggle, "Mean ± s.e. over seeds", name="grouped", key=GROUPED, default=False,
        help="Runs whose whole configuration but the seed is the same become one point with "
             "standard-error bars.")
    paths = list(runs)
    # first: the run chosen in the sidebar (its link's `run` or its default), else SD-LoRA's
    try:
        sidebar = ui.selected_run()
    except ui.DamagedSelection:  # the sidebar says so; this page draws the healthy runs
        sidebar = None
    first = next((p for p in [str(sidebar.path) if sidebar else None]
                  + [p for p in paths if runs[p]["method"] == "sd-lora"] if p in runs), paths[0])
    left, right = st.columns([3, 2])
    with left:
        fig, shown = plane_view(stamped, after, mean)
        st.plotly_chart(fig, width="stretch", key="tradeoff-plane", on_select=_chosen,
                        selection_mode="points")
        refs = sorted({m for m in shown["method"] if m in REFERENCE})
        st.caption(
            "Reference marks: " + (ui.code_list(refs) if refs else "none among these runs")
            + " (`joint`: all classes as one task, its accuracy and nothing to forget; "
            "`frozen`: only the head learns; `simplecil`: no training step). "
            "Choose a point to see its tasks on the right.")
        ui.download_buttons(fig, shown, "tradeoff_plane")
    with right:
        path = ui.url_control(st.selectbox, "Run shown", name="shown", key=RUN, default=first,
                              options=paths, fmt=ui.run_token, format_func=lambda p: Path(p).name)
        st.plotly_chart(bars_view(stamped, path, after), width="stretch", key="tradeoff-bars")
        st.button("Open this run on the Accuracy page", on_click=_open_accuracy, args=(path,),
                  key="tradeoff-open")
        if st.session_state.pop("_tradeoff_switch", False):
            st.switch_page("pages/accuracy.py")


def _chosen() -> None:
    """A point chosen on the plane becomes the run shown beside it."""
    selection = st.session_state.get("tradeoff-plane", {}).get("selection", {})
    chosen = [p.get("customdata") for p in selection.get("points", [])]
    if chosen and chosen[0] in finished(runs_key()):
        st.session_state[RUN] = chosen[0]


def _open_accuracy(path: str) -> None:
    st.session_state[ui.SELECTED_RUN] = path
    st.session_state["_tradeoff_switch"] = True


def sweep_line(points: pd.DataFrame, knob: str, after: int, methods=None) -> pd.DataFrame:
    """Each method's curve over `knob` after task `after`, labelled for the plane."""
    line = frontier(points, knob, after)
    if methods is not None:
        line = line[line["method"].isin(methods)].copy()
    line["label"] = [f"{m} · {KNOBS[knob]} {v:g} ({n} seeds)"
                     for m, v, n in zip(line["method"], line["value"], line["seeds"])]
    line["text"] = [f"{v:g}" for v in line["value"]]
    return line


@st.cache_resource(show_spinner=False, max_entries=32)
def frontier_view(stamp: tuple, knob: str, after: int, methods: tuple[str, ...]) -> tuple:
    """The frontiers' figure and numbers for `methods`, and per other method shown how many of
    its points SD-LoRA's curve beats and the other way round ({method: (beaten, behind)})."""
    line = sweep_line(_sweep(*stamp)[1], knob, after, list(methods))
    fig = figures.tradeoff_figure(line, f"Each method's curve as the {KNOBS[knob]} grows "
                                        f"(after task {after}; mean ± s.e. over seeds)",
                                  lines=True)
    sd = line[line["method"] == "sd-lora"]
    versus = {} if sd.empty else {
        m: (dominance(sd, line[line["method"] == m]), dominance(line[line["method"] == m], sd))
        for m in dict.fromkeys(line["method"]) if m != "sd-lora"}
    return fig, line, versus


# -- the frontiers ------------------------------------------------------------------------------
@st.fragment
def frontiers() -> None:
    data, points, error = sweep()
    if error:
        st.info(f"No frontier to draw: {error}. Without it the plane above still shows the "
                "runs in this app.")
        return
    if points.empty:
        st.info(f"{sweep_path().name} has no finished run yet; `python scripts/make_tradeoff.py`"
                " trains them.")
        return
    knobs = [k for k in KNOBS if k in set(points["knob"])]
    most = int(points["after"].max())
    c1, c2 = st.columns([2, 3])
    knob = ui.url_control(c1.radio, "Knob", name="knob", key=KNOB, default=knobs[0],
                          options=knobs, format_func=KNOBS.get, horizontal=True)
    after = ui.url_control(c2.slider, "After task t", name="frontier_after", key=FRONTIER_AFTER,
                           default=most, min_value=1, max_value=max(most, 2),
                           parse=ui.number(int, 1, most), disabled=most < 2)
    swept = list(dict.fromkeys(points["method"]))  # every method of any sweep, in file order
    shown = ui.url_control(st.multiselect, "Methods drawn", name="curves", key=CURVES,
                           many=True, default=swept, options=swept,
                           help="The methods whose curves are drawn (all by default); a method "
                                "without runs on this knob draws nothing.")
    fig, line, versus = frontier_view(sweep_stamp(), knob, after, tuple(shown))
    st.plotly_chart(fig, width="stretch", key="tradeoff-frontier")
    ui.download_buttons(fig, line.drop(columns=["text"]), "tradeoff_frontier")
    if "lora" in versus:
        d, back = versus["lora"]
        st.markdown(f"**Does SD-LoRA's curve lie beyond LoRA's?** After task {after}, "
                    f"{d['dominated']} of LoRA's {d['of']} points are beaten by some SD-LoRA "
                    "point (as plastic or more and as stable or more, on the means); "
                    f"{back['dominated']} of SD-LoRA's {back['of']} by some LoRA point.")
    others = [f"{m}: {d['dominated']} of its {d['of']} points beaten by SD-LoRA, "
              f"{back['dominated']} of SD-LoRA's {back['of']} beaten by it"
              for m, (d, back) in versus.items() if m != "lora"]
    if others:
        st.markdown("**The other methods against SD-LoRA's curve** (points on the means): "
                    + "; ".join(others) + ".")
    seeds = ", ".join(map(str, data.get("seeds", [])))
    fixed = (f"at each method's validation-chosen rate" if knob == "epochs"
             else f"at {data.get('default_epochs', '?')} epochs a task")
    st.caption(f"`{data.get('benchmark', BENCHMARK)}`, seeds {seeds}, {fixed}; a label is the "
               f"knob's value. From results/{sweep_path().name} "
               "(`python scripts/make_tradeoff.py`).")
    missing = data.get("missing") or []
    if missing:
        with st.expander(f"{len(missing)} runs of the sweep are not finished yet: their points "
                         "are missing"):
            st.caption(", ".join(missing))


# -- the lesson ---------------------------------------------------------------------------------
# Each step: (context) -> question, choices, reveal(answer). The right choice is read off the
# demo runs and the sweep, never written in: other runs give other answers.
def method_matrices(runs: dict, method: str) -> list:
    """The matrices of `method`'s largest seed group among the finished runs."""
    groups: dict = {}
    for info in runs.values():
        if info["method"] == method:
            groups.setdefault(info["group"] or info["label"], []).append(info["matrix"])
    return max(groups.values(), key=len) if groups else []


def verdict(answer: str, right: str) -> None:
    if answer == right:
        st.success(f"Right: {right}.")
    else:
        st.warning(f"Not quite: the runs say **{right}**.")


def needs(what: str) -> None:
    st.info(f"This step needs {what}, which this app does not have yet.")


def lesson_line(context: dict, knob: str, methods: list[str]) -> pd.DataFrame:
    """A sweep's curves after the last task, for the lesson (empty without a sweep file)."""
    points = context["sweep"][1]
    if points is None or points.empty:
        return pd.DataFrame()
    return sweep_line(points, knob, int(points["after"].max()), methods)


def step_learned(context: dict):
    choices = ["vanilla LoRA", "SD-LoRA", "about the same (within a point)"]

    def reveal(answer: str) -> None:
        lora, sd = (method_matrices(context["runs"], m) for m in ("lora", "sd-lora"))
        if not lora or not sd:
            return needs("finished lora and sd-lora runs (the demo runs)")
        learned = {m: np.array([[row[t] for t, row in enumerate(R)] for R in Rs])
                   for m, Rs in (("lora", lora), ("sd-lora", sd))}
        a, b = (float(learned[m].mean()) for m in ("lora", "sd-lora"))
        verdict(answer, choices[2] if abs(a - b) < 1 else choices[0] if a > b else choices[1])
        fig = figures.mean_curve_figure(learned, "Each task's accuracy right after it was learned")
        fig.update_layout(xaxis_title="task", xaxis_dtick=1,
                          yaxis_title="accuracy on the task, right after it (%)")
        st.plotly_chart(fig, width="stretch", key="lesson-1")
        st.markdown(f"Vanilla LoRA learned its tasks to {a:.1f}% on average, SD-LoRA to {b:.1f}% "
                    "(the mean over tasks and seeds of the accuracy matrix's diagonal). This is "
                    "plasticity, the x axis of the plane: what a method can still learn.")

    return ("Right after learning each task, which method learned it better?", choices, reveal)


def step_kept(context: dict):
    choices = ["vanilla LoRA", "SD-LoRA"]

    def reveal(answer: str) -> None:
        lora, sd = (method_matrices(context["runs"], m) for m in ("lora", "sd-lora"))
        if not lora or not sd:
            return needs("finished lora and sd-lora runs (the demo runs)")
        first = {m: np.array([[row[0] for row in R] for R in Rs])
                 for m, Rs in (("lora", lora), ("sd-lora", sd))}
        kept = {m: float(v[:, -1].mean()) for m, v in first.items()}
        verdict(answer, choices[0] if kept["lora"] > kept["sd-lora"] else choices[1])
        fig = figures.mean_curve_figure(first, "Task 1's accuracy as the later tasks arrive")
        fig.update_layout(xaxis_dtick=1, yaxis_title="accuracy on task 1's test data (%)")
        st.plotly_chart(fig, width="stretch", key="lesson-2")
        st.markdown(f"After the last task vanilla LoRA kept {kept['lora']:.1f}% on task 1 and "
                    f"SD-LoRA {kept['sd-lora']:.1f}% (from {first['lora'][:, 0].mean():.1f}% and "
                    f"{first['sd-lora'][:, 0].mean():.1f}% right after it). What falls is "
                    "forgetting, the y axis of the plane: LoRA keeps training one update for "
                    "every task, SD-LoRA freezes each task's direction and only rescales it.")

    return ("After the last task, which method kept more of task 1?", choices, reveal)


def step_frozen(context: dict):
    choices = ["left of LoRA and higher: learns less, forgets less",
               "right of LoRA and lower: learns more, forgets more",
               "right of LoRA and higher: better at both"]

    def reveal(answer: str) -> None:
        line = lesson_line(context, "lr", ["lora", "sd-lora", "frozen", "full-ft"])
        best = line.loc[line.groupby("method")["plasticity"].idxmax()] if not line.empty else line
        if not {"lora", "frozen"} <= set(best.get("method", [])):
            return needs("the sweep's frozen and lora runs (results/" + sweep_path().name + ")")
        frozen, lora = (best[best["method"] == m].iloc[0] for m in ("frozen", "lora"))
        right = (choices[2] if frozen.plasticity > lora.plasticity
                 and frozen.forgetting < lora.forgetting else
                 choices[1] if frozen.plasticity > lora.plasticity else choices[0])
        verdict(answer, right)
        st.plotly_chart(figures.tradeoff_figure(best, "Each method at its most plastic rate of "
                                                      "the sweep"), width="stretch",
                        key="lesson-3")
        steady = best.loc[best["forgetting"].idxmin()]
        eager = best.loc[best["plasticity"].idxmax()]
        ends = (f"Of {', '.join(f'`{m}`' for m in best['method'])} (each at its most plastic "
                f"rate), `{steady.method}` forgets least ({steady.forgetting:.1f}) and "
                f"`{eager.method}` learns most ({eager.plasticity:.1f}%, forgetting "
                f"{eager.forgetting:.1f}): " + (
                    "the two ends of the trade-off." if steady.method != eager.method else
                    "one method at both ends, so here there is no trade-off between them."))
        st.markdown(f"With the backbone frozen only the head learns: {frozen.plasticity:.1f}% on "
                    f"each new task against LoRA's {lora.plasticity:.1f}%, forgetting "
                    f"{frozen.forgetting:.1f} points against {lora.forgetting:.1f}. {ends}")

    return ("Where does the frozen backbone (only the classifier head learns) sit in the plane?",
            choices, reveal)


def step_rate(context: dict):
    choices = ["they are forgotten more", "they are kept better",
               "little changes (under 2 points)"]

    def reveal(answer: str) -> None:
        line = lesson_line(context, "lr", ["lora"])
        if len(line) < 2:
            return needs("vanilla LoRA's learning-rate sweep (two rates or more)")
        effect = rate_effect(line)
        low, high, change = effect["low"], effect["high"], effect["change"]
        verdict(answer, choices[2] if abs(change) < 2 else choices[0] if change > 0
                else choices[1])
        st.plotly_chart(figures.tradeoff_figure(line, "Vanilla LoRA as its learning rate grows",
                                                lines=True), width="stretch", key="lesson-4")
        peak = ("its most plastic rate" if effect["at_peak"] else
                f"lr {low.value:g} is already its most plastic rate")
        st.markdown(f"From lr {low.value:g} to {high.value:g} ({peak}) vanilla "
                    f"LoRA's forgetting went from {low.forgetting:.1f} to {high.forgetting:.1f} "
                    f"points and its plasticity from {low.plasticity:.1f}% to "
                    f"{high.plasticity:.1f}%. One knob moves a method along its own curve: the "
                    "trade-off, traced.")
        if effect["collapsed"]:
            rates = ", ".join(f"{v:g}" for v in effect["collapsed"])
            st.markdown(f"At lr {rates} training collapses: plasticity falls below half its "
                        "best, so there is little to forget, and low forgetting there is not "
                        "stability. Read the curve up to its most plastic point.")

    return ("Raising vanilla LoRA's learning rate: what happens to the old tasks?", choices,
            reveal)


def step_frontier(context: dict):
    choices = ["beyond every one of LoRA's points", "beyond some of LoRA's points",
               "beyond none of them"]

    def reveal(answer: str) -> None:
        line = lesson_line(context, "lr", ["lora", "sd-lora"])
        if set(line.get("method", [])) != {"lora", "sd-lora"}:
            return needs("the learning-rate sweep of lora and sd-lora")
        d = dominance(line[line["method"] == "sd-lora"], line[line["method"] == "lora"])
        verdict(answer, choices[0] if d["dominated"] == d["of"] else
                choices[1] if d["dominated"] else choices[2])
        st.plotly_chart(figures.tradeoff_figure(line, "Both curves, one point per learning rate",
                                                lines=True), width="stretch", key="lesson-5")
        st.markdown(f"{d['dominated']} of LoRA's {d['of']} points have an SD-LoRA point at "
                    "least as plastic and at least as stable (means over seeds; the bars are "
                    "standard errors). A curve beyond another is a better trade-off, not just "
                    "another point on the same one.")

    return ("Does SD-LoRA's learning-rate curve lie beyond vanilla LoRA's (up and to the right)?",
            choices, reveal)


def step_epochs(context: dict):
    choices = ["more plastic and more forgetful", "more plastic, not more forgetful",
               "not more plastic"]

    def reveal(answer: str) -> None:
        line = lesson_line(context, "epochs", ["lora", "sd-lora"])
        lora = line[line["method"] == "lora"] if not line.empty else line
        if len(lora) < 2:
            needs("vanilla LoRA's epochs sweep (two epoch counts or more)")
        else:
            short, long = lora.iloc[0], lora.iloc[-1]
            dp, df = long.plasticity - short.plasticity, long.forgetting - short.forgetting
            verdict(answer, choices[2] if dp <= 1 else choices[0] if df > 1 else choices[1])
            st.plotly_chart(figures.tradeoff_figure(line, "Both methods as the epochs per task "
                                                          "grow", lines=True),
                            width="stretch", key="lesson-6")
            st.markdown(f"From {short.value:g} to {long.value:g} epochs a task vanilla LoRA's "
                        f"plasticity moved by {dp:+.1f} points and its forgetting by {df:+.1f}. "
                        "Longer training pulls one shared update further from what the earlier "
                        "tasks needed, unless the method keeps their directions apart.")
        rates = lesson_line(context, "lr", ["lora"])
        lr = (float(rates.loc[rates["forgetting"].idxmax(), "value"]) if len(rates) > 1
              else TrainConfig().lr)
        epochs = int(lora["value"].max()) if len(lora) > 1 else 2 * TrainConfig().epochs
        where = "where LoRA forgot most in the sweep" if len(rates) > 1 else "the paper's rate"
        suggestion = dict(methods=["lora", "sd-lora"], lr=lr, epochs=epochs, seed=3)
        st.markdown(f"**Try it yourself**: vanilla LoRA and SD-LoRA at lr {lr:g} ({where}) with "
                    f"{epochs} epochs a task, on a seed the sweep did not use (3). Then find "
                    "both runs here, in the plane.")
        st.button("Open the Train page with these settings", key="lesson-train",
                  on_click=_suggest, args=(suggestion,), type="primary")
        if st.session_state.pop("_tradeoff_train", False):  # the Train page's own link
            st.switch_page("pages/train.py", query_params=train_link(suggestion))

    return ("Training vanilla LoRA longer on each task (more epochs): what happens?", choices,
            reveal)


def train_link(settings: dict) -> dict:
    """The Train page's URL parameters for the lesson's settings (its fields read them; the
    validation-chosen rate unticked so that this rate is used)."""
    return dict(methods=settings["methods"], lr=ui.url_text(settings["lr"]),
                epochs=str(settings["epochs"]), seed=str(settings["seed"]), tuned="false")


def _suggest(settings: dict) -> None:
    st.session_state[ui.TRAIN_SUGGESTION] = settings
    st.session_state["_tradeoff_train"] = True


STEPS = [step_learned, step_kept, step_frozen, step_rate, step_frontier, step_epochs]


@st.fragment
def lesson() -> None:
    step = ui.url_value("step", 1, ui.number(int, 1, len(STEPS)), key=STEP)
    ui.url_write("step", step)
    st.progress(step / len(STEPS), text=f"Step {step} of {len(STEPS)}")
    context = dict(runs=finished(runs_key()), sweep=sweep())
    question, choices, reveal = STEPS[step - 1](context)
    # the answer to this step (none yet: not in the URL); the student's, even in a set exercise
    answer = ui.url_control(st.radio, f"**{question}**", name="answer", options=choices,
                            default=None, key=ANSWER.format(step), hideable=False)
    if answer is not None:
        reveal(answer)
    if ui.controls_hidden():  # a set exercise: the link fixes the step
        return
    back, forward = st.columns(2)
    back.button("Previous step", disabled=step == 1, on_click=_go, args=(step - 1,),
                key="tradeoff-back")
    forward.button("Next step", disabled=step == len(STEPS), on_click=_go, args=(step + 1,),
                   key="tradeoff-next", type="primary" if answer is not None else "secondary")


def _go(step: int) -> None:
    st.session_state[STEP] = step


def body() -> None:
    # Streamlit forgets a widget's value in a run that does not draw it: keep the choices of
    # the views not shown (and every lesson answer) for when the student comes back to them.
    for key in [*KEYS, *(ANSWER.format(i) for i in range(1, len(STEPS) + 1))]:
        if key in st.session_state:
            st.session_state[key] = st.session_state[key]
    view = ui.url_control(st.segmented_control, "View", name="view", key=VIEW, options=VIEWS,
                          default=VIEWS[0], required=True, label_visibility="collapsed")
    if view == "Frontiers":
        frontiers()
    elif view == "Lesson":
        lesson()
    else:
        plane()


ui.guarded(body)
