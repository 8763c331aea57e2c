"""The app's one shared module: session-state keys, cached loaders, and small layout helpers.

Pages stay thin: widgets in, `sdlora` calls, figures out. Everything computed comes from
`sdlora`; this module only caches it and lays it out.

Importing it is cheap (no torch, no pandas): every page imports it before its first paint.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import streamlit as st

from sdlora.runs import RunError, RunFolder, default_runs_root, list_runs

if TYPE_CHECKING:
    import pandas as pd


def route_through_app() -> None:
    """Make a page opened by its own URL on a fresh server run through app.py's navigation.

    Until some session has called ``st.navigation``, Streamlit runs an app that has a ``pages/``
    folder the old way: a visitor who opens ``/train`` first on a fresh server gets
    ``pages/train.py`` run on its own, without app.py. (The folder's own menu is never drawn:
    ``.streamlit/config.toml`` sets ``client.showSidebarNavigation = false``, and app.py's menu
    is ``st.navigation``'s at the top.) Every page calls this first, before any heavy import; in
    such a run it switches the flag that ``st.navigation`` switches, runs app.py (its menu,
    sidebar and this page, in this same run, so a button press is not lost) and stops the
    folder-style run. In every other run it does nothing.
    """
    from streamlit.runtime.pages_manager import PagesManager

    if getattr(PagesManager, "uses_pages_directory", False):
        import runpy

        PagesManager.uses_pages_directory = False
        runpy.run_path(str(Path(__file__).with_name("app.py")), run_name="__main__")
        st.stop()


# Session-state keys (named once, used everywhere).
SELECTED_RUN = "selected_run"
COMPARE_RUNS = "compare_runs"
# Settings another page suggests for the Train page's form (the Trade-off lesson's last step):
# dict(methods, lr, epochs, seed); kept until cleared there.
TRAIN_SUGGESTION = "train_suggestion"

PAPER_CODE = "https://github.com/WuYichen-97/SD-Lora-CL"  # the URL the paper gives


def paper_link(figure: str) -> str:
    """Cite a figure of Wu et al., 'SD-LoRA', ICLR 2025 (the authors' repository links it)."""
    return f"{figure} of Wu et al., *SD-LoRA*, ICLR 2025 ([authors' code]({PAPER_CODE}))"


def run_table() -> pd.DataFrame:
    """Every run folder, one row each (re-read every few seconds: runs change while training)."""
    return _run_table(str(default_runs_root()))


@st.cache_data(ttl=3, show_spinner=False)
def _run_table(root: str) -> pd.DataFrame:
    import pandas as pd

    rows = []
    try:
        runs = list_runs()
    except OSError as err:  # an unreadable runs folder: say so, show nothing else
        return pd.DataFrame([dict(id=str(root), state=f"damaged: {err}", path=root)],
                            columns=_COLUMNS)
    for run in runs:
        try:
            rows.append(run.summary() | {"path": str(run.path)})
        except Exception as err:  # noqa: BLE001 - one damaged run never hides the others
            rows.append(dict(id=run.id, state=f"damaged: {what_is_wrong(err)}",
                             path=str(run.path)))
    return pd.DataFrame(rows, columns=_COLUMNS)


def what_is_wrong(err: Exception) -> str:
    """A damaged run's problem in one line: a RunError names the file, anything else its kind."""
    return str(err) if isinstance(err, RunError) else f"{type(err).__name__}: {err}"


_COLUMNS = ["id", "method", "benchmark", "seed", "tasks", "done", "state", "acc", "aaa", "path"]


def runs_with_results() -> list[str]:
    """Readable runs with at least one finished task (damaged runs are left out)."""
    import pandas as pd

    table = run_table()
    healthy = ~table["state"].fillna("").astype(str).str.startswith("damaged")
    return table[healthy & (pd.to_numeric(table["done"], errors="coerce").fillna(0) > 0)][
        "path"].tolist()


def damaged_runs() -> dict[str, str]:
    """path -> what is wrong (the file and the problem), for every damaged run folder."""
    table = run_table()
    bad = table[table["state"].fillna("").astype(str).str.startswith("damaged")]
    return {row.path: row.state[len("damaged: "):] for row in bad.itertuples()}


def label(path: str) -> str:
    return Path(path).name + (" (damaged)" if path in damaged_runs() else "")


def method_label(config: dict) -> str:
    """A run's method as its pages name it: `joint` with the adapter it trains; a hide-prompt run
    evaluated with the true task (analysis only) says so."""
    method = config.get("method", "?")
    if config.get("hide_oracle_task"):
        return f"{method} (oracle task)"
    return f"{method} ({config.get('joint_adapter', 'lora')} adapter)" if method == "joint" else method


def code_list(names) -> str:
    """`a`, `b` and `c`, for a sentence."""
    names = [f"`{n}`" for n in names]
    return ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else "".join(names)


def no_runs_message() -> None:
    st.info("No finished task in any run yet. Start one on the **Train** page (a few minutes on "
            "a CPU), or from a terminal: `python -m sdlora train`. The repo's demo runs are made "
            "by `python scripts/make_demo_runs.py`.")


def run_picker() -> None:
    """The sidebar's run picker (app.py draws it after the page: the page's first paint does
    not wait for the run table). Damaged run folders are listed too, with what is wrong."""
    healthy = runs_with_results()
    damaged = damaged_runs()
    paths = healthy + list(damaged)
    if paths:
        current = st.session_state.get(SELECTED_RUN)
        index = paths.index(current) if current in paths else (
            _default_index(healthy) if healthy else 0)
        st.selectbox("Run", paths, index=index, key=SELECTED_RUN, format_func=label,
                     help="The run the single-run pages show. A damaged run shows what "
                          "is wrong with it.")
    if damaged:
        with st.expander(f"{len(damaged)} damaged run folder(s)"):
            for path, what in damaged.items():
                st.caption(f"**{Path(path).name}**: {what}")


@st.cache_resource(show_spinner=False)
def cuda_device() -> str | None:
    """The CUDA device's name, or None: asked once per server (it imports torch)."""
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def device_status() -> None:
    name = cuda_device()
    if name:
        st.success(f"GPU: {name}")
    else:
        st.caption("Device: CPU (no CUDA device found)")


def _default_index(paths: list[str]) -> int:
    """Your newest run first; with only the demo runs, SD-LoRA's first seed."""
    table = run_table().set_index("path")
    demo_sd = [i for i, p in enumerate(paths) if Path(p).parent.name == "demo"
               and table.loc[p, "method"] == "sd-lora"]
    ours = [i for i, p in enumerate(paths) if Path(p).parent.name != "demo"]
    return ours[0] if ours else (sorted(demo_sd, key=lambda i: paths[i])[0] if demo_sd else 0)


class DamagedSelection(Exception):
    """The run chosen in the sidebar is damaged; the message says what is wrong with it."""


def selected_run() -> RunFolder | None:
    """The run chosen in the sidebar; for a damaged one, DamagedSelection, which `guarded`
    shows as what is wrong in place of the page body (not st.stop: the sidebar's picker is
    drawn after the page, and keeps the damaged run selected)."""
    paths = runs_with_results()
    path = st.session_state.get(SELECTED_RUN)
    damaged = damaged_runs()
    if path is not None and path in damaged:
        raise DamagedSelection(f"Run {Path(path).name} cannot be shown: {damaged[path]}. The "
                               f"other runs are in the sidebar.")
    if not paths:
        return None
    return RunFolder(path if path in paths else paths[_default_index(paths)])


def run_stamp(run: RunFolder) -> tuple:
    """Changes whenever the run writes: its metrics, status and step logs."""
    files = [run.metrics_path, run.status_path, *sorted(run.steps_dir.glob("*.jsonl"))]
    return tuple((p.name, p.stat().st_mtime_ns) for p in files if p.exists())


def cached_analysis(name: str, run: RunFolder):
    """``sdlora.analysis.<name>(run)``, kept in memory until the run writes again: a page
    opened again shows it at once instead of re-reading the step logs."""
    return _cached_analysis(name, str(run.path), run_stamp(run))


@st.cache_data(show_spinner=False, max_entries=64)
def _cached_analysis(name: str, path: str, stamp: tuple):
    from sdlora import analysis

    return getattr(analysis, name)(RunFolder(path))


def download_buttons(fig, frame: pd.DataFrame | None, name: str) -> None:
    """HTML of the figure and CSV of its numbers (PNG: the camera icon on every chart)."""
    cols = st.columns(2)
    # The files are made when a button is clicked (a callable), not on every run of the page.
    cols[0].download_button("Figure (HTML)", lambda: fig.to_html(include_plotlyjs="cdn"),
                            file_name=f"{name}.html", mime="text/html", key=f"html-{name}",
                            on_click="ignore")
    if frame is not None:
        cols[1].download_button("Numbers (CSV)", lambda: frame.to_csv(index=False),
                                file_name=f"{name}.csv", mime="text/csv", key=f"csv-{name}",
                                on_click="ignore")


def show(fig, frame: pd.DataFrame | None, name: str) -> None:
    st.plotly_chart(fig, width="stretch", key=f"chart-{name}")
    download_buttons(fig, frame, name)


def guarded(fn):
    """Run a page body; turn any error into a message instead of a traceback."""
    try:
        fn()
    except DamagedSelection as err:
        st.error(str(err))
    except RunError as err:
        st.error(f"This run folder cannot be read: {err}")
    except (ValueError, FileNotFoundError) as err:
        st.error(str(err))
    except Exception as err:  # last resort: the app never shows a traceback
        st.error(f"Something went wrong: {type(err).__name__}: {err}")
