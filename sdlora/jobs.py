"""A queue of training runs executed outside the caller (the app never blocks on training).

``cache/jobs/<run-id>.json`` holds one job: its config, state (queued, running, finished,
failed, cancelled) and the worker's pid. `submit` writes a job and makes sure one queue worker
(``python -m sdlora worker``) runs; the worker takes the oldest queued job, trains it in a child
process (``python -m sdlora train --out <run>``; its output goes to ``<run>/worker.log``), and
moves on. `cancel` stops a running job (SIGTERM to its child; the run can be resumed later) or
drops a queued one. A job whose worker died (a reboot) is found by `reconcile` and marked
interrupted; `resume` queues it again and training continues from its last finished task.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .config import TrainConfig
from .runs import RunFolder, atomic_write_json, default_runs_root

__all__ = ["jobs_root", "submit", "cancel", "list_jobs", "reconcile", "resume", "worker_loop",
           "ensure_worker"]

REPO = Path(__file__).resolve().parent.parent


def jobs_root() -> Path:
    return default_runs_root().parent / "jobs"


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:  # a zombie child of this process is not alive
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def list_jobs() -> list[dict]:
    """All jobs, oldest first."""
    root = jobs_root()
    if not root.exists():
        return []
    jobs = [j for j in (_read(p) for p in root.glob("*.json")) if j]
    return sorted(jobs, key=lambda j: j["submitted"])


def _write(job: dict) -> None:
    atomic_write_json(jobs_root() / f"{job['id']}.json", job)


def submit(config: TrainConfig, run_id: str | None = None, start_worker: bool = True) -> dict:
    """Queue a run; returns the job. The config is validated here, before anything runs."""
    from .train import new_run_id

    config.validate()
    run_id = run_id or new_run_id(config)
    job = dict(id=run_id, config=config.to_dict(), state="queued", submitted=time.time(),
               run=str(default_runs_root() / run_id), pid=None)
    _write(job)
    if start_worker:
        ensure_worker()
    return job


def _job(job_id: str) -> dict:
    job = _read(jobs_root() / f"{job_id}.json")
    if job is None:
        raise ValueError(f"job {job_id!r} not found under {jobs_root()}")
    return job


def resume(job_id: str) -> dict:
    """Queue an interrupted, failed or cancelled job again (it continues where it stopped)."""
    job = _job(job_id)
    job.update(state="queued", pid=None, resume=True, submitted=time.time())
    _write(job)
    ensure_worker()
    return job


def cancel(job_id: str) -> dict:
    job = _job(job_id)
    running = job["state"] == "running" and _alive(job.get("pid"))
    if job["state"] in ("queued", "running"):
        job["state"] = "cancelled"  # written first, so the worker does not call it a failure
        _write(job)
    if running:
        os.kill(job["pid"], signal.SIGTERM)
    return job


def reconcile() -> list[dict]:
    """Mark running jobs whose process is gone as interrupted; returns all jobs."""
    jobs = list_jobs()
    for job in jobs:
        if job["state"] == "running" and not _alive(job.get("pid")):
            job["state"] = "interrupted"
            _write(job)
    return jobs


def _worker_pid_path() -> Path:
    return jobs_root() / "worker.pid"


def ensure_worker() -> int:
    """Start the queue worker unless one is alive; returns its pid."""
    pid_path = _worker_pid_path()
    if pid_path.exists():
        try:
            pid = int(pid_path.read_text())
            if _alive(pid):
                return pid
        except ValueError:
            pass
    jobs_root().mkdir(parents=True, exist_ok=True)
    log = open(jobs_root() / "worker.log", "a")
    proc = subprocess.Popen([sys.executable, "-m", "sdlora", "worker"], cwd=REPO,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env=dict(os.environ))
    pid_path.write_text(str(proc.pid))
    return proc.pid


def _command(job: dict) -> list[str]:
    cmd = [sys.executable, "-m", "sdlora", "train", "--quiet"]
    if job.get("resume") and RunFolder(job["run"]).exists():
        return cmd + ["--resume", job["run"]]
    config_path = Path(job["run"]) / "job-config.json"
    atomic_write_json(config_path, job["config"])
    return cmd + ["--config", str(config_path), "--out", job["run"]]


def worker_loop(idle_exit: float = 30.0) -> None:
    """Run queued jobs one at a time; exit after `idle_exit` seconds with nothing queued."""
    idle_since = time.time()
    while True:
        queued = [j for j in reconcile() if j["state"] == "queued"]
        if not queued:
            if time.time() - idle_since > idle_exit:
                return
            time.sleep(0.5)
            continue
        job = queued[0]
        Path(job["run"]).mkdir(parents=True, exist_ok=True)
        with open(Path(job["run"]) / "worker.log", "a") as log:
            child = subprocess.Popen(_command(job), cwd=REPO, stdout=log,
                                     stderr=subprocess.STDOUT, env=dict(os.environ))
            job.update(state="running", pid=child.pid, started=time.time())
            _write(job)
            code = child.wait()
        latest = _read(jobs_root() / f"{job['id']}.json") or job
        if latest["state"] == "queued":  # resubmitted meanwhile: leave it for the next turn
            continue
        if latest["state"] != "cancelled":
            latest["state"] = "finished" if code == 0 else "failed"
            latest["returncode"] = code
        latest["ended"] = time.time()
        _write(latest)
        idle_since = time.time()
