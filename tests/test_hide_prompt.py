"""HiDe-Prompt (issue 11 item 3; BASELINES.md 3.4 and 6): the task-identity stage, the task
prompts, the aligned heads, test-time task inference, and the rules every baseline keeps
(G5 batch invariance, G6 only the listed parameters change, G7 counts on ViT-B/16 shapes)."""
import argparse
import json
import re

import pytest
import timm
import torch
import torch.nn.functional as F

from sdlora import cli
from sdlora.config import ConfigError, TrainConfig
from sdlora.methods.hide_prompt import ClassStatistics, HiDePrompt, kmeans
from sdlora.methods.query import query_features
from sdlora.train import build_model, evaluate, load_model, split_for, task_generator, train

from conftest import small_benchmark

FAST = dict(hide_tii_epochs=5, hide_ca_epochs=3)


def _cfg(**kw) -> TrainConfig:
    base = dict(benchmark="digits", method="hide-prompt", tasks=2, epochs=1, batch_size=16,
                residual_every=0, device="cpu")
    base.update(kw)
    if base["method"] == "hide-prompt":  # these tests set the released stages' epochs
        base.setdefault("hide_budget", "released")
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def hide_run(tmp_path_factory):
    """2 tasks of 2 digits (8 training, 4 test images a class), 1 epoch, the default stages."""
    root = tmp_path_factory.mktemp("hide")
    bench = small_benchmark(per_class_train=8, per_class_test=4, classes=4)
    return bench, train(_cfg(), out=root / "cache" / "runs" / "hide", progress=False,
                        benchmark=bench)


def test_g5_a_sample_scores_and_gets_its_task_the_same_alone_and_in_a_mixed_batch(hide_run):
    bench, run = hide_run
    model = load_model(run, 1).eval()
    x = bench.test.images
    x = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(1))]
    # make the batch infer both tasks: the task-identity rows of class 0 (task 0) and class 2
    # (task 1) point along the mapped query features of samples 0 and 1, every other class is
    # out of reach; so (Cauchy-Schwarz) sample 0 gets task 0, sample 1 task 1, each other sample
    # the one its features lean to
    with torch.no_grad():
        mapped = model.tii_mlp(query_features(model.backbone, model.normalise_input(x[:2])))
        for t, layer in enumerate(model.tii_head.tasks):
            layer.weight.zero_()
            layer.bias.fill_(-1e4)
            layer.weight[0] = F.normalize(mapped[t], dim=0)
            layer.bias[0] = 0.0
    assert not torch.allclose(model.prompts[0], model.prompts[1])  # a mix-up would show
    with torch.no_grad():
        mixed = model(x)
        tasks = model.last_task_prediction.clone()
        assert tasks[:2].tolist() == [0, 1] and set(tasks.tolist()) == {0, 1}
        for j in range(len(x)):
            alone = model(x[j:j + 1])
            assert torch.allclose(alone, mixed[j:j + 1], atol=1e-5), j
            assert model.last_task_prediction.tolist() == [tasks[j].item()]


def _names(model, params) -> set[str]:
    ids = {id(p) for p in params}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def _changed(model, before: dict) -> set[str]:
    after = model.state_dict()
    return {k for k in before if not torch.equal(before[k], after[k])}


def test_g6_each_stage_changes_only_what_it_lists():
    model = build_model(_cfg(**FAST))
    gen = torch.Generator().manual_seed(0)
    data = [(torch.rand(8, 3, 28, 28, generator=gen), torch.tensor([0, 1] * 4))
            for _ in range(2)]
    backbone = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    for task in range(2):
        model.begin_task(task, 2, task_generator(0, task))
        tii = {k for k in model.state_dict() if k.startswith(("tii_mlp.", "tii_stats."))} | {
            f"tii_head.tasks.{t}.{w}" for t in range(task + 1) for w in ("weight", "bias")}
        before = {k: v.clone() for k, v in model.state_dict().items()}
        model.prepare_task(lambda: data)  # stage 1: MLP, TII rows, statistics, alignment
        changed = _changed(model, before)
        assert changed <= tii, changed - tii
        assert {"tii_mlp.fc1.weight", f"tii_head.tasks.{task}.weight",
                "tii_stats.mean"} <= changed
        # from the second task on the alignment moves the earlier classes' rows too
        assert task == 0 or "tii_head.tasks.0.weight" in changed
        # stage 2 (the loop): the task's prompt and head rows, nothing else
        groups = model.trainable_parameters()
        expected = {f"prompts.{task}", f"head.tasks.{task}.weight", f"head.tasks.{task}.bias"}
        assert _names(model, [p for g in groups.values() for p in g]) == expected
        assert {n for n, p in model.named_parameters() if p.requires_grad} == expected
        before = {k: v.clone() for k, v in model.state_dict().items()}
        optimiser = torch.optim.Adam([p for g in groups.values() for p in g], lr=1e-2)
        model.train()
        x, y = data[0]
        model.zero_grad(set_to_none=True)  # the first stage leaves its last gradients
        earlier = [model.prompts[t] for t in range(task)]
        for p in earlier:  # for this check only: would the ensemble let gradient reach them?
            p.requires_grad_(True)
        logits = model(x)[:, 2 * task:2 * task + 2]
        contrast = model.auxiliary_loss()
        # the contrastive term alone reaches the task's prompt and nothing else: not the head
        # (it is on the features), not the earlier prompts (detached in the ensemble), not the
        # backbone
        contrast.backward(retain_graph=True)
        assert model.prompts[task].grad.abs().sum() > 0
        assert [n for n, p in model.named_parameters() if p.grad is not None] == [
            f"prompts.{task}"]
        for p in earlier:
            p.requires_grad_(False)
        model.prompts[task].grad = None
        (F.cross_entropy(logits, y) + contrast).backward()
        optimiser.step()
        changed = _changed(model, before)
        assert changed == expected, changed ^ expected
        # end of task: the ensemble folded into p_t (t > 0), statistics, the head aligned
        before = {k: v.clone() for k, v in model.state_dict().items()}
        info = model.end_task()
        changed = _changed(model, before)
        allowed = {k for k in model.state_dict() if k.startswith("wtp_stats.")} | {
            f"head.tasks.{t}.{w}" for t in range(task + 1) for w in ("weight", "bias")} | {
            f"prompts.{task}"}
        assert changed <= allowed, changed - allowed
        assert ("head.tasks.0.weight" in changed) == (task == 1)
        assert (f"prompts.{task}" in changed) == (task == 1)
        assert info["tap"]["aligned_steps"] == 3 * 2 * task  # epochs x earlier classes
        assert not any(p.requires_grad for p in model.parameters())
    assert all(torch.equal(v, model.backbone.state_dict()[k]) for k, v in backbone.items())


def test_g7_counts_and_passes_on_vit_b16_shapes():
    with torch.device("meta"):
        vit = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0)
    passes = []
    vit.patch_embed.register_forward_pre_hook(lambda m, a: passes.append(1))
    x = torch.rand(2, 3, 224, 224, device="meta")
    for length, prompt in ((20, 153_600), (10, 76_800)):  # released; the paper's 0.08M
        model = HiDePrompt(vit, TrainConfig(benchmark="digits", method="hide-prompt", tasks=10,
                                            hide_prompt_length=length), (0.5,) * 3,
                           (0.5,) * 3).to("meta")
        for task in range(2):
            model.begin_task(task, 20, torch.Generator())
            model._fitting = True  # as after prepare_task (no data on the meta device)
            learn = model.trainable_parameters()["prompts"]
            assert sum(p.numel() for p in learn) == 5 * 2 * length * 768 == prompt
    assert sum(p.numel() for p in model.tii_mlp.parameters()) == (
        768 * 1536 + 1536 + 1536 * 768 + 768 + 2 * 768) == 2_363_136
    for stats in (model.tii_stats, model.wtp_stats):  # 40 classes x 10 centroids x 2 x 768
        assert stats.mean.numel() + stats.var.numel() == 40 * 10 * 2 * 768
        assert stats.count.numel() == 40 * 10
    passes.clear()
    with torch.no_grad():
        assert model.eval()(x).shape == (2, 40)
    assert len(passes) == 2 and model.forward_passes == 2 and not model.mergeable


def test_task_identity_accuracy_is_recorded_per_task_and_matches_the_model(hide_run):
    bench, run = hide_run
    m = run.metrics()
    split = split_for(TrainConfig.from_dict(m["config"]), bench)
    for task, info in enumerate(m["task_info"]):
        recorded = info["task_identity_accuracy"]
        assert len(recorded) == task + 1
        model = load_model(run, task).eval()
        for t in range(task + 1):
            data = split.task_data(bench.test, t)
            with torch.no_grad():
                model(data.images)
            share = 100.0 * (model.last_task_prediction == t).float().mean().item()
            assert recorded[t] == pytest.approx(share)
        # the checkpoint gives back the model that was evaluated while training
        assert evaluate(model, split, bench.test, task, torch.device("cpu")) == (
            m["accuracy_matrix"][task])
    assert m["task_info"][1]["tap"]["aligned_steps"] == 30 * 2  # default 30 epochs
    from sdlora.analysis import task_identity_matrix
    assert task_identity_matrix(m) == [i["task_identity_accuracy"] for i in m["task_info"]]
    assert task_identity_matrix({"task_info": [{"components": 1}]}) is None


def test_oracle_switch_changes_predictions_only_when_on(hide_run):
    bench, run = hide_run
    model = load_model(run, 1).eval()
    assert not model.oracle_task and not TrainConfig().hide_oracle_task
    with torch.no_grad():
        model.tii_head.tasks[1].bias.add_(100.0)  # the first stage now says task 2 for all
    split = split_for(TrainConfig.from_dict(run.config()), bench)
    inferred = []
    row = evaluate(model, split, bench.test, 1, torch.device("cpu"), task_identity=inferred)
    assert inferred == [0.0, 100.0]
    x = split.task_data(bench.test, 0).images
    with torch.no_grad():
        by_tii = model(x)
        assert model.last_task_prediction.tolist() == [1] * len(x)
        oracle = model(x, task_ids=torch.zeros(len(x), dtype=torch.long))
        assert not torch.allclose(by_tii, oracle, atol=1e-3)  # another prompt, other logits
        x1 = split.task_data(bench.test, 1).images
        assert torch.equal(model(x1), model(x1, task_ids=torch.ones(len(x1), dtype=torch.long)))
    model.oracle_task = True
    identity = []
    oracle_row = evaluate(model, split, bench.test, 1, torch.device("cpu"),
                          task_identity=identity)
    assert identity == inferred  # the inferred tasks are still recorded
    assert oracle_row[1] == row[1]  # task 2's images: same prompt either way
    y = split.task_data(bench.test, 0).labels
    assert oracle_row[0] == pytest.approx(100.0 * (oracle.argmax(1) == y).float().mean().item())
    assert row[0] == pytest.approx(100.0 * (by_tii.argmax(1) == y).float().mean().item())
    assert build_model(_cfg(hide_oracle_task=True)).oracle_task


def test_resume_after_the_first_task_gives_the_same_numbers(hide_run, tmp_path):
    bench, run = hide_run

    class Stop(Exception):
        pass

    def stop(task, metrics):
        raise Stop

    with pytest.raises(Stop):
        train(_cfg(), out=tmp_path / "run", progress=False, benchmark=bench, on_task_end=stop)
    resumed = train(resume=tmp_path / "run", progress=False, benchmark=bench).metrics()
    reference = run.metrics()
    assert resumed["accuracy_matrix"] == reference["accuracy_matrix"]
    assert resumed["task_info"] == reference["task_info"]
    model, again = load_model(run, 1).eval(), load_model(tmp_path / "run", 1).eval()
    tensors = model.checkpoint_tensors()
    assert all(torch.equal(v, again.checkpoint_tensors()[k]) for k, v in tensors.items())


def test_statistics_kmeans_and_the_gaussian_sampler():
    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[5.0, 0, 0, 0], [-5.0, 0, 0, 0], [0, 5.0, 0, 0]], dtype=torch.float64)
    points = torch.cat([c + 0.1 * torch.randn(30, 4, generator=gen, dtype=torch.float64)
                        for c in centres])
    assign, found = kmeans(points, 3, gen)
    assert sorted(torch.bincount(assign).tolist()) == [30, 30, 30]
    assert torch.cdist(found, centres).min(1).values.max() < 0.1
    stats = ClassStatistics(4, centroids=3)
    stats.grow(2)
    labels = torch.tensor([0] * 90 + [1] * 2)  # class 1: two images, one cluster each
    two = torch.tensor([[1.0], [2.0]]) * torch.ones(2, 4)
    stats.fit(torch.cat([points.float(), two]), labels, range(2), gen)
    assert stats.count[0].tolist() == [30.0, 30.0, 30.0] and stats.count[1].sum() == 2
    assert stats.mean.numel() + stats.var.numel() == 2 * 3 * 2 * 4  # classes x K x 2 x d
    assert torch.allclose(stats.centres(1), stats.mean[0])
    eligible = stats.eligible(2)  # class 1's clusters have no spread: kept so it is sampled
    assert len(eligible) == 3 + 2
    # the sampler reproduces a cluster's mean (within 3 standard errors) and variance + 1e-4
    x, y = stats.sample(20000, eligible[:1], gen)
    mean, var = stats.mean[0, 0], stats.var[0, 0] + 1e-4
    z = (x.mean(0) - mean) / (var / len(x)).sqrt()
    assert z.abs().max() < 3 and (y == 0).all()
    assert torch.allclose(x.var(0), var, rtol=0.05)
    _, y = stats.sample(3000, eligible, gen)
    assert 0.3 < (y == 1).float().mean() < 0.5  # 2 of the 5 clusters are class 1's
    with pytest.raises(ValueError, match="class 1 has no training image"):
        stats.fit(points.float(), torch.zeros(90, dtype=torch.long), range(2), gen)


def test_options_are_validated_with_clear_errors():
    with pytest.raises(ConfigError, match=re.escape("hide_prompt_momentum=1.0 is not valid; "
                                                    "it must be a number in [0, 1)")):
        _cfg(hide_prompt_momentum=1.0)
    with pytest.raises(ConfigError, match="hide_centroids=0 is not valid"):
        _cfg(hide_centroids=0)
    with pytest.raises(ConfigError, match="hide_tii_lr=-0.1 is not valid"):
        _cfg(hide_tii_lr=-0.1)
    with pytest.raises(ConfigError, match="hide_contrast_weight=-1 is not valid"):
        _cfg(hide_contrast_weight=-1)
    with pytest.raises(ConfigError, match=re.escape("hide_oracle_task='yes' is not valid; "
                                                    "choose one of: True, False")):
        _cfg(hide_oracle_task="yes")
    with pytest.raises(ConfigError, match="hide_centroids=5 applies to method 'hide-prompt' "
                                          "only, not 'l2p'"):
        _cfg(method="l2p", hide_centroids=5)
    for bad in (0, -0.1, float("nan"), float("inf"), "fast"):
        with pytest.raises(ConfigError, match=re.escape(f"hide_tap_lr={bad!r} is not valid")):
            _cfg(hide_tap_lr=bad)
    with pytest.raises(ConfigError, match="hide_tap_lr=0.005 applies to method 'hide-prompt' "
                                          "only, not 'l2p'"):
        _cfg(method="l2p", hide_tap_lr=0.005)
    cfg = _cfg(lr=0.0028125)  # the released ImageNet-R script's prompt rate (0.03 x 24 / 256)
    assert (cfg.head_lr_scale, cfg.grad_clip) == (0.1, 1.0)  # --larger_prompt_lr, clip 1.0
    # task identity: 0.0005 and its alignment's ca_lr 0.005, both x 24 / 256; the final head's
    # alignment: ca_lr 0.005, unscaled
    assert cfg.hide_rates() == pytest.approx((4.6875e-5, 4.6875e-4, 0.005))
    assert _cfg(lr=0.03).hide_rates() == pytest.approx((0.0005, 0.005, 0.03 * 16 / 9))
    assert _cfg(hide_tii_lr=1e-4, hide_ca_lr=2e-4, hide_tap_lr=3e-4).hide_rates() == (
        1e-4, 2e-4, 3e-4)
    # a hide-prompt config saved before hide_tap_lr existed aligned its final head at the
    # task-identity alignment's rate
    old = dict(benchmark="digits", method="hide-prompt", tasks=2, lr=0.03)
    assert TrainConfig.from_dict(old).hide_rates() == pytest.approx((0.0005, 0.005, 0.005))
    assert TrainConfig.from_dict({**old, "hide_ca_lr": 1e-3}).hide_tap_lr == 1e-3
    assert TrainConfig.from_dict({**old, "hide_tap_lr": None}).hide_tap_lr is None
    assert TrainConfig.from_dict(_cfg().to_dict()) == _cfg()
    assert _cfg(method="l2p").head_lr_scale == 1.0
    assert TrainConfig.from_dict({"method": "lora"}).head_lr_scale == 1.0


def test_each_alignment_runs_at_its_own_rate(monkeypatch):
    """The task-identity alignment's SGD gets hide_ca_lr, the final head's (TAP) hide_tap_lr
    (defaults lr / 6 and lr x 16 / 9, the released script's two ca_lr)."""
    made = []

    class Spy(torch.optim.SGD):
        def __init__(self, params, **kw):
            super().__init__(params, **kw)
            made.append(({id(p) for g in self.param_groups for p in g["params"]},
                         [g["lr"] for g in self.param_groups]))

    monkeypatch.setattr(torch.optim, "SGD", Spy)
    model = build_model(_cfg(lr=0.03, hide_tii_epochs=1, hide_ca_epochs=1))
    gen = torch.Generator().manual_seed(0)
    data = [(torch.rand(8, 3, 28, 28, generator=gen), torch.tensor([0, 1] * 4))]
    for task in range(2):
        model.begin_task(task, 2, task_generator(0, task))
        model.prepare_task(lambda: data)
        model.end_task()
    tii = {id(p) for p in [*model.tii_mlp.parameters(), *model.tii_head.parameters()]}
    tap = {id(p) for p in model.head.parameters()}
    assert [ids for ids, _ in made] == [tii, tap]  # none on the first task; then TII, TAP
    assert made[0][1] == pytest.approx([0.03 / 6])
    assert made[1][1] == pytest.approx([0.03 * 0.005 / 0.0028125])


def test_cli_trains_hide_prompt_end_to_end(tmp_path, monkeypatch, capsys):
    """`python -m sdlora train --method hide-prompt ...` (the same entry, in-process, with the
    digits benchmark cut to 4 classes so it takes seconds), then its efficiency row."""
    from sdlora import train as train_module
    from sdlora.analysis import efficiency, table5_row

    bench = small_benchmark(per_class_train=8, per_class_test=4, classes=4)
    monkeypatch.setattr(train_module, "load_data", lambda config: bench)
    out = tmp_path / "run"
    code = cli.main(["train", "--method", "hide-prompt", "--benchmark", "digits", "--tasks", "2",
                     "--epochs", "1", "--batch-size", "16", "--device", "cpu", "--quiet",
                     "--hide-budget", "released", "--hide-tii-epochs", "4", "--hide-ca-epochs", "2", "--hide-centroids", "3",
                     "--hide-tap-lr", "0.01", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0 and "method hide-prompt" in printed
    assert "task identity after the last task: " in printed
    m = json.loads((out / "metrics.json").read_text())
    assert m["method"] == "hide-prompt" and len(m["accuracy_matrix"]) == 2
    assert (m["config"]["hide_tii_epochs"], m["config"]["hide_centroids"]) == (4, 3)
    assert (m["config"]["hide_tap_lr"], m["config"]["hide_ca_lr"]) == (0.01, None)
    assert not m["config"]["hide_oracle_task"] and m["config"]["head_lr_scale"] == 0.1
    assert [len(i["task_identity_accuracy"]) for i in m["task_info"]] == [1, 2]
    parser = argparse.ArgumentParser()
    cli._train_parser(parser.add_subparsers())
    assert parser.parse_args(["train", "--hide-oracle-task"]).hide_oracle_task is True
    assert parser.parse_args(["train"]).hide_oracle_task is None
    eff = efficiency(out)
    last = eff["per_task"][-1]
    assert last["learnable"] == 5 * 2 * 20 * 192  # the task's prompt, embedded ViT width 192
    assert last["stored_adapter"] == 2 * 5 * 2 * 20 * 192  # both tasks' prompts
    assert last["stored_features"] == 2 * (4 * 3 * (2 * 192 + 1))  # two sets of statistics
    assert not eff["mergeable"] and eff["forward_passes"] == 2
    assert eff["gflops_per_image"] > 2 * eff["gflops_plain"]  # query pass + longer keys
    row = table5_row(eff)
    assert row["stored_params"] == (row["stored_adapter"] + row["stored_head"]
                                    + row["stored_backbone_copy"] + row["stored_features"])


def test_accuracy_page_shows_the_task_identity_of_a_hide_prompt_run(hide_run, monkeypatch):
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    _, run = hide_run
    monkeypatch.setenv("SDLORA_CACHE", str(run.path.parent.parent))  # <cache>/runs/hide
    at = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "app.py"),
                           default_timeout=120)
    at.run()
    at.switch_page("pages/accuracy.py")
    at.session_state["selected_run"] = str(run.path)
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert "Task identity" in [h.value for h in at.subheader]
    last = run.metrics()["task_info"][-1]["task_identity_accuracy"]
    assert any(m.value == f"{sum(last) / len(last):.1f}%" for m in at.metric)


def test_equal_budget_shares_epochs_and_the_counted_steps_match_the_formula(tmp_path):
    """Issue 21: at hide_budget 'equal' the task-identity stage and the prompts share `epochs`
    passes over a task's images (20 : 150, at least one each), the alignments scaled alike;
    every optimiser step of a run is counted and matches `optimiser_steps`."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    from sdlora.methods.hide_prompt import optimiser_steps

    # hand-worked on glyphs40's shape (800 images a task, batch 32, 8 classes a task), task 4:
    # released: 20 identity epochs x 25 batches, 4 prompt epochs x 25, 30 x 32 earlier classes
    # for each alignment; equal: 1 + 3 epochs, alignments round(1 x 30/20) = 2 and
    # max(1, round(3 x 30/150)) = 1 epochs of 32 steps
    released = TrainConfig(method="hide-prompt", hide_budget="released")
    equal = TrainConfig(method="hide-prompt")
    assert equal.hide_budget == "equal"
    assert optimiser_steps(released, 800, 8, 4) == dict(
        identity=500, prompts=100, identity_alignment=960, final_alignment=960)
    assert optimiser_steps(equal, 800, 8, 4) == dict(
        identity=25, prompts=75, identity_alignment=64, final_alignment=32)
    # 20 epochs: round(20 x 20/170 = 2.35) = 2 + 18; alignments 3 and round(3.6) = 4
    assert TrainConfig(method="hide-prompt", epochs=20).hide_stages() == dict(
        identity=2, prompts=18, identity_alignment=3, final_alignment=4)
    assert TrainConfig(method="hide-prompt", epochs=170).hide_stages()["identity"] == 20
    assert TrainConfig(method="lora").loop_epochs() == 4 and equal.loop_epochs() == 3
    with pytest.raises(ConfigError, match="epochs=1 is too few for hide-prompt"):
        TrainConfig(method="hide-prompt", epochs=1)
    with pytest.raises(ConfigError, match="hide_tii_epochs=5 applies to hide_budget="
                                          "'released' only"):
        TrainConfig(method="hide-prompt", hide_tii_epochs=5)
    with pytest.raises(ConfigError, match="hide_budget='released' applies to method "
                                          "'hide-prompt' only"):
        TrainConfig(method="lora", hide_budget="released")
    # a config saved before the option existed ran the released stages
    old = {k: v for k, v in released.to_dict().items() if k != "hide_budget"}
    assert TrainConfig.from_dict(old).hide_budget == "released"
    assert TrainConfig.from_dict(dict(method="lora")).hide_budget == "equal"

    counted: dict[str, int] = {}
    per_task: list[dict] = []
    config = _cfg(hide_budget="equal", epochs=3, batch_size=8, hide_centroids=2)
    tii_ca, tap = config.hide_rates()[1:]

    def count(optimiser, args, kwargs):
        group = optimiser.param_groups[0]
        stage = ("prompts" if "name" in group else "identity"
                 if isinstance(optimiser, torch.optim.Adam)
                 else "identity_alignment" if group["initial_lr"] == pytest.approx(tii_ca)
                 else "final_alignment" if group["initial_lr"] == pytest.approx(tap) else "?")
        counted[stage] = counted.get(stage, 0) + 1

    def snapshot(task, metrics):
        per_task.append(dict(counted))
        counted.clear()

    bench = small_benchmark(per_class_train=8, per_class_test=4, classes=4)
    handle = register_optimizer_step_pre_hook(count)
    try:
        train(config, out=tmp_path / "run", progress=False, benchmark=bench,
              on_task_end=snapshot)
    finally:
        handle.remove()
    want = [{k: v for k, v in optimiser_steps(config, 16, 2, t).items() if v}
            for t in range(2)]
    assert per_task == want
    assert want[1] == dict(identity=2, prompts=4, identity_alignment=4, final_alignment=2)
