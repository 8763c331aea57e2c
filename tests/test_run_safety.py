"""Nothing lost, nothing run twice (issue 13): run folders are claimed before anything is
written, resume rebuilds or refuses, damaged run folders are named, bad input is one line."""
import errno
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sdlora import cli
from sdlora.config import ConfigError, TrainConfig
from sdlora.runs import RunError, RunFolder, atomic_write_json
from sdlora.train import train

REPO = Path(__file__).resolve().parent.parent


def _cfg(**kw) -> TrainConfig:
    base = dict(benchmark="digits", tasks=2, epochs=1, batch_size=12, method="sd-lora")
    return TrainConfig(**{**base, **kw})


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".lock"}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One finished 2-task run, copied by each test that damages it."""
    from tests.conftest import small_benchmark

    bench = small_benchmark()
    out = tmp_path_factory.mktemp("finished") / "run"
    train(_cfg(), out=out, progress=False, benchmark=bench)
    return out, bench


@pytest.fixture
def run_copy(finished, tmp_path):
    src, bench = finished
    dst = tmp_path / "runs" / "copy"
    shutil.copytree(src, dst)
    (dst / ".lock").unlink(missing_ok=True)
    return RunFolder(dst), bench


def main(capsys, *argv) -> tuple[int, str, str]:
    """sdlora.cli.main in-process: (exit code, stdout, stderr); an uncaught exception fails."""
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# -- 1. run folders are claimed --------------------------------------------------------------
def test_folder_holding_user_files_is_refused(tmp_path, tiny_benchmark):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.json").write_text('{"my": "own file"}')
    with pytest.raises(RunError, match=r"already holds files this run did not write "
                                       r"\(config.json\)"):
        train(_cfg(), out=out, progress=False, benchmark=tiny_benchmark)
    assert (out / "config.json").read_text() == '{"my": "own file"}'


def test_finished_run_without_first_checkpoint_is_not_overwritten(run_copy):
    run, bench = run_copy
    run.checkpoint_path(0).unlink()
    before = _snapshot(run.path)
    with pytest.raises(RunError, match="--resume"):
        train(_cfg(), out=run.path, progress=False, benchmark=bench)
    assert _snapshot(run.path) == before  # 2 rows, config and checkpoint 2 untouched


def test_second_writer_is_refused_while_the_first_lives(tmp_path, run_copy):
    run, bench = run_copy
    with run.claim(new=False):
        with pytest.raises(RunError, match=f"{run.path} is being written by another process "
                                           f"\\(pid {os.getpid()}\\)"):
            train(resume=run.path, progress=False, benchmark=bench)
        fresh = RunFolder(tmp_path / "fresh")
        with fresh.claim(new=True):
            with pytest.raises(RunError, match="being written by another process"):
                fresh.claim(new=True)
    with run.claim(new=False):  # released: the next writer gets it
        pass


def test_second_writer_in_another_process_is_refused(tmp_path):
    out = tmp_path / "shared"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from sdlora.runs import RunFolder; "
         "c = RunFolder(sys.argv[1]).claim(new=True); print('held', flush=True); "
         "time.sleep(60)", str(out)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunError, match=f"pid {holder.pid}"):
            RunFolder(out).claim(new=True)
    finally:
        holder.kill()
        holder.wait()
    with RunFolder(out).claim(new=True):  # the lock died with its process
        pass


def test_claim_removes_temp_files_of_dead_writers(run_copy):
    run, _ = run_copy
    dead = run.checkpoints_dir / ".task_001.safetensors.999999999.tmp"
    live = run.checkpoints_dir / f".task_001.safetensors.{os.getpid()}.tmp"
    top = run.path / ".metrics.json.999999998.tmp"
    for p in (dead, live, top):
        p.write_bytes(b"x" * 100)
    with run.claim(new=False):
        pass
    assert not dead.exists() and not top.exists()
    assert live.exists()  # a live writer's temp file is its own business


def test_running_with_dead_pid_is_interrupted_at_once(run_copy):
    run, _ = run_copy
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    atomic_write_json(run.status_path, dict(state="running", updated=time.time(), pid=dead.pid))
    assert run.summary()["state"] == "interrupted"
    atomic_write_json(run.status_path, dict(state="running", updated=time.time(),
                                            pid=os.getpid()))
    assert run.summary()["state"] == "running"


def test_full_disk_while_writing_a_checkpoint(tmp_path, tiny_benchmark, monkeypatch):
    """safetensors reports a full disk as its own error; the run keeps task 1, says which file
    failed, leaves no temp file, and its status does not claim task 2."""
    from safetensors import SafetensorError

    import safetensors.torch as runs  # sdlora.runs imports save_file from it when writing

    real = runs.save_file

    def full_disk(tensors, path, metadata=None):
        if "task_001" in path:
            Path(path).write_bytes(b"partial")
            raise SafetensorError("Error while serializing: I/O error: No space left on device "
                                  "(os error 28)")
        return real(tensors, path, metadata=metadata)

    monkeypatch.setattr(runs, "save_file", full_disk)
    out = tmp_path / "full"
    with pytest.raises(OSError) as info:
        train(_cfg(), out=out, progress=False, benchmark=tiny_benchmark)
    assert info.value.errno == errno.ENOSPC
    assert "task_001.safetensors failed (No space left on device)" in cli._os_message(info.value)
    run = RunFolder(out)
    assert run.checkpoint_path(0).exists() and not run.checkpoint_path(1).exists()
    assert not list(run.checkpoints_dir.glob("*.tmp"))
    status = run.status()
    assert status["state"] == "failed" and status["task"] == 1  # task 2 is not claimed
    assert len(run.metrics()["accuracy_matrix"]) == 1
    monkeypatch.setattr(runs, "save_file", real)
    train(resume=out, progress=False, benchmark=tiny_benchmark)
    assert run.completed_tasks() == 2


# -- 3. resume with metrics.json missing or empty --------------------------------------------
@pytest.mark.parametrize("damage", ["missing", "[]", "{}", ""])  # "": 0 bytes (issue 23.8)
def test_resume_rebuilds_lost_metrics_from_checkpoints(run_copy, damage):
    run, bench = run_copy
    original = run.metrics()
    checkpoints = {t: run.checkpoint_path(t).read_bytes() for t in range(2)}
    if damage == "missing":
        run.metrics_path.unlink()
    else:
        run.metrics_path.write_text(damage)
    trained = []
    train(resume=run.path, progress=False, benchmark=bench,
          on_task_end=lambda t, m: trained.append(t))
    assert trained == []  # nothing trained again, no checkpoint overwritten
    assert {t: run.checkpoint_path(t).read_bytes() for t in range(2)} == checkpoints
    rebuilt = run.metrics()
    assert rebuilt["accuracy_matrix"] == original["accuracy_matrix"]  # re-evaluated exactly
    assert rebuilt["acc"] == original["acc"] and rebuilt["tasks_done"] == 2
    assert [i.get("rebuilt_from_checkpoint") for i in rebuilt["task_info"]] == [True, True]
    assert rebuilt["task_info"][1]["components"] == original["task_info"][1]["components"]


def test_resume_refuses_damaged_metrics(run_copy):
    run, bench = run_copy
    run.metrics_path.write_text(json.dumps({"accuracy_matrix": [["x"]]}))
    before = _snapshot(run.path)
    with pytest.raises(RunError, match=r"metrics.json: accuracy_matrix row 1 is \['x'\]; "
                                       r"expected 1 number.*move it aside"):
        train(resume=run.path, progress=False, benchmark=bench)
    assert _snapshot(run.path) == before


# -- 4./5./6. damaged run folders ------------------------------------------------------------
DAMAGE = {
    "config null": ("config.json", "null", "config.json holds null; expected an object"),
    "status list": ("status.json", "[]", "status.json holds a list; expected an object"),
    "metrics list": ("metrics.json", "[1, 2]", "metrics.json: holds a list; expected an object"),
    "metrics empty": ("metrics.json", "{}", "metrics.json: accuracy_matrix is missing"),
    "metrics string": ("metrics.json", "acc-string", "metrics.json: acc is 'high'; expected a "
                                                     "number"),
    "checkpoint gone": ("checkpoints/task_000.safetensors", None,
                        "task_000.safetensors is missing: "),
}


def damage(run: RunFolder, kind: str) -> str:
    name, text, message = DAMAGE[kind]
    path = run.path / name
    if text is None:
        path.unlink()
    elif text == "acc-string":
        metrics = json.loads(path.read_text())
        metrics["acc"] = "high"
        path.write_text(json.dumps(metrics))
    else:
        path.write_text(text)
    return message


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_damaged_run_is_listed_and_named(run_copy, capsys, kind):
    run, _ = run_copy
    message = damage(run, kind)
    with pytest.raises(RunError, match=message.replace("(", r"\(").replace("[", r"\[")):
        run.summary()
    code, out, err = main(capsys, "runs", "--root", run.path.parent)
    assert code == 0 and f"copy" in out and "damaged: " in out and message in out
    if kind == "checkpoint gone":  # the results are readable; show names what is missing
        code, out, err = main(capsys, "show", run.path)
        assert code == 0 and "2/2" in out and message in out
    if kind not in ("status list", "metrics empty"):  # resume refuses, naming the same file
        # (an empty metrics.json is rebuilt: test_resume_rebuilds_lost_metrics_from_checkpoints)
        code, out, err = main(capsys, "train", "--resume", run.path, "--quiet")
        assert code == 2 and err.startswith("error: ") and message in err, err
    if kind not in ("status list", "checkpoint gone"):
        for command in (["show", run.path], ["analyse", run.path, "--what", "accuracy",
                                             "interpolation"]):
            code, out, err = main(capsys, *command)
            assert code == 2, (command, out, err)
            assert err.startswith("error: ") and err.count("\n") == 1 and message in err


def test_runs_lists_every_run_beside_a_damaged_one(finished, tmp_path, capsys):
    src, _ = finished
    for name in ("good", "bad"):
        shutil.copytree(src, tmp_path / name)
    (tmp_path / "bad" / "config.json").write_text("null")
    code, out, _ = main(capsys, "runs", "--root", tmp_path)
    assert code == 0
    lines = out.splitlines()
    assert any(line.startswith("good") and "finished" in line for line in lines)
    assert any(line.startswith("bad") and "damaged:" in line and "config.json holds null"
               in line for line in lines)


def test_analyse_names_the_missing_checkpoint(run_copy, capsys):
    run, _ = run_copy
    run.checkpoint_path(1).unlink()
    code, _, err = main(capsys, "analyse", run.path, "--what", "efficiency")
    assert code == 2 and "task_001.safetensors is missing" in err and "task 2" in err


# -- 6./7. bad command-line input ------------------------------------------------------------
def _not_json(tmp: Path) -> Path:
    (tmp / "c.json").write_text("method: lora\n")
    return tmp / "c.json"


def _not_safetensors(tmp: Path) -> Path:
    (tmp / "w.safetensors").write_text("these are not weights")
    return tmp / "w.safetensors"


def _a_file(tmp: Path) -> Path:
    (tmp / "afile").write_text("keep me")
    return tmp / "afile"


@pytest.mark.parametrize("args, message", [
    (["--lr", "inf"], "--lr inf: lr=inf is not valid; it must be a finite number"),
    (["--new-magnitude-init", "nan"], "--new-magnitude-init nan: new_magnitude_init=nan is not "
                                      "valid; it must be a finite number"),
    (["--seed", "-1"], "--seed -1: seed=-1 is not valid; it must be an integer from 0 to"),
    (["--backbone", "vitamin_nonsense"], "backbone='vitamin_nonsense' is not valid"),
    (["--backbone", "resnet50"], "backbone='resnet50' is not valid"),
    (["--weights", _not_safetensors], "is not a safetensors file"),
    (["--config", _not_json], "c.json is not JSON"),
    (["--out", _a_file], "afile is a file; expected a folder"),
    (["--out", lambda t: _a_file(t) / "run"], "which is a file; expected a folder path"),
])
def test_train_refuses_bad_input(tmp_path, capsys, args, message):
    args = [a(tmp_path) if callable(a) else a for a in args]
    if "--out" not in args:
        args += ["--out", tmp_path / "run"]
    code, out, err = main(capsys, "train", "--benchmark", "digits", "--tasks", "2", *args)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err
    assert not (tmp_path / "run" / "config.json").exists()
    if (tmp_path / "afile").exists():
        assert (tmp_path / "afile").read_text() == "keep me"


def test_backbone_names_are_checked_against_timm():
    TrainConfig(backbone="vit_small_patch16_224.augreg_in21k_ft_in1k")  # a real timm tag
    with pytest.raises(ConfigError, match="vit_base_patch16_224.nonsense"):
        TrainConfig(backbone="vit_base_patch16_224.nonsense")


def test_pretrain_refuses_zero_epochs(capsys):
    code, _, err = main(capsys, "pretrain", "--epochs", "0")
    assert code == 2 and "pretrain --epochs 0 is not valid; it must be a positive integer" in err
    code, _, err = main(capsys, "pretrain", "--model", "glyph-vit", "--steps", "0")
    assert code == 2 and "pretrain --steps 0 is not valid; it must be a positive integer" in err


def test_analyse_refuses_bad_arguments(run_copy, capsys, tmp_path):
    run, _ = run_copy
    code, _, err = main(capsys, "analyse", run.path, "--points", "1")
    assert code == 2 and "--points 1 is not valid" in err
    existing = _a_file(tmp_path)
    code, _, err = main(capsys, "analyse", run.path, "--html", existing)
    assert code == 2 and f"--html {existing} is a file" in err
    assert existing.read_text() == "keep me"
    code, _, err = main(capsys, "runs", "--root", existing)
    assert code == 2 and "is not a folder" in err


def _read_only(*folders: Path) -> list[str]:
    """A command prefix under which `folders` are read-only: read-only bind mounts in a private
    mount namespace as root (root ignores permission bits), chmod otherwise."""
    if os.geteuid() != 0:
        for folder in folders:
            os.chmod(folder, 0o555)
        return []
    mounts = " && ".join(f"mount --bind '{f}' '{f}' && mount -o remount,bind,ro '{f}'"
                         for f in folders)
    return ["unshare", "-m", "sh", "-c", mounts + ' && exec "$0" "$@"']


CALLS = """
import contextlib, io, json, sys
from sdlora import cli
results = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(argv)
    results.append([code, err.getvalue()])
print(json.dumps(results))
"""


def test_read_only_folders_are_one_line(run_copy, tmp_path):
    """analyse and resume in a read-only run folder, train with a read-only cache/: one line
    each (in one process, to start Python once)."""
    run, _ = run_copy
    cache = tmp_path / "ro-cache"
    cache.mkdir()
    before = _snapshot(run.path)
    calls = [["analyse", str(run.path), "--what", "accuracy"],
             ["train", "--resume", str(run.path)],
             ["train", "--benchmark", "digits", "--tasks", "2", "--epochs", "1"]]
    env = dict(os.environ, HF_HUB_OFFLINE="1", SDLORA_CACHE=str(cache), OMP_NUM_THREADS="1")
    result = subprocess.run(_read_only(run.path, cache) + [sys.executable, "-c", CALLS,
                                                           json.dumps(calls)],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    if os.geteuid() != 0:
        os.chmod(run.path, 0o755)
        os.chmod(cache, 0o755)
    assert result.returncode == 0, result.stderr
    (analyse, resume, fresh) = json.loads(result.stdout.splitlines()[-1])
    for code, err in (analyse, resume, fresh):
        assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert f"{run.path / 'analyses'}" in analyse[1] and "read-only" in analyse[1]
    assert f"cannot write to the run folder {run.path}" in resume[1]
    assert str(cache) in fresh[1] and "read-only" in fresh[1]
    assert _snapshot(run.path) == before


# -- issue 23: damaged runs that look healthy, a refused --out, the backbone's hash ----------
@pytest.mark.parametrize("cut", ["cut short", "zeros"])
def test_damaged_checkpoint_is_listed_as_damaged(run_copy, capsys, cut):
    run, _ = run_copy
    path = run.checkpoint_path(0)
    data = path.read_bytes()
    path.write_bytes(data[:-100] if cut == "cut short" else bytes(len(data)))
    message = "task_000.safetensors is damaged (" + (
        "cut short: " if cut == "cut short" else "its header is not a safetensors header")
    with pytest.raises(RunError, match=re.escape(message)):
        run.summary()
    code, out, _ = main(capsys, "runs", "--root", run.path.parent)
    assert code == 0 and re.search(r"^copy +damaged: .*" + re.escape(message), out, re.M), out
    code, out, _ = main(capsys, "show", run.path)
    assert code == 0 and "2/2" in out and f"warning: {run.checkpoint_path(0)}" in out
    for command in (["analyse", run.path, "--what", "accuracy"], ["train", "--resume", run.path]):
        code, _, err = main(capsys, *command)
        assert code == 2 and err.startswith("error: ") and message in err, (command, err)


def test_a_whole_checkpoint_is_read_once_until_it_changes(run_copy, monkeypatch):
    """The app lists every run every few seconds: a checkpoint found whole is not read again
    while its stat is unchanged, and is read (and found damaged) once it changes."""
    import builtins

    from sdlora.runs import check_safetensors

    run, _ = run_copy
    path = run.checkpoint_path(0)
    check_safetensors(path)
    real_open = builtins.open
    opened = []
    monkeypatch.setattr(builtins, "open", lambda f, *a, **k: opened.append(str(f))
                        or real_open(f, *a, **k))
    check_safetensors(path)
    assert str(path) not in opened
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(RunError, match="cut short"):
        check_safetensors(path)
    assert str(path) in opened


def test_missing_step_log_is_listed_as_damaged(run_copy, capsys):
    from sdlora.analysis import magnitude_series

    run, _ = run_copy
    run.steps_path(0).unlink()
    message = f"{run.steps_path(0)} is missing"
    with pytest.raises(RunError, match=re.escape(message)):
        run.summary()
    with pytest.raises(RunError, match=re.escape(message)):  # not task 2's magnitudes alone
        magnitude_series(run)
    code, out, _ = main(capsys, "runs", "--root", run.path.parent)
    assert code == 0 and re.search(r"^copy +damaged: .*" + re.escape(message), out, re.M), out
    code, _, err = main(capsys, "analyse", run.path, "--what", "magnitudes")
    assert code == 2 and err.startswith("error: ") and message in err, err


def test_run_without_config_is_listed_as_damaged(finished, capsys):
    from sdlora.runs import default_runs_root, list_runs

    src, _ = finished
    root = default_runs_root()
    shutil.copytree(src, root / "no-config")
    (root / "no-config" / "config.json").unlink()
    (root / "not-a-run").mkdir()  # a folder sdlora never claimed is not a run
    (root / "not-a-run" / "notes.txt").write_text("mine")
    assert [r.id for r in list_runs()] == ["no-config"]
    code, out, _ = main(capsys, "runs")
    assert code == 0 and re.search(r"^no-config +damaged: .*config.json is missing", out, re.M)
    assert "not-a-run" not in out


@pytest.mark.parametrize("where", ["folder", "."])
def test_refused_out_leaves_nothing_behind(tmp_path, capsys, monkeypatch, where):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    if where == ".":
        monkeypatch.chdir(folder)
    code, _, err = main(capsys, "train", "--benchmark", "digits", "--tasks", "2", "--epochs",
                        "1", "--out", folder if where == "folder" else ".")
    assert code == 2 and "already holds files this run did not write (notes.txt)" in err, err
    assert os.listdir(folder) == ["notes.txt"]
    with pytest.raises(RunError, match="already holds files"):  # the claim itself, too
        RunFolder(folder).claim(new=True)
    assert os.listdir(folder) == ["notes.txt"]
    with pytest.raises(RunError, match="config.json is missing"):  # and a refused resume
        RunFolder(folder).claim(new=False)
    assert os.listdir(folder) == ["notes.txt"]


def test_run_records_its_backbone_hash_and_refuses_another(run_copy, capsys):
    """Checkpoints hold no frozen backbone: a run is only valid with the weights file it was
    trained on; its sha256 is recorded, and a run whose file changed is refused, naming the
    file and both hashes. A run without a record (older folders) still loads."""
    import hashlib

    from sdlora.backbone import EMBEDDED_WEIGHTS
    from sdlora.train import load_model

    run, bench = run_copy
    record = json.loads(run.backbone_path.read_text())
    shipped = hashlib.sha256(EMBEDDED_WEIGHTS.read_bytes()).hexdigest()
    assert record == dict(backbone="embedded-vit", sha256=shipped,
                          weights="sdlora/assets/embedded_vit_t6p4.safetensors")
    load_model(run, 1)
    atomic_write_json(run.backbone_path, dict(record, sha256="0" * 64))  # trained on another
    message = (f"was trained on the backbone weights {EMBEDDED_WEIGHTS} with sha256 {'0' * 64} "
               f"(recorded in {run.backbone_path}), but that file now has sha256 {shipped}")
    with pytest.raises(RunError, match=re.escape(message)):
        load_model(run, 0)
    before = _snapshot(run.path)
    for command in (["analyse", run.path, "--what", "accuracy"], ["train", "--resume", run.path],
                    ["analyse", run.path, "--what", "interpolation"]):
        code, _, err = main(capsys, *command)
        assert code == 2 and err.startswith("error: ") and message in err, (command, err)
    with pytest.raises(RunError, match=re.escape(message)):
        train(resume=run.path, progress=False, benchmark=bench)
    assert _snapshot(run.path) == before
    run.backbone_path.unlink()  # a run folder made before runs recorded the hash
    load_model(run, 0)


def test_demo_runs_record_the_shipped_glyph_vit():
    """The shipped demo runs were made with the shipped glyph-vit (checked when the record was
    added: sd-lora-s0's task-1 checkpoint scores R[0][0] = 77.0 with it), so they are checked
    against it like any run."""
    import hashlib

    from sdlora.backbone import GLYPH_WEIGHTS
    from sdlora.train import check_backbone_weights

    shipped = hashlib.sha256(GLYPH_WEIGHTS.read_bytes()).hexdigest()
    demos = sorted(p for p in (REPO / "cache" / "demo").iterdir() if p.is_dir())
    assert len(demos) >= 8
    for folder in demos:
        run = RunFolder(folder)
        assert run.backbone() == dict(backbone="glyph-vit", sha256=shipped,
                                      weights="sdlora/assets/glyph_vit_t6p4.safetensors"), folder
        check_backbone_weights(run)
