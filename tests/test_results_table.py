"""scripts/results_table.py: the per-pair significance test and the learning rate each row uses."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def table():
    spec = importlib.util.spec_from_file_location("results_table", REPO / "scripts" /
                                                  "results_table.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["results_table"] = module
    spec.loader.exec_module(module)
    return module


def test_paired_t_test_by_hand():
    from sdlora import tables as table

    # differences 1, 2, 3: mean 2, sd 1, t = 2 / (1 / sqrt 3) = 3.464 with 2 degrees of freedom,
    # two-sided p = 0.0742 (t-table): not significant at 0.05
    out = table.paired_test([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])
    assert out["diff"] == pytest.approx(2.0)
    assert out["p"] == pytest.approx(0.0742, abs=5e-4)
    assert out["verdict"] == "no significant difference"
    # differences 10, 11, 12, 10, 11: t = 10.8 / (0.837 / sqrt 5) = 28.9, p < 1e-5: lower
    low = table.paired_test([0.0] * 5, [10.0, 11.0, 12.0, 10.0, 11.0])
    assert low["verdict"] == "lower" and low["p"] < 1e-4
    # a constant difference has no variance: significant unless it is zero
    assert table.paired_test([3.0, 4.0], [1.0, 2.0])["verdict"] == "higher"
    assert table.paired_test([1.0, 2.0], [1.0, 2.0])["verdict"] == "no significant difference"


def test_rows_use_the_validation_chosen_rate(table, tmp_path):
    from sdlora.config import TrainConfig
    from sdlora.tuning import summary_key

    tuned = {summary_key(TrainConfig(method="sd-lora")): dict(chosen_lr=0.03),
             summary_key(TrainConfig(method="joint", joint_adapter="sd-lora")):
                 dict(chosen_lr=0.002)}
    args = table.argparse.Namespace(benchmark="glyphs40", epochs=None,
                                    methods=["lora", "sd-lora", "no-rescale", "joint"],
                                    joint_adapters=["sd-lora"], variant_released=False,
                                    kd_absolute=False)
    jobs = {j["label"]: j for j in table.build_jobs(args, tuned)}
    assert (jobs["sd-lora"]["lr"], jobs["sd-lora"]["lr_source"]) == (0.03, "tuned")
    assert (jobs["no-rescale"]["lr"], jobs["no-rescale"]["lr_source"]) == (0.03, "sd-lora's")
    assert (jobs["lora"]["lr"], jobs["lora"]["lr_source"]) == (TrainConfig.lr, "not tuned")
    assert jobs["joint (sd-lora adapter)"]["lr"] == 0.002
    assert jobs["sd-lora"]["name"] == "sd-lora-lr0.03" and jobs["sd-lora"]["reference"]
    # a rate chosen on glyphs40 is not used on renditions20
    args.benchmark = "renditions20"
    assert {j["lr_source"] for j in table.build_jobs(args, tuned)} == {"not tuned"}
    # ... unless asked for (the 10-task preset on glyphs80 takes glyphs40's rates), and the
    # rows and run names say so
    args.benchmark, args.tuned_from, args.set = "glyphs80", "glyphs40", ["tasks=10"]
    jobs = {j["label"]: j for j in table.build_jobs(args, tuned)}
    assert (jobs["sd-lora"]["lr"], jobs["sd-lora"]["lr_source"]) == (0.03, "tuned on glyphs40")
    assert jobs["no-rescale"]["lr_source"] == "sd-lora's on glyphs40"
    assert jobs["lora"]["lr_source"] == "not tuned"
    assert jobs["sd-lora"]["name"] == "sd-lora-tasks10-lr0.03"


def test_table_rows_as_shown_and_damaged_tables_named(tmp_path):
    from sdlora.tables import TableError, display_rows, load_table

    def row(label, method, acc, **kw):
        return {**dict(label=label, method=method, lr=0.002, lr_source="tuned",
                       seeds=list(range(len(acc))), acc=acc, aaa=acc,
                       forgetting=[1.0] * len(acc)), **kw}

    table = dict(rows=[row("simplecil", "simplecil", [30.0, 32.0, 34.0]),
                       row("no-rescale", "no-rescale", [40.0], lr_source="sd-lora's"),
                       row("lora", "lora", [20.0, 21.0, 25.0],
                           versus_sd_lora=dict(diff=-6.0, p=0.0214, verdict="lower")),
                       row("full-ft", "full-ft", [10.0, 11.0],
                           versus_sd_lora=dict(diff=-26.0, p=2e-5, verdict="lower"))])
    path = tmp_path / "table_x.json"
    path.write_text(json.dumps(table))
    simple, one, lora, full = display_rows(load_table(path))
    # mean 32, sample sd 2, standard error 2 / sqrt(3) = 1.15
    assert simple["Acc"] == "32.0 ± 1.2" and simple["lr (validation)"] == "—"
    assert one["Acc"] == "40.0" and one["lr (validation)"] == "0.002 (sd-lora's)"
    # no reference row in this table: the stored tests, Holm over both (the smaller, 2e-5,
    # times 2; the larger, 0.0214, times 1)
    assert lora["Acc vs SD-LoRA (paired t, Holm)"] == "-6.0, p = 0.021, Holm p = 0.021: lower"
    assert lora["seeds"] == "0 1 2"
    assert full["Acc vs SD-LoRA (paired t, Holm)"] == "-26.0, p < 0.001, Holm p < 0.001: lower"
    for text, says in [("{", "not a readable JSON"), ('{"rows": 3}', "no list of 'rows'"),
                       ('{"rows": [{"label": "a"}]}', "row 0 lacks"),
                       (json.dumps(dict(rows=[dict(row("a", "a", [1.0, 2.0]), seeds=[0])])),
                        "unequal")]:
        path.write_text(text)
        with pytest.raises(TableError, match=says) as e:
            load_table(path)
        assert "table_x.json" in str(e.value)
    with pytest.raises(TableError, match="does not exist"):
        load_table(tmp_path / "none.json")


def test_hide_prompt_rows_name_their_budget_and_list_every_rate(table):
    """Issue 21: hide-prompt's row has the equal budget and a folder name that says so (old
    folders, made at the released stages, are never picked up); --hide-released adds the
    extra-budget row, labelled; a rate chosen at the grid's edge is marked; all five coupled
    rates are listed."""
    from sdlora.config import TrainConfig
    from sdlora.tables import display_rows
    from sdlora.tuning import summary_key

    released = TrainConfig(method="hide-prompt", hide_budget="released")
    tuned = {summary_key(released): dict(chosen_lr=0.112, grid=[0.002, 0.008, 0.03, 0.112])}
    assert summary_key(released) == "hide-prompt-released@glyphs40"
    args = table.argparse.Namespace(benchmark="glyphs40", epochs=None, methods=["hide-prompt"],
                                    joint_adapters=[], variant_released=False,
                                    kd_absolute=False, hide_released=True)
    equal, extra = table.build_jobs(args, tuned)
    assert (equal["label"], equal["name"]) == ("hide-prompt", "hide-prompt-equal-lr0.008")
    assert equal["lr_source"] == "not tuned"  # a rate tuned at the released budget is not used
    assert extra["label"] == table.RELEASED_HIDE_LABEL and "extra budget" in extra["label"]
    assert extra["name"] == "hide-prompt-released-lr0.112"
    assert extra["lr_source"] == "tuned, at the grid's edge (cap)"
    assert extra["part_rates"]["identity stage"] == pytest.approx(0.112 / 60)
    row = dict(label=extra["label"], method="hide-prompt", lr=0.112,
               lr_source=extra["lr_source"], part_rates=extra["part_rates"], seeds=[0],
               acc=[1.0], aaa=[1.0], forgetting=[1.0])
    assert display_rows(dict(rows=[row]))[0]["lr (validation)"] == (
        "0.112 (tuned, at the grid's edge (cap)); head 0.0112, identity stage 0.00187, "
        "identity alignment 0.0187, final alignment 0.199")


def test_a_table_folder_made_with_other_settings_is_refused(table, tmp_path):
    """The check results_table.py shares with sdlora.tuning (sdlora.runs.check_same_settings):
    a run folder of the right name made with other settings stops the script, named."""
    from sdlora.config import TrainConfig
    from sdlora.runs import RunFolder

    job = dict(name="lora-lr0.002", method="lora", lr=0.002, overrides={})
    folder = tmp_path / "lora-lr0.002-s0"
    folder.mkdir()
    saved = TrainConfig(method="lora", lr=0.002, epochs=5, device="cuda").to_dict()
    (folder / "config.json").write_text(json.dumps(saved))
    with pytest.raises(SystemExit, match=r"made with other settings .*'epochs': \(5, 4\)"):
        table.run_seed(tmp_path, job, 0, "glyphs40", may_train=False)
    # a setting that does not change the computation (device) is not a difference
    (folder / "config.json").write_text(json.dumps(dict(saved, epochs=4)))
    assert RunFolder(folder).exists()
    assert table.run_seed(tmp_path, job, 0, "glyphs40", may_train=False) is None  # unfinished


def test_holm_adjustment_by_hand():
    from sdlora.tables import holm

    # p = 0.01, 0.04, 0.03, 0.005 (m = 4). Sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1:
    # 0.02, 0.03, 0.06, 0.04 -> running maximum 0.02, 0.03, 0.06, 0.06; in the order given:
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # a missing test (nan) is not counted (m = 2) and stays nan: 0.2 x 2, then 0.5 x 1
    out = holm([0.5, float("nan"), 0.2])
    assert out[0] == pytest.approx(0.5) and out[1] != out[1] and out[2] == pytest.approx(0.4)
    # capped at 1: 0.6 x 2 = 1.2 -> 1, and the running maximum keeps 0.7 x 1 at 1
    assert holm([0.7, 0.6]) == pytest.approx([1.0, 1.0])


def test_tests_are_recomputed_from_seeds_and_the_verdict_uses_holm():
    """The committed tables need no rerun: p is recomputed from the rows' per-seed Acc against
    the sd-lora row's, and the verdict is on Holm's p over all the table's tests."""
    from sdlora.tables import display_rows, paired_test, versus_reference

    def row(label, acc, **kw):
        return dict(label=label, method=label, lr=0.002, lr_source="tuned", seeds=[0, 1, 2],
                    acc=acc, aaa=acc, forgetting=[0.0] * 3, **kw)

    ref = [40.0, 41.0, 43.0]
    rows = [row("sd-lora", ref), row("a", [38.0, 39.5, 40.2]),  # alone p = 0.031
            row("b", [30.0, 31.0, 33.5], versus_sd_lora=dict(diff=0, p=0.9, verdict="x")),
            row("c", [40.5, 40.0, 44.0])]
    alone = [paired_test(r["acc"], ref)["p"] for r in rows[1:]]
    tests = versus_reference(rows)
    assert tests[0] is None and [t["p"] for t in tests[1:]] == pytest.approx(alone)
    assert alone[0] < 0.05 and tests[1]["p_holm"] > 0.05  # significant alone, not after Holm
    assert tests[1]["verdict"] == "no significant difference" and tests[1]["tests"] == 3
    assert tests[2]["verdict"] == "lower" and tests[2]["p_holm"] == pytest.approx(
        min(1, 3 * alone[1]))  # the stored p = 0.9 is ignored: recomputed from the seeds
    shown = display_rows(dict(rows=rows))
    assert shown[1]["Acc vs SD-LoRA (paired t, Holm)"] == (
        f"-2.1, p = 0.031, Holm p = 0.062: no significant difference")


def test_merge_into_retrains_only_the_methods_given_and_keeps_the_other_rows(
        table, tmp_path, monkeypatch):
    """--merge-into: only the --methods given run (here stubbed); their rows replace the rows
    of the same label or are inserted in ORDER; the other rows, whose folders are not here,
    stay; the tests are recomputed over the merged rows."""
    path = tmp_path / "table_glyphs40.json"

    def row(label, method, acc):
        return dict(label=label, method=method, lr=0.002, lr_source="tuned", seeds=[0, 1, 2],
                    acc=acc, aaa=acc, forgetting=[1.0] * 3, versus_sd_lora=None)

    old = dict(benchmark="glyphs40", seeds=[0, 1, 2], tasks=5, epochs=4, missing=["x-s4"],
               rows=[row("simplecil", "simplecil", [33.0, 34.0, 34.0]),
                     row("lora", "lora", [30.0, 31.0, 29.0]),
                     row("sd-lora", "sd-lora", [37.0, 38.0, 36.5]),
                     row("joint (sd-lora adapter)", "joint", [51.0, 51.0, 51.2])])
    path.write_text(json.dumps(old))
    ran = []

    def fake_run_seed(root, job, seed, benchmark, may_train):
        ran.append((job["name"], seed))
        return dict(acc=20.0 + seed + (10 if job["method"] == "hide-prompt" else 0),
                    aaa=50.0, forgetting=5.0)

    monkeypatch.setattr(table, "run_seed", fake_run_seed)
    (tmp_path / "none.json").write_text("{}")  # nothing tuned: every row at the default rate
    monkeypatch.setattr(sys, "argv", ["results_table.py", "--methods", "lora", "hide-prompt",
                                      "--seeds", "0", "1", "2", "--merge-into", str(path),
                                      "--tuned", str(tmp_path / "none.json")])
    table.main()
    assert {name for name, _ in ran} == {"lora-lr0.008", "hide-prompt-equal-lr0.008"}
    merged = json.loads(path.read_text())
    assert [r["label"] for r in merged["rows"]] == ["simplecil", "lora", "sd-lora",
                                                   "hide-prompt", "joint (sd-lora adapter)"]
    assert merged["rows"][0] == old["rows"][0] | dict(versus_sd_lora=merged["rows"][0][
        "versus_sd_lora"])  # kept as it was, its test recomputed
    assert merged["rows"][1]["acc"] == [20.0, 21.0, 22.0]  # replaced
    assert merged["missing"] == ["x-s4"] and merged["seeds"] == [0, 1, 2]
    tests = [r["versus_sd_lora"] for r in merged["rows"]]
    assert tests[2] is None and all(t["tests"] == 4 for i, t in enumerate(tests) if i != 2)
    # a table of other settings is refused, and left as it was
    monkeypatch.setattr(sys, "argv", ["results_table.py", "--methods", "lora", "--seeds", "0",
                                      "--epochs", "5", "--merge-into", str(path)])
    before = path.read_text()
    with pytest.raises(SystemExit) as err:
        table.main()
    assert err.value.code == 2 and path.read_text() == before
