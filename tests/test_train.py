"""The class-incremental engine: runs, metrics, run folders, resume and the CLI."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sdlora.backbone import EMBEDDED_WEIGHTS, create_backbone
from sdlora.config import METHODS, ConfigError, TrainConfig
from sdlora.data import make_task_split
from sdlora.metrics import summarise
from sdlora.runs import RunError, RunFolder
from sdlora.train import load_model, train

REPO = Path(__file__).resolve().parent.parent


def _cfg(**kw) -> TrainConfig:
    base = dict(benchmark="digits", tasks=2, epochs=2, batch_size=16, residual_every=2)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    """One run of `_cfg()` on the tiny benchmark, read (never written) by the tests below."""
    from tests.conftest import small_benchmark

    return train(_cfg(), out=tmp_path_factory.mktemp("default") / "run", progress=False,
                 benchmark=small_benchmark())


def test_two_task_run_in_seconds(default_run, tiny_benchmark):
    run = default_run
    m = run.metrics()
    R = m["accuracy_matrix"]
    assert [len(r) for r in R] == [1, 2]
    assert all(0.0 <= v <= 100.0 and math.isfinite(v) for row in R for v in row)
    assert R[0][0] > 50.0  # 2 digits, pretrained features: far above chance (50%)
    for key in ("acc", "aaa", "forgetting", "method", "benchmark", "seed"):
        assert key in m
    # One step record per optimiser step, each with one magnitude per component so far.
    steps = run.steps()
    per_task = math.ceil(24 / 16) * 2  # 12 images a class, 2 classes a task, 2 epochs
    assert len(steps) == 2 * per_task
    assert [len(s["magnitudes"]) for s in steps] == [1] * per_task + [2] * per_task
    assert any("residual" in s for s in steps[per_task:])
    assert run.status()["state"] == "finished"
    # Checkpoints rebuild the model at the end of every task, with the recorded accuracies.
    from sdlora.train import evaluate
    split = make_task_split(4, 2, 0)
    for t in range(2):
        model = load_model(run, t)
        row = evaluate(model, split, tiny_benchmark.test, t, torch.device("cpu"))
        assert row == pytest.approx(R[t])


def test_metrics_definitions():
    R = [[90.0], [60.0, 80.0], [50.0, 70.0, 100.0]]
    counts = [10, 30, 10]
    m = summarise(R, counts)
    assert m["seen_accuracy"] == pytest.approx([90.0, 75.0, (500 + 2100 + 1000) / 50])
    assert m["acc"] == pytest.approx(72.0)
    assert m["aaa"] == pytest.approx((90 + 75 + 72) / 3)
    assert m["forgetting"] == pytest.approx(((90 - 50) + (80 - 70)) / 2)
    assert m["bwt"] == pytest.approx(((50 - 90) + (70 - 80)) / 2)


def test_same_seed_same_numbers(tmp_path, tiny_benchmark, default_run):
    a = default_run.metrics()  # trained in another test's fixture: b is its own training
    b = train(_cfg(), out=tmp_path / "b", progress=False, benchmark=tiny_benchmark).metrics()
    c = train(_cfg(seed=1), out=tmp_path / "c", progress=False,
              benchmark=tiny_benchmark).metrics()
    assert a["accuracy_matrix"] == b["accuracy_matrix"]
    assert a["class_order"] != c["class_order"] or a["accuracy_matrix"] != c["accuracy_matrix"]


def test_resume_after_a_kill_gives_the_same_numbers(tmp_path, tiny_benchmark):
    cfg = _cfg(tasks=2, method="sd-lora-kd")
    full = train(cfg, out=tmp_path / "full", progress=False, benchmark=tiny_benchmark)

    class Killed(Exception):
        pass

    def kill(task, metrics):
        raise Killed  # dies right after task 1's checkpoint, as a power cut would

    with pytest.raises(Killed):
        train(cfg, out=tmp_path / "cut", progress=False, benchmark=tiny_benchmark,
              on_task_end=kill)
    cut = RunFolder(tmp_path / "cut")
    assert cut.completed_tasks() == 1
    # A half-written step log of the interrupted task 2, as a kill mid-task leaves it.
    cut.steps_path(1).write_text('{"task": 1, "step": 0}\n{"task": 1, "st')
    trained = []
    train(resume=tmp_path / "cut", progress=False, benchmark=tiny_benchmark,
          on_task_end=lambda t, m: trained.append(t))
    assert trained == [1]  # the finished task is not trained again
    assert cut.metrics()["accuracy_matrix"] == full.metrics()["accuracy_matrix"]
    assert [s["loss"] for s in cut.steps()] == [s["loss"] for s in full.steps()]


def test_existing_run_is_not_overwritten(tmp_path, tiny_benchmark):
    train(_cfg(tasks=1), out=tmp_path / "r", progress=False, benchmark=tiny_benchmark)
    with pytest.raises(RunError, match="--resume"):
        train(_cfg(tasks=1), out=tmp_path / "r", progress=False, benchmark=tiny_benchmark)


@pytest.mark.parametrize("kw, bad", [
    (dict(method="dora"), "method='dora'"),
    (dict(rank=0), "rank=0"),
    (dict(lr=-1.0), "lr=-1.0"),
    (dict(epochs=0), "epochs=0"),
    (dict(optimizer="lion"), "optimizer='lion'"),
    (dict(variant="released", method="lora"), "variant='released'"),
    (dict(grad_clip=0), "grad_clip=0 "),
    (dict(grad_clip=-1.0, method="l2p"), "grad_clip=-1.0 "),
    (dict(grad_clip=float("inf")), "grad_clip=inf "),
    (dict(grad_clip="1"), "grad_clip='1' "),
])
def test_config_rejects_bad_values(kw, bad):
    with pytest.raises(ConfigError, match=bad.replace("(", r"\(")):
        TrainConfig(**kw)


def test_grad_clip_defaults_to_the_methods_own():
    """L2P's, DualPrompt's and HiDe-Prompt's released codes clip the gradient norm at 1.0; no
    other method clips by default. The saved config holds the value used, and a config saved
    before the setting existed ran without a clip."""
    assert TrainConfig(method="l2p").grad_clip == 1.0
    assert TrainConfig(method="dualprompt").grad_clip == 1.0
    assert TrainConfig(method="hide-prompt").grad_clip == 1.0
    assert TrainConfig(method="l2p", grad_clip=None).grad_clip is None
    assert TrainConfig(method="l2p", grad_clip=5).grad_clip == 5
    assert all(TrainConfig(method=m).grad_clip is None for m in METHODS
               if m not in ("l2p", "dualprompt", "hide-prompt"))
    saved = TrainConfig(method="l2p").to_dict()
    assert saved["grad_clip"] == 1.0 and TrainConfig.from_dict(saved).grad_clip == 1.0
    del saved["grad_clip"]
    assert TrainConfig.from_dict(saved).grad_clip is None


@pytest.mark.parametrize("method, clip", [("l2p", 1.0), ("sd-lora", None)])
def test_training_step_clips_the_gradient_norm_when_asked(method, clip, tmp_path, monkeypatch):
    """Every step of an l2p run clips what the optimiser steps at 1.0; sd-lora never clips."""
    from tests.conftest import small_benchmark

    real, calls = torch.nn.utils.clip_grad_norm_, []

    def spy(params, max_norm, *args, **kwargs):
        params = list(params)
        calls.append((max_norm, params))
        return real(params, max_norm, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    config = TrainConfig(method=method, benchmark="digits", tasks=2, epochs=1, batch_size=12)
    run = train(config, out=tmp_path / "run", progress=False,
                benchmark=small_benchmark(classes=4))
    steps = len(run.steps())
    assert steps > 0
    if clip is None:
        assert calls == []
        return
    assert len(calls) == steps and {c[0] for c in calls} == {clip}
    pool, length = config.prompt_shape()
    shapes = {tuple(p.shape) for p in calls[-1][1]}
    dim = load_model(run, 1).backbone.embed_dim
    assert {(pool, length, dim), (pool, dim)} <= shapes  # the prompts and keys (and the head)


def test_clip_bounds_a_huge_step():
    """`_clip_gradients` scales the global norm down to the limit: one SGD step at lr 1e4 moves
    the parameters by at most lr * 1.0."""
    from sdlora.train import _clip_gradients

    weights = [torch.nn.Parameter(torch.zeros(50)), torch.nn.Parameter(torch.zeros(3, 4))]
    optimizer = torch.optim.SGD(weights, lr=1e4)
    loss = 1e3 * (weights[0].sum() + weights[1].pow(2).sum() + weights[1].sum())
    loss.backward()
    before = float(torch.cat([w.grad.flatten() for w in weights]).norm())
    assert before > 1.0
    _clip_gradients(optimizer, 1.0)
    optimizer.step()
    moved = float(torch.cat([w.detach().flatten() for w in weights]).norm())
    assert moved == pytest.approx(1e4, rel=1e-5)


def test_task_count_must_divide_classes():
    with pytest.raises(ValueError, match=r"tasks=3 .* valid task counts: \[1, 2, 4, 5, 10, 20\]"):
        make_task_split(20, 3, 0)


def _cli(*args, env_extra=None):
    env = dict(os.environ, HF_HUB_OFFLINE="1", **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "sdlora", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args, message", [
    (["--method", "nope"], "method='nope' is not valid; choose one of: sd-lora"),
    (["--rank", "0"], "rank=0"),
    (["--lr", "0"], "lr=0.0"),
    (["--epochs", "-2"], "epochs=-2"),
    (["--tasks", "3"], "tasks=3 does not divide the 40 classes"),
    (["--benchmark", "imagenet-x"], "benchmark='imagenet-x'"),
    (["--weights", "/nonexistent/w.safetensors"], "/nonexistent/w.safetensors"),
])
def test_cli_rejects_bad_input_before_training(tmp_path, args, message):
    out = tmp_path / "run"
    result = _cli("train", "--out", str(out), *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (out / "metrics.json").exists()


def test_cli_train_runs_show(tmp_path):
    out = tmp_path / "cli-run"
    result = _cli("train", "--benchmark", "digits", "--tasks", "5", "--epochs", "1",
                  "--method", "lora", "--out", str(out), "--quiet",
                  env_extra=dict(SDLORA_CACHE=str(tmp_path)))
    assert result.returncode == 0, result.stderr
    assert "Acc" in result.stdout and "AAA" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["accuracy_matrix"]) == 5 and metrics["method"] == "lora"
    shown = _cli("show", str(out))
    assert shown.returncode == 0 and f"Acc {metrics['acc']:.2f}" in shown.stdout
    assert "lora" in _cli("runs", "--root", str(tmp_path)).stdout


def test_corrupt_run_folder_names_the_file(tmp_path, tiny_benchmark):
    run = train(_cfg(tasks=1), out=tmp_path / "r", progress=False, benchmark=tiny_benchmark)
    run.metrics_path.write_text("{not json")
    with pytest.raises(RunError, match="metrics.json is corrupt"):
        run.metrics()
    run.checkpoint_path(0).write_bytes(b"garbage")
    with pytest.raises(RunError, match="task_000.safetensors is corrupt"):
        run.checkpoint(0)
    result = _cli("show", str(run.path))
    assert result.returncode == 2 and "metrics.json is corrupt" in result.stderr


def test_local_weights_load_through_timm(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, spec = create_backbone("embedded-vit")
    from safetensors.torch import load_file
    saved = load_file(str(EMBEDDED_WEIGHTS))
    torch.testing.assert_close(model.state_dict()["blocks.0.attn.qkv.weight"],
                               saved["blocks.0.attn.qkv.weight"])
    assert model.pretrained_cfg["file"] == str(EMBEDDED_WEIGHTS)
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        create_backbone("embedded-vit", weights=Path("/tmp/missing.safetensors"))
