"""Links that reproduce a view (`ui.url_control`): a page's choices in the URL, the link read
when the page opens, bad or stale values back to the defaults with a one-line note, under
AppTest with a copy of the shipped demo runs. The browser test (tests/test_e2e_browser.py)
opens such links on a freshly started server."""
import shutil
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from streamlit.testing.v1 import AppTest

import ui

REPO = Path(__file__).resolve().parent.parent
APP = str(REPO / "app.py")


@pytest.fixture(scope="module")
def demo_cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("links") / "cache"
    shutil.copytree(REPO / "cache" / "demo", cache / "demo")
    return cache


def _open(page: str, cache: Path, monkeypatch, **params) -> AppTest:
    """`page` opened from a link with `params` (lists repeat a parameter)."""
    monkeypatch.setenv("SDLORA_CACHE", str(cache))
    at = AppTest.from_file(APP, default_timeout=120)
    for name, value in params.items():
        at.query_params[name] = value
    if page != "overview":
        at.switch_page(f"pages/{page}.py")
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def _link(at: AppTest) -> dict:
    """The query of the sidebar's 'Link to this view', as a dict of lists."""
    return parse_qs(urlsplit(at.sidebar.code[0].value).query, keep_blank_values=True)


def _notes(at: AppTest) -> list[str]:
    return [c.value for c in at.caption if ":material/link_off:" in c.value]


def test_parsers_say_what_is_valid():
    assert ui.number(int, 2, 5)("3") == 3
    for text, why in (("abc", "is not a whole number"), ("9", "is outside 2-5"),
                      ("3.5", "is not a whole number")):
        with pytest.raises(ValueError, match=why):
            ui.number(int, 2, 5)(text)
    with pytest.raises(ValueError, match="is not 3 plus a multiple of 2"):
        ui.number(int, 3, 21, 2)("4")
    assert ui.number(float, 0.0)("0.004") == 0.004
    for text in ("nan", "inf", "x"):
        with pytest.raises(ValueError):
            ui.number(float, 0.0)(text)
    assert ui.one_of([1e-6, 1e-3])(ui.url_text(1e-3)) == 1e-3
    with pytest.raises(ValueError, match="is not one of sum, task 1"):
        ui.one_of(["sum", "task 1"])("task 3")
    assert ui.url_text(True) == "true" and ui.url_text(0.05) == "0.05"


def test_a_link_sets_every_choice_and_the_view_links_back(demo_cache, monkeypatch):
    """Interpolation opened from a link: the sidebar's run, the runs side by side, the task
    and the points are the link's; the page's own 'Link to this view' gives the same link,
    and that link opened again shows the same view."""
    link = dict(run="demo/lora-s1", runs=["demo/sd-lora-s0", "demo/lora-s0"], task="3",
                points="5")
    at = _open("interpolation", demo_cache, monkeypatch, **link)
    assert at.sidebar.selectbox[0].value == str(demo_cache / "demo" / "lora-s1")
    assert at.multiselect[0].value == [str(demo_cache / r) for r in link["runs"]]
    assert [s.value for s in at.slider] == [3, 5]
    assert not _notes(at)
    back = _link(at)
    assert back == {k: v if isinstance(v, list) else [v] for k, v in link.items()}
    again = _open("interpolation", demo_cache, monkeypatch, **back)
    assert again.multiselect[0].value == at.multiselect[0].value
    assert [s.value for s in again.slider] == [3, 5]
    assert "lambda (0: after task 2, 1: after task 3)" in str(again.get("plotly_chart")[0].proto)


def test_a_move_is_written_to_the_link_and_not_undone_by_it(demo_cache, monkeypatch):
    at = _open("interpolation", demo_cache, monkeypatch, task="3")
    assert at.slider(key="url-task").value == 3
    at.slider(key="url-task").set_value(4).run()
    assert at.query_params["task"] == "4" and _link(at)["task"] == ["4"]
    at.run()  # a rerun keeps the move; the link's first value is not read again
    assert at.slider(key="url-task").value == 4


def test_bad_and_stale_values_fall_back_with_a_one_line_note(demo_cache, monkeypatch):
    """A run that is gone, a task beyond the runs, text where a number goes, a point count off
    the slider's grid, an option no page has, an unknown controls value: defaults, one note
    each, no error, and the link no longer carries them."""
    at = _open("interpolation", demo_cache, monkeypatch, run="gone-run",
               runs=["gone-run", "demo/sd-lora-s1"], task="9", points="abc", bogus="1",
               controls="maybe")
    notes = _notes(at)
    for said in ("`runs=gone-run` is not a run here: left out",
                 "`task=9` is outside 2-5: showing the default (2)",
                 "`points=abc` is not a whole number: showing the default (5)",
                 "`run=gone-run` is not a run here: showing the default (demo/sd-lora-s0)",
                 "`controls=maybe` is not one of hidden, shown",
                 "`bogus=1` is not a choice in this view"):
        assert sum(said in n for n in notes) == 1, (said, notes)
    assert all("\n" not in n for n in notes)
    assert at.multiselect[0].value == [str(demo_cache / "demo" / "sd-lora-s1")]
    assert [s.value for s in at.slider] == [2, 5]
    assert set(at.query_params) == {"run", "runs", "task", "points"}
    train = _open("train", demo_cache, monkeypatch, methods=["lora", "nope"], epochs="-1",
                  lr="fast")
    assert train.multiselect[0].value == ["lora"]
    assert train.number_input(key="url-epochs").value >= 1
    assert sum("`lr=fast` is not a number" in n for n in _notes(train)) == 1


def test_hidden_controls_show_what_the_link_chose(demo_cache, monkeypatch):
    at = _open("magnitudes", demo_cache, monkeypatch, run="demo/lora-s0", controls="hidden")
    assert not at.sidebar.selectbox, "the run picker is hidden"
    assert any("run lora-s0 uses `lora`" in i.value for i in at.info)
    assert any(c.value.startswith("This exercise's link fixes: run lora-s0")
               for c in at.sidebar.caption)
    assert _link(at)["run"] == ["demo/lora-s0"] and "controls=hidden" in at.sidebar.code[1].value
