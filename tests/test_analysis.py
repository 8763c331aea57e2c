"""The analyses on a tiny run made in the test."""
import math

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

from sdlora.analysis import (cached, efficiency, figures, interpolate, magnitude_series,
                             magnitudes_at_task_end, matrix_factorisation_dynamics,
                             relative_distances, residual_series, residuals_at_task_end,
                             toy_landscape)
from sdlora.config import TrainConfig
from sdlora.runs import RunError, RunFolder
from sdlora.train import train


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    from tests.conftest import small_benchmark

    root = tmp_path_factory.mktemp("runs")
    bench = small_benchmark(classes=6)
    runs = {}
    for method in ("sd-lora", "lora"):
        cfg = TrainConfig(method=method, benchmark="digits", tasks=3, epochs=2, batch_size=12,
                          residual_every=1)
        runs[method] = train(cfg, out=root / method, progress=False, benchmark=bench)
    return runs, bench


def test_magnitude_series_one_value_per_step_per_component(tiny_runs):
    runs, _ = tiny_runs
    series = magnitude_series(runs["sd-lora"])
    steps = runs["sd-lora"].steps()
    expected = sum(s["task"] + 1 for s in steps)  # task t has t components
    assert len(series) == expected
    assert series.groupby(["global_step", "component"]).size().max() == 1
    table = magnitudes_at_task_end(runs["sd-lora"])
    assert list(table.index) == [1, 2, 3] and np.isnan(table.loc[1, 3])
    assert magnitude_series(runs["lora"]).empty


def test_residuals_recorded_and_recomputed(tiny_runs):
    runs, _ = tiny_runs
    series = residual_series(runs["sd-lora"])
    assert set(series["task"]) == {2, 3}
    assert ((series["residual"] >= 0) & (series["residual"] <= 1 + 1e-9)).all()
    table = residuals_at_task_end(runs["sd-lora"])
    assert list(table["after task"]) == [2, 3]
    assert sum(c.startswith("block ") for c in table.columns) == 24  # 6 blocks x (q, v) x 2
    assert sum(c.endswith("(absolute)") and c.startswith("block ") for c in table.columns) == 12
    # The model residual is at least no smaller than what a per-projection fit leaves on average
    # (per-projection coefficients are a superset of shared ones).
    relative = [c for c in table.columns if c.startswith("block ") and not c.endswith(")")]
    per = table[relative].to_numpy()
    assert (table["model"].to_numpy() >= np.sqrt((per ** 2).mean(1)) - 1e-9).all()
    # Algorithm 1 line 11's absolute residual, logged beside the relative one at every step;
    # at the end of a task it is what the checkpoint's products give (steps log it before
    # end_task, so the last logged value of a task is the last step's, not the end's).
    assert series["residual_absolute"].notna().all() and (series["residual_absolute"] > 0).all()
    last = series.groupby("task")["residual_absolute"].last()
    assert np.allclose(last.to_numpy(), table["model (absolute)"].to_numpy(), rtol=0.2)
    # Per projection, one fit per projection: the absolute residual is the relative one times
    # ||A_t B_t[p]||_F (same span, the target scaled), so it cannot exceed that norm.
    tensors, _ = runs["sd-lora"].checkpoint(2)
    product = tensors["adapter.A.2"] @ tensors["adapter.B.2"]
    norms = torch.linalg.matrix_norm(product).numpy()
    row = table.iloc[-1]
    absolute = np.array([row[f"{c} (absolute)"] for c in relative])
    assert np.allclose(absolute, np.array([row[c] for c in relative]) * norms, rtol=1e-4)
    assert row["product norm"] == pytest.approx(float(np.sqrt((norms ** 2).sum())), rel=1e-5)


def test_absorption_table_names_the_tau_each_rule_needs(tiny_runs):
    from sdlora.analysis import absorption_table

    runs, _ = tiny_runs
    table = residuals_at_task_end(runs["sd-lora"])
    kd = absorption_table(runs["sd-lora"])
    assert list(kd["after task"]) == [2, 3]
    assert kd["relative residual"].tolist() == table["model"].tolist()
    assert (kd["tau needed / tau (absolute)"] * 9e-4).tolist() == pytest.approx(
        table["model (absolute)"].tolist())
    assert not kd["relative rule absorbs at this tau"].any()  # random directions: ~ orthogonal
    assert "absorbed in this run" not in kd.columns  # sd-lora, not sd-lora-kd
    assert absorption_table(runs["lora"]).empty


def test_interpolation_end_points_match_checkpoints(tiny_runs):
    runs, bench = tiny_runs
    for run in runs.values():
        R = run.metrics()["accuracy_matrix"]
        frame = interpolate(run, 3, points=3, benchmark=bench, measured_ends=False)
        start, end = frame.iloc[0], frame.iloc[-1]
        measured = interpolate(run, 3, points=3, benchmark=bench)  # ends from the matrix
        assert np.allclose(measured.drop(columns="lambda").to_numpy(),
                           frame.drop(columns="lambda").to_numpy())
        assert [start["task 1"], start["task 2"]] == pytest.approx(R[1])
        assert start["task 3"] == 0.0  # task 3's classes are not predicted at lambda = 0
        assert [end[f"task {j}"] for j in (1, 2, 3)] == pytest.approx(R[2])
    with pytest.raises(ValueError, match="task=1 is not valid"):
        interpolate(runs["lora"], 1, benchmark=bench)


def test_within_task_accuracy_splits_acc_into_task_and_calibration(tiny_runs, tmp_path):
    from sdlora.analysis import within_task_accuracy

    runs, bench = tiny_runs
    for run in runs.values():
        frame = within_task_accuracy(run, benchmark=bench)
        R = run.metrics()["accuracy_matrix"]
        assert frame["class_il"].tolist() == pytest.approx(R[-1])  # what the run measured
        # the task given, the argmax over fewer classes: never worse, and better somewhere
        # for vanilla LoRA, whose old tasks' rows lose to the last task's
        assert (frame["task_il"] >= frame["class_il"] - 1e-9).all()
    assert (within_task_accuracy(runs["lora"], benchmark=bench)["task_il"]
            > within_task_accuracy(runs["lora"], benchmark=bench)["class_il"]).any()
    # a joint run is scored on the incremental protocol's tasks
    joint = train(TrainConfig(method="joint", benchmark="digits", tasks=3, epochs=1,
                              batch_size=12), out=tmp_path / "joint", progress=False,
                  benchmark=bench)
    frame = within_task_accuracy(joint, benchmark=bench)
    assert len(frame) == 3 and frame["class_il"].mean() == pytest.approx(
        joint.metrics()["accuracy_matrix"][-1][0])


@pytest.mark.parametrize("method", ["inflora", "simplecil", "l2p"])
def test_interpolation_of_other_methods_uses_their_plain_form(tmp_path, method):
    """InfLoRA and SimpleCIL end each task as a plain ViT: the line's ends reproduce the two
    checkpoints' accuracies. L2P has no plain form: a clear error, not a line drawn between two
    identical frozen backbones that leaves the prompts out."""
    from tests.conftest import small_benchmark

    bench = small_benchmark(classes=4)
    run = train(TrainConfig(method=method, benchmark="digits", tasks=2, epochs=1, batch_size=12),
                out=tmp_path / method, progress=False, benchmark=bench)
    if method == "l2p":
        with pytest.raises(ValueError, match="'l2p' has no plain-ViT form"):
            interpolate(run, 2, points=3, benchmark=bench)
        return
    R = run.metrics()["accuracy_matrix"]
    frame = interpolate(run, 2, points=3, benchmark=bench, measured_ends=False)
    assert frame.iloc[0]["task 1"] == pytest.approx(R[0][0]) and frame.iloc[0]["task 2"] == 0
    assert [frame.iloc[-1]["task 1"], frame.iloc[-1]["task 2"]] == pytest.approx(R[1])


def test_relative_distances_definition():
    w0_to = [np.array([1.0, 0.0]), np.array([0.0, 1.0]), np.array([1.0, 0.0])]
    d = relative_distances(w0_to)
    assert d[0, 1] == pytest.approx(math.sqrt(2)) and d[0, 2] == 0.0 and d[1, 1] == 0.0
    close = relative_distances([np.array([10.0, 1.0]), np.array([10.0, -1.0])])
    assert close[0, 1] == pytest.approx(2 / math.sqrt(101))


def test_efficiency_merged_costs_a_plain_vit(tiny_runs):
    runs, _ = tiny_runs
    eff = efficiency(runs["sd-lora"])
    assert eff["gflops_merged"] == pytest.approx(eff["gflops_plain"])
    assert eff["gflops_unmerged"] >= eff["gflops_merged"]
    assert [t["components"] for t in eff["per_task"]] == [1, 2, 3]
    learnable = eff["per_task"][-1]["learnable"]
    assert learnable == 12 * (192 * 10 + 10 * 192) + 3  # P (A_t + B_t) + alpha_1..3
    assert eff["stored_samples"] == 0 and len(eff["step_ms_median"]) == 3


def test_theorem1_learns_top_singular_value_first():
    result = matrix_factorisation_dynamics(m=20, n=20, r=3, spectrum=(3.0, 1.5, 0.75),
                                           rho=1e-3, eta=0.05, iterations=1500)
    first = result["learned_at"]
    assert None not in first and first[0] < first[1] < first[2]
    assert result["final_error"] < 1e-3
    with pytest.raises(ValueError, match="eta=0.5 is too large"):
        matrix_factorisation_dynamics(spectrum=(3.0,), eta=0.5)


def test_theorem1_fast_enough_for_a_slider():
    import time
    start = time.perf_counter()
    matrix_factorisation_dynamics()
    assert time.perf_counter() - start < 1.0


def test_toy_landscape_paths():
    result = toy_landscape(steps=50, grid=21)
    assert len(result["paths"]["lora"]) == len(result["paths"]["sd-lora"]) == 101
    default = toy_landscape(grid=9)  # the default geometry shows the effect (seed 0)
    assert default["final_losses"]["sd-lora"][0] < default["final_losses"]["lora"][0] / 5
    assert max(default["final_losses"]["sd-lora"][1], default["final_losses"]["lora"][1]) < 0.05
    assert np.array(result["loss1"]).shape == (21, 21)
    assert result["paths"]["lora"][0] == [0.0, 0.0]  # LoRA starts at W0 exactly


def test_every_figure_builder_returns_expected_traces(tiny_runs):
    runs, _ = tiny_runs
    m = runs["sd-lora"].metrics()
    assert isinstance(figures.accuracy_heatmap(m["accuracy_matrix"]).data[0], go.Heatmap)
    assert len(figures.forgetting_curves(m["accuracy_matrix"]).data) == 3
    curves = figures.accuracy_curves([dict(label="a", method="sd-lora", metrics=m)])
    assert len(curves.data) == 2  # the curve and its AAA level
    joint = dict(m, method="joint", acc=88.0, seen_accuracy=[88.0],
                 config=dict(m.get("config") or {}, joint_adapter="lora"))
    both = figures.accuracy_curves([dict(label="a", method="sd-lora", metrics=m),
                                    dict(label="j", method="joint", metrics=joint)])
    level = both.data[-1]  # the joint run: one dashed level across every task, at its Acc
    assert len(both.data) == 3 and level.line.dash == "dash" and "lora adapter" in level.name
    assert list(level.x) == [1, 3] and list(level.y) == [88.0, 88.0]
    assert len(figures.magnitude_figure(magnitude_series(runs["sd-lora"])).data) == 3
    assert len(figures.residual_figure(residual_series(runs["sd-lora"])).data) == 2
    assert isinstance(figures.residual_bars(residuals_at_task_end(runs["sd-lora"])).data[0],
                      go.Heatmap)
    assert isinstance(figures.distance_heatmap(np.zeros((3, 3))).data[0], go.Heatmap)
    import pandas as pd
    split = pd.DataFrame(dict(task=[1, 2], class_il=[40.0, 60.0], task_il=[80.0, 90.0]))
    bars = figures.within_task_figure(split, "t").data
    assert [list(b.y) for b in bars] == [[40.0, 60.0], [80.0, 90.0]]
    frame = pd.DataFrame(dict(**{"lambda": [0, 1]}, old=[50, 40], new=[0, 90]))
    assert len(figures.interpolation_figure({"a": frame, "b": frame}, 2).data) == 4
    theorem = matrix_factorisation_dynamics(iterations=50)
    assert len(figures.theorem_figure(theorem).data) == 4
    assert len(figures.landscape_figure(toy_landscape(steps=5, grid=9)).data) == 6
    assert len(figures.mean_curve_figure({"lora": np.ones((3, 4))}, "t").data) == 2
    assert len(figures.step_cost_figure([dict(label="a", method="lora", step_ms=[1, 2])]).data) == 1


def test_cached_analysis_is_kept_in_the_run(tiny_runs):
    runs, _ = tiny_runs
    calls = []
    value = cached(runs["lora"], "probe", lambda: calls.append(1) or {"x": 1})
    again = cached(runs["lora"], "probe", lambda: calls.append(1) or {"x": 2})
    assert value == again == {"x": 1} and calls == [1]
    assert (runs["lora"].analyses_dir / "probe.json").exists()


def test_partial_run_folder_gives_a_clear_error(tmp_path):
    run = RunFolder(tmp_path / "broken")
    with pytest.raises(RunError, match="config.json is missing"):
        magnitude_series(run)
    run.path.mkdir()
    run.config_path.write_text(TrainConfig(benchmark="digits").to_dict().__repr__())
    with pytest.raises(RunError, match="config.json is corrupt"):
        efficiency(run)
    run.config_path.write_text('{"method": "sd-lora"}')
    with pytest.raises(RunError, match="no finished task"):
        efficiency(run)
    (run.steps_dir).mkdir()
    (run.steps_dir / "task_000.jsonl").write_text('{"task": 0\n{"task": 0, "global_step": 1}\n')
    with pytest.raises(RunError, match="task_000.jsonl line 1 is corrupt"):
        magnitude_series(run)


def test_analyse_cli_writes_html_and_csv(tiny_runs, tmp_path):
    import os
    import subprocess
    import sys
    runs, _ = tiny_runs
    out = tmp_path / "figs"
    result = subprocess.run([sys.executable, "-m", "sdlora", "analyse", str(runs["sd-lora"].path),
                             "--what", "accuracy", "magnitudes", "residuals", "theory",
                             "--html", str(out)], capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert result.returncode == 0, result.stderr
    for name in ("accuracy_matrix", "magnitudes", "residual_series", "theorem1"):
        assert (out / f"{name}.html").exists() and (out / f"{name}.csv").exists()
    bad = subprocess.run([sys.executable, "-m", "sdlora", "analyse", str(runs["sd-lora"].path),
                          "--what", "everything"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "--what ['everything'] not valid" in bad.stderr


def test_kd_that_absorbs_nothing_is_sd_lora(tiny_runs, tmp_path):
    """scripts/kd_rules.py's shortcut: SD-LoRA-KD's test only reads the model, so a KD run that
    absorbs nothing is the SD-LoRA run (same accuracy matrix), and the residuals it tests are
    those recomputed from the SD-LoRA run's checkpoints."""
    runs, bench = tiny_runs
    config = TrainConfig.from_dict({**runs["sd-lora"].config(), "method": "sd-lora-kd",
                                    "kd_residual": "absolute"})
    m = train(config, out=tmp_path / "kd", progress=False, benchmark=bench).metrics()
    decisions = m["task_info"][1:]
    assert [t["absorbed"] for t in decisions] == [False, False]
    assert m["accuracy_matrix"] == runs["sd-lora"].metrics()["accuracy_matrix"]
    table = residuals_at_task_end(runs["sd-lora"])
    assert [t["residual_absolute"] for t in decisions] == pytest.approx(
        table["model (absolute)"].tolist(), rel=1e-5)
    assert [t["residual"] for t in decisions] == pytest.approx(table["model"].tolist(), rel=1e-6)


def test_seed_groups_never_average_unlike_runs(tiny_runs, tmp_path):
    """Runs are averaged over seeds only when their whole configuration (device and logging
    aside) is the same: another learning rate is another group, labelled by it; an old run
    folder (config without today's keys, metrics without the config) still groups."""
    import json
    import shutil

    from sdlora.analysis import seed_groups

    runs, bench = tiny_runs
    base = runs["sd-lora"].config()
    other_lr = train(TrainConfig.from_dict({**base, "lr": 1e-3}), out=tmp_path / "lr",
                     progress=False, benchmark=bench)
    old = tmp_path / "old-s5"  # the same configuration, seed 5, written by an older version
    shutil.copytree(runs["sd-lora"].path, old)
    config = json.loads((old / "config.json").read_text())
    del config["kd_residual"]
    (old / "config.json").write_text(json.dumps({**config, "seed": 5}))
    metrics = json.loads((old / "metrics.json").read_text())
    del metrics["config"], metrics["variant"]
    metrics["seed"] = 5
    metrics["seen_accuracy"] = [v - 10 for v in metrics["seen_accuracy"]]
    (old / "metrics.json").write_text(json.dumps(metrics))
    for log in (old / "steps").glob("*.jsonl"):  # step logs from before the absolute residual
        lines = [json.loads(x) for x in log.read_text().splitlines()]
        log.write_text("".join(json.dumps({k: v for k, v in r.items()
                                           if k != "residual_absolute"}) + "\n" for r in lines))
    assert residual_series(old)["residual_absolute"].isna().all()
    assert residual_series(old)["residual"].notna().all()

    groups = {g["label"]: g for g in seed_groups([runs["sd-lora"], RunFolder(old), other_lr,
                                                  runs["lora"]])}
    assert set(groups) == {"sd-lora · lr=0.008", "sd-lora · lr=0.001", "lora · lr=0.008"}
    same = groups["sd-lora · lr=0.008"]
    assert same["seeds"] == [0, 5] and same["seen"].shape == (2, 3)
    assert same["seen"][1].tolist() == metrics["seen_accuracy"]
    assert groups["sd-lora · lr=0.001"]["seen"].tolist() == [other_lr.metrics()["seen_accuracy"]]
    assert groups["lora · lr=0.008"]["seen"][0].tolist() == runs["lora"].metrics()["seen_accuracy"]
    # metrics.json now records the variant and the whole configuration
    m = runs["sd-lora"].metrics()
    assert m["variant"] == "paper" and m["config"] == runs["sd-lora"].config()
    # without the other learning rate, nothing differs but the method: labels are the methods
    labels = [g["label"] for g in seed_groups([runs["sd-lora"], runs["lora"]])]
    assert labels == ["sd-lora", "lora"]


def test_task_specific_weights_and_their_distances(tiny_runs):
    from sdlora.analysis import task_specific_weights
    runs, bench = tiny_runs
    config = TrainConfig(benchmark="digits", tasks=3, epochs=1, batch_size=12)
    deltas = task_specific_weights(config, benchmark=bench)
    assert len(deltas["all"]) == len(deltas["qv"]) == 3
    assert deltas["qv"][0].size == 6 * 2 * 192 * 192  # the q and v slices of 6 blocks
    matrix = relative_distances(deltas["all"])
    assert np.isfinite(matrix).all() and (np.diag(matrix) == 0).all()
    assert (matrix[~np.eye(3, dtype=bool)] > 0).all()


# -- the path plane (Fig. 4a measured, issue 22) -----------------------------------------------
def test_plane_coordinates_known_by_construction():
    from sdlora.analysis import plane_coordinates

    e1, e2, e3 = np.linalg.qr(np.random.default_rng(0).standard_normal((40, 3)))[0].T
    w0 = np.random.default_rng(1).standard_normal(40)  # the start need not be the origin
    ab = np.array([[0, 0], [2, 0], [1, 3], [-1, 4]], dtype=float)  # start, tasks 1-2, end
    on = w0 + ab @ np.stack([e1, e2])
    plane = plane_coordinates(on)
    assert plane["coords"] == pytest.approx(ab, abs=1e-12)  # u = e1, v = e2: known
    assert w0 + plane["coords"] @ plane["basis"] == pytest.approx(on, abs=1e-12)  # themselves
    assert plane["variance_share"] == pytest.approx(1.0) and plane["off_plane"].max() < 1e-12
    off = on.copy()
    off[2] += 0.5 * e3  # task 2's point off the plane: it projects to where it was, 0.5 away
    plane = plane_coordinates(off)
    assert plane["coords"] == pytest.approx(ab, abs=1e-12)
    assert plane["off_plane"] == pytest.approx([0, 0, 0.5, 0], abs=1e-12)
    total = ((off - off.mean(0)) ** 2).sum()
    assert plane["variance_share"] == pytest.approx(1 - 0.25 / total)
    assert plane["variance_share"] < plane["pca_share"] <= 1 + 1e-12  # the best plane holds more
    with pytest.raises(ValueError, match="straight line"):
        plane_coordinates(w0 + np.outer([0, 1, 2, 3], e1))


def test_path_plane_on_a_tiny_run(tiny_runs):
    """Two tasks: the start and both checkpoints span the plane (variance share 1, no point off
    it); three: the middle checkpoint is projected, the ends are not. The path's accuracies are
    the checkpoints' own: at the end, the final model's with the task given (all test images)."""
    from sdlora.analysis import path_plane, within_task_accuracy

    runs, bench = tiny_runs
    run = runs["sd-lora"]
    two = path_plane(run, tasks=2, grid=3, images=100, benchmark=bench)
    assert two["variance_share"] == pytest.approx(1.0) and max(two["off_plane"]) < 1e-6
    assert len(two["path"]) == 3 and two["path"][0] == [0.0, 0.0]
    assert np.array(two["task1"]).shape == (3, 3) and two["parameters"] > 0
    three = path_plane(run, grid=3, images=100, benchmark=bench)  # default: every task
    assert three["tasks"] == 3 and three["off_plane"][1] < 1e-6 and three["off_plane"][3] < 1e-6
    assert three["variance_share"] <= three["pca_share"] + 1e-9
    path = np.array(three["path"])
    a, b = np.array(three["a"]), np.array(three["b"])
    assert a[0] <= path[:, 0].min() and path[:, 0].max() <= a[-1]  # the grid holds the path
    assert b[0] <= path[:, 1].min() and path[:, 1].max() <= b[-1]
    final = within_task_accuracy(run, benchmark=bench)["task_il"].tolist()
    assert [three["end_task1"], three["end_latest"]] == pytest.approx([final[0], final[2]])
    assert three["best_task1"] >= max(three["task1"][0])
    with pytest.raises(ValueError, match="tasks=1 is not valid"):
        path_plane(run, tasks=1, benchmark=bench)
