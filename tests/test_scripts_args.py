"""scripts/*.py on ordinary bad input: one argparse `error:` line naming the bad value, exit
status 2, no traceback, and nothing trained, written or deleted (issue 23, item 7).

Each script's main() runs in-process with a patched sys.argv; training is replaced by a stand-in
that fails the test, so a check that comes too late shows as a failure, never as minutes of
training.
"""
import importlib.util
import json
import os
import runpy
import sys
from pathlib import Path

import pytest

from sdlora.config import TrainConfig
from sdlora.runs import atomic_write_json

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
_loaded: dict = {}


def _script(name: str):
    if name not in _loaded:
        spec = importlib.util.spec_from_file_location(f"script_{Path(name).name}",
                                                  SCRIPTS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _loaded[name] = module
    return _loaded[name]


def _forbidden(*args, **kwargs):
    raise AssertionError(f"trained or wrote before refusing the arguments: {args} {kwargs}")


@pytest.fixture
def files(tmp_path, monkeypatch):
    """Bad inputs of every kind, and a folder this process may not write."""
    monkeypatch.setenv("SDLORA_DATA", str(tmp_path / "no-data"))
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "not.json").write_text("{not json")
    (tmp_path / "latin1.json").write_bytes(b'{"caf\xe9": 1}')
    (tmp_path / "shape.json").write_text(json.dumps({"sd-lora@glyphs40": {"lr": 0.01}}))
    (tmp_path / "a-folder").mkdir()
    (tmp_path / "file.txt").write_text("a file, not a folder")
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    readonly.chmod(0o555)
    if os.access(readonly, os.W_OK):  # root writes anywhere: the folder is read-only to others
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if (
            mode & os.W_OK and Path(p) == readonly) else real(p, mode, **kw))
    # an unfinished renditions20 SD-LoRA run, and a glyphs40 KD run where kd_rules puts its own
    atomic_write_json(tmp_path / "r20-s0" / "config.json",
                      TrainConfig(method="sd-lora", benchmark="renditions20").to_dict())
    atomic_write_json(tmp_path / "kd" / "sd-lora-kd-s0" / "config.json",
                      TrainConfig(method="sd-lora-kd").to_dict())
    yield tmp_path
    readonly.chmod(0o755)


T = "{tmp}"  # replaced by the test's folder
RT = ["--no-train", "--root", f"{T}/runs"]
CASES = {
    # results_table.py
    "table-benchmark": ("results_table", ["--benchmark", "bogus", *RT], "bogus"),
    "table-set-type": ("results_table", ["--set", "epochs=abc", *RT], "epochs=abc"),
    "table-set-key": ("results_table", ["--set", "bogus=1", *RT], "bogus=1"),
    "table-set-value": ("results_table", ["--set", "epochs=0", *RT], "epochs=0"),
    "table-tasks": ("results_table", ["--benchmark", "digits", "--set", "tasks=3", "--root",
                                      f"{T}/runs"], "tasks=3 does not divide"),
    "table-seeds": ("results_table", ["--seeds", "-1", *RT], "--seeds -1"),
    "table-tuned-missing": ("results_table", ["--tuned", f"{T}/missing.json", *RT],
                            "no such file"),
    "table-tuned-folder": ("results_table", ["--tuned", f"{T}/a-folder", *RT], "is a folder"),
    "table-tuned-not-json": ("results_table", ["--tuned", f"{T}/not.json", *RT], "not JSON"),
    "table-tuned-bytes": ("results_table", ["--tuned", f"{T}/latin1.json", *RT], "not JSON"),
    "table-tuned-list": ("results_table", ["--tuned", f"{T}/list.json", *RT], "JSON list"),
    "table-tuned-shape": ("results_table", ["--tuned", f"{T}/shape.json", *RT], "chosen_lr"),
    "table-json-readonly": ("results_table", ["--json", f"{T}/readonly/t.json", *RT],
                            "read-only"),
    "table-json-under-file": ("results_table", ["--json", f"{T}/file.txt/t.json", *RT],
                              "which is a file"),
    "table-json-folder": ("results_table", ["--json", f"{T}/a-folder", *RT], "is a folder"),
    # tune_lr.py
    "tune-show-list": ("tune_lr", ["--show", "--summary", f"{T}/list.json"], "JSON list"),
    "tune-show-missing": ("tune_lr", ["--show", "--summary", f"{T}/missing.json"],
                          "no such file"),
    "tune-show-shape": ("tune_lr", ["--show", "--summary", f"{T}/shape.json"], "chosen_lr"),
    "tune-benchmark": ("tune_lr", ["--benchmark", "bogus", "--summary", f"{T}/s.json",
                                   "--root", f"{T}/runs"], "bogus"),
    "tune-adapter": ("tune_lr", ["--methods", "joint", "--joint-adapters", "bogus",
                                 "--summary", f"{T}/s.json", "--root", f"{T}/runs"], "bogus"),
    "tune-seeds": ("tune_lr", ["--methods", "lora", "--seeds", "-1", "--summary",
                               f"{T}/s.json", "--root", f"{T}/runs"], "--seeds -1"),
    "tune-summary-list": ("tune_lr", ["--methods", "lora", "--summary", f"{T}/list.json",
                                      "--root", f"{T}/runs"], "JSON list"),
    "tune-summary-readonly": ("tune_lr", ["--methods", "lora", "--summary",
                                          f"{T}/readonly/s.json", "--root", f"{T}/runs"],
                              "read-only"),
    # kd_rules.py
    "kd-pattern": ("kd_rules", ["--sd-lora-runs", "/x/{bogus}", "--root", f"{T}/kd"], "bogus"),
    "kd-pattern-no-seed": ("kd_rules", ["--seeds", "0", "1", "--sd-lora-runs", f"{T}/r20-s0",
                                        "--root", f"{T}/kd"], "same folder"),
    "kd-tau": ("kd_rules", ["--tau", "nan", "--seeds", "0", "--sd-lora-runs", f"{T}/r20-s{{seed}}",
                            "--root", f"{T}/kd"], "--tau nan"),
    "kd-seeds": ("kd_rules", ["--seeds", "-1", "--sd-lora-runs", f"{T}/r20-s{{seed}}",
                              "--root", f"{T}/kd"], "--seeds -1"),
    "kd-reads-never-trains": ("kd_rules", ["--seeds", "0", "--sd-lora-runs",
                                           f"{T}/r20-s{{seed}}", "--root", f"{T}/kd"],
                              "unfinished (0/5 tasks)"),
    "kd-benchmark-mismatch": ("kd_rules", ["--seeds", "0", "--benchmark", "glyphs40",
                                           "--sd-lora-runs", f"{T}/r20-s{{seed}}", "--root",
                                           f"{T}/kd"], "renditions20"),
    "kd-other-kd-run": ("kd_rules", ["--seeds", "0", "--benchmark", "renditions20",
                                     "--sd-lora-runs", f"{T}/new-s{{seed}}", "--root",
                                     f"{T}/kd"], "other settings"),
    "kd-root-file": ("kd_rules", ["--seeds", "0", "--sd-lora-runs", f"{T}/new-s{{seed}}",
                                  "--root", f"{T}/file.txt"], "is a file"),
    # magnitude_start.py
    "mag-benchmark": ("magnitude_start", ["--benchmark", "bogus"], "bogus"),
    "mag-epochs": ("magnitude_start", ["--epochs", "0", "--root", f"{T}/m"], "--epochs 0"),
    "mag-lr": ("magnitude_start", ["--lr", "nan", "--root", f"{T}/m"], "--lr nan"),
    "mag-seeds": ("magnitude_start", ["--seeds", "-1", "--root", f"{T}/m"], "--seeds -1"),
    "mag-root": ("magnitude_start", ["--root", f"{T}/file.txt"], "is a file"),
    "mag-no-data": ("magnitude_start", ["--benchmark", "cifar100", "--root", f"{T}/m"],
                    "cifar100"),
    # probe_default.py
    "probe-benchmark": ("probe_default", ["--benchmark", "bogus"], "bogus"),
    "probe-backbone": ("probe_default", ["--backbone", "bogus"], "bogus"),
    "probe-tasks": ("probe_default", ["--tasks", "0"], "--tasks 0"),
    "probe-tasks-divide": ("probe_default", ["--benchmark", "digits", "--tasks", "3"],
                           "tasks=3 does not divide"),
    "probe-epochs": ("probe_default", ["--epochs", "-1"], "--epochs -1"),
    "probe-lr": ("probe_default", ["--lr", "inf"], "--lr inf"),
    "probe-magnitude": ("probe_default", ["--new-magnitude-init", "nan"],
                        "--new-magnitude-init nan"),
    "probe-methods": ("probe_default", ["--methods", "bogus"], "bogus"),
    "probe-seeds": ("probe_default", ["--seeds", "-1"], "--seeds -1"),
    "probe-weights": ("probe_default", ["--weights", f"{T}/missing.safetensors"], "not found"),
    "probe-kwargs-not-json": ("probe_default", ["--bench-kwargs", "{classes: 40}"], "not JSON"),
    "probe-kwargs-list": ("probe_default", ["--bench-kwargs", "[40]"], "JSON list"),
    "probe-kwargs-unknown": ("probe_default", ["--bench-kwargs", '{"bogus": 1}'], "bogus"),
    "probe-kwargs-file-benchmark": ("probe_default", ["--benchmark", "cifar100",
                                                      "--bench-kwargs", "{}"], "cifar100"),
    # gpu_check.py
    "gpu-out-file": ("gpu_check", ["--device", "cpu", "--out", f"{T}/file.txt"], "is a file"),
    "gpu-device": ("gpu_check", ["--device", "gpu", "--out", f"{T}/g"], "gpu"),
    "gpu-tasks": ("gpu_check", ["--device", "cpu", "--tasks", "7", "--out", f"{T}/g"],
                  "--tasks 7"),
    "gpu-per-class": ("gpu_check", ["--device", "cpu", "--per-class", "0", "--out", f"{T}/g"],
                      "--per-class 0"),
    "gpu-backbone": ("gpu_check", ["--device", "cpu", "--backbone", "bogus", "--out",
                                   f"{T}/g"], "bogus"),
    # make_tradeoff.py
    "trade-seeds": ("make_tradeoff", ["--seeds", "-1", *RT], "--seeds -1"),
    "trade-shard": ("make_tradeoff", ["--shard", "2/2", *RT], "--shard '2/2'"),
    "trade-tuned-missing": ("make_tradeoff", ["--tuned", f"{T}/missing.json", *RT],
                            "no such file"),
    "trade-tuned-list": ("make_tradeoff", ["--tuned", f"{T}/list.json", *RT], "JSON list"),
    "trade-tuned-shape": ("make_tradeoff", ["--tuned", f"{T}/shape.json", *RT], "chosen_lr"),
    "trade-json-readonly": ("make_tradeoff", ["--json", f"{T}/readonly/t.json", *RT],
                            "read-only"),
    "trade-json-folder": ("make_tradeoff", ["--json", f"{T}/a-folder", *RT], "is a folder"),
    "trade-root-file": ("make_tradeoff", ["--root", f"{T}/file.txt", "--json", f"{T}/t.json"],
                        "is a file"),
    "trade-root-file-no-train": ("make_tradeoff", ["--root", f"{T}/file.txt", "--no-train",
                                                   "--json", f"{T}/t.json"], "is a file"),
    "trade-no-data": ("make_tradeoff", ["--benchmark", "cifar100", "--root", f"{T}/runs",
                                        "--json", f"{T}/t.json"], "cifar100"),
    # path_plane_table.py
    "plane-unfinished": ("path_plane_table", ["--runs", f"{T}/r20-s0"], "a path needs two"),
    # hide_budget.py
    "hide-benchmark": ("hide_budget", ["--benchmark", "bogus"], "bogus"),
    "hide-epochs": ("hide_budget", ["--epochs", "0"], "--epochs 0"),
    "hide-epochs-one": ("hide_budget", ["--epochs", "1"], "--epochs 1"),
    "hide-tasks": ("hide_budget", ["--tasks", "0"], "--tasks 0"),
    "hide-tasks-divide": ("hide_budget", ["--benchmark", "digits", "--tasks", "3"],
                          "tasks=3 does not divide"),
    "hide-no-data": ("hide_budget", ["--benchmark", "cifar100"], "cifar100"),
    # bench/path_plane.py
    "bench-plane-grid": ("../bench/path_plane", ["--run", f"{T}/r20-s0", "--grid", "0"],
                         "--grid 0"),
    "bench-plane-images": ("../bench/path_plane", ["--run", f"{T}/r20-s0", "--images", "-1"],
                           "--images -1"),
    "bench-plane-unfinished": ("../bench/path_plane", ["--run", f"{T}/r20-s0"],
                               "a path needs two"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_script_refuses_bad_input_in_one_line(case, files, monkeypatch, capsys):
    name, argv, named = CASES[case]
    module = _script(name)
    monkeypatch.setattr("sdlora.train.train", _forbidden)
    for attr in ("train", "run", "make_weights", "make_imagenet_r",  # gpu_check's work
                 "collect", "path_plane"):  # make_tradeoff's runs, the planes' analyses
        if hasattr(module, attr):
            monkeypatch.setattr(module, attr, _forbidden)
    monkeypatch.setattr("sdlora.analysis.plane.path_plane", _forbidden)
    before = sorted(p.relative_to(files) for p in files.rglob("*"))
    monkeypatch.setattr(sys, "argv", [f"{name}.py"] + [a.replace(T, str(files)) for a in argv])
    with pytest.raises(SystemExit) as stop:
        module.main()
    err = capsys.readouterr().err
    assert stop.value.code == 2, err
    lines = err.strip().splitlines()
    errors = [line for line in lines if "error:" in line]
    assert len(errors) == 1 and lines[-1] == errors[0], err  # usage, then one error line
    assert "Traceback" not in err
    assert named in errors[0], errors[0]  # it names the bad value or what is wrong
    assert sorted(p.relative_to(files) for p in files.rglob("*")) == before  # nothing written



def test_table_into_a_closed_pipe_ends_quietly(monkeypatch, capsys):
    """`tune_lr.py --show | head -1`: the reader has gone after its line; the script (run as
    __main__) ends with status 141, as a shell tool does, and writes no BrokenPipeError
    traceback."""
    read, write = os.pipe()
    os.close(read)  # the reader closed its end
    monkeypatch.setattr(sys, "stdout", os.fdopen(write, "w", buffering=1))
    monkeypatch.setattr(sys, "argv", ["tune_lr.py", "--show"])
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(str(SCRIPTS / "tune_lr.py"), run_name="__main__")
    assert stop.value.code == 141
    assert "Traceback" not in capsys.readouterr().err


def test_table_write_that_fails_at_the_end_is_one_error_line(files, monkeypatch, capsys):
    """--json passes the checks up front, but writing it fails at the end (a full disk, or a
    folder root may not write, e.g. under /proc): one `error:` line naming the file, exit 2, no
    traceback."""
    module = _script("results_table")
    monkeypatch.setattr("sdlora.train.train", _forbidden)
    target = files / "t.json"

    def full_disk(path, data):
        raise OSError(28, f"writing {path} failed (No space left on device); the files "
                          f"written before are kept", str(path))
    monkeypatch.setattr(module, "atomic_write_json", full_disk)
    monkeypatch.setattr(sys, "argv", ["results_table.py", "--json", str(target), "--no-train",
                                      "--root", str(files / "runs")])
    with pytest.raises(SystemExit) as stop:
        module.main()
    err = capsys.readouterr().err
    assert stop.value.code == 2, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("results_table.py: error:") and f"writing {target} failed" in last, err
