"""Hyperparameters are chosen on a validation split carved from the training data."""
from dataclasses import replace
import math

import pytest
import torch

from sdlora.config import ConfigError, TrainConfig
from sdlora.train import train

from conftest import small_benchmark


def test_validation_holdout_is_carved_from_training_data_only(tmp_path):
    bench = small_benchmark(per_class_train=10, per_class_test=6, classes=4)
    split = bench.validation_split(0.2, seed=3)
    # Stratified: 2 of each class's 10 training images held out; disjoint; test untouched.
    assert torch.bincount(split.test.labels).tolist() == [2, 2, 2, 2]
    assert torch.bincount(split.train.labels).tolist() == [8, 8, 8, 8]
    train_rows = {tuple(x.flatten().tolist()) for x in split.train.images}
    val_rows = [tuple(x.flatten().tolist()) for x in split.test.images]
    all_train = {tuple(x.flatten().tolist()) for x in bench.train.images}
    assert not train_rows & set(val_rows) and set(val_rows) <= all_train
    assert split.validation_split(0.2, seed=3).train.labels.numel() < split.train.labels.numel()
    assert torch.equal(bench.validation_split(0.2, seed=3).test.images, split.test.images)
    # A run with holdout='validation' reports accuracy on those held-out images.
    config = TrainConfig(method="frozen", benchmark="digits", tasks=2, epochs=1, batch_size=8,
                         holdout="validation", seed=3)
    run = train(config, out=tmp_path / "val", progress=False, benchmark=bench)
    assert sum(run.metrics()["test_counts"]) == 8
    with pytest.raises(ConfigError, match=r"val_fraction=1.5 is not valid"):
        TrainConfig(holdout="validation", val_fraction=1.5)
    with pytest.raises(ConfigError, match=r"holdout='val' is not valid; choose one of: test"):
        TrainConfig(holdout="val")


def test_tune_picks_the_best_validation_lr_and_never_reads_test(tmp_path):
    from sdlora.tuning import load_tuned, tune, tuned_lr

    bench = small_benchmark(per_class_train=10, per_class_test=6, classes=4)
    poisoned = type(bench)(bench.name, bench.train, bench.test.with_labels(
        torch.full_like(bench.test.labels, 10_000)), bench.class_names)  # unusable labels
    config = TrainConfig(method="frozen", benchmark="digits", tasks=2, epochs=1, batch_size=8)
    result = tune(config, tmp_path, grid=(1e-5, 0.03), train_kwargs=dict(benchmark=poisoned),
                  extend=0)
    scores = result["validation_acc"]
    assert set(scores) == {"1e-05", "0.03"}
    assert result["chosen_lr"] == max((1e-5, 0.03), key=lambda lr: scores[f"{lr:g}"])
    assert scores["0.03"] > scores["1e-05"]  # a head that barely moves stays near chance
    assert tuned_lr({result["key"]: result}, config) == result["chosen_lr"]
    # a rate chosen on one benchmark is not used for another
    assert tuned_lr({result["key"]: result}, replace(config, benchmark="renditions20")) is None
    assert load_tuned(tmp_path / "missing.json") == {}
    again = tune(config, tmp_path, grid=(1e-5, 0.03), train_kwargs=dict(benchmark=poisoned),
                 extend=0)
    assert again["validation_acc"] == scores  # finished runs are reused, not retrained


def test_search_extends_the_grid_past_a_winning_edge():
    from sdlora.tuning import search

    tried = []

    def peak_at(best):
        def score(lr):
            tried.append(lr)
            return -abs(math.log(lr / best))
        return score

    # the best of 0.002 / 0.008 / 0.03 is the low edge: one step of the grid's ratio below it
    assert search([0.008, 0.002, 0.03], peak_at(0.0005)) == [0.0005, 0.002, 0.008, 0.03]
    # still at the edge after one step: a second step only when allowed
    assert search([0.002, 0.008, 0.03], peak_at(1e-5), extend=2)[:2] == [0.000125, 0.0005]
    # at the high edge: one step up (0.03 * 0.03 / 0.008)
    assert search([0.002, 0.008, 0.03], peak_at(1.0)) == [0.002, 0.008, 0.03, 0.112]
    # a best rate inside the grid: nothing added
    tried.clear()
    assert search([0.002, 0.008, 0.03], peak_at(0.008)) == [0.002, 0.008, 0.03]
    assert search([0.002, 0.008, 0.03], peak_at(0.002), extend=0) == [0.002, 0.008, 0.03]
