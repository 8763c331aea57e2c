"""The stability-plasticity measures (issue 20), scripts/make_tradeoff.py's collection, and the
Trade-off page."""
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

from sdlora.analysis.tradeoff import (SweepError, frontier, load_sweep, stability_plasticity,
                                      sweep_points, tradeoff_point)
from sdlora.config import TrainConfig
from tests.fake_train import finished_run

REPO = Path(__file__).resolve().parent.parent
# R[i][t]: task 1 rises after task 2 (70 > 50), then falls; task 3 learned poorly
R = [[50.0], [70.0, 80.0], [60.0, 72.0, 30.0]]


def test_stability_plasticity_by_hand(tmp_path):
    run = finished_run(tmp_path / "run", TrainConfig(tasks=3), R)
    frame = stability_plasticity(str(run.path))
    assert frame.columns.tolist() == ["task", "learning_accuracy", "final_accuracy",
                                      "forgetting", "retention"]
    assert frame["task"].tolist() == [1, 2, 3]
    assert frame["learning_accuracy"].tolist() == [50.0, 80.0, 30.0]  # the diagonal
    assert frame["final_accuracy"].tolist() == [60.0, 72.0, 30.0]  # the last row
    # task 1: best before the last task 70 (after task 2, not when learned), now 60 -> 10;
    # task 2: 80 -> 72 = 8; task 3 is the last: nothing after it
    assert frame["forgetting"].tolist()[:2] == [10.0, 8.0]
    assert math.isnan(frame["forgetting"].iloc[2])
    assert frame["retention"].tolist() == pytest.approx([60 / 70, 72 / 80, 1.0])
    # the run's point: mean of 50, 80, 30 and mean of 10, 8
    assert tradeoff_point(R) == pytest.approx(dict(plasticity=160 / 3, forgetting=9.0, after=3))
    # after task 2: task 1 went from 50 to 70, negative forgetting (backward transfer)
    early = stability_plasticity(run, after=2)
    assert early["forgetting"].iloc[0] == -20.0 and early["retention"].iloc[0] == 1.0
    assert tradeoff_point(R, 2) == pytest.approx(dict(plasticity=65.0, forgetting=-20.0,
                                                      after=2))
    assert tradeoff_point(R, 1)["forgetting"] == 0.0  # nothing to forget yet
    with pytest.raises(ValueError, match="after task 4.*give 1..3"):
        stability_plasticity(run, after=4)


@pytest.fixture(scope="module")
def make_tradeoff():
    spec = importlib.util.spec_from_file_location("make_tradeoff",
                                                  REPO / "scripts" / "make_tradeoff.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_tradeoff"] = module
    spec.loader.exec_module(module)
    return module


def test_collection_reuses_finished_runs_and_lists_missing(make_tradeoff, tmp_path, monkeypatch):
    root, out = tmp_path / "glyphs40", tmp_path / "tradeoff.json"
    five = [[float(10 * i + j) for j in range(i + 1)] for i in range(5)]  # the default 5 tasks
    # the results table's run (same name: counted as the sweep's point on both sweeps),
    # an epochs-sweep run, and an interrupted run (missing, not trained with --no-train)
    finished_run(root / "sd-lora-lr0.002-s0", TrainConfig(method="sd-lora", lr=0.002), five)
    finished_run(root / "lora-e8-lr0.002-s0", TrainConfig(method="lora", lr=0.002, epochs=8),
                 five[:4] + [[1.0] * 5])
    finished_run(root / "lora-lr0.03-s0", TrainConfig(method="lora", lr=0.03), five[:2], tasks=5)
    monkeypatch.setattr(sys, "argv", ["make_tradeoff.py", "--no-train", "--seeds", "0",
                                      "--root", str(root), "--json", str(out)])
    make_tradeoff.main()
    data = load_sweep(out)
    assert data["partial"] is True
    sweeps = data["sweeps"]
    assert sweeps["lr"]["sd-lora"]["0.002"]["0"]["accuracy_matrix"] == five
    assert sweeps["epochs"]["sd-lora"]["4"]["0"]["run"] == "sd-lora-lr0.002-s0"
    assert sweeps["epochs"]["lora"]["8"]["0"]["settings"]["epochs"] == 8
    assert "lora-lr0.03-s0" in data["missing"] and "lora-lr0.03" not in json.dumps(sweeps)
    assert "inflora-lr0.0005-s0" in data["missing"] and "full-ft-lr1e-05-s0" in data["missing"]
    assert "lora-e1-lr0.002-s0" in data["missing"]
    assert not any(n.startswith("sd-lora-lr0.002") for n in data["missing"])
    # the learning-rate grid: tuning's grid with its extension step below it
    assert list(sweeps) == ["lr", "epochs"]
    points = sweep_points(data)
    line = frontier(points, "epochs", after=5)
    assert line.set_index("method")["value"].to_dict() == {"lora": 8.0, "sd-lora": 4.0}
    assert line.set_index("method")["forgetting"]["lora"] == pytest.approx(30.5)  # 29..32
    # a folder of that name made with other settings is never counted
    finished_run(root / "frozen-lr0.008-s0", TrainConfig(method="frozen", lr=0.008, epochs=3), five)
    with pytest.raises(SystemExit, match="other settings"):
        make_tradeoff.main()


def test_grid_and_damaged_sweep_files(make_tradeoff, tmp_path):
    assert make_tradeoff.lr_grid(TrainConfig(method="lora")) == [0.0005, 0.002, 0.008, 0.03]
    assert make_tradeoff.lr_grid(TrainConfig(method="full-ft")) == [1e-5, 1e-4, 1e-3]
    bad = tmp_path / "bad.json"
    for text, what in [("{", "not readable JSON"), ("[]", "no 'sweeps'"),
                       ('{"sweeps": {"lr": {"lora": {"x": {}}}}}', "numeric value"),
                       ('{"sweeps": {"speed": {}}}', "not one of"),
                       ('{"sweeps": {"lr": {"lora": {"0.1": {"0": {"accuracy_matrix": [[1, 2]]'
                        '}}}}}}', "accuracy_matrix")]:
        bad.write_text(text)
        with pytest.raises(SweepError, match=what):
            load_sweep(bad)
    with pytest.raises(SweepError, match="does not exist.*make_tradeoff"):
        load_sweep(tmp_path / "none.json")


# -- the page ------------------------------------------------------------------------------------
def _page(monkeypatch, tmp_path, sweep_text=None, query=None):
    """The Trade-off page over the repo's demo runs (linked, read-only), with the repo's sweep
    file, or with `sweep_text` as the sweep file ('' : none at all)."""
    from streamlit.testing.v1 import AppTest

    cache = tmp_path / "cache"
    cache.mkdir(exist_ok=True)
    (cache / "demo").symlink_to(REPO / "cache" / "demo")
    monkeypatch.setenv("SDLORA_CACHE", str(cache))
    if sweep_text is not None:
        results = tmp_path / "results"
        results.mkdir()
        if sweep_text:
            (results / "tradeoff_glyphs40.json").write_text(sweep_text)
        monkeypatch.setenv("SDLORA_RESULTS", str(results))
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=60)
    for key, value in (query or {}).items():
        at.query_params[key] = value
    at.switch_page("pages/tradeoff.py")  # the link opens the page itself (its options are
    at.run()                             # not the Overview's, which would drop them)
    assert not at.exception, [e.message for e in at.exception]
    return at


def test_page_plane_moves_with_the_task_and_shows_the_chosen_run(monkeypatch, tmp_path):
    at = _page(monkeypatch, tmp_path)
    # the run shown starts as the sidebar's run (its default: SD-LoRA's first demo seed)
    assert at.selectbox(key="tradeoff_run").value == at.session_state["selected_run"]
    assert at.selectbox(key="tradeoff_run").value.endswith("sd-lora-s0")
    assert len(at.get("plotly_chart")) == 2 and not at.error
    assert at.slider(key="tradeoff_after").value == 5  # the demo runs' last task
    at.slider(key="tradeoff_after").set_value(2).run()
    assert "after task 2" in at.get("plotly_chart")[0].proto.spec
    lora_s1 = str(tmp_path / "cache" / "demo" / "lora-s1")
    at.selectbox(key="tradeoff_run").set_value(lora_s1).run()
    assert "lora-s1: learned vs kept" in at.get("plotly_chart")[1].proto.spec
    at.toggle(key="tradeoff_grouped").set_value(True).run()
    assert "(3 runs)" in at.get("plotly_chart")[0].proto.spec  # lora's 3 seeds, one point
    at.button(key="tradeoff-open").click().run()
    assert not at.exception
    assert at.session_state["selected_run"] == lora_s1
    assert any(t.value == "Accuracy" for t in at.title)  # on the Accuracy page


def test_page_shows_the_run_of_the_link_sidebar_choice(monkeypatch, tmp_path):
    at = _page(monkeypatch, tmp_path, query=dict(run="demo/lora-s1"))
    assert at.selectbox(key="tradeoff_run").value == str(tmp_path / "cache" / "demo" / "lora-s1")
    assert "lora-s1: learned vs kept" in at.get("plotly_chart")[1].proto.spec


def test_page_frontiers_and_lesson_from_the_shipped_sweep(monkeypatch, tmp_path):
    at = _page(monkeypatch, tmp_path, query=dict(view="Frontiers", knob="epochs"))
    assert at.radio(key="tradeoff_knob").value == "epochs"
    assert len(at.get("plotly_chart")) == 1 and not at.error
    data = load_sweep(REPO / "results" / "tradeoff_glyphs40.json")
    if data["missing"]:
        assert any(f"{len(data['missing'])} runs of the sweep" in e.label for e in at.expander)
    at.radio(key="tradeoff_knob").set_value("lr").run()
    swept = set(data["sweeps"]["lr"])
    assert set(at.multiselect(key="tradeoff_curves").value) == swept | set(data["sweeps"]["epochs"])
    assert len(swept) >= 6  # lora, sd-lora, full-ft, frozen, inflora, coda-prompt
    said = " ".join(m.value for m in at.markdown)
    assert "**Does SD-LoRA's curve lie beyond LoRA's?**" in said
    assert all(f"{m}: " in said for m in swept - {"lora", "sd-lora"}), said
    at.multiselect(key="tradeoff_curves").set_value(["lora", "full-ft"]).run()
    spec = at.get("plotly_chart")[0].proto.spec
    assert "full-ft" in spec and "sd-lora" not in spec and not at.exception
    assert at.query_params["curves"] == ["lora", "full-ft"]  # in the link
    at.session_state["tradeoff_view"] = "Lesson"
    at.run()
    question = at.radio(key="tradeoff_answer_1")
    assert question.value is None and not at.get("plotly_chart")  # nothing shown before a guess
    question.set_value("SD-LoRA").run()
    verdict = [s.value for s in at.success] + [w.value for w in at.warning]
    assert len(verdict) == 1 and len(at.get("plotly_chart")) == 1
    for step in range(2, 7):
        at.button(key="tradeoff-next").click().run()
        assert at.query_params["step"] == str(step) and "answer" not in at.query_params
        radio = at.radio(key=f"tradeoff_answer_{step}")
        radio.set_value(radio.options[0]).run()
        assert not at.exception and not at.error
        assert at.query_params["answer"] == radio.options[0]  # the link has the answer given
        said = " ".join(m.value for m in at.markdown)
        if step == 3:  # the ends of the trade-off read off the sweep
            assert "`frozen` forgets least" in said and "`full-ft` learns most" in said, said
        if step == 4:  # up to LoRA's most plastic rate; lr 0.03 collapses
            assert "(its most plastic rate)" in said and "At lr 0.03 training collapses" in said
            assert [s.value for s in at.success] == ["Right: they are forgotten more."]
    at.session_state["tradeoff_view"] = "Frontiers"  # the frontiers' choice was kept
    at.run()
    assert at.radio(key="tradeoff_knob").value == "lr"
    at.session_state["tradeoff_view"] = "Lesson"
    at.run()
    assert at.radio(key="tradeoff_answer_6").value is not None  # and the answer given
    at.button(key="lesson-train").click().run()  # the last step: to the Train page, filled in
    assert any(t.value == "Train" for t in at.title) and not at.exception
    assert any("Settings from the Trade-off lesson: lora and sd-lora" in i.value for i in at.info)
    suggested = at.session_state["train_suggestion"]
    assert at.number_input[2].value == suggested["lr"]
    # ... and as the Train page's link, so that the step can be shared
    assert at.query_params["methods"] == ["lora", "sd-lora"]
    assert [at.query_params[k] for k in ("lr", "epochs", "seed", "tuned")] == [
        f"{suggested['lr']:.6g}", str(suggested["epochs"]), "3", "false"]


@pytest.mark.parametrize("text, said", [("", "does not exist"), ("{", "not readable JSON")])
def test_page_without_or_with_a_damaged_sweep_file(monkeypatch, tmp_path, text, said):
    at = _page(monkeypatch, tmp_path, sweep_text=text,
               query=dict(view="Frontiers", after="seven"))
    assert any(said in i.value for i in at.info), [i.value for i in at.info]
    # the link's `after` belongs to the Plane view, not shown: dropped from the link, said once
    assert any("`after=seven` is not a choice in this view" in c.value for c in at.caption)
    at.session_state["tradeoff_view"] = "Lesson"
    at.session_state["tradeoff_step"] = 4
    at.run()
    at.radio(key="tradeoff_answer_4").set_value("they are kept better").run()
    assert any("needs vanilla LoRA's learning-rate sweep" in i.value for i in at.info)
    at.session_state["tradeoff_view"] = "Plane"
    at.run()
    assert not at.exception and len(at.get("plotly_chart")) == 2  # the runs' plane still draws


def test_frontier_summary_counts_dominated_points_by_hand():
    """Two tasks: plasticity = mean of R[0][0], R[1][1]; forgetting = R[0][0] - R[1][0].
    sd-lora at 0.01: (80, 10) beats lora at 0.01: (70, 30) in both seeds; lora at 0.1 (90, 50)
    is more plastic than any sd-lora point, so 1 of 2 is dominated; lora's value 1.0 has one
    seed only and is left out."""
    from sdlora.analysis.tradeoff import frontier_markdown, frontier_summary, others_markdown

    def m(first, kept, second):
        return {"accuracy_matrix": [[first], [kept, second]]}

    data = {"sweeps": {"lr": {
        "sd-lora": {"0.01": {"0": m(80, 70, 80), "1": m(80, 70, 80)}},
        "lora": {"0.01": {"0": m(70, 40, 70), "1": m(70, 40, 70)},
                 "0.1": {"0": m(90, 40, 90), "1": m(90, 40, 90)},
                 "1.0": {"0": m(10, 0, 10)}}}}}
    s = frontier_summary(data, "lr")
    assert s["after"] == 2 and s["seeds"] == [0, 1]
    assert s["means"]["beyond"] == dict(dominated=1, of=2)
    assert s["means"]["behind"] == dict(dominated=0, of=1)
    assert s["per_seed"][1]["beyond"] == dict(dominated=1, of=2)
    assert s["incomplete"] == [("lora", 1.0)]
    curve = s["curves"]["lora"].set_index("value")
    assert curve.loc[0.1, "plasticity"] == 90 and curve.loc[0.1, "forgetting"] == 50
    assert "1 of 2 of lora's points are dominated" in frontier_markdown(s)
    # where the other methods sit against sd-lora's curve: frozen (60, 0) is less plastic
    # than sd-lora's (80, 10) and forgets less: neither dominates the other
    data["sweeps"]["lr"]["frozen"] = {"0.01": {"0": m(60, 60, 60), "1": m(60, 60, 60)}}
    data["sweeps"]["lr"]["full-ft"] = {"0.01": {"0": m(60, 30, 60), "1": m(60, 40, 60)}}
    text = others_markdown(data, "lr")
    assert "| frozen | 0.01 | 2 | 60.0 ± 0.0 | 0.0 ± 0.0 |" in text
    assert "| full-ft | 0.01 | 2 | 60.0 ± 0.0 | 25.0 ± 5.0 |" in text and "| lora |" not in text
    assert "frozen: 0 of 1 of its points dominated by a point of sd-lora's curve; 0 of 1" in text
    assert "full-ft: 1 of 1 of its points dominated" in text
    # a method whose seeds differ from sd-lora's has no comparable point: named, not dropped
    data["sweeps"]["lr"]["inflora"] = {"0.01": {"0": m(60, 60, 60)}}
    text = others_markdown(data, "lr")
    assert text.endswith("Left out, no value finished at every seed of both it and sd-lora: "
                         "inflora.")


def test_rate_effect_reads_the_curve_up_to_its_most_plastic_point():
    """LoRA's shape in the shipped sweep: forgetting grows from the lowest rate to the most
    plastic one (33 -> 39), then the top rate collapses (plasticity 7 < half of 62) and forgets
    little. First vs last rate would say "kept better"; up to the peak it says forgotten more."""
    import pandas as pd

    from sdlora.analysis.tradeoff import rate_effect

    curve = pd.DataFrame(dict(value=[0.03, 0.0005, 0.008, 0.002],  # out of order on purpose
                              plasticity=[7.1, 54.3, 45.0, 61.9],
                              forgetting=[5.5, 33.2, 39.9, 39.3]))
    e = rate_effect(curve)
    assert (e["low"].value, e["high"].value) == (0.0005, 0.002)
    assert e["change"] == pytest.approx(6.1)
    assert e["collapsed"] == [0.03]  # 45.0 at 0.008 is past the peak but above half of 61.9
    assert e["at_peak"]
    # the lowest rate most plastic: the next one is compared, nothing collapsed at 0.6x
    e = rate_effect(pd.DataFrame(dict(value=[1, 2], plasticity=[50, 30], forgetting=[20, 10])))
    assert (e["low"].value, e["high"].value, e["change"]) == (1, 2, -10)
    assert e["collapsed"] == [] and not e["at_peak"]
    # ... and a collapsed next rate is skipped for the next one that learned
    e = rate_effect(pd.DataFrame(dict(value=[1, 2, 3], plasticity=[60, 5, 40],
                                      forgetting=[30, 2, 35])))
    assert (e["high"].value, e["change"], e["collapsed"]) == (3, 5, [2.0])
    # a tie: the highest of the tied rates; a NaN row is left out
    e = rate_effect(pd.DataFrame(dict(value=[1, 2, 3, 4], plasticity=[50, 60, float("nan"), 60],
                                      forgetting=[20, 30, 0, 45])))
    assert (e["high"].value, e["change"]) == (4, 25)
    assert rate_effect(curve.iloc[:1]) is None


def _notes(at) -> list[str]:
    return [c.value for c in at.caption if ":material/link_off:" in c.value]


def test_page_link_sets_the_choices_and_a_move_writes_them_back(monkeypatch, tmp_path):
    """The plane's choices from a link (bad ones back to the default, one note each); a move
    goes back into the URL; the lesson's step and answer from a link with the controls
    hidden."""
    at = _page(monkeypatch, tmp_path, query=dict(after="2", grouped="maybe", shown="gone-run"))
    assert at.slider(key="tradeoff_after").value == 2
    assert at.toggle(key="tradeoff_grouped").value is False
    shown = "demo/" + Path(at.selectbox(key="tradeoff_run").value).name
    assert shown.startswith("demo/sd-lora-")  # the default: an sd-lora run
    notes = _notes(at)
    assert len(notes) == 2 and all("\n" not in n for n in notes), notes
    assert "`grouped=maybe` is not true or false: showing the default (false)" in notes[0]
    assert f"`shown=gone-run` is not a run here: showing the default ({shown})" in notes[1]
    assert at.query_params["shown"] == shown and at.query_params["after"] == "2"
    at.slider(key="tradeoff_after").set_value(3).run()
    at.toggle(key="tradeoff_grouped").set_value(True).run()
    assert at.query_params["after"] == "3" and at.query_params["grouped"] == "true"
    assert at.query_params["view"] == "Plane"

    choice = "SD-LoRA"  # step 2: which method kept more of task 1 (the demo runs answer)
    (tmp_path / "hidden").mkdir()  # a fresh session (its own cache folder)
    at = _page(monkeypatch, tmp_path / "hidden", query=dict(
        view="Lesson", step="2", answer=choice, controls="hidden"))
    assert not at.get("segmented_control") and not at.button  # the link fixes view and step
    assert at.radio(key="tradeoff_answer_2").value == choice  # the student's own control
    assert len(at.get("plotly_chart")) == 1 and not _notes(at)
    assert at.query_params["step"] == "2" and at.query_params["answer"] == choice
