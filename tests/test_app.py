"""Every page of the app under AppTest: no runs, finished runs, a run in progress."""
import json
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from sdlora.analysis import cached, interpolate
from sdlora.config import TrainConfig
from sdlora.runs import RunFolder, atomic_write_json
from sdlora.train import train

APP = str(Path(__file__).resolve().parent.parent / "app.py")
PAGES = ["overview", "tradeoff", "train", "accuracy", "magnitudes", "directions",
         "interpolation", "theory", "efficiency"]


def _open(page: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    assert at.sidebar.children, "the shared sidebar renders"
    if page != "overview":
        at.switch_page(f"pages/{page}.py")
        at.run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def _open_with_run(page: str, run: Path) -> AppTest:
    """`page` with `run` chosen, as the sidebar picker would choose it."""
    at = _open(page)
    at.session_state["selected_run"] = str(run)
    at.run()
    assert not at.exception
    return at


def _charts(at: AppTest) -> int:
    return len(at.get("plotly_chart"))


def _small_run(cache, method: str, name: str, bench):
    """A finished 2-task, 1-epoch digits run of `method` in the cache's runs folder."""
    cfg = TrainConfig(method=method, benchmark="digits", tasks=2, epochs=1, batch_size=12)
    return train(cfg, out=cache / "runs" / name, progress=False, benchmark=bench)


@pytest.fixture(scope="module")
def demo_cache(tmp_path_factory):
    """Two finished runs (lora, sd-lora) and one in progress, like the shipped demo runs."""
    from sdlora.analysis.core import INTERPOLATION_POINTS
    from tests.conftest import small_benchmark

    cache = tmp_path_factory.mktemp("cache")
    bench = small_benchmark(classes=4)
    points = INTERPOLATION_POINTS  # the Interpolation page's default reads this from the cache
    for method in ("lora", "sd-lora"):
        run = _small_run(cache, method, f"demo-{method}", bench)
        cached(run, f"interpolation_task2_{points}",
               lambda run=run: interpolate(run, 2, points, benchmark=bench).to_dict("records"))
    partial = _small_run(cache, "sd-lora", "in-progress", small_benchmark(classes=2, seed=1))
    atomic_write_json(partial.status_path, dict(state="running", updated=time.time(), task=1,
                                                tasks=2, global_step=3, total_steps=6))
    metrics = json.loads(partial.metrics_path.read_text())
    metrics["tasks"] = 4  # it says 4 tasks but only 2 rows exist: half finished
    partial.metrics_path.write_text(json.dumps(metrics))
    return cache


@pytest.mark.parametrize("page", PAGES)
def test_pages_with_no_runs(page, tmp_path, monkeypatch):
    monkeypatch.setenv("SDLORA_CACHE", str(tmp_path / "empty"))
    at = _open(page)
    text = " ".join(m.value for m in at.markdown) + " ".join(i.value for i in at.info)
    if page not in ("overview", "train", "theory"):
        assert "Train" in text  # says how to get a run
    if page == "theory":
        assert _charts(at) == 2


@pytest.mark.parametrize("page, charts", [("overview", 1), ("accuracy", 3), ("magnitudes", 1),
                                          ("directions", 2), ("interpolation", 1),
                                          ("efficiency", 1), ("theory", 2)])
def test_pages_with_runs(page, charts, demo_cache, monkeypatch):
    monkeypatch.setenv("SDLORA_CACHE", str(demo_cache))
    at = _open(page)
    assert _charts(at) >= charts
    assert not at.error, [e.value for e in at.error]


def test_half_finished_run_is_shown(demo_cache, monkeypatch):
    monkeypatch.setenv("SDLORA_CACHE", str(demo_cache))
    at = _open_with_run("accuracy", demo_cache / "runs" / "in-progress")
    assert any("not finished" in i.value for i in at.info)


def test_widgets_change_without_errors(demo_cache, monkeypatch):
    monkeypatch.setenv("SDLORA_CACHE", str(demo_cache))
    at = _open("theory")
    at.slider[0].set_value(12).run()
    at.radio[0].set_value("task 2").run()
    assert not at.exception and _charts(at) == 2
    at = _open_with_run("magnitudes", demo_cache / "runs" / "demo-lora")
    assert any("no magnitudes" in i.value for i in at.info)


def test_accuracy_page_splits_acc_by_task_given(demo_cache, monkeypatch, tmp_path):
    import shutil

    from sdlora.analysis import cached, within_task_accuracy
    from tests.conftest import small_benchmark

    cache = tmp_path / "cache"
    shutil.copytree(demo_cache, cache)
    monkeypatch.setenv("SDLORA_CACHE", str(cache))
    run = RunFolder(cache / "runs" / "demo-lora")
    at = _open_with_run("accuracy", run.path)
    assert any(b.label.startswith("Compute") for b in at.button)  # nothing evaluated unasked
    assert not any("task given" in m.label for m in at.metric)
    cached(run, "within_task_accuracy", lambda: within_task_accuracy(
        run, benchmark=small_benchmark(classes=4)).to_dict("records"))
    at = _open_with_run("accuracy", run.path)
    labels = [m.label for m in at.metric]
    assert "Mean over tasks, the task given" in labels and not at.exception


def test_train_form_refuses_bad_input(tmp_path, monkeypatch):
    monkeypatch.setenv("SDLORA_CACHE", str(tmp_path))
    at = _open("train")
    folder = at.text_input[0]  # the data folder: not used by the embedded default (issue 23)
    assert folder.label.startswith("Data folder") and folder.disabled
    at.number_input[0].set_value(3)  # tasks: 3 does not divide 20 classes
    at.button[0].click().run()
    assert not at.exception
    assert any("tasks=3 does not divide" in e.value for e in at.error)
    at.number_input[0].set_value(5)
    at.number_input[2].set_value(-0.5)  # learning rate
    at.button[0].click().run()
    assert any("lr=-0.5" in e.value for e in at.error)
    at.selectbox[1].set_value("imagenet-r").run()  # a paper benchmark without its data folder
    assert not at.text_input[0].disabled
    at.number_input[2].set_value(0.008)
    at.text_input[0].set_value(str(tmp_path / "no-such-folder"))
    at.button[0].click().run()
    assert any("does not have the expected layout" in e.value for e in at.error)
    assert not (tmp_path / "jobs").exists() or not list((tmp_path / "jobs").glob("*.json"))


def test_train_form_gives_the_rank_only_to_methods_that_have_one(tmp_path, monkeypatch):
    """rank=4 with lora and full-ft chosen: both queued, lora at rank 4, full-ft at its default
    (a TrainConfig refuses rank for full-ft; the page drops it there with with_options)."""
    monkeypatch.setenv("SDLORA_CACHE", str(tmp_path))
    monkeypatch.setattr("sdlora.jobs.ensure_worker", lambda *a, **k: None)
    at = _open("train")
    at.multiselect[0].set_value(["lora", "full-ft"])
    assert at.number_input[3].label == "Rank r"
    at.number_input[3].set_value(4)
    at.button[0].click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    jobs = [json.loads(p.read_text()) for p in (tmp_path / "jobs").glob("*.json")]
    assert {j["config"]["method"]: j["config"]["rank"] for j in jobs} == {"lora": 4,
                                                                         "full-ft": 10}


# -- damaged run folders (issue 13): every page renders, the damage is named ----------------
DAMAGED = {  # run id -> (file, new content or None to delete, what the app must say)
    "bad-config": ("config.json", "null", "config.json holds null"),
    "bad-status": ("status.json", "[]", "status.json holds a list"),
    "bad-metrics": ("metrics.json", '{"accuracy_matrix": [["x"]]}', "accuracy_matrix row 1"),
    "lost-checkpoint": ("checkpoints/task_000.safetensors", None, "task_000.safetensors is "
                                                                  "missing"),
}


@pytest.fixture(scope="module")
def damaged_cache(demo_cache, tmp_path_factory):
    """The demo runs plus one run folder of each kind of damage."""
    import shutil

    cache = tmp_path_factory.mktemp("damaged")
    shutil.copytree(demo_cache / "runs", cache / "runs")
    for name, (file, text, _) in DAMAGED.items():
        shutil.copytree(demo_cache / "runs" / "demo-sd-lora", cache / "runs" / name)
        path = cache / "runs" / name / file
        path.unlink() if text is None else path.write_text(text)
    return cache


def _said(at: AppTest) -> str:
    return " ".join([e.value for e in at.error] + [c.value for c in at.caption]
                    + [m.value for m in at.markdown])


@pytest.mark.parametrize("page", PAGES)
def test_pages_with_damaged_runs_present(page, damaged_cache, monkeypatch):
    monkeypatch.setenv("SDLORA_CACHE", str(damaged_cache))
    at = _open(page)  # asserts no exception
    said = " ".join(c.value for c in at.sidebar.caption)
    for name, (_, _, what) in DAMAGED.items():
        assert name in said and what in said, said  # listed as damaged, with what is wrong
    if page == "overview":
        table = next(d.value for d in at.dataframe if "id" in d.value)  # the runs, not results
        assert set(DAMAGED) | {"demo-lora", "demo-sd-lora"} <= set(table["id"])
        states = dict(zip(table["id"], table["state"]))
        assert all(states[n].startswith("damaged: ") for n in DAMAGED)
        assert states["demo-lora"] == "finished"
    elif page in ("accuracy", "efficiency"):
        assert _charts(at) >= 1 and not at.error  # the healthy runs still show


@pytest.mark.parametrize("page, name", [(p, "bad-config") for p in PAGES] + [
    (p, n) for p in ("accuracy", "magnitudes", "directions")
    for n in ("bad-metrics", "lost-checkpoint")])
def test_pages_with_a_damaged_run_selected(page, name, damaged_cache, monkeypatch):
    monkeypatch.setenv("SDLORA_CACHE", str(damaged_cache))
    at = _open_with_run(page, damaged_cache / "runs" / name)  # asserts no exception
    if page in ("accuracy", "magnitudes", "directions"):
        errors = " ".join(e.value for e in at.error)
        assert DAMAGED[name][2] in errors, errors  # the page names what is wrong


@pytest.mark.parametrize("page, name", [("accuracy", "bad-config"),
                                        ("directions", "bad-metrics")])
def test_a_damaged_run_selected_keeps_the_sidebar_picker(page, name, damaged_cache, monkeypatch):
    """The page says the other runs are in the sidebar: the picker is there, with the damaged
    run still chosen (and marked), on this run of the page and the next (issue 23, item 10)."""
    monkeypatch.setenv("SDLORA_CACHE", str(damaged_cache))
    path = str(damaged_cache / "runs" / name)
    at = _open_with_run(page, damaged_cache / "runs" / name)
    for _ in range(2):
        assert not at.exception
        errors = " ".join(e.value for e in at.error)
        assert DAMAGED[name][2] in errors and "The other runs are in the sidebar" in errors
        picker = at.sidebar.selectbox
        assert len(picker) == 1 and picker[0].value == path, [p.value for p in picker]
        assert {"demo-lora", f"{name} (damaged)"} <= set(picker[0].options)  # as labelled
        at.run()


def test_efficiency_table_shows_a_damaged_run_as_one_row(damaged_cache, tmp_path, monkeypatch):
    """Runs chosen on the Efficiency page, one with a truncated checkpoint and one whose config
    is broken among them: a row each, the damaged ones saying what is wrong (issue 23, 10)."""
    import shutil

    import pandas as pd

    runs = tmp_path / "runs"
    shutil.copytree(damaged_cache / "runs", runs)
    shutil.copytree(runs / "demo-sd-lora", runs / "truncated")
    checkpoint = runs / "truncated" / "checkpoints" / "task_001.safetensors"
    checkpoint.write_bytes(checkpoint.read_bytes()[:100])
    shutil.rmtree(runs / "truncated" / "analyses", ignore_errors=True)  # measured, not cached
    monkeypatch.setenv("SDLORA_CACHE", str(tmp_path))
    at = _open("efficiency")
    names = ["demo-lora", "truncated", "bad-config", "demo-sd-lora"]
    at.multiselect[0].set_value([str(runs / n) for n in names]).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    table = at.dataframe[0].value
    assert list(table["run"]) == names
    damaged = dict(zip(table["run"], table["damaged"]))
    assert pd.isna(damaged["demo-lora"]) and pd.isna(damaged["demo-sd-lora"])
    assert "task_001.safetensors" in damaged["truncated"]
    assert DAMAGED["bad-config"][2] in damaged["bad-config"]
    assert (table.set_index("run").loc[["demo-lora", "demo-sd-lora"], "stored_params"]
            > 0).all()
    assert "2 of the chosen runs cannot be measured" in " ".join(w.value for w in at.warning)


# -- the baselines on the pages that make sense for them (issue #10) ---------------------------
@pytest.fixture(scope="module")
def baseline_cache(tmp_path_factory):
    """One finished run of each of L2P and SimpleCIL (digits, 2 tasks, 1 epoch)."""
    from tests.conftest import small_benchmark

    cache = tmp_path_factory.mktemp("baselines")
    bench = small_benchmark(classes=4)
    for method in ("l2p", "simplecil"):
        _small_run(cache, method, f"run-{method}", bench)
    return cache


@pytest.mark.parametrize("page, method", [("magnitudes", "l2p"), ("magnitudes", "simplecil"),
                                          ("directions", "l2p"), ("directions", "simplecil")])
def test_sd_lora_pages_say_plainly_a_baseline_has_no_such_part(page, method, baseline_cache,
                                                               monkeypatch):
    monkeypatch.setenv("SDLORA_CACHE", str(baseline_cache))
    at = _open_with_run(page, baseline_cache / "runs" / f"run-{method}")
    infos = [i.value for i in at.info]
    part = "Magnitudes" if page == "magnitudes" else "Directions"
    said = [i for i in infos if i.startswith(f"{part} are SD-LoRA's")]
    assert len(said) == 1, infos
    assert f"`{method}`" in said[0] and "`sd-lora`" in said[0] and "`sd-lora-kd`" in said[0]
    assert _charts(at) == 0 and not at.error  # no empty chart


def test_efficiency_table_has_table5_columns_for_the_baselines(baseline_cache, monkeypatch):
    monkeypatch.setenv("SDLORA_CACHE", str(baseline_cache))
    at = _open("efficiency")
    assert not at.error, [e.value for e in at.error]
    table = at.dataframe[0].value.set_index("method")
    assert list(table.columns[1:5]) == ["tasks", "gflops_per_image", "forward_passes",
                                        "learnable_params"]
    assert {"l2p", "simplecil"} == set(table.index)
    l2p, simplecil = table.loc["l2p"], table.loc["simplecil"]
    # L2P pays the frozen query pass: about two plain ViTs; SimpleCIL is one plain ViT
    assert l2p["forward_passes"] == 2 and simplecil["forward_passes"] == 1
    assert l2p["gflops_per_image"] > 1.9 * l2p["gflops_plain_vit"]
    assert simplecil["gflops_per_image"] == pytest.approx(simplecil["gflops_plain_vit"], rel=0.05)
    assert l2p["learnable_params"] == l2p["stored_adapter"] > 0  # the prompt pool and keys
    assert simplecil["learnable_params"] == 0  # no gradient step
    for row in (l2p, simplecil):
        assert row["stored_params"] == (row["stored_adapter"] + row["stored_head"]
                                        + row["stored_backbone_copy"] + row["stored_features"])


def test_overview_shows_the_measured_tables(tmp_path, monkeypatch):
    import shutil

    from sdlora.tables import load_table

    results = tmp_path / "results"
    results.mkdir()
    shutil.copy(Path(APP).parent / "results" / "table_glyphs40.json", results)
    (results / "table_broken.json").write_text("{not json")
    monkeypatch.setenv("SDLORA_RESULTS", str(results))
    monkeypatch.setenv("SDLORA_CACHE", str(tmp_path / "empty"))
    at = _open("overview")
    assert not at.exception
    shown = at.dataframe[0].value  # the default benchmark's tab comes first
    rows = load_table(results / "table_glyphs40.json")["rows"]
    assert list(shown["method"]) == [r["label"] for r in rows]
    assert any("table_broken.json" in w.value for w in at.warning)  # named, page still drawn


# -- the path plane on the Interpolation page (issue 22) -------------------------------------
def test_interpolation_page_draws_the_demo_runs_path_planes(tmp_path, monkeypatch):
    """The shipped demo runs' stored path planes (LoRA beside SD-LoRA, seed 0) draw at once:
    nothing is computed, no button is offered."""
    import shutil

    from sdlora.analysis.plane import plane_name

    repo = Path(APP).parent / "cache" / "demo"
    for name in ("lora-s0", "sd-lora-s0"):
        assert (repo / name / "analyses" / f"{plane_name(5)}.json").exists()
        shutil.copytree(repo / name, tmp_path / "demo" / name)
    monkeypatch.setenv("SDLORA_CACHE", str(tmp_path))
    at = _open("interpolation")
    assert not at.error, [e.value for e in at.error]
    assert _charts(at) == 2 and not any(b.label.startswith("Compute the path") for b in at.button)
    assert any("variance" in c.value for c in at.caption)
    assert sorted(p.name for p in (tmp_path / "demo" / "lora-s0" / "analyses").iterdir()) == \
        sorted(p.name for p in (repo / "lora-s0" / "analyses").iterdir())  # nothing written


def test_interpolation_page_computes_a_path_plane_on_request(demo_cache, tmp_path, monkeypatch):
    import shutil

    from sdlora.analysis import plane
    from tests.conftest import small_benchmark

    cache = tmp_path / "cache"
    shutil.copytree(demo_cache, cache)
    monkeypatch.setenv("SDLORA_CACHE", str(cache))
    monkeypatch.setattr(plane, "PLANE_GRID", 3)  # a tiny grid: the page passes what it reads
    monkeypatch.setattr(plane, "PLANE_IMAGES", 4)
    # the fixture's runs were trained on 4 of digits' classes (their config says all digits)
    monkeypatch.setattr("sdlora.train.load_data", lambda config: small_benchmark(classes=4))
    at = _open("interpolation")
    buttons = [b for b in at.button if b.label.startswith("Compute the path of demo-lora")]
    assert len(buttons) == 1 and _charts(at) == 1  # nothing computed unasked
    buttons[0].click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert (cache / "runs" / "demo-lora" / "analyses" / "path_plane_task2_3_4.json").exists()
    assert _charts(at) == 2
