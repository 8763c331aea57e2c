"""Run folders: the one format the engine writes and the analyses and the app read.

``cache/runs/<run-id>/``::

    config.json                    the full TrainConfig
    backbone.json                  the backbone's weights file and its sha256 when the run began
                                   (the checkpoints hold no frozen backbone: they need that file)
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

Readers check what they read: a file of the wrong shape (``config.json`` null or gone,
``status.json`` a list, ``metrics.json`` with a string where a number belongs, a metrics row
whose checkpoint is gone or cut short, a finished task's step log gone) raises `RunError` naming
the file and what is wrong.
"""
from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import re
import struct
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import ConfigError

if TYPE_CHECKING:  # torch and safetensors load only with a checkpoint: listing runs stays light
    import torch

__all__ = ["RunError", "RunFolder", "check_same_settings", "REUSE_IGNORED", "RunClaim",
           "default_runs_root", "demo_runs_root", "list_runs", "resolve_run", "atomic_write_json",
           "atomic_write_text", "pid_alive", "check_new_folder", "check_safetensors",
           "nearest_existing"]

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
    backbone_path = property(lambda self: self.path / "backbone.json")
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

    def backbone(self) -> dict | None:
        """The backbone weights recorded when the run began (`sdlora.train.backbone_record`);
        None for a run made before runs recorded them."""
        record = self._json(self.backbone_path, required=False)
        if record is None:
            return None
        if not isinstance(record, dict) or not isinstance(record.get("sha256"), (str, type(None))):
            raise RunError(f"{self.backbone_path} holds {_kind(record)}; expected an object "
                           f"with the backbone weights file's sha256")
        return record

    def status(self) -> dict | None:
        status = self._json(self.status_path, required=False)
        if status is not None and not isinstance(status, dict):
            raise RunError(f"{self.status_path} holds {_kind(status)}; expected an object with "
                           f"the run's live state")
        return status

    def steps(self) -> list[dict]:
        """Every step record of the run, in order. A torn last line (a killed writer) is
        skipped; a corrupt line elsewhere is an error naming the file and line, and so is a
        finished task's step log that is gone (its steps would be missing without a word)."""
        metrics = self.metrics(required=False) or {}
        self.check_step_logs(len(metrics.get("accuracy_matrix", [])))
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
        """RunError naming the first of checkpoints 0..rows-1 that is missing or not whole
        (`check_safetensors`: its header read, its length checked)."""
        for task in range(rows):
            if not self.checkpoint_path(task).exists():
                raise RunError(f"{self.checkpoint_path(task)} is missing: {self.metrics_path} "
                               f"records {rows} finished task(s) but task {task + 1}'s "
                               f"checkpoint is gone (the analyses need every checkpoint)")
            check_safetensors(self.checkpoint_path(task),
                              f"task {task + 1}'s checkpoint is damaged (the analyses need "
                              f"every checkpoint)")

    def check_step_logs(self, rows: int) -> None:
        """RunError naming the first step log of tasks 0..rows-1 (finished) that is missing
        (a method without gradient steps writes an empty one)."""
        for task in range(rows):
            if not self.steps_path(task).is_file():
                raise RunError(f"{self.steps_path(task)} is missing: {self.metrics_path} "
                               f"records {rows} finished task(s) but task {task + 1}'s step log "
                               f"is gone (its losses and magnitudes would be missing)")

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
        self.check_step_logs(done)
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


def nearest_existing(path: Path) -> Path:
    """`path` itself if it exists, else its nearest existing ancestor: where a file or folder
    made at `path` would be created (whether that is a folder one can write is the caller's
    question)."""
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    return probe


def check_new_folder(path: Path) -> None:
    """RunError unless `path` (an existing folder) can take a new run: it holds nothing but a
    lock or marker of sdlora's."""
    others = sorted(p.name for p in Path(path).iterdir() if p.name not in (LOCK, MARKER))
    if others:
        shown = ", ".join(others[:4]) + (", ..." if len(others) > 4 else "")
        hint = (f"; continue that run with --resume {path}" if RunFolder(path).exists() else "")
        raise RunError(f"{path} already holds files this run did not write ({shown}); "
                       f"choose a new or empty folder for --out{hint}")


class RunClaim:
    """An exclusive lock on a run folder held by its one writer (`RunFolder.claim`)."""

    def __init__(self, run: RunFolder, new: bool) -> None:
        self.run = run
        path = run.path
        if path.exists() and not path.is_dir():
            raise RunError(f"{path} is a file, not a folder; choose a folder for the run "
                           f"(--out)")
        made = not path.exists()
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
        created = self._lock(path / LOCK)
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
            # a refused claim leaves nothing behind: the lock file it made (unlinked while
            # locked: a process waiting on it sees the file replaced and opens the new one)
            # and the folder it made
            if created:
                try:
                    (path / LOCK).unlink()
                    if made:
                        path.rmdir()
                except OSError:
                    pass
            self.release()
            raise

    def _lock(self, lock: Path) -> bool:
        """Open and flock `lock` (LOCK_EX, non-blocking) into ``self._fd``; True if this call
        created the file. Retried when the file was replaced or removed between the open and
        the lock (a refused claim removes the lock file it made)."""
        path = self.run.path
        while True:
            try:
                try:
                    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
                    created = True
                except FileExistsError:
                    fd = os.open(lock, os.O_RDWR)
                    created = False
            except FileNotFoundError:  # removed between the two opens
                continue
            except OSError as err:
                raise RunError(f"cannot lock the run folder {path}: {err.strerror or err}"
                               ) from err
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
                os.close(fd)
                raise RunError(f"{path} is being written by another process"
                               f"{f' (pid {holder})' if holder else ''}; wait for it to end or "
                               f"choose another --out") from None
            try:
                same = os.stat(lock).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._fd = fd
                return created
            os.close(fd)  # locked a file that is no longer there: lock the one that is

    def _check_empty(self) -> None:
        check_new_folder(self.run.path)

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


_WHOLE: dict[str, tuple[int, ...]] = {}  # path -> stat of a file found whole
_WHOLE_MAX = 100_000


def _signature(stat: os.stat_result) -> tuple[int, ...]:
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns


def check_safetensors(path: Path, what: str = "") -> None:
    """RunError unless `path` is a whole safetensors file: an 8-byte header length, that much
    JSON describing the tensors, and exactly the bytes they need after it (a copy cut short,
    a file of zeros, a text file all fail). Reads the header only, and not again while the
    file's stat (device, inode, size, modification and change times) is the one it had when found whole:
    the app lists every run's checkpoints every few seconds."""
    def bad(why: str) -> RunError:
        return RunError(f"{path} is damaged ({why})" + (f": {what}" if what else ""))

    try:
        stat = path.stat()
        size = stat.st_size
        if _WHOLE.get(str(path)) == _signature(stat):
            return
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise bad(f"{size} bytes, not even a safetensors header")
            length = struct.unpack("<Q", head)[0]
            if length > size - 8:
                raise bad(f"cut short: {size} bytes, its header alone needs {length + 8}")
            header = json.loads(f.read(length))
        ends = [entry["data_offsets"][1] for key, entry in header.items()
                if key != "__metadata__"]
        if not all(_is(end, int) for end in ends):
            raise TypeError("data offsets that are not integers")
    except RunError:
        raise
    except OSError as err:
        raise RunError(f"{path} cannot be read ({err.strerror or err})") from err
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as err:
        raise bad(f"its header is not a safetensors header: {err}") from err
    expected = 8 + length + max(ends, default=0)
    if size != expected:
        raise bad(f"{'cut short' if size < expected else 'too long'}: {size} bytes, its header "
                  f"describes {expected}")
    if len(_WHOLE) >= _WHOLE_MAX:
        _WHOLE.clear()
    _WHOLE[str(path)] = _signature(stat)


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
        # a run folder is marked when it is claimed: one whose config.json was deleted is
        # still listed (its summary names the missing file)
        runs = [RunFolder(p) for p in folder.iterdir()
                if (p / "config.json").exists() or (p / MARKER).is_file()]
        found += sorted(runs, key=_mtime, reverse=True)
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


def _mtime(run: RunFolder) -> float:
    for path in (run.config_path, run.path):
        try:
            return path.stat().st_mtime
        except OSError:
            continue
    return 0.0
