"""The method seam (sdlora/methods): SimpleCIL's invariances and plain-ViT form, the joint
upper bound, and the contract every method honours in the one training loop."""
import pytest
import torch

from sdlora.config import METHODS, ConfigError, TrainConfig
from sdlora.data import ArrayDataset, Benchmark, make_task_split
from sdlora.methods import NotMergeable, method_class
from sdlora.methods.simplecil import SimpleCIL
from sdlora.train import batches, build_model, evaluate, load_model, task_generator, train

from conftest import small_benchmark


def _cfg(**kw) -> TrainConfig:
    base = dict(benchmark="digits", tasks=2, epochs=1, batch_size=16, residual_every=0)
    base.update(kw)
    if base.get("method") == "hide-prompt":  # its equal budget: 1 identity + 1 prompt epoch
        base["epochs"] = max(base["epochs"], 2)
    return TrainConfig(**base)


def _fit_simplecil(bench: Benchmark, tasks: int, order_seed: int, batch: int) -> SimpleCIL:
    config = _cfg(method="simplecil", tasks=tasks, class_order_seed=order_seed,
                  eval_batch_size=batch)
    model = build_model(config)
    split = make_task_split(bench.num_classes, tasks, order_seed)
    for t in range(tasks):
        model.begin_task(t, split.classes_per_task, task_generator(0, t))
        model.fit_task(batches(split.task_data(bench.train, t), batch, torch.device("cpu")))
        model.end_task()
    return model, split


def _predicted_labels(model, split, bench: Benchmark, batch: int) -> torch.Tensor:
    """Predictions as *dataset* labels, so runs with different class orders compare."""
    model.eval()
    with torch.no_grad():
        out = torch.cat([model(x).argmax(1) for x, _ in batches(bench.test, batch,
                                                                 torch.device("cpu"))])
    return torch.tensor(split.class_order)[out]


def test_simplecil_does_not_depend_on_batch_size_or_task_order():
    bench = small_benchmark(per_class_train=10, per_class_test=8, classes=6)
    reference, split = _fit_simplecil(bench, tasks=3, order_seed=0, batch=64)
    expected = _predicted_labels(reference, split, bench, 64)
    # The prototypes are the class means, in dataset-label order, whatever the class order.
    means = torch.stack([reference.features(bench.train.images[bench.train.labels == c]).double()
                         .mean(0) for c in range(6)])
    by_label = reference.prototypes()[torch.argsort(torch.tensor(split.class_order))]
    assert torch.allclose(by_label, means, atol=1e-6)
    # ... and its predictions are nearest-cosine-prototype computed jointly on all classes.
    with torch.no_grad():
        test_features = reference.features(bench.test.images).double()
    cosine = torch.nn.functional.normalize(test_features, dim=1) @ torch.nn.functional.normalize(
        means, dim=1).T
    assert torch.equal(cosine.argmax(1), expected)
    for tasks, order_seed, batch in [(3, 0, 1), (3, 0, 5), (2, 7, 3), (6, 3, 64), (1, 11, 2)]:
        model, other = _fit_simplecil(bench, tasks, order_seed, batch)
        assert other.class_order != split.class_order or batch != 64
        assert torch.equal(_predicted_labels(model, other, bench, batch), expected), (
            tasks, order_seed, batch)
    assert (expected == bench.test.labels).float().mean() > 0.5  # 6 digits: far above chance


def test_simplecil_takes_no_gradient_step_and_its_plain_form_predicts_the_same(tmp_path):
    bench = small_benchmark(classes=4)
    before = {k: v.clone() for k, v in build_model(_cfg(method="simplecil")).backbone
              .state_dict().items()}
    run = train(_cfg(method="simplecil"), out=tmp_path / "run", progress=False, benchmark=bench)
    model = load_model(run, 1)
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert run.steps() == []  # no optimiser step: empty step logs
    metrics = run.metrics()
    split = make_task_split(4, 2, 0)
    assert evaluate(model, split, bench.test, 1, torch.device("cpu")) == metrics[
        "accuracy_matrix"][1]
    plain = model.merged()
    with torch.no_grad():
        x = bench.test.images
        assert torch.equal(plain(x).argmax(1), model(x).argmax(1))
    assert type(plain.model).__name__ == "VisionTransformer"


def test_simplecil_refuses_a_class_without_images():
    model = build_model(_cfg(method="simplecil"))
    model.begin_task(0, 3, task_generator(0, 0))
    images = torch.rand(4, 3, 28, 28)
    model.fit_task([(images, torch.tensor([0, 0, 1, 1]))])
    with pytest.raises(ValueError, match=r"classes \[2\] of task 1 have no training image"):
        model.end_task()


def test_joint_learns_all_classes_as_one_task(tmp_path):
    bench = small_benchmark(classes=4)
    run = train(_cfg(method="joint", joint_adapter="lora", epochs=2), out=tmp_path / "joint",
                progress=False, benchmark=bench)
    m = run.metrics()
    assert m["tasks"] == 1 and len(m["accuracy_matrix"]) == 1
    assert len(m["accuracy_matrix"][0]) == 1 and m["test_counts"] == [len(bench.test)]
    model = load_model(run, 0)
    assert model.head.num_classes == 4 and model.kind == "lora"
    assert m["acc"] > 40.0  # 4 digits jointly, 2 epochs: well above chance (25%)
    with pytest.raises(ConfigError, match="joint_adapter='adapter' is not valid"):
        _cfg(method="joint", joint_adapter="adapter")
    with pytest.raises(ValueError, match="tasks=3 does not divide"):
        train(_cfg(method="joint", tasks=3), out=tmp_path / "bad", progress=False,
              benchmark=bench)


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_follows_the_contract(method):
    cls = method_class(method)
    model = build_model(_cfg(method=method))
    assert isinstance(model, cls)
    model.begin_task(0, 2, task_generator(0, 0))
    x = torch.rand(3, 3, 28, 28)
    if model.trains_by_gradient:
        model.prepare_task(lambda: [(x, torch.tensor([0, 1, 1]))])
        groups = model.trainable_parameters()
        assert groups and all(p.requires_grad for g in groups.values() for p in g)
    else:
        model.fit_task([(x, torch.tensor([0, 1, 1]))])
    assert model(x).shape == (3, 2)
    model.eval()
    with torch.no_grad():
        before_end = model(x)
    model.end_task()
    tensors, meta = model.checkpoint_tensors(), model.checkpoint_meta()
    again = build_model(_cfg(method=method))
    again.load_checkpoint(tensors, dict(meta, task=0, classes_per_task=2))
    model.eval(), again.eval()
    with torch.no_grad():
        assert torch.allclose(model(x), before_end, atol=1e-5)  # ending a task keeps the model
        assert torch.allclose(again(x), model(x), atol=1e-6)
        try:
            plain = model.merged()
        except NotMergeable:
            return
        assert torch.equal(plain(x).argmax(1), model(x).argmax(1))


def test_unknown_method_names_the_choices():
    with pytest.raises(ConfigError, match="method='l3p' is not valid; choose one of: .*simplecil"):
        method_class("l3p")
