"""The app's one shared module: session-state keys, cached loaders, and small layout helpers.

Pages stay thin: widgets in, `sdlora` calls, figures out. Everything computed comes from
`sdlora`; this module only caches it and lays it out.

Importing it is cheap (no torch, no pandas): every page imports it before its first paint.

Links that reproduce a view
---------------------------
Every choice a page offers lives in the URL's query string, so a link reproduces the view on a
freshly started server (``/interpolation?run=demo/sd-lora-s0&runs=demo/lora-s0&task=3``).
app.py brackets each run of a page with ``begin_view()`` and ``end_view()``; between them a
page declares each choice with one call (Streamlit's own ``bind="query-params"`` drops a bad
value silently and cannot say so; this says so and falls back):

``url_control(widget, *args, name, default, parse=None, fmt=url_text, many=False, key=None,
hideable=True, **kwargs)``
    Draws ``widget(*args, key=key, **kwargs)`` (``st.slider``, ``c1.selectbox``,
    ``st.multiselect``, ``st.radio``, ``st.number_input``, ``st.checkbox``, ``st.tabs``...;
    pass no ``value``/``index``/``default`` to it: the starting value is set through
    ``st.session_state[key]``) and returns what the widget returns (for ``st.tabs``, its
    containers; the chosen label is ``st.session_state[key]``). The URL parameter ``name``
    (the widget key ``key``, by default ``"url-" + name``) starts the widget when the page is
    opened from a link (or by ``st.switch_page(page, query_params=...)``); afterwards the
    widget rules, and its value is written back to the URL on every run. ``parse(text)``
    turns the URL's text into a value or raises ValueError saying what is valid; when it is
    left out it is made from ``options=`` (`one_of`) or from ``min_value``/``max_value``/
    ``step`` and the default's type (`number`; a bool default takes true/false). ``fmt(value)``
    is the value's text in the URL (`url_text`: numbers as ``%.6g``, true/false, else `str`;
    `run_token` for run paths). A one-line note is drawn in the widget's own container (the
    column or sidebar whose method `widget` is). ``many=True``: a list
    (``st.multiselect``), the parameter repeated (``?runs=a&runs=b``; ``runs=`` is none); a bad
    item is left out. A link's value that `parse` refuses (a run gone, a task beyond the run,
    text where a number goes) falls back to ``default`` with a one-line note at the control;
    never an error. A value the session holds that the widget can no longer take (its options
    or range changed) goes back to ``default``; `parse` may be stricter than the widget (the
    Train form's numbers: a link may not bring lr=-1, the form itself refuses it on submit).
    ``hideable=False`` keeps it drawn when the link hides the controls. ``default=None`` (a
    radio with nothing chosen yet): the parameter is absent from the URL until a choice is made.
``url_value(name, default, parse=None, fmt=url_text, many=False, key=None, fits=None,
where=st)``
    The same value without drawing anything (for a control drawn by hand; write it back with
    ``url_write``). ``url_write(name, value, fmt=url_text, many=False)`` puts a value in the
    URL.
``one_of(options, fmt=url_text, what=None)``, ``number(kind=int, lo=None, hi=None, step=None)``
    The parsers (ValueError names what would be valid, or says "is not `what`").
``run_token(path)``
    A run's name in a link: its folder name, ``demo/<name>`` for a shipped demo run. The
    sidebar's run picker is bound to ``run``; to open a run on another page:
    ``st.switch_page("pages/accuracy.py", query_params={"run": ui.run_token(path)})``.
``controls_hidden()``
    True when the link says ``controls=hidden`` (a set exercise): the controls are not drawn,
    the view shows what the link chose, and the sidebar says which choices it fixed.

``end_view`` drops parameters the page did not declare (a one-line note when a link brought
them) and draws the sidebar's "Link to this view" (the URL, and the same with the controls
hidden). A control inside an ``st.fragment`` works the same; the sidebar's link is redrawn on
the next full run.
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
        url_control(st.selectbox, "Run", options=paths, format_func=label,
                    help="The run the single-run pages show. A damaged run shows what "
                         "is wrong with it.", **_run_choice(healthy, damaged))
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


def _run_choice(healthy: list[str], damaged: dict) -> dict:
    """The picker's binding to the URL's `run` (the default: `_default_index`'s run)."""
    paths = healthy + list(damaged)
    return dict(name="run", key=SELECTED_RUN, fmt=run_token,
                default=paths[_default_index(healthy)] if healthy else paths[0],
                parse=one_of(paths, run_token, "a run here"))


class DamagedSelection(Exception):
    """The run chosen in the sidebar is damaged; the message says what is wrong with it."""


def selected_run() -> RunFolder | None:
    """The run chosen in the sidebar; for a damaged one, DamagedSelection, which `guarded`
    shows as what is wrong in place of the page body (not st.stop: the sidebar's picker is
    drawn after the page, and keeps the damaged run selected)."""
    paths = runs_with_results()
    damaged = damaged_runs()
    if paths or damaged:  # the link's run, before the picker (drawn after the page) takes it
        url_value(**_run_choice(paths, damaged))
    path = st.session_state.get(SELECTED_RUN)
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


# Links that reproduce a view: the API is described in this module's docstring.
CONTROLS = "controls"  # ?controls=hidden: a set exercise, the controls not drawn
_URL = "_url_view"  # session-state key of the bookkeeping below


def _url_state() -> dict:
    """written: the URL as the last run left it; incoming: what came from outside since
    (a link, st.switch_page); declared: the parameters this run's controls took."""
    return st.session_state.setdefault(_URL, dict(written={}, incoming={}, declared=set(),
                                                  fixed=[], notes=[]))


def begin_view() -> None:
    """Before a page runs (app.py): the URL parameters that differ from what the last run
    wrote came from a link, and start the controls they name."""
    state = _url_state()
    current = {k: st.query_params.get_all(k) for k in st.query_params}
    state.update(incoming={k: v for k, v in current.items() if state["written"].get(k) != v},
                 declared=set(), fixed=[], notes=[])
    raw = st.query_params.get(CONTROLS)
    if CONTROLS in state["incoming"] and raw not in ("hidden", "shown"):
        state["notes"].append(f"The link's `{CONTROLS}={_shown(raw)}` is not one of hidden, "
                              f"shown: the controls are shown.")
        del st.query_params[CONTROLS]


def controls_hidden() -> bool:
    """The link asks for a set exercise (``?controls=hidden``): controls are not drawn."""
    return st.query_params.get(CONTROLS) == "hidden"


def _shown(text) -> str:
    """A URL's text, safe and short inside a one-line note."""
    text = " ".join(str(text).replace("`", "'").split())
    return text if len(text) <= 40 else text[:37] + "..."


def url_text(value) -> str:
    """A value as the URL writes it: numbers %.6g, true/false, none, else str."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def one_of(options, fmt=url_text, what: str | None = None):
    """Parser: the option whose `fmt` text is the URL's text."""
    by_text = {fmt(o): o for o in options}
    what = what or ("a run here" if fmt is run_token else None)

    def parse(text: str):
        if text in by_text:
            return by_text[text]
        if what:
            raise ValueError(f"is not {what}")
        names = list(by_text)
        listed = ", ".join(names[:6]) + (f" ... ({len(names)} in all)" if len(names) > 6 else "")
        raise ValueError(f"is not one of {listed}")
    return parse


def number(kind=int, lo=None, hi=None, step=None):
    """Parser: an int or float in [lo, hi] (an int also on the step's grid from lo)."""
    import math

    def parse(text: str):
        try:
            value = kind(text)
        except (TypeError, ValueError):
            raise ValueError("is not a whole number" if kind is int else "is not a number") \
                from None
        if kind is float and not math.isfinite(value):
            raise ValueError("is not a finite number")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise ValueError(f"is outside {url_text(lo) if lo is not None else '...'}-"
                             f"{url_text(hi) if hi is not None else '...'}")
        if kind is int and step and lo is not None and (value - lo) % step:
            raise ValueError(f"is not {url_text(lo)} plus a multiple of {step}")
        return value
    return parse


def _flag(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise ValueError("is not true or false")


def _parser(default, kwargs: dict):
    """The parser a control's own arguments imply."""
    if "options" in kwargs:
        return one_of(kwargs["options"])
    if isinstance(default, bool):
        return _flag
    if isinstance(default, (int, float)):
        return number(type(default), kwargs.get("min_value"), kwargs.get("max_value"),
                      kwargs.get("step"))
    return str


def _valid(value, parse, fmt) -> bool:
    try:
        parse(fmt(value))
        return True
    except ValueError:
        return False


def url_value(name: str, default, parse=None, fmt=url_text, many: bool = False,
              key: str | None = None, fits=None, where=st):
    """The value of choice `name`: the link's when it brought one (a one-line note and
    `default` when `parse` refuses it), else what the session holds (`default` when `fits`,
    by default `parse`, says the page can no longer take it), else `default`; kept in
    ``st.session_state[key]``, where the control drawn with `key` starts from it. A note is
    drawn in `where` (a column, the sidebar)."""
    key = key or f"url-{name}"
    parse = parse or _parser(default, {})
    fits = fits or parse
    state = _url_state()
    state["declared"].add(name)
    raw = state["incoming"].pop(name, None)
    if raw is not None:
        if many:
            texts = [t for t in raw if t != ""]
            good, bad = [], []
            for text in texts:
                try:
                    value = parse(text)
                    if value not in good:
                        good.append(value)
                except ValueError as err:
                    bad.append((text, err))
            for text, err in bad:
                _url_note(where, name, text, err, "left out" if good else
                          f"showing the default ({', '.join(map(fmt, default)) or 'none'})")
            st.session_state[key] = good if good or not texts else list(default)
        else:
            try:
                st.session_state[key] = parse(raw[-1])
            except ValueError as err:
                _url_note(where, name, raw[-1], err, f"showing the default ({fmt(default)})")
                st.session_state[key] = default
    elif key in st.session_state:  # the session's own choice, unless the page lost it
        current = st.session_state[key]
        if many:
            kept = [v for v in current if _valid(v, fits, fmt)]
            if kept != list(current):
                st.session_state[key] = kept
        elif not _valid(current, fits, fmt):
            st.session_state[key] = default
    else:
        st.session_state[key] = default
    return st.session_state[key]


def _url_note(where, name: str, text: str, err: ValueError, then: str) -> None:
    where.caption(f":material/link_off: The link's `{name}={_shown(text)}` {err}: {then}.")


def url_write(name: str, value, fmt=url_text, many: bool = False) -> None:
    """Put a choice in the URL (only when it changed: each write is a message); None (a radio
    with nothing chosen yet) takes the parameter out."""
    if value is None and not many:
        if name in st.query_params:
            del st.query_params[name]
        _url_state()["written"].pop(name, None)
        return
    texts = ([fmt(v) for v in value] or [""]) if many else [fmt(value)]
    if st.query_params.get_all(name) != texts:
        st.query_params[name] = texts if len(texts) > 1 else texts[0]
    _url_state()["written"][name] = texts


def url_control(widget, *args, name: str, default, parse=None, fmt=url_text,
                many: bool = False, key: str | None = None, hideable: bool = True, **kwargs):
    """Draw `widget` bound to the URL parameter `name` (see the module's docstring)."""
    key = key or f"url-{name}"
    # What the widget can hold (its options, its range); a link may be held to more (`parse`)
    fits = one_of(kwargs["options"], fmt) if "options" in kwargs else \
        _parser(default, kwargs) if parse is None or isinstance(default, (int, float)) else parse
    value = url_value(name, default, parse or fits, fmt, many, key, fits,
                      where=getattr(widget, "__self__", st))  # the widget's column
    if hideable and controls_hidden():
        out = value
        shown = kwargs.get("format_func", str)
        _url_state()["fixed"].append(
            f"{name} " + (", ".join(shown(v) for v in value) if many else shown(value)))
    else:
        out = widget(*args, key=key, **kwargs)
        value = st.session_state[key]
    url_write(name, value, fmt, many)
    return out


def end_view() -> None:
    """After a page ran (app.py, in the sidebar): parameters no control took leave the URL
    (a note when a link brought them); then the link to this view."""
    from urllib.parse import urlencode

    state = _url_state()
    for name, raw in state["incoming"].items():
        if name not in state["declared"] and name != CONTROLS:
            state["notes"].append(f"The link's `{name}={_shown(','.join(raw))}` is not a choice "
                                  f"in this view: left out.")
    for name in list(st.query_params):
        if name not in state["declared"] and name != CONTROLS:
            del st.query_params[name]
    state["incoming"] = {}
    state["written"] = {k: st.query_params.get_all(k) for k in st.query_params}
    for note in state["notes"]:
        st.caption(f":material/link_off: {note}")
    pairs = [(k, v) for k in st.query_params if k != CONTROLS
             for v in st.query_params.get_all(k)]
    base = st.context.url or ""
    link = base + ("?" + urlencode(pairs, safe="/") if pairs else "")
    if controls_hidden():
        if state["fixed"]:
            st.caption("This exercise's link fixes: " + "; ".join(state["fixed"]) + ".")
    with st.expander("Link to this view", icon=":material/link:"):
        st.caption("Opens this page with the choices made here, on any server with the same "
                   "runs:")
        st.code(link, language=None, wrap_lines=True)
        st.caption("The same as a set exercise, its controls hidden:")
        st.code(link + ("&" if pairs else "?") + f"{CONTROLS}=hidden", language=None,
                wrap_lines=True)


def run_token(path: str) -> str:
    """A run's name in a link: its folder name; `demo/<name>` for a shipped demo run."""
    path = Path(path)
    return path.name if path.parent == default_runs_root() else f"{path.parent.name}/{path.name}"
