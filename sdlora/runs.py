"""Run folders: the one format the engine writes and the analyses and the app read.

``cache/runs/<run-id>/``::

    config.json                    the full TrainConfig
    status.json                    live progress: state, task, epoch, step, loss, magnitudes, ETA
    metrics.json                   accuracy matrix R[i][j] (percent), acc, aaa, forgetting, ...
    steps/task_<t>.jsonl           one line per optimiser step: task, epoch, step, loss, lr,
                                   magnitudes {component: alpha}, residual (every N steps),
                                   step seconds
    checkpoints/task_<t>.safetensors   everything but the frozen backbone after task t: adapter
                                   factors and magnitudes, the head (and the backbone for
                                   full-ft); metadata holds config, component layout, class order
    analyses/                      cached analyses (sdlora.analysis)
    .sdlora-run                    create-only marker: this folder is an sdlora run
    .lock                          locked (flock) by the one process writing the run

A writer claims its folder (`RunFolder.claim`) before it writes anything: an exclusive lock on
``.lock`` held for the writer's life, so a second writer is refused while the first lives, and
a new run is refused in a folder that holds anything it did not write. Every file but the live
step log is written atomically (temp file + rename), so a killed process leaves either the old
or the new file; the temp files of a killed writer are removed by the next claim. The step log
of an unfinished task is rewritten from scratch when the task is trained again.

Readers check what they read: a file of the wrong shape (``config.json`` null, ``status.json``
a list, ``metrics.json`` with a string where a number belongs, a metrics row whose checkpoint
is gone) raises `RunError` naming the file and what is wrong.
"""
from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import ConfigError

if TYPE_CHECKING:  # torch and safetensors load only with a checkpoint: listing runs stays light
    import torch

__all__ = ["RunError", "RunFolder", "check_same_settings", "REUSE_IGNORED", "RunClaim", "default_runs_root", "demo_runs_root", "list_runs",
           "resolve_run", "atomic_write_json", "atomic_write_text", "pid_alive"]

MARKER = ".sdlora-run"
LOCK = ".lock"
_TMP = re.compile(r"^\..+\.(\d+)\.tmp$")  # .<name>.<pid>.tmp, written by _atomic


class RunError(RuntimeError):
    """A run folder is missing, corrupt or partial; the message names the file."""


def default_runs_root() -> Path:
    """``$SDLORA_CACHE/runs`` or ``<repo>/cache/runs`` (independent of the working directory)."""
    cache = os.environ.get("SDLORA_CACHE")
    base = Path(cache) if cache else Path(__file__).resolve().parent.parent / "cache"
    return base / "runs"


def resolve_run(name: str | Path) -> Path:
    """A run folder from a path or a run id under `default_runs_root()` (the command line's
    ``RUN`` arguments); ConfigError naming both places when neither exists."""
    path = Path(name)
    if path.exists():
        if not path.is_dir():
            raise ConfigError(f"{path} is a file; expected a run folder (or a run id)")
        return path
    candidate = default_runs_root() / name
    if candidate.exists():
        return candidate
    raise ConfigError(f"run {name!r} not found (neither a folder nor an id under "
                      f"{default_runs_root()}); `python -m sdlora runs` lists them")


def pid_alive(pid) -> bool:
    """Whether process `pid` exists on this machine (a zombie counts as gone)."""
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OverflowError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _atomic(path: Path, write) -> None:
    """Write through a temp file and rename; on failure (a full disk) the temp file is removed
    and the error names the file that was not written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as err:
        try:
            tmp.unlink()
        except OSError:
            pass
        code = err.errno if isinstance(err, OSError) else None
        found = re.search(r"os error (\d+)", str(err))  # safetensors' error wraps the OS one
        if code is None and found and isinstance(err, Exception):
            code = int(found.group(1))
        if code is None and isinstance(err, OSError):
            code = errno.EIO
        if code is not None:
            raise OSError(code, f"writing {path} failed ({os.strerror(code)}); the files "
                                f"written before are kept", str(path)) from err
        raise


def atomic_write_text(path: Path, text: str) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    _atomic(Path(path), write)


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=1))


class RunFolder:
    """Paths and readers of one run folder."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    @property
    def id(self) -> str:
        return self.path.name

    # paths
    config_path = property(lambda self: self.path / "config.json")
    status_path = property(lambda self: self.path / "status.json")
    metrics_path = property(lambda self: self.path / "metrics.json")
    steps_dir = property(lambda self: self.path / "steps")
    checkpoints_dir = property(lambda self: self.path / "checkpoints")
    analyses_dir = property(lambda self: self.path / "analyses")

    def steps_path(self, task: int) -> Path:
        return self.steps_dir / f"task_{task:03d}.jsonl"

    def checkpoint_path(self, task: int) -> Path:
        return self.checkpoints_dir / f"task_{task:03d}.safetensors"

    # readers
    def exists(self) -> bool:
        return self.config_path.exists()

    def _json(self, path: Path, required: bool = True) -> Any:
        if not path.exists():
            if required:
                raise RunError(f"{path} is missing: {self.path} is not a complete run folder "
                               f"(it needs config.json; metrics.json appears after task 1)")
            return None
        try:
            return json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise RunError(f"{path} is corrupt ({err}); it should hold JSON written by "
                           f"sdlora") from err
        except OSError as err:
            raise RunError(f"{path} cannot be read ({err.strerror or err})") from err

    def config(self) -> dict:
        config = self._json(self.config_path)
        if not isinstance(config, dict):
            raise RunError(f"{self.config_path} holds {_kind(config)}; expected an object with "
                           f"the run's settings (a TrainConfig)")
        for key, kind in (("method", str), ("benchmark", str), ("tasks", int), ("seed", int)):
            if key in config and not _is(config[key], kind):
                raise RunError(f"{self.config_path}: {key} is {config[key]!r}; expected "
                               f"{_KINDS[kind]}")
        return config

    def metrics(self, required: bool = True) -> dict | None:
        metrics = self._json(self.metrics_path, required)
        if metrics is None and not required:
            return None
        check_metrics(metrics, self.metrics_path)
        return metrics

    def status(self) -> dict | None:
        status = self._json(self.status_path, required=False)
        if status is not None and not isinstance(status, dict):
            raise RunError(f"{self.status_path} holds {_kind(status)}; expected an object with "
                           f"the run's live state")
        return status

    def steps(self) -> list[dict]:
        """Every step record of the run, in order. A torn last line (a killed writer) is
        skipped; a corrupt line elsewhere is an error naming the file and line."""
        records: list[dict] = []
        if not self.steps_dir.exists():
            return records
        for path in sorted(self.steps_dir.glob("task_*.jsonl")):
            lines = path.read_text().splitlines()
            for i, line in enumerate(lines):
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as err:
                    if i == len(lines) - 1:
                        break
                    raise RunError(f"{path} line {i + 1} is corrupt ({err})") from err
        return records

    def completed_tasks(self) -> int:
        """Tasks with both a checkpoint and a metrics row. A metrics row whose checkpoint is
        missing is an error naming the checkpoint (the analyses need it)."""
        metrics = self.metrics(required=False)
        rows = len(metrics["accuracy_matrix"]) if metrics else 0
        self.check_checkpoints(rows)
        return rows

    def check_checkpoints(self, rows: int) -> None:
        """RunError naming the first of checkpoints 0..rows-1 that is missing."""
        for task in range(rows):
            if not self.checkpoint_path(task).exists():
                raise RunError(f"{self.checkpoint_path(task)} is missing: {self.metrics_path} "
                               f"records {rows} finished task(s) but task {task + 1}'s "
                               f"checkpoint is gone (the analyses need every checkpoint)")

    def checkpoint_tasks(self) -> int:
        """How many checkpoints 0, 1, ... exist in a row (written before their metrics row)."""
        done = 0
        while self.checkpoint_path(done).exists():
            done += 1
        return done

    def checkpoint(self, task: int) -> tuple[dict[str, torch.Tensor], dict]:
        """Tensors and decoded metadata of the checkpoint after `task` (0-based)."""
        path = self.checkpoint_path(task)
        if not path.exists():
            raise RunError(f"{path} is missing: task {task + 1} of run {self.id} has not "
                           f"finished (finished: {self.completed_tasks()})")
        from safetensors import SafetensorError
        from safetensors.torch import load_file, safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            tensors = load_file(str(path))
            meta = {k: json.loads(v) for k, v in meta.items()}
        except (SafetensorError, OSError, json.JSONDecodeError, ValueError) as err:
            raise RunError(f"{path} is corrupt ({err})") from err
        return tensors, meta

    def save_checkpoint(self, task: int, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        from safetensors.torch import save_file

        tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
        metadata = {k: json.dumps(v) for k, v in meta.items()}
        _atomic(self.checkpoint_path(task),
                lambda tmp: save_file(tensors, str(tmp), metadata=metadata))

    def summary(self) -> dict:
        """One line's worth: id, method, benchmark, seed, state, tasks done, acc, aaa.
        RunError (naming the file and what is wrong) for a damaged run."""
        config = self.config()
        metrics = self.metrics(required=False) or {}
        status = self.status() or {}
        done = len(metrics.get("accuracy_matrix", []))
        self.check_checkpoints(done)
        state = status.get("state", "unknown")
        if not isinstance(state, str):
            raise RunError(f"{self.status_path}: state is {state!r}; expected a string")
        if state == "running":
            pid = status.get("pid")
            updated = status.get("updated", 0)
            updated = updated if _is(updated, float) else 0
            if pid is not None and not pid_alive(pid):
                state = "interrupted"  # its process is gone
            elif pid is None and time.time() - updated > 120:
                state = "interrupted"
        return dict(id=self.id, method=config.get("method"), benchmark=config.get("benchmark"),
                    seed=config.get("seed"),
                    tasks=1 if config.get("method") == "joint" else config.get("tasks"),
                    done=done, state=state,
                    acc=metrics.get("acc"), aaa=metrics.get("aaa"))

    # writers
    def claim(self, new: bool) -> "RunClaim":
        """Claim this folder for writing (see the module docstring); hold the result for the
        writer's life and `release()` it at the end. `new`: a run starts here (the folder
        must be empty or absent); otherwise an existing run is resumed."""
        return RunClaim(self, new)


class RunClaim:
    """An exclusive lock on a run folder held by its one writer (`RunFolder.claim`)."""

    def __init__(self, run: RunFolder, new: bool) -> None:
        self.run = run
        path = run.path
        if path.exists() and not path.is_dir():
            raise RunError(f"{path} is a file, not a folder; choose a folder for the run "
                           f"(--out)")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as err:
            raise RunError(f"cannot make the run folder {path}: {err.filename or path} is a "
                           f"file, not a folder; choose another --out") from err
        except PermissionError as err:
            raise RunError(f"cannot make the run folder {path}: permission denied on "
                           f"{err.filename or path}; choose a folder you can write") from err
        except OSError as err:
            raise RunError(f"cannot make the run folder {path}: {err.strerror or err}") from err
        if not os.access(path, os.W_OK | os.X_OK):
            raise RunError(f"cannot write to the run folder {path} (permission denied); choose "
                           f"a folder you can write")
        try:
            self._fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise RunError(f"cannot lock the run folder {path}: {err.strerror or err}") from err
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 64, 0).decode(errors="replace").strip()
            os.close(self._fd)
            raise RunError(f"{path} is being written by another process"
                           f"{f' (pid {holder})' if holder else ''}; wait for it to end or "
                           f"choose another --out") from None
        try:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, str(os.getpid()).encode(), 0)
            self._clean_temp_files()
            if new:
                self._check_empty()
            elif not run.exists():
                raise RunError(f"cannot resume {path}: {run.config_path} is missing (not a "
                               f"run folder)")
            self._mark()
        except BaseException:
            self.release()
            raise

    def _check_empty(self) -> None:
        path = self.run.path
        others = sorted(p.name for p in path.iterdir() if p.name not in (LOCK, MARKER))
        if others:
            shown = ", ".join(others[:4]) + (", ..." if len(others) > 4 else "")
            hint = (f"; continue that run with --resume {path}" if self.run.exists() else "")
            raise RunError(f"{path} already holds files this run did not write ({shown}); "
                           f"choose a new or empty folder for --out{hint}")

    def _mark(self) -> None:
        marker = self.run.path / MARKER
        try:
            fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(dict(sdlora_run=True, created=time.time())) + "\n")

    def _clean_temp_files(self) -> None:
        """Remove temp files of interrupted writes (their writer's pid is gone)."""
        path = self.run.path
        for folder in (path, path / "checkpoints", path / "analyses"):
            if not folder.is_dir():
                continue
            for p in folder.iterdir():
                match = _TMP.match(p.name)
                if match and not pid_alive(int(match.group(1))):
                    try:
                        p.unlink()
                    except OSError:
                        pass

    def release(self) -> None:
        fd, self._fd = getattr(self, "_fd", None), None
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def __enter__(self) -> "RunClaim":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


_KINDS = {int: "an integer", float: "a number", str: "a string", list: "a list", dict: "an object"}


def _kind(value: Any) -> str:
    return {type(None): "null", list: "a list", dict: "an object", str: "a string",
            bool: "a boolean", int: "a number", float: "a number"}.get(type(value), "a value")


def _is(value: Any, kind: type) -> bool:
    if isinstance(value, bool):
        return False
    if kind is float:
        return isinstance(value, (int, float)) and math.isfinite(value)
    return isinstance(value, kind)


def check_metrics(metrics: Any, path: Path | str = "metrics.json") -> None:
    """RunError naming `path` and the first thing wrong with a metrics.json's content."""
    def bad(what: str) -> RunError:
        return RunError(f"{path}: {what}")

    if not isinstance(metrics, dict):
        raise bad(f"holds {_kind(metrics)}; expected an object with accuracy_matrix, acc, aaa")
    matrix = metrics.get("accuracy_matrix")
    if not isinstance(matrix, list):
        raise bad(f"accuracy_matrix is {'missing' if matrix is None else _kind(matrix)}; "
                  f"expected a list of rows of accuracies")
    for i, row in enumerate(matrix):
        if not isinstance(row, list) or len(row) != i + 1 or not all(_is(v, float) for v in row):
            raise bad(f"accuracy_matrix row {i + 1} is {row!r}; expected {i + 1} number(s)")
    for key in ("acc", "aaa", "forgetting", "bwt"):
        if key in metrics and metrics[key] is not None and not _is(metrics[key], float):
            raise bad(f"{key} is {metrics[key]!r}; expected a number")
    seen = metrics.get("seen_accuracy", [])
    if not isinstance(seen, list) or not all(_is(v, float) for v in seen):
        raise bad(f"seen_accuracy is {seen!r}; expected a list of numbers")
    if matrix:
        if len(seen) != len(matrix):
            raise bad(f"seen_accuracy has {len(seen)} value(s); expected one per accuracy_matrix "
                      f"row ({len(matrix)})")
        for key in ("acc", "aaa", "forgetting", "bwt"):
            if not _is(metrics.get(key), float):
                raise bad(f"{key} is {metrics.get(key)!r}; expected a number")
    for key in ("tasks", "seed", "tasks_done"):
        if key in metrics and not _is(metrics[key], int):
            raise bad(f"{key} is {metrics[key]!r}; expected an integer")
    for key in ("method", "benchmark"):
        if key in metrics and not isinstance(metrics[key], str):
            raise bad(f"{key} is {metrics[key]!r}; expected a string")
    if not isinstance(metrics.get("task_info", []), list):
        raise bad(f"task_info is {_kind(metrics['task_info'])}; expected a list")


def demo_runs_root() -> Path:
    """The shipped demo runs (made by scripts/make_demo_runs.py), beside the runs folder."""
    return default_runs_root().parent / "demo"


def list_runs(root: Path | None = None) -> list[RunFolder]:
    """Run folders under `root` (default: your runs, newest first, then the demo runs)."""
    roots = [Path(root)] if root is not None else [default_runs_root(), demo_runs_root()]
    found = []
    for folder in roots:
        if not folder.exists():
            above = next((p for p in folder.parents if p.exists()), None)
            if above is not None and not above.is_dir():  # else it reads as "no runs yet"
                cache = os.environ.get("SDLORA_CACHE")
                raise NotADirectoryError(
                    f"{above} is a file, not a folder of runs"
                    + (f" (SDLORA_CACHE={cache} must name a folder; it is made if missing)"
                       if cache else ""))
            continue
        runs = [RunFolder(p) for p in folder.iterdir() if (p / "config.json").exists()]
        found += sorted(runs, key=lambda r: r.config_path.stat().st_mtime, reverse=True)
    return found


# Settings that do not change what a run computes: a finished folder made with other values of
# these may be reused.
REUSE_IGNORED = frozenset({"device", "num_workers", "eval_batch_size", "extra", "amp"})


def check_same_settings(run: "RunFolder", config) -> None:
    """RunError unless the existing `run` was made with `config` (a TrainConfig), every field
    compared but `REUSE_IGNORED`; the saved config is read as `TrainConfig.from_dict` reads it
    (a key it lacks takes the value that run actually used). The one check of both
    `sdlora.tuning.tune` and scripts/results_table.py before a folder of the right name is
    reused: a folder made with other settings is never reused, nor silently retrained."""
    from .config import TrainConfig

    saved = TrainConfig.from_dict(run.config()).to_dict()
    wanted = config.to_dict()
    differ = {k: (saved.get(k), wanted[k]) for k in wanted
              if k not in REUSE_IGNORED and saved.get(k) != wanted[k]}
    if differ:
        raise RunError(f"{run.path} was made with other settings (saved, wanted): {differ}; "
                       f"move it away to train these settings, or name them (--set)")
