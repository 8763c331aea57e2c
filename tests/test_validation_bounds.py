"""Issue 23, items 4, 5, 6 and 12: job ids that cannot collide; values that passed validation
and then failed inside a run are refused up front; commands that never ended are bounded;
options that mean nothing for the run are refused (or dropped, with a warning, from a saved
configuration). All in-process: no training starts in this file."""
import json
import logging
import multiprocessing
import time
from pathlib import Path

import pytest
import torch

from sdlora import cli, jobs
from sdlora.config import ConfigError, TrainConfig
from sdlora.data import ArrayDataset, Benchmark, DataError
from sdlora.runs import RunFolder, list_runs

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def no_training(monkeypatch):
    """A command that got past its checks would train (or wait for jobs): fail instead."""
    def started(*args, **kwargs):
        raise AssertionError("the command started work instead of refusing its input")

    monkeypatch.setattr("sdlora.train.train", started)
    monkeypatch.setattr("sdlora.jobs.worker_loop", started)


def _cli(argv, capsys) -> tuple[int, str]:
    code = cli.main(argv)
    return code, capsys.readouterr().err


# -- item 4: two submitters x 150 jobs, every job exactly once ------------------------------
def _submit_many(config, barrier, out: str, n: int) -> None:
    barrier.wait()  # both ready: submit at the same instant
    ids = [jobs.submit(config, start_worker=False)["id"] for _ in range(n)]
    Path(out).write_text("\n".join(ids))


def test_two_submitters_never_share_a_job_id(tmp_path):
    """Ids are millisecond stamps; two processes submitting at once got the same one (a job
    reported queued to both that existed once, or a ValueError). Forked, so nothing is
    imported again: the submits are what takes the time."""
    from sdlora.train import new_run_id  # noqa: F401 - imported before the fork, as submit's

    config = TrainConfig(benchmark="digits", tasks=2, epochs=1)
    start = time.time()
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(2)
    outs = [tmp_path / "a.ids", tmp_path / "b.ids"]
    procs = [context.Process(target=_submit_many, args=(config, barrier, str(out), 150))
             for out in outs]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0], "a submit failed"
    reported = [out.read_text().split("\n") for out in outs]
    assert len(set(reported[0]) | set(reported[1])) == 300  # no id reported to both
    queued = [j["id"] for j in jobs.list_jobs()]
    assert sorted(queued) == sorted(reported[0] + reported[1])  # each job exists exactly once
    assert all(j["state"] == "queued" and j["run"].endswith(j["id"]) for j in jobs.list_jobs())
    assert time.time() - start < 20  # about 2 s on 2 busy cores


def test_a_given_run_id_that_is_taken_is_refused():
    config = TrainConfig(benchmark="digits", tasks=2, epochs=1)
    jobs.submit(config, run_id="mine", start_worker=False)
    with pytest.raises(ValueError, match="'mine' already exists"):
        jobs.submit(config, run_id="mine", start_worker=False)
    assert [j["id"] for j in jobs.list_jobs()] == ["mine"]


# -- item 5: values that passed validation, then failed with a traceback --------------------
@pytest.mark.parametrize("argv, says", [
    (["--new-magnitude-init", "1e300"], "--new-magnitude-init 1e+300: new_magnitude_init=1e+300 "
                                        "is not valid; it must be from -100 to 100"),
    (["--lr", "1e308"], "--lr 1e+308: lr=1e+308 is not valid; a learning rate must be from "
                        "1e-10 to 10"),
    (["--lr", "1e-320"], "lr=1e-320 is not valid; a learning rate must be from 1e-10"),
    (["--rank", "100000000"], "rank=100000000 is not valid: a rank above the width 192 of "
                              "backbone='glyph-vit' adds nothing; choose 1..192"),
    (["--method", "l2p", "--prompt-length", "1000000"],
     "prompt_length=1000000 is not valid: it adds 5000000 tokens to a block's sequence, more "
     "than 1024"),
    (["--method", "l2p", "--prompt-pool", "1000", "--prompt-length", "1000",
      "--prompt-top-k", "1",
      "--backbone", "vit_base_patch16_224.augreg2_in21k_ft_in1k"],
     "the prompts would take about 2.9 GiB, more than 1"),
    (["--hide-tii-lr", "1e300", "--method", "hide-prompt"], "hide_tii_lr=1e+300 is not valid"),
    (["--hide-centroids", "100000000", "--method", "hide-prompt"],
     "hide_centroids=100000000 is not valid; choose 1..1024"),
    (["--weight-decay", "1e300"], "weight_decay=1e+300 must be from 0 to 1"),
    (["--method", "l2p", "--pull-weight", "1e300"], "pull_weight=1e+300 is not valid"),
    (["--num-workers", "100000"], "num_workers=100000 is not valid"),
    (["--epochs", "1000000000000"], "epochs=1000000000000 is not valid; choose 1..10000"),
])
def test_values_that_cannot_run_are_refused_before_training(argv, says, capsys, no_training):
    code, err = _cli(["train", *argv], capsys)
    assert code == 2 and err.startswith("error: ") and says in err, err
    assert len(err.strip().splitlines()) == 1


def test_rank_beyond_the_width_from_a_config_file(tmp_path, capsys, no_training):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(dict(TrainConfig().to_dict(), rank=10**6)))
    code, err = _cli(["train", "--config", str(path)], capsys)
    assert code == 2 and "rank=1000000 is not valid: a rank above the width 192" in err


def test_rank_is_bounded_by_the_backbones_own_width():
    """The width of a timm tag comes from its shapes (built on the meta device), not a table."""
    vit_b = "vit_base_patch16_224.augreg2_in21k_ft_in1k"
    assert TrainConfig(backbone=vit_b, rank=768).rank == 768
    with pytest.raises(ConfigError, match="rank=769 is not valid: a rank above the width 768"):
        TrainConfig(backbone=vit_b, rank=769)
    with pytest.raises(ConfigError, match=r"rr_ranks=\(10, 8, 600\) is not valid"):
        TrainConfig(method="sd-lora-rr", rr_ranks=(10, 8, 600))


def test_val_fraction_that_leaves_a_class_no_training_image():
    labels = torch.arange(4).repeat(12)  # 12 training images a class
    data = ArrayDataset(torch.zeros(48, 3, 8, 8), labels)
    bench = Benchmark("four", data, data, [str(c) for c in range(4)])
    with pytest.raises(DataError, match=r"val_fraction=0.999 leaves no training image for a "
                                        r"class with 12 training images; choose from 0.083 to "
                                        r"0.917"):
        bench.validation_split(0.999)
    split = bench.validation_split(0.917)  # the top of the range: one training image a class
    assert len(split.train) == 4 and len(split.test) == 44


def test_val_fraction_on_the_command_line(capsys, no_training):
    code, err = _cli(["train", "--benchmark", "digits", "--holdout", "validation",
                      "--val-fraction", "0.999"], capsys)
    assert code == 2 and "val_fraction=0.999 leaves no training image" in err, err


# -- item 6: commands that never ended ------------------------------------------------------
@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_worker_idle_exit_must_be_a_finite_time(value, capsys, no_training):
    code, err = _cli(["worker", "--idle-exit", value], capsys)
    assert code == 2 and f"--idle-exit {float(value)} is not valid" in err, err


def test_interpolation_points_are_bounded(capsys, no_training):
    from sdlora.analysis.core import interpolate

    code, err = _cli(["analyse", "some-run", "--what", "interpolation", "--points",
                      "100000000"], capsys)
    assert code == 2 and "--points 100000000 is not valid" in err and "to 101" in err, err
    with pytest.raises(ValueError, match="points=100000000; from 2"):
        interpolate("some-run", 1, points=100_000_000)


# -- item 12: options that mean nothing for the run -----------------------------------------
@pytest.mark.parametrize("given, says", [
    (dict(method="sd-lora", kd_tau=1e-3), "kd_tau=0.001 applies to method 'sd-lora-kd' only, "
                                          "not 'sd-lora'"),
    (dict(method="sd-lora", prompt_pool=20), "prompt_pool=20 applies to methods 'l2p', "
                                             "'dualprompt', 'coda-prompt' only"),
    (dict(method="sd-lora", gpm_eps_start=0.9), "gpm_eps_start=0.9 applies to method "
                                                "'inflora' only"),
    (dict(method="lora", kd_residual="absolute"), "kd_residual='absolute' applies to method "
                                                  "'sd-lora-kd' only, not 'lora'"),
    (dict(method="lora", new_magnitude_init=0.0), "new_magnitude_init=0.0 applies to the "
                                                  "methods that add a magnitude"),
    (dict(method="lora", rr_ranks=(6, 4, 2)), "rr_ranks=(6, 4, 2) applies to method "
                                              "'sd-lora-rr' only"),
    (dict(method="lora", joint_adapter="sd-lora"), "joint_adapter='sd-lora' applies to method "
                                                   "'joint' only, not 'lora'"),
    (dict(method="joint", joint_adapter="lora", magnitude_init=2.0),
     "magnitude_init=2.0 applies to the methods with learned magnitudes"),
    (dict(data_root="/data"), "data_root='/data' applies to the paper's benchmarks (read from "
                              "a folder) only, not the embedded benchmark 'glyphs40'"),
    (dict(amp="bf16", device="cpu"), "amp='bf16' applies to a CUDA device"),
    (dict(val_fraction=0.3), "val_fraction=0.3 applies to holdout='validation' only"),
    (dict(method="full-ft", rank=4), "rank=4 applies to the methods with low-rank adapters"),
    (dict(method="hide-prompt", rank=4), "only, not 'hide-prompt'"),
    (dict(method="sd-lora-rr", rank=4), "sd-lora-rr's ranks are rr_ranks) only"),
    (dict(method="joint", joint_adapter="full-ft", rank=4),
     "only, not 'joint' with joint_adapter='full-ft'"),
])
def test_options_that_do_not_apply_are_refused(given, says):
    with pytest.raises(ConfigError) as err:
        TrainConfig(**given)
    assert says in str(err.value)


def test_options_that_apply_are_kept():
    assert TrainConfig(method="sd-lora-kd", kd_tau=1e-3).kd_tau == 1e-3
    assert TrainConfig(method="joint", joint_adapter="sd-lora",
                       magnitude_init=2.0).magnitude_init == 2.0
    assert TrainConfig(holdout="validation", val_fraction=0.3).val_fraction == 0.3
    assert TrainConfig(benchmark="imagenet-r", data_root="/data").data_root == "/data"
    for method in ("lora", "sd-lora", "single-decoupled", "inflora"):
        assert TrainConfig(method=method, rank=4).rank == 4
    assert TrainConfig(method="joint", joint_adapter="sd-lora", rank=4).rank == 4
    assert TrainConfig(method="full-ft").with_options(rank=4).rank == 10  # the Train page's way
    # a script's setting spread over methods stays where it means something
    spread = TrainConfig(new_magnitude_init=0.0)
    assert spread.with_options(method="lora").new_magnitude_init is None
    assert spread.with_options(method="sd-lora-kd").new_magnitude_init == 0.0


def test_a_flag_that_does_not_apply_names_the_flag(capsys, no_training):
    code, err = _cli(["train", "--method", "lora", "--kd-residual", "absolute"], capsys)
    assert code == 2 and err.startswith("error: --kd-residual absolute: kd_residual=") \
        and "applies to method 'sd-lora-kd' only" in err, err


def test_amp_on_an_auto_device_without_cuda(monkeypatch, capsys, no_training):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    code, err = _cli(["train", "--amp", "bf16", "--benchmark", "digits", "--tasks", "2"],
                     capsys)
    assert code == 2 and "amp='bf16' applies to a CUDA device" in err, err


def test_a_saved_config_drops_what_does_not_apply_with_one_warning(tmp_path, caplog,
                                                                    no_training):
    """Older versions saved these; a run folder or --config file with them still loads."""
    old = dict(TrainConfig(method="lora").to_dict(), kd_tau=1e-3, new_magnitude_init=0.0,
               rr_ranks=[6, 4, 2])
    with caplog.at_level(logging.WARNING, logger="sdlora.config"):
        config = TrainConfig.from_dict(old)
    assert (config.kd_tau, config.new_magnitude_init, config.rr_ranks) == (9e-4, None, (10, 8, 6))
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 3 and all(len(m.splitlines()) == 1 for m in warned)
    assert any(m.startswith("kd_tau=0.001 dropped from a saved configuration") for m in warned)
    # at their defaults these options are not given: nothing to warn about
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sdlora.config"):
        TrainConfig.from_dict(TrainConfig(method="lora").to_dict())
    assert not caplog.records


def test_every_demo_run_still_loads():
    runs = list_runs(REPO / "cache" / "demo")
    assert len(runs) >= 8
    for run in runs:
        config = TrainConfig.from_dict(run.config())
        assert RunFolder(run.path).metrics()["config"]["method"] == config.method


def test_a_cache_that_is_a_file_is_named(tmp_path, monkeypatch, capsys):
    cache = tmp_path / "cache-file"
    cache.write_text("")
    monkeypatch.setenv("SDLORA_CACHE", str(cache))
    with pytest.raises(NotADirectoryError, match=f"{cache} is a file"):
        list_runs()
    code, err = _cli(["runs"], capsys)
    assert code == 2 and f"SDLORA_CACHE={cache} must name a folder" in err, err

