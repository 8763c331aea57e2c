"""The paper's baselines, part 1 (BASELINES.md section 6): the shared prompt/adapter machinery,
InfLoRA and L2P, and the rules every baseline keeps: batch invariance (G5), only the listed
parameters change in a step (G6), parameter and pass accounting on ViT-B/16 shapes (G7)."""
import math
import re

import pytest
import timm
import torch
import torch.nn.functional as F

from sdlora.config import ConfigError, TrainConfig
from sdlora.methods.inflora import InfLoRA, dualgpm_update, eps_schedule
from sdlora.methods.l2p import L2P
from sdlora.methods.prefix import prefix_attention, run_blocks
from sdlora.methods.prompt_tokens import embed, insert_after_cls
from sdlora.methods.query import query_features
from sdlora.train import build_model, load_model, task_generator, train

from conftest import one_step_changes, small_benchmark

VARIANTS = [dict(method="inflora"), dict(method="l2p"), dict(method="l2p", l2p_variant="l2p++")]


def _cfg(**kw) -> TrainConfig:
    base = dict(benchmark="digits", tasks=2, epochs=1, batch_size=16, residual_every=0,
                device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def _vit():
    return build_model(_cfg(method="frozen")).backbone.eval()


def test_block_loop_without_prefix_is_timm_and_prefix_is_per_sample():
    vit = _vit()
    x = torch.rand(5, 3, 28, 28)
    with torch.no_grad():
        assert torch.allclose(vit.norm(run_blocks(vit, embed(vit, x))), vit.forward_features(x),
                              atol=1e-6)
        tokens = embed(vit, x)
        pk, pv = torch.randn(5, 6, vit.embed_dim), torch.randn(5, 6, vit.embed_dim)
        attn, h = vit.blocks[0].attn, vit.blocks[0].norm1(tokens)
        together = prefix_attention(attn, h, pk, pv)
        assert not torch.allclose(together, attn(h), atol=1e-3)  # the prefix matters
        for i in range(5):  # sample i sees its own prefix, whatever else is in the batch
            alone = prefix_attention(attn, h[i:i + 1], pk[i:i + 1], pv[i:i + 1])
            assert torch.allclose(alone, together[i:i + 1], atol=1e-5)
        # Against attention written out head by head: prefix keys with keys, values with values
        d, heads = vit.embed_dim, attn.num_heads
        q, k, v = attn.qkv(h).split(d, dim=-1)
        k, v = torch.cat([pk, k], 1), torch.cat([pv, v], 1)
        outs = []
        for head in range(heads):
            part = slice(head * d // heads, (head + 1) * d // heads)
            w = (q[..., part] @ k[..., part].transpose(1, 2) * (d // heads) ** -0.5).softmax(-1)
            outs.append(w @ v[..., part])
        assert torch.allclose(together, attn.proj(torch.cat(outs, -1)), atol=1e-5)


def test_l2p_query_sequence_and_fixed_selection_equal_a_plain_prompt_tuned_vit():
    model = build_model(_cfg(method="l2p", prompt_pool=5, prompt_length=3, prompt_top_k=5))
    model.begin_task(0, 2, task_generator(0, 0))
    model.eval()
    x = torch.rand(4, 3, 28, 28)
    vit = model.backbone
    plain = _vit()
    with torch.no_grad():
        xn = model.normalise_input(x)
        assert torch.allclose(query_features(vit, xn), plain(xn), atol=1e-6)
        seen = []
        handle = vit.blocks[0].register_forward_pre_hook(lambda m, a: seen.append(a[0].shape))
        model(x)
        handle.remove()
        patches = vit.patch_embed.num_patches
        assert seen[-1][1] == 1 + 5 * 3 + patches  # [CLS, N*L prompts, patches]
        model.keys.fill_(0.5)  # M = N and all keys equal: every image uses the whole pool
        tokens = insert_after_cls(vit, embed(vit, xn), model.prompts.reshape(1, 15, -1)
                                  .expand(4, -1, -1))
        expected = vit.norm(run_blocks(vit, tokens))[:, 1:16].mean(1)
        assert torch.allclose(model.features(x), expected, atol=1e-5)
        # The prompts carry the class token's position embedding
        assert torch.allclose(tokens[:, 1], model.prompts[0, 0] + vit.pos_embed[0, 0], atol=1e-6)


def test_l2p_pull_moves_chosen_keys_toward_the_query_and_leaves_the_others():
    model = build_model(_cfg(method="l2p"))
    model.begin_task(0, 2, task_generator(0, 0))
    x = torch.rand(6, 3, 28, 28)
    model.train()
    model(x)
    chosen = model.last_selection.unique().tolist()
    query = F.normalize(query_features(model.backbone, model.normalise_input(x)), dim=1)
    before = model.keys.detach().clone()
    optimiser = torch.optim.Adam([model.keys], lr=1e-2)
    model.auxiliary_loss().backward()
    optimiser.step()
    unchosen = [i for i in range(10) if i not in chosen]
    assert unchosen and torch.equal(model.keys[unchosen], before[unchosen])
    cos_before = (query @ F.normalize(before, dim=1).T)[:, chosen].sum()
    cos_after = (query @ F.normalize(model.keys.detach(), dim=1).T)[:, chosen].sum()
    assert cos_after > cos_before


@pytest.fixture(scope="module")
def trained_runs(tmp_path_factory):
    """Each baseline trained for 2 tasks of 2 digits, 1 epoch (seconds)."""
    import os
    root = tmp_path_factory.mktemp("runs")
    os.environ["SDLORA_CACHE"] = str(root / "cache")
    bench = small_benchmark(per_class_train=8, per_class_test=4, classes=4)
    runs = {}
    for kw in VARIANTS:
        name = kw.get("l2p_variant", kw["method"])
        runs[name] = train(_cfg(**kw), out=root / name, progress=False, benchmark=bench)
    return bench, runs


@pytest.mark.parametrize("name", ["inflora", "l2p", "l2p++"])
def test_g5_a_sample_scores_the_same_alone_and_in_a_shuffled_mixed_batch(trained_runs, name):
    bench, runs = trained_runs
    model = load_model(runs[name], 1).eval()
    x = bench.test.images
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        mixed = model(x[order])
        for j in range(0, len(x), 3):
            alone = model(x[order[j]:order[j] + 1])
            assert torch.allclose(alone, mixed[j:j + 1], atol=1e-5), (name, j)
    m = runs[name].metrics()
    assert len(m["accuracy_matrix"]) == 2 and 0 <= m["acc"] <= 100


def _names(model, params) -> set[str]:
    ids = {id(p) for p in params}
    return {n for n, p in model.named_parameters() if id(p) in ids}


@pytest.mark.parametrize("kw", VARIANTS, ids=["inflora", "l2p", "l2p++"])
def test_g6_only_the_listed_parameters_train_and_change(kw):
    model = build_model(_cfg(**kw))
    x, y = torch.rand(8, 3, 28, 28), torch.tensor([0, 1] * 4)
    batches = lambda: [(x, y)]  # noqa: E731
    for task in range(2):
        model.begin_task(task, 2, task_generator(0, task))
        model.prepare_task(batches)
        groups = model.trainable_parameters()
        params = [p for g in groups.values() for p in g]
        expected = {f"head.tasks.{task}.weight", f"head.tasks.{task}.bias"} | (
            {f"lora.B.task{task}"} if kw["method"] == "inflora" else {"prompts", "keys"})
        assert _names(model, params) == expected
        assert {n for n, p in model.named_parameters() if p.requires_grad} == expected
        changed = one_step_changes(model, params, x, y, task)
        assert changed and changed <= expected, changed - expected
        model.end_task()


def test_inflora_picks_its_trainable_b_by_key_not_by_name_prefix():
    """liangyanshuo/InfLoRA #13: matching 'lora_B_k.1' also unfroze 10-19 on 20 tasks."""
    model = build_model(_cfg(method="inflora", tasks=12))
    x = torch.rand(4, 3, 28, 28)
    for task in range(12):
        model.begin_task(task, 1, task_generator(0, task))
        model.add_component(task, torch.randn(6, 2, 10, 192) * 0.05)
        model.trainable_parameters()
        model.end_task()  # no data handed: merges, skips DualGPM
    model.current = "task1"  # task1, task10, task11 all exist now
    groups = model.trainable_parameters()
    assert _names(model, groups["adapter"]) == {"lora.B.task1"}
    assert [k for k, p in model.lora.B.items() if p.requires_grad] == ["task1"]
    assert model(x).shape == (4, 12)


def test_inflora_a_is_orthogonal_to_protected_inputs_and_merging_is_exact():
    assert [round(e, 6) for e in eps_schedule(0.98, 1.0, 10)] == [
        0.98, 0.982, 0.984, 0.986, 0.988, 0.99, 0.992, 0.994, 0.996, 0.998]
    cfg = _cfg(method="inflora", tasks=3)
    model = build_model(cfg)
    gen = torch.Generator().manual_seed(0)
    data = [(torch.rand(8, 3, 28, 28, generator=gen), torch.zeros(8, dtype=torch.long))
            for _ in range(2)]
    model.begin_task(0, 2, task_generator(0, 0))
    model.prepare_task(lambda: data)
    info = model.end_task()
    assert info["eps"] == 0.98 and all(k == "remove" for k in info["kinds"])
    model.begin_task(1, 2, task_generator(0, 1))
    model.prepare_task(lambda: [(1 - x, y) for x, y in data])
    A = model.lora.A["task1"].double()  # (depth, 2, r, d)
    with torch.no_grad():
        model.lora.B["task1"].normal_(0, 0.5)  # as if trained
    for i, basis in enumerate(model.bases):
        assert model.kinds[i] == "remove" and 0 < basis.shape[1] < 96
        M = basis.double()
        ratio = torch.linalg.norm(A[i, 0] @ M) / torch.linalg.norm(A[i, 0])
        assert ratio < 1e-5, (i, float(ratio))
        # inputs in the protected span: the update changes nothing they see
        xs = torch.randn(16, M.shape[1], dtype=torch.float64) @ M.T
        delta = model.lora.B["task1"][i, 0].double() @ A[i, 0]
        W0 = model.backbone.blocks[i].attn.qkv.weight.double()
        assert torch.linalg.norm(xs @ delta.T) < 1e-5 * torch.linalg.norm(xs @ W0.T)
        # while a random input does change
        xr = torch.randn(16, M.shape[0], dtype=torch.float64)
        assert torch.linalg.norm(xr @ delta.T) > 1e-3 * torch.linalg.norm(xr @ W0.T)
    x = torch.rand(5, 3, 28, 28)
    model.eval()
    with torch.no_grad():
        unmerged = model(x)
        plain = model.merged()(x)
        model.end_task()
        merged = model(x)  # B_1 A_1 now in the backbone's weights
    assert model.current is None
    assert torch.allclose(unmerged, plain, atol=1e-5)
    assert torch.allclose(unmerged, merged, atol=1e-5)


def test_dualgpm_keeps_the_energy_and_switches_to_the_complement_past_half():
    gen = torch.Generator().manual_seed(0)
    d = 16
    U = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))[0]
    cov = U[:, :3] @ torch.diag(torch.tensor([9.0, 4.0, 1.0], dtype=torch.float64)) @ U[:, :3].T
    basis, kind = dualgpm_update(None, "remove", cov, 0.98)
    # energies 81, 16, 1 of 98, cumulative 0.827, 0.990, 1: r counts the cumulative shares
    # below eps (the released code's rule), so 1 column
    assert kind == "remove" and basis.shape[1] == 1
    assert torch.allclose((basis @ basis.T) @ U[:, 0], U[:, 0], atol=1e-8)
    wide = U[:, :12] @ U[:, :12].T  # a flat spectrum over 12 of 16 directions
    basis, kind = dualgpm_update(basis, kind, wide, 0.99)
    assert kind == "retain" and basis.shape[1] == d - 12
    assert torch.allclose(basis.T @ U[:, :12], torch.zeros(4, 12, dtype=torch.float64),
                          atol=1e-8)
    # A first task that fills more than half the space starts as the complement, too (11 of
    # the 12 equal shares stay below 0.99, so 11 protected directions, 5 complement columns)
    basis, kind = dualgpm_update(None, "remove", wide, 0.99)
    assert kind == "retain" and basis.shape[1] == d - 11
    assert torch.allclose(basis @ basis.T @ U[:, 12:], U[:, 12:], atol=1e-8)


def test_g7_counts_and_passes_on_vit_b16_shapes():
    with torch.device("meta"):
        vit = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0)
    x = torch.rand(2, 3, 224, 224, device="meta")
    mean = std = (0.5,) * 3
    passes = []
    vit.patch_embed.register_forward_pre_hook(lambda m, a: passes.append(1))
    expected = {"l2p": 10 * 5 * 768 + 10 * 768, "l2p++": 30 * 20 * 768 + 30 * 768}
    assert expected == {"l2p": 46_080, "l2p++": 483_840}
    for variant, count in expected.items():
        model = L2P(vit, TrainConfig(benchmark="digits", method="l2p", l2p_variant=variant),
                    mean, std).to("meta")
        model.begin_task(0, 10, torch.Generator())
        learn = model.trainable_parameters()["prompts"]
        assert sum(p.numel() for p in learn) == count
        passes.clear()
        with torch.no_grad():
            assert model(x).shape == (2, 10)
        assert len(passes) == 2 and model.forward_passes == 2
    model = InfLoRA(vit, TrainConfig(benchmark="digits", method="inflora", tasks=20), mean,
                    std).to("meta")
    for task in range(2):
        model.begin_task(task, 10, torch.Generator())
        model.add_component(task, torch.zeros(12, 2, 10, 768, device="meta"))
        b = model.trainable_parameters()["adapter"]
        assert sum(p.numel() for p in b) == 12 * 2 * 768 * 10 == 184_320
        a = model.lora.A[model.current]
        assert a.numel() == 184_320 and not a.requires_grad
    # A + B of one task: 368,640, Table 5's 0.37M (rank 10 on k and v of 12 blocks)
    assert sum(p.numel() for p in model.lora.parameters()) == 2 * 368_640
    passes.clear()
    with torch.no_grad():
        model(x)
    assert len(passes) == 1 and model.forward_passes == 1


def test_baseline_options_are_validated_with_clear_errors():
    with pytest.raises(ConfigError, match=re.escape("l2p_variant='l2p+' is not valid; choose "
                                                    "one of: l2p, l2p++")):
        _cfg(method="l2p", l2p_variant="l2p+")
    with pytest.raises(ConfigError, match="prompt_top_k=6 is more than the pool of 5"):
        _cfg(method="l2p", prompt_pool=5, prompt_top_k=6)
    with pytest.raises(ConfigError, match="prompt_length=5 is odd"):
        _cfg(method="l2p", l2p_variant="l2p++", prompt_length=5)
    with pytest.raises(ConfigError, match="pull_weight=-1 is not valid"):
        _cfg(method="l2p", pull_weight=-1)
    with pytest.raises(ConfigError, match="gpm_eps_start=0.99, gpm_eps_end=0.9"):
        _cfg(method="inflora", gpm_eps_start=0.99, gpm_eps_end=0.9)
    with pytest.raises(ConfigError, match="applies to method 'l2p' only, not 'inflora'"):
        _cfg(method="inflora", l2p_variant="l2p++")
    assert _cfg(method="l2p", l2p_variant="l2p++").prompt_shape() == (30, 20)
    assert math.isclose(_cfg(method="l2p").pull_weight, 0.1)


def test_efficiency_counts_the_query_pass_and_only_what_trains(trained_runs):
    from sdlora.analysis.core import efficiency

    _, runs = trained_runs
    inflora, l2p = efficiency(runs["inflora"]), efficiency(runs["l2p"])
    # InfLoRA: the task's B (6 blocks x k, v x 192 x rank 10); one plain pass after merging
    assert inflora["per_task"][-1]["learnable"] == 6 * 2 * 192 * 10
    assert inflora["per_task"][-1]["stored_adapter"] == 2 * 2 * (6 * 2 * 192 * 10)  # A+B, 2 tasks
    assert inflora["per_task"][-1]["stored_features"] > 0  # the DualGPM bases
    assert inflora["mergeable"] and inflora["forward_passes"] == 1
    assert inflora["gflops_per_image"] == pytest.approx(inflora["gflops_plain"], rel=1e-9)
    # L2P: pool 10 x length 5 x 192 + 10 keys; the query pass and a longer prompted pass
    assert l2p["per_task"][-1]["learnable"] == 10 * 5 * 192 + 10 * 192
    assert not l2p["mergeable"] and l2p["forward_passes"] == 2
    assert l2p["gflops_per_image"] > 2 * l2p["gflops_plain"]
    assert l2p["table5"]["gflops"] == l2p["gflops_per_image"]


@pytest.mark.parametrize("kw", VARIANTS[:2], ids=["inflora", "l2p"])
def test_resume_after_the_first_task_gives_the_same_numbers(trained_runs, tmp_path, kw):
    bench, runs = trained_runs

    class Stop(Exception):
        pass

    def stop(task, metrics):
        raise Stop

    with pytest.raises(Stop):
        train(_cfg(**kw), out=tmp_path / "run", progress=False, benchmark=bench,
              on_task_end=stop)
    resumed = train(resume=tmp_path / "run", progress=False, benchmark=bench)
    reference = runs[kw["method"]].metrics()
    assert resumed.metrics()["accuracy_matrix"] == reference["accuracy_matrix"]
    assert resumed.metrics()["task_info"] == reference["task_info"]
    losses = lambda run: [s["loss"] for s in run.steps() if s["task"] == 1]  # noqa: E731
    assert losses(resumed) == losses(runs[kw["method"]]) and losses(resumed)
