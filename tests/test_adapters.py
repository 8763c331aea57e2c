"""Eqn. 4 and its relatives, on hand-computed values and on the embedded ViT."""
import math

import pytest
import torch

from sdlora.adapters import QVAdapter, least_squares_residual
from sdlora.config import METHODS, TrainConfig
from sdlora.train import build_model, task_generator


def _set(adapter: QVAdapter, key: str, A, B, alpha=None) -> None:
    with torch.no_grad():
        adapter.A[key].copy_(torch.tensor(A, dtype=torch.float32))
        adapter.B[key].copy_(torch.tensor(B, dtype=torch.float32))
        if alpha is not None:
            adapter.magnitude[key].fill_(alpha)


def test_eqn4_hand_computed():
    """W = W0 + alpha_1 A1B1/||A1B1||_F + alpha_2 A2B2/||A2B2||_F, worked out by hand.

    One block, d = 2, rank 1. Projection q (index 0) and v (index 1) get different directions.
    q: A1 B1 = [[3, 4], [0, 0]] (norm 5) -> [[.6, .8], [0, 0]];
       A2 B2 = [[0, 0], [2, 0]] (norm 2) -> [[0, 0], [1, 0]].
    v: A1 B1 = [[1, 1], [1, 1]] (norm 2) -> [[.5, .5], [.5, .5]];
       A2 B2 = [[0, 0], [0, -3]] (norm 3) -> [[0, 0], [0, -1]].
    alpha_1 = 2, alpha_2 = 0.5 (shared by q and v):
    q: [[1.2, 1.6], [0.5, 0]]; v: [[1, 1], [1, 0.5]].
    """
    adapter = QVAdapter(dim=2, depth=1)
    g = torch.Generator().manual_seed(0)
    adapter.add_component(0, 1, g)
    _set(adapter, "0", [[[1.0], [0.0]], [[1.0], [1.0]]], [[[3.0, 4.0]], [[1.0, 1.0]]], 2.0)
    adapter.freeze_current()
    adapter.add_component(1, 1, g)
    _set(adapter, "1", [[[0.0], [1.0]], [[0.0], [-1.0]]], [[[2.0, 0.0]], [[0.0, 3.0]]], 0.5)
    delta = adapter.delta()
    expected = torch.tensor([[[1.2, 1.6], [0.5, 0.0]], [[1.0, 1.0], [1.0, 0.5]]])
    torch.testing.assert_close(delta, expected, rtol=0, atol=1e-6)

    # Composition into timm's fused qkv (rows 0:2 = q, 2:4 = k untouched, 4:6 = v).
    w0 = torch.arange(12, dtype=torch.float32).view(6, 2)
    (w,) = adapter.qkv_weights([w0])
    torch.testing.assert_close(w[0:2], w0[0:2] + expected[0])
    torch.testing.assert_close(w[2:4], w0[2:4])
    torch.testing.assert_close(w[4:6], w0[4:6] + expected[1])


def test_released_normalisation_hand_computed():
    """The released code divides by ||A||_F ||B||_F. With rank 2, A = B = I: A B = I,
    ||A B||_F = sqrt(2) (paper: entries 1/sqrt(2)) but ||A||_F ||B||_F = 2 (entries 0.5)."""
    paper = QVAdapter(dim=2, depth=1, normalisation="product")
    released = QVAdapter(dim=2, depth=1, normalisation="factors")
    eye = [[[1.0, 0.0], [0.0, 1.0]]] * 2
    for adapter in (paper, released):
        adapter.add_component(0, 2, torch.Generator().manual_seed(0))
        _set(adapter, "0", eye, eye, 1.0)
    torch.testing.assert_close(paper.delta()[0], torch.eye(2) / math.sqrt(2))
    torch.testing.assert_close(released.delta()[0], torch.eye(2) * 0.5)


def test_new_direction_defined_from_first_step():
    """Random A and B (not LoRA's zero init): A B != 0, the direction has unit norm and the
    first gradients are finite and non-zero."""
    adapter = QVAdapter(dim=8, depth=2)
    adapter.add_component(0, 3, torch.Generator().manual_seed(1))
    direction = adapter.direction("0")
    norms = torch.linalg.matrix_norm(direction)
    torch.testing.assert_close(norms, torch.ones(4))
    (adapter.delta() * torch.randn(4, 8, 8)).sum().backward()
    for p in (adapter.A["0"], adapter.B["0"], adapter.magnitude["0"]):
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_magnitude_shared_by_every_projection():
    adapter = QVAdapter(dim=4, depth=3)
    adapter.add_component(0, 2, torch.Generator().manual_seed(0))
    assert list(adapter.magnitude["0"].shape) == []  # one scalar for all 6 projections
    before = adapter.delta().detach()
    with torch.no_grad():
        adapter.magnitude["0"].mul_(3.0)
    torch.testing.assert_close(adapter.delta(), 3.0 * before)  # every projection scales


def test_least_squares_residual_zero_in_span_one_orthogonal():
    g = torch.Generator().manual_seed(0)
    basis = torch.randn(3, 2, 5, 5, generator=g)
    basis = basis / torch.linalg.matrix_norm(basis)[..., None, None]
    inside = 0.7 * basis[0] - 1.3 * basis[2]
    inside = inside / torch.linalg.vector_norm(inside)  # one scale for all projections
    coef, residual = least_squares_residual(inside, basis)
    assert residual < 1e-6
    # An orthogonal target: zero where every basis direction lives.
    basis_z = basis.clone()
    basis_z[..., 0, :] = 0
    target = torch.zeros(2, 5, 5)
    target[:, 0, :] = 1 / math.sqrt(5)
    _, residual = least_squares_residual(target, basis_z)
    assert residual == pytest.approx(1.0, abs=1e-9)


def _config(method: str, **kw) -> TrainConfig:
    return TrainConfig(method=method, benchmark="digits", tasks=2, epochs=1, **kw)


def test_zero_magnitude_adapter_equals_base_model():
    model = build_model(_config("sd-lora"))
    model.begin_task(0, 5, task_generator(0, 0))
    with torch.no_grad():
        model.adapter.magnitude["0"].zero_()
    x = torch.rand(4, 3, 28, 28)
    with torch.no_grad():
        adapted = model.features(x)
        plain = model.backbone((x - model.mean) / model.std)
    torch.testing.assert_close(adapted, plain, rtol=0, atol=0)


@pytest.mark.parametrize("method", ["sd-lora", "lora", "sd-lora-kd", "no-rescale",
                                    "frozen-magnitudes", "fixed-first-direction", "full-ft"])
def test_merged_equals_unmerged(method):
    model = build_model(_config(method))
    for task in range(2):
        model.begin_task(task, 5, task_generator(0, task))
        with torch.no_grad():  # move away from the initialisation
            for p in model.trainable_parameters().get("adapter", []):
                p.add_(0.05 * torch.randn_like(p))
        model.end_task()
    model.eval()
    x = torch.rand(8, 3, 28, 28)
    merged = model.merged().eval()
    with torch.no_grad():
        # float32 composition in a different order: agree to 1e-5 relative to the logit scale
        torch.testing.assert_close(merged(x), model(x), rtol=1e-5, atol=1e-5)
    assert type(merged.model).__name__ == "VisionTransformer"
    plain_params = sum(p.numel() for p in model.backbone.parameters())
    head_params = model.head.num_classes * (model.backbone.num_features + 1)
    assert sum(p.numel() for p in merged.parameters()) == plain_params + head_params


EXPECTED_TRAINABLE = {
    # method: (task-2 trainable adapter tensors, backbone trains)
    "sd-lora": ({"A.1", "B.1", "magnitude.0", "magnitude.1"}, False),
    "sd-lora-rr": ({"A.1", "B.1", "magnitude.0", "magnitude.1"}, False),
    "sd-lora-kd": ({"A.1", "B.1", "magnitude.0", "magnitude.1"}, False),
    "no-rescale": ({"A.1", "B.1", "magnitude.1"}, False),
    "frozen-magnitudes": ({"A.1", "B.1", "magnitude.1"}, False),
    "single-decoupled": ({"A.0", "B.0", "magnitude.0"}, False),
    "fixed-first-direction": ({"magnitude.0"}, False),
    "lora": ({"A.0", "B.0"}, False),
    "full-ft": (set(), True),
    "frozen": (set(), False),
}


def _lora_family() -> list[str]:
    from sdlora.methods import method_class
    from sdlora.methods.lora import ContinualViT
    return [m for m in METHODS if method_class(m) is ContinualViT]


@pytest.mark.parametrize("method", _lora_family())
def test_only_the_methods_parameters_get_gradients(method):
    expected_adapter, backbone_trains = EXPECTED_TRAINABLE[method]
    model = build_model(_config(method))
    model.begin_task(0, 5, task_generator(0, 0))
    model.trainable_parameters()
    model.end_task()
    model.begin_task(1, 5, task_generator(0, 1))
    model.trainable_parameters()
    if model.adapter is not None:  # leave the zero starts (alpha_t = 0, LoRA's A = 0)
        with torch.no_grad():
            for p in model.adapter.parameters():
                p.add_(0.1)
    x = torch.rand(4, 3, 28, 28)
    model(x)[:, 5:10].logsumexp(1).sum().backward()
    got = set()
    if model.adapter is not None:
        for name, p in model.adapter.named_parameters():
            if p.grad is not None and p.grad.abs().sum() > 0:
                got.add(name)
    assert got == expected_adapter
    backbone_grads = [p.grad is not None for p in model.backbone.parameters()]
    assert all(backbone_grads) if backbone_trains else not any(backbone_grads)
    head_grads = [layer.weight.grad is not None for layer in model.head.tasks]
    assert head_grads == [False, True]  # only the current task's rows


def test_kd_absorbs_in_span_and_keeps_orthogonal():
    model = build_model(_config("sd-lora-kd", kd_tau=1e-3))
    model.begin_task(0, 5, task_generator(0, 0))
    model.end_task()
    first = model.adapter.direction("0").detach()
    # Task 2 learns exactly the first direction: in the span -> absorbed into alpha_1 (Eqn. 8).
    model.begin_task(1, 5, task_generator(0, 1))
    with torch.no_grad():
        model.adapter.A["1"].copy_(2.0 * model.adapter.A["0"])
        model.adapter.B["1"].copy_(model.adapter.B["0"])
        alpha_1 = model.adapter.magnitude["0"].item()
    info = model.end_task()
    assert info["absorbed"] and info["residual"] < 1e-6
    assert info["coefficients"] == pytest.approx([1.0], abs=1e-5)
    assert model.adapter.magnitude["0"].item() == pytest.approx(alpha_1 + 1.0, abs=1e-5)
    assert len(model.adapter.components) == 1
    torch.testing.assert_close(model.adapter.frozen_directions[0], first)
    # Task 3 learns a random direction: orthogonal in practice -> kept.
    model.begin_task(2, 5, task_generator(0, 2))
    info = model.end_task()
    assert not info["absorbed"] and info["residual"] > 0.9
    assert len(model.adapter.components) == 2


def test_rank_schedule_eqn6():
    cfg = TrainConfig(method="sd-lora-rr", tasks=10, benchmark="digits")
    assert [cfg.rank_for_task(t) for t in range(10)] == [10, 10, 10, 8, 8, 8, 8, 6, 6, 6]
    cfg = TrainConfig(method="sd-lora-rr", tasks=5, benchmark="digits", rr_mu=2, rr_nu=3,
                      rr_ranks=(7, 5, 2))
    assert [cfg.rank_for_task(t) for t in range(5)] == [7, 5, 2, 2, 2]
    assert TrainConfig(method="sd-lora", rank=4).rank_for_task(9) == 4


def _adapter_with_frozen(K: int, dim: int = 6, depth: int = 2, seed: int = 0) -> QVAdapter:
    adapter = QVAdapter(dim=dim, depth=depth)
    g = torch.Generator().manual_seed(seed)
    for t in range(K):
        adapter.add_component(t, 2, g, magnitude=1.0 + 0.1 * t)
        adapter.freeze_current()
    adapter.add_component(K, 2, g, magnitude=0.0)
    return adapter


@pytest.mark.parametrize("optimizer,weight_decay,chunk", [
    ("adam", 0.0, 1), ("adam", 0.01, None), ("sgd", 0.0, 2), ("sgd", 0.01, 1)])
def test_fused_step_matches_torch_optim(optimizer, weight_decay, chunk):
    """The fused pass (one read of the frozen directions per step) takes the same steps as
    torch.optim's Adam / SGD on the magnitudes with autograd's gradients, and keeps the cached
    sum equal to sum_k alpha_k D_k."""
    from sdlora.fused import FrozenMagnitudes, frozen_sum

    K = 5
    reference, fused_adapter = _adapter_with_frozen(K), _adapter_with_frozen(K)
    frozen = [reference.magnitude[c.key] for c in reference.frozen_components]
    kwargs = dict(lr=0.05, weight_decay=weight_decay)
    torch_opt = (torch.optim.Adam(frozen, **kwargs) if optimizer == "adam"
                 else torch.optim.SGD(frozen, momentum=0.9, **kwargs))
    chunk_bytes = None if chunk is None else chunk * fused_adapter.frozen_directions[0].numel() * 4
    fused = FrozenMagnitudes(fused_adapter, optimizer=optimizer, chunk_bytes=chunk_bytes, **kwargs)
    assert fused.chunk == (K if chunk is None else chunk)
    g = torch.Generator().manual_seed(1)
    for step in range(6):
        target = torch.randn(4, 6, 6, generator=g)  # a loss whose gradient changes with alpha
        for adapter, opt in ((reference, torch_opt), (fused_adapter, fused)):
            opt.zero_grad()
            loss = ((adapter.delta() - target) ** 2).sum() * (step + 1)
            loss.backward()
            opt.step()
        got = torch.stack([fused_adapter.magnitude[c.key] for c in fused_adapter.frozen_components])
        torch.testing.assert_close(got, torch.stack(frozen).detach(), rtol=1e-5, atol=1e-6)
        assert not torch.equal(got, torch.tensor([1.0 + 0.1 * t for t in range(K)]))
        torch.testing.assert_close(fused.sum.detach(),
                                   frozen_sum(got, fused_adapter.frozen_directions))
    fused.close()
    assert fused_adapter.frozen_sum is None
    torch.testing.assert_close(fused_adapter.delta(), reference.delta(), rtol=1e-5, atol=1e-6)


def test_fused_sum_blocks_changes_to_the_frozen_set():
    from sdlora.fused import FrozenMagnitudes

    adapter = _adapter_with_frozen(2)
    fused = FrozenMagnitudes(adapter)
    with pytest.raises(RuntimeError, match="close"):
        adapter.freeze_current()
    fused.close()
    adapter.freeze_current()
    assert adapter.frozen_directions.shape[0] == 3


def test_gram_residual_equals_least_squares():
    """The step logs' residual (through the cached Gram matrix, extended as directions freeze)
    is Eqn. 7's least-squares residual."""
    adapter = _adapter_with_frozen(3)
    for _ in range(2):
        direction = adapter.direction(adapter.current.key).detach()
        expected = least_squares_residual(direction, adapter.frozen_directions)[1]
        assert 0.5 < expected < 1.0
        # the Gram route normalises in float64, the direct fit a float32 direction: 1e-7
        assert adapter.residual_of_current() == pytest.approx(expected, rel=1e-7, abs=1e-9)
        adapter.freeze_current()
        adapter.add_component(len(adapter.components), 2, torch.Generator().manual_seed(5))
    assert adapter._gram.shape == (4, 4, adapter.num_projections)
    # a direction in the span of the earlier ones (twice component 2's product): residual ~ 0
    # through the Gram route too, relative and absolute
    with torch.no_grad():
        key = adapter.current.key
        adapter.A[key].copy_(2 * adapter.A["2"])
        adapter.B[key].copy_(adapter.B["2"])
    residuals = adapter.residuals_of_current()
    assert residuals["relative"] < 1e-6 and residuals["absolute"] < 1e-5


def _embed(A2, B2, rank: int = 10, dim: int = 192, P: int = 12):
    """Factors (P, dim, rank) and (P, rank, dim) whose product is the 2 x 2 matrix A2 @ B2 in
    the top-left corner of every projection, zero elsewhere."""
    A, B = torch.zeros(P, dim, rank), torch.zeros(P, rank, dim)
    A[:, :2, :2] = torch.tensor(A2)
    B[:, :2, :2] = torch.tensor(B2)
    return A, B


@pytest.mark.parametrize("method,alpha_1_on_task_2", [("no-rescale", 1.0),
                                                      ("frozen-magnitudes", 0.3)])
def test_no_rescale_is_table4_row3_hand_computed(method, alpha_1_on_task_2):
    """Table 4 row 3 on task 2: W0 + A1B1/||A1B1|| + alpha_2 A2B2/||A2B2||, the earlier direction
    with coefficient exactly 1 whatever alpha_1 was learned (frozen-magnitudes keeps it).

    A1 B1 = [[3, 4], [0, 0]] (norm 5) -> D1 = [[.6, .8], [0, 0]]; A2 B2 = [[0, 0], [2, 0]]
    (norm 2) -> D2 = [[0, 0], [1, 0]]; alpha_1 learned 0.3, alpha_2 = 0.5:
    no-rescale: [[.6, .8], [.5, 0]]; frozen-magnitudes: [[.18, .24], [.5, 0]].
    """
    model = build_model(_config(method))
    adapter = model.adapter
    model.begin_task(0, 5, task_generator(0, 0))
    A, B = _embed([[1.0, 0.0], [0.0, 0.0]], [[3.0, 4.0], [0.0, 0.0]])
    with torch.no_grad():
        adapter.A["0"].copy_(A)
        adapter.B["0"].copy_(B)
        adapter.magnitude["0"].fill_(0.3)  # as if task 1 had learned alpha_1 = 0.3
    model.end_task()
    assert adapter.magnitude["0"].item() == pytest.approx(0.3)  # the model after task 1
    model.begin_task(1, 5, task_generator(0, 1))
    assert adapter.magnitude["0"].item() == pytest.approx(alpha_1_on_task_2, abs=1e-7)
    A, B = _embed([[0.0, 0.0], [1.0, 0.0]], [[2.0, 0.0], [0.0, 0.0]])
    with torch.no_grad():
        adapter.A["1"].copy_(A)
        adapter.B["1"].copy_(B)
        adapter.magnitude["1"].fill_(0.5)
    groups = model.trainable_parameters()
    assert not any(p is adapter.magnitude["0"] for p in groups["adapter"])
    a1 = alpha_1_on_task_2
    expected = torch.zeros(12, 192, 192)
    expected[:, :2, :2] = torch.tensor([[0.6 * a1, 0.8 * a1], [0.5, 0.0]])
    torch.testing.assert_close(adapter.delta(), expected, rtol=0, atol=1e-6)
    fused = model.fuse_frozen()  # the training loop's route: the cached frozen sum
    assert not fused.trains
    torch.testing.assert_close(adapter.delta(), expected, rtol=0, atol=1e-6)
    fused.close()
    w0 = model.backbone.blocks[0].attn.qkv.weight.detach()
    w = model.composed_weights()["blocks.0.attn.qkv.weight"]
    torch.testing.assert_close(w[:192], w0[:192] + expected[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(w[384:], w0[384:] + expected[1], rtol=0, atol=1e-6)


def test_both_step_log_residuals_hand_computed():
    """One block (q, v), d = 2, one earlier component. Products: earlier q = [[1, 0], [0, 0]],
    v = [[0, 0], [0, 1]]; new q = [[2, 0], [0, 1]], v = [[0, 0], [0, 3]].
    Absolute (unnormalised, shared c): min_c (2 - c)^2 + 1 + (3 - c)^2 -> c = 2.5, residual
    sqrt(1.5). Relative (normalised: new q / sqrt 5, new v / 3, earlier already unit): min_c
    (2/sqrt5 - c)^2 + 1/5 + (1 - c)^2, divided by ||D_t|| = sqrt 2."""
    from sdlora.adapters import absolute_residual

    adapter = QVAdapter(dim=2, depth=1)
    g = torch.Generator().manual_seed(0)
    eye = [[1.0, 0.0], [0.0, 1.0]]
    adapter.add_component(0, 2, g)
    _set(adapter, "0", [eye, eye], [[[1.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 1.0]]], 1.0)
    adapter.freeze_current()
    adapter.add_component(1, 2, g)
    _set(adapter, "1", [eye, eye], [[[2.0, 0.0], [0.0, 1.0]], [[0.0, 0.0], [0.0, 3.0]]], 0.0)
    got = adapter.residuals_of_current()
    assert got["absolute"] == pytest.approx(math.sqrt(1.5), rel=1e-9)
    a = 2 / math.sqrt(5)
    c = (a + 1) / 2
    relative = math.sqrt((a - c) ** 2 + 1 / 5 + (1 - c) ** 2) / math.sqrt(2)
    assert got["relative"] == pytest.approx(relative, rel=1e-9)
    assert adapter.residual_of_current() == got["relative"]
    products = torch.stack([adapter.A["0"] @ adapter.B["0"]]).detach()
    coef, absolute = absolute_residual((adapter.A["1"] @ adapter.B["1"]).detach(), products)
    assert coef.tolist() == pytest.approx([2.5]) and absolute == pytest.approx(math.sqrt(1.5))


def test_gram_residuals_equal_least_squares_on_random_factors():
    """Both step-log residuals through the per-projection Gram route equal the direct
    least-squares fits (relative: normalised directions; absolute: unnormalised products)."""
    from sdlora.adapters import absolute_residual

    adapter = _adapter_with_frozen(4)
    with torch.no_grad():  # products of different sizes per component and projection
        for c in adapter.components:
            adapter.A[c.key].mul_(torch.rand(4, 1, 1) * 3)
    adapter.rebuild_frozen_directions()
    key = adapter.current.key
    products = torch.stack([adapter.A[c.key] @ adapter.B[c.key]
                            for c in adapter.frozen_components]).detach()
    target = (adapter.A[key] @ adapter.B[key]).detach()
    got = adapter.residuals_of_current()
    assert got["absolute"] == pytest.approx(absolute_residual(target, products)[1], rel=1e-7)
    expected = least_squares_residual(adapter.direction(key).detach(),
                                      adapter.frozen_directions)[1]
    assert got["relative"] == pytest.approx(expected, rel=1e-7)
    assert got["absolute"] > 1.5 * got["relative"]  # these products are not unit-norm


def test_kd_literal_rule_absorbs_a_small_product_the_relative_rule_keeps():
    """Algorithm 1 line 11 as written compares the residual of the unnormalised product with
    tau: a new product that is tiny passes whatever its direction; the scale-free rule keeps
    the same (random, nearly orthogonal) direction. Both residuals are recorded."""
    infos = {}
    for rule in ("relative", "absolute"):
        model = build_model(_config("sd-lora-kd", kd_residual=rule))
        model.begin_task(0, 5, task_generator(0, 0))
        model.end_task()
        model.begin_task(1, 5, task_generator(0, 1))
        with torch.no_grad():
            model.adapter.A["1"].mul_(1e-6)
        infos[rule] = model.end_task()
        assert len(model.adapter.components) == (1 if rule == "absolute" else 2)
    for info in infos.values():
        assert info["residual"] > 0.9 and info["residual_absolute"] < 9e-4
    assert infos["absolute"]["absorbed"] and not infos["relative"]["absorbed"]
    assert infos["absolute"]["kd_residual"] == "absolute"
    with pytest.raises(Exception, match="kd_residual='both' is not valid"):
        _config("sd-lora-kd", kd_residual="both")
