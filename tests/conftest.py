import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# One intra-op thread for torch, here and in every subprocess a test starts (training workers,
# the app's server, the CLI): the tests' models are tiny (batch <= 128, a 6-block width-192 ViT
# or ViT-Ti) and on a 2-core machine a second OpenMP thread costs more in synchronisation than
# it computes (measured on the 2-core machine, shared: tests/test_adapters.py and
# tests/test_methods.py ran in 12-19 s instead of 68-104 s). Set OMP_NUM_THREADS to override.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

from sdlora.data import ArrayDataset, Benchmark  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Every test writes runs under its own temporary cache, never the repo's."""
    monkeypatch.setenv("SDLORA_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)


def small_benchmark(per_class_train: int = 12, per_class_test: int = 6, classes: int = 4,
                    seed: int = 0) -> Benchmark:
    """A few real scikit-learn digits per class, so a run takes seconds."""
    from sdlora.data import load_benchmark

    full = load_benchmark("digits")

    def take(data: ArrayDataset, n: int) -> ArrayDataset:
        idx = torch.cat([torch.nonzero(data.labels == c).flatten()[:n] for c in range(classes)])
        return ArrayDataset(data.images[idx], data.labels[idx])

    return Benchmark("digits", take(full.train, per_class_train), take(full.test, per_class_test),
                     full.class_names[:classes])


@pytest.fixture
def tiny_benchmark() -> Benchmark:
    return small_benchmark()


def one_step_changes(model, params, x, y, task: int, classes: int = 2) -> set[str]:
    """Names of the state-dict tensors that one Adam step on `params` changes: cross-entropy
    over task `task`'s logits (`classes` a task) plus the method's auxiliary loss, as the
    training loop takes it."""
    import torch.nn.functional as F

    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimiser = torch.optim.Adam(params, lr=1e-2)
    model.train()
    loss = F.cross_entropy(model(x)[:, classes * task:classes * (task + 1)], y)
    if model.auxiliary_loss() is not None:
        loss = loss + model.auxiliary_loss()
    loss.backward()
    optimiser.step()
    after = model.state_dict()
    return {k for k in before if not torch.equal(before[k], after[k])}
