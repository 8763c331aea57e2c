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
                                    "fixed-first-direction", "full-ft"])
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
    "single-decoupled": ({"A.0", "B.0", "magnitude.0"}, False),
    "fixed-first-direction": ({"magnitude.0"}, False),
    "lora": ({"A.0", "B.0"}, False),
    "full-ft": (set(), True),
    "frozen": (set(), False),
}


def _lora_family() -> list[str]:
    from sdlora.methods import method_class
    from sdlora.model import ContinualViT
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
        assert adapter.residual_of_current() == pytest.approx(expected, rel=1e-9, abs=1e-9)
        adapter.freeze_current()
        adapter.add_component(len(adapter.components), 2, torch.Generator().manual_seed(5))
    assert adapter._gram.shape == (4, 4)
    # a direction in the span of the earlier ones: residual ~ 0 through the Gram route too
    with torch.no_grad():
        mix = 0.3 * adapter.frozen_directions[0] - 0.7 * adapter.frozen_directions[2]
        key = adapter.current.key
        adapter.A[key].zero_()
        adapter.B[key].zero_()
    adapter.direction = lambda k, mix=mix: mix  # the target as if A B had learned it
    assert adapter.residual_of_current() < 1e-6
