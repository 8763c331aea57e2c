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
    # issue 21: a folder of the same name made with other settings (here 1 epoch, now 2; a
    # clip) is refused with its name and what differs, neither reused nor retrained
    from sdlora.runs import RunError

    for change, says in ((dict(epochs=2), "'epochs': (1, 2)"),
                         (dict(grad_clip=1.0), "'grad_clip': (None, 1.0)")):
        with pytest.raises(RunError, match="made with other settings") as err:
            tune(replace(config, **change), tmp_path, grid=(1e-5, 0.03),
                 train_kwargs=dict(benchmark=poisoned), extend=0)
        assert says in str(err.value) and "frozen-lr1e-05-s0" in str(err.value)
    assert (tmp_path / "frozen-lr1e-05-s0" / "metrics.json").exists()  # left as it was


def test_search_extends_the_grid_past_a_winning_edge():
    from sdlora.tuning import search

    tried = []

    def peak_at(best):
        def score(lr):
            tried.append(lr)
            return -abs(math.log(lr / best))
        return score

    # the best of 0.002 / 0.008 / 0.03 is the low edge: one step of the grid's ratio below it;
    # the best is then the new edge, so one more step below shows it is a peak
    assert search([0.008, 0.002, 0.03], peak_at(0.0005)) == [0.000125, 0.0005, 0.002, 0.008,
                                                             0.03]
    assert search([0.008, 0.002, 0.03], peak_at(0.0005), extend=1) == [0.0005, 0.002, 0.008,
                                                                        0.03]
    # still at the edge after one step: a second step only when allowed
    assert search([0.002, 0.008, 0.03], peak_at(1e-5), extend=2)[:2] == [0.000125, 0.0005]
    # at the high edge: one step up (0.03 * 0.03 / 0.008)
    assert search([0.002, 0.008, 0.03], peak_at(1.0), extend=1) == [0.002, 0.008, 0.03, 0.112]
    # a best rate inside the grid: nothing added
    tried.clear()
    assert search([0.002, 0.008, 0.03], peak_at(0.008)) == [0.002, 0.008, 0.03]
    assert search([0.002, 0.008, 0.03], peak_at(0.002), extend=0) == [0.002, 0.008, 0.03]


def test_search_grows_to_its_cap_and_marks_an_edge_choice():
    from sdlora.tuning import MAX_EXTENSIONS, at_cap, search

    def rising(lr):  # the best rate is always the highest tried
        return lr

    grid = search([0.002, 0.008, 0.03], rising)
    # three steps of the grid's ratio above 0.03 (0.03^2 / 0.008 = 0.1125 -> 0.112, ...), then
    # the cap stops it: the chosen rate is an untested edge and says so
    assert MAX_EXTENSIONS == 3 and grid == [0.002, 0.008, 0.03, 0.112, 0.418, 1.56]
    assert at_cap(dict(grid=grid, chosen_lr=1.56))
    assert not at_cap(dict(grid=grid, chosen_lr=0.418))
    assert not at_cap(dict(grid=[0.002], chosen_lr=0.002))


def test_part_rates_lists_every_coupled_rate():
    from sdlora.config import part_rates

    # hide-prompt at lr 0.03: head x 0.1, identity-stage Adam lr / 60, its alignment lr / 6,
    # final-head alignment lr x 0.005 / 0.0028125 = lr x 16 / 9
    rates = part_rates(TrainConfig(method="hide-prompt", lr=0.03))
    assert list(rates) == ["prompts", "head", "identity stage", "identity alignment",
                           "final alignment"]
    assert list(rates.values()) == pytest.approx([0.03, 0.003, 0.0005, 0.005, 0.03 * 16 / 9])
    assert part_rates(TrainConfig(method="lora", lr=0.002)) == {"lr": 0.002}
    assert part_rates(TrainConfig(method="l2p", head_lr_scale=0.5, lr=0.01)) == {
        "lr": 0.01, "head": 0.005}


def test_train_without_lr_uses_the_validation_chosen_rate_and_says_why(tmp_path, monkeypatch,
                                                                        capsys):
    """Issue 21: `python -m sdlora train` without --lr trains at the rate chosen for the method
    on the benchmark (results/tuned_lr.json, as the Train page), says so in one line, and
    falls back to the paper's 0.008; --lr wins. In-process, stopped before training."""
    import json

    from sdlora import cli
    from sdlora import train as train_module
    from sdlora.tuning import chosen_lr, summary_key

    class Started(Exception):
        pass

    seen = []

    def fake_train(config, **kw):
        seen.append(config)
        raise Started

    monkeypatch.setattr(cli, "_check_before_training", lambda config: None)  # data, weights
    monkeypatch.setattr(train_module, "train", fake_train)
    monkeypatch.setenv("SDLORA_RESULTS", str(tmp_path))
    key = summary_key(TrainConfig(method="frozen", benchmark="digits"))
    (tmp_path / "tuned_lr.json").write_text(json.dumps({key: dict(
        chosen_lr=0.03, grid=[0.002, 0.008, 0.03, 0.112])}))
    common = ["train", "--benchmark", "digits", "--tasks", "2", "--device", "cpu", "--quiet",
              "--out", str(tmp_path / "run")]
    for extra, lr, says in (
            (["--method", "frozen"], 0.03, "lr 0.03: chosen on the validation split for "
                                            "frozen on digits"),
            (["--method", "lora"], 0.008, "lr 0.008: no rate chosen on validation for lora on "
                                          "digits (results/tuned_lr.json), so the paper's rate"),
            (["--method", "frozen", "--lr", "0.005"], 0.005, None)):
        with pytest.raises(Started):
            cli.main(common + extra)
        printed = capsys.readouterr().out
        assert seen[-1].lr == lr
        if says:
            assert printed.startswith(says) and printed.count("\n") == 1
        else:
            assert printed == ""
    # the Train page's rate is the same function's, with its number box as the fallback
    assert chosen_lr(seen[0])[0] == chosen_lr(replace(seen[0], lr=0.008), fallback=0.008)[0]
    # a damaged summary: the paper's rate, and the line says why
    (tmp_path / "tuned_lr.json").write_text("{oops")
    lr, why = chosen_lr(TrainConfig(method="frozen", benchmark="digits"))
    assert lr == 0.008 and "it cannot be read" in why and why.count("\n") == 0
