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

Every file but the live step log is written atomically (temp file + rename), so a killed
process leaves either the old or the new file. The step log of an unfinished task is rewritten
from scratch when the task is trained again.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch and safetensors load only with a checkpoint: listing runs stays light
    import torch

__all__ = ["RunError", "RunFolder", "default_runs_root", "demo_runs_root", "list_runs", "atomic_write_json",
           "atomic_write_text"]


class RunError(RuntimeError):
    """A run folder is missing, corrupt or partial; the message names the file."""


def default_runs_root() -> Path:
    """``$SDLORA_CACHE/runs`` or ``<repo>/cache/runs`` (independent of the working directory)."""
    cache = os.environ.get("SDLORA_CACHE")
    base = Path(cache) if cache else Path(__file__).resolve().parent.parent / "cache"
    return base / "runs"


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    os.replace(tmp, path)


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
            raise RunError(f"{path} is corrupt ({err}); delete it or rerun with --resume") from err

    def config(self) -> dict:
        return self._json(self.config_path)

    def metrics(self, required: bool = True) -> dict | None:
        return self._json(self.metrics_path, required)

    def status(self) -> dict | None:
        return self._json(self.status_path, required=False)

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
        """Tasks with both a checkpoint and a metrics row."""
        metrics = self.metrics(required=False)
        rows = len(metrics["accuracy_matrix"]) if metrics else 0
        done = 0
        while done < rows and self.checkpoint_path(done).exists():
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
        """One line's worth: id, method, benchmark, seed, state, tasks done, acc, aaa."""
        config = self.config()
        metrics = self.metrics(required=False) or {}
        status = self.status() or {}
        state = status.get("state", "unknown")
        if state == "running" and time.time() - status.get("updated", 0) > 120:
            state = "interrupted"
        return dict(id=self.id, method=config.get("method"), benchmark=config.get("benchmark"),
                    seed=config.get("seed"), tasks=config.get("tasks"),
                    done=len(metrics.get("accuracy_matrix", [])), state=state,
                    acc=metrics.get("acc"), aaa=metrics.get("aaa"))


def demo_runs_root() -> Path:
    """The shipped demo runs (made by scripts/make_demo_runs.py), beside the runs folder."""
    return default_runs_root().parent / "demo"


def list_runs(root: Path | None = None) -> list[RunFolder]:
    """Run folders under `root` (default: your runs, newest first, then the demo runs)."""
    roots = [Path(root)] if root is not None else [default_runs_root(), demo_runs_root()]
    found = []
    for folder in roots:
        if not folder.exists():
            continue
        runs = [RunFolder(p) for p in folder.iterdir() if (p / "config.json").exists()]
        found += sorted(runs, key=lambda r: r.config_path.stat().st_mtime, reverse=True)
    return found
