"""A queue of training runs executed outside the caller (the app never blocks on training).

``cache/jobs/<run-id>.json`` holds one job: its config, state (queued, running, finished,
failed, cancelled, interrupted) and the pid of its training process. `submit` writes a job and
makes sure the queue worker (``python -m sdlora worker``) runs; the worker takes the oldest
queued job, trains it in a child process (``python -m sdlora train --out <run>``; its output
goes to ``cache/jobs/<run-id>.log``), and moves on.

What holds under races:

* **One worker.** A worker holds an exclusive lock (flock) on ``cache/jobs/worker.lock`` for its
  whole life; a second worker started at the same moment (two submitters at once) does not get
  it and exits. `worker_alive` asks the lock, not a pid file.
* **Each job exists once.** `submit` creates ``cache/jobs/<run-id>.json`` with O_EXCL; a
  generated id already taken (two submitters in one millisecond) gets a counter suffix.
* **Each job runs once.** Before a job starts, its worker creates
  ``cache/jobs/<run-id>.<attempt>.claim`` with O_EXCL; a job whose claim exists is not started
  again (`resume` queues a new attempt). The run folder itself is claimed by `train` as well.
* **Cancel stops everything.** The training child leads its own process group; `cancel` sends
  SIGTERM to the whole group (DataLoader workers included); the run records 'cancelled' and can
  be resumed.
* **A dead worker is replaced.** `reconcile` (the Train page calls it every few seconds) starts
  a worker when queued jobs have none. A training child outlives a worker killed with -9 (its
  own session); the next worker waits for it and records how it ended (from the run's
  status.json), then drains the queue. A job whose process is gone and has no worker to report
  it is marked from its run's status: finished, or interrupted (`resume` continues it from its
  last finished task).

``SDLORA_TRAIN_COMMAND`` (a JSON list, default ``[python, "-m", "sdlora", "train"]``) replaces
the training command, e.g. with a ``torchrun`` launcher.
"""
from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .config import TrainConfig
from .runs import RunFolder, atomic_write_json, default_runs_root, pid_alive

__all__ = ["jobs_root", "submit", "cancel", "list_jobs", "reconcile", "resume", "worker_loop",
           "ensure_worker", "worker_alive"]

REPO = Path(__file__).resolve().parent.parent
FINAL = ("finished", "failed", "cancelled", "interrupted")


def jobs_root() -> Path:
    return default_runs_root().parent / "jobs"


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:  # reap a finished child of this process (the app starts the worker)
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return False
    except ChildProcessError:
        pass
    except OSError:
        return False
    return pid_alive(pid)


def _read(path: Path) -> dict | None:
    try:
        job = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return job if isinstance(job, dict) and "id" in job else None


def list_jobs() -> list[dict]:
    """All jobs, oldest first."""
    root = jobs_root()
    if not root.exists():
        return []
    jobs = [j for j in (_read(p) for p in root.glob("*.json")) if j]
    return sorted(jobs, key=lambda j: j.get("submitted", 0))


def _write(job: dict) -> None:
    atomic_write_json(jobs_root() / f"{job['id']}.json", job)


def submit(config: TrainConfig, run_id: str | None = None, start_worker: bool = True) -> dict:
    """Queue a run; returns the job. The config is validated here, before anything runs.

    The job's file is created with O_EXCL, so two submitters never get one id: a generated id
    (`new_run_id`, a millisecond stamp) that another job or run folder already has takes the
    next free counter suffix (``-2``, ``-3``, ...); a given `run_id` that is taken is an error."""
    from .train import new_run_id

    config.validate()
    jobs_root().mkdir(parents=True, exist_ok=True)
    base = run_id or new_run_id(config)
    for n in range(1, 10_000):
        candidate = base if n == 1 else f"{base}-{n}"
        job = dict(id=candidate, config=config.to_dict(), state="queued", submitted=time.time(),
                   run=str(default_runs_root() / candidate), pid=None, attempt=0)
        if not Path(job["run"]).exists() and _create(jobs_root() / f"{candidate}.json",
                                                     json.dumps(job, indent=1)):
            break
        if run_id is not None:
            raise ValueError(f"a job or run {run_id!r} already exists under "
                             f"{jobs_root().parent}; choose another run id")
    else:
        raise ValueError(f"no free job id from {base!r} under {jobs_root()}")
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
    if job["state"] in ("queued", "running"):
        return job
    job.update(state="queued", pid=None, resume=True, submitted=time.time(),
               attempt=int(job.get("attempt", 0)) + 1)
    _write(job)
    ensure_worker()
    return job


def cancel(job_id: str) -> dict:
    """Drop a queued job, or stop a running one: SIGTERM to its whole process group."""
    job = _job(job_id)
    running = job["state"] == "running" and _alive(job.get("pid"))
    if job["state"] in ("queued", "running"):
        job["state"] = "cancelled"  # written first, so the worker does not call it a failure
        _write(job)
    if running:
        try:
            os.killpg(job.get("pgid") or job["pid"], signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            try:
                os.kill(job["pid"], signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass
    return job


def _outcome(job: dict, returncode: int | None = None) -> str:
    """How a job's training ended: its exit code, else its run's status.json."""
    if returncode is not None:
        return "finished" if returncode == 0 else "failed"
    try:
        state = (RunFolder(job["run"]).status() or {}).get("state")
    except Exception:  # noqa: BLE001 - a damaged status says nothing
        state = None
    return {"finished": "finished", "failed": "failed", "cancelled": "cancelled"}.get(
        state, "interrupted")


def _settle_orphans(jobs: list[dict]) -> None:
    """Running jobs whose process is gone and whose worker cannot report them."""
    for job in jobs:
        if job["state"] == "running" and not _alive(job.get("pid")):
            job["state"] = _outcome(job)
            job["ended"] = time.time()
            _write(job)


def reconcile(start_worker: bool = True) -> list[dict]:
    """Settle running jobs whose process is gone (finished or interrupted, from their run's
    status), and start a worker when jobs are queued (or a training child is left running)
    and no worker lives. Returns all jobs."""
    jobs = list_jobs()
    alive = worker_alive()
    if not alive:
        _settle_orphans(jobs)
    pending = any(j["state"] == "queued" or (j["state"] == "running" and _alive(j.get("pid")))
                  for j in jobs)
    if start_worker and pending and not alive:
        ensure_worker()
    return jobs


def _lock_path() -> Path:
    return jobs_root() / "worker.lock"


def worker_alive() -> bool:
    """Whether a worker holds the worker lock (a probe that takes it for a moment)."""
    path = _lock_path()
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops a lock taken here
    return False


def _worker_pid() -> int | None:
    try:
        return int(_lock_path().read_text().strip() or 0) or None
    except (OSError, ValueError):
        return None


def ensure_worker() -> int:
    """Start the queue worker unless one is alive; returns its pid. Two callers at once may
    both start one: only one gets the worker lock, the other exits at once."""
    if worker_alive():
        return _worker_pid() or 0
    starting = _starting_pid()
    if starting is not None:  # started, still importing: it takes the lock or exits soon
        return starting
    jobs_root().mkdir(parents=True, exist_ok=True)
    with open(jobs_root() / "worker.log", "a") as log:
        proc = subprocess.Popen([sys.executable, "-m", "sdlora", "worker"], cwd=REPO,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env=dict(os.environ))
    atomic_write_json(jobs_root() / "worker.starting", dict(pid=proc.pid, started=time.time()))
    return proc.pid


def _starting_pid() -> int | None:
    """The pid of a worker this module started that is still alive (it may not hold the lock
    yet: a worker needs seconds to import on a busy machine). Without this, every reconcile in
    that window (the Train page reconciles on each refresh) started one more worker."""
    try:
        record = json.loads((jobs_root() / "worker.starting").read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(record, dict):
        return None
    pid, started = record.get("pid"), record.get("started")
    if (isinstance(pid, int) and isinstance(started, (int, float)) and _alive(pid)
            and time.time() - started < 600):
        return pid
    return None


def _train_command() -> list[str]:
    raw = os.environ.get("SDLORA_TRAIN_COMMAND")
    if raw:
        command = json.loads(raw)
        if not (isinstance(command, list) and command and all(isinstance(c, str)
                                                              for c in command)):
            raise ValueError(f"SDLORA_TRAIN_COMMAND={raw!r}: expected a JSON list of strings")
        return command
    return [sys.executable, "-m", "sdlora", "train"]


def _command(job: dict) -> list[str]:
    cmd = _train_command() + ["--quiet"]
    if job.get("resume") and RunFolder(job["run"]).exists():
        return cmd + ["--resume", job["run"]]
    config_path = jobs_root() / f"{job['id']}.config.json"  # not in the run folder: train
    atomic_write_json(config_path, job["config"])              # claims an empty folder
    return cmd + ["--config", str(config_path), "--out", job["run"]]


def _create(path: Path, text: str) -> bool:
    """Create `path` holding `text` (O_EXCL): True for the one caller that does. A reader
    that comes before the text is written finds it empty (`_read`: not a job yet)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return True


def _claim_job(job: dict) -> bool:
    """Create the job attempt's claim file (O_EXCL): True for the one caller that does."""
    return _create(jobs_root() / f"{job['id']}.{int(job.get('attempt', 0))}.claim",
                   f"{os.getpid()} {time.time()}\n")


def _acquire_worker_lock(wait: float = 2.0) -> int | None:
    """The worker lock's fd, or None when another worker holds it (retried for `wait` s, so
    a probe by `worker_alive` at the same instant does not turn a worker away)."""
    jobs_root().mkdir(parents=True, exist_ok=True)
    fd = os.open(_lock_path(), os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.time() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.time() > deadline:
                os.close(fd)
                return None
            time.sleep(0.05)
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def worker_loop(idle_exit: float = 30.0) -> None:
    """Run queued jobs one at a time; exit after `idle_exit` seconds with nothing queued.
    Returns at once when another worker holds the worker lock."""
    lock = _acquire_worker_lock()
    if lock is None:
        return
    try:
        with open(jobs_root() / "worker.history", "a") as history:
            history.write(f"start {os.getpid()} {time.time()}\n")
        _work(idle_exit)
    finally:
        with open(jobs_root() / "worker.history", "a") as history:
            history.write(f"end {os.getpid()} {time.time()}\n")
        os.close(lock)


def _work(idle_exit: float) -> None:
    idle_since = time.time()
    while True:
        jobs = list_jobs()
        orphans = [j for j in jobs if j["state"] == "running" and _alive(j.get("pid"))]
        if orphans:  # left by a worker killed mid-job: wait for its child, then record it
            time.sleep(0.5)
            idle_since = time.time()
            continue
        _settle_orphans(jobs)
        queued = [j for j in list_jobs() if j["state"] == "queued"]
        if not queued:
            if time.time() - idle_since > idle_exit:
                return
            time.sleep(0.5)
            continue
        job = queued[0]
        if not _claim_job(job):  # this attempt already ran (or runs): never twice
            latest = _read(jobs_root() / f"{job['id']}.json") or job
            if latest["state"] == "queued" and latest.get("attempt") == job.get("attempt"):
                latest.update(state="interrupted", ended=time.time())
                _write(latest)
            continue
        _run(job)
        idle_since = time.time()


def _run(job: dict) -> None:
    try:
        Path(job["run"]).parent.mkdir(parents=True, exist_ok=True)
        command = _command(job)
    except (OSError, ValueError) as err:
        job.update(state="failed", error=str(err), ended=time.time())
        _write(job)
        return
    with open(jobs_root() / f"{job['id']}.log", "a") as log:
        child = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                 env=dict(os.environ), start_new_session=True)
        job.update(state="running", pid=child.pid, pgid=child.pid, started=time.time(),
                   worker=os.getpid(), log=str(jobs_root() / f"{job['id']}.log"))
        latest = _read(jobs_root() / f"{job['id']}.json") or {}
        if latest.get("state") == "cancelled":  # cancelled while it was being started
            job["state"] = "cancelled"
            os.killpg(child.pid, signal.SIGTERM)
        _write(job)
        code = child.wait()
    latest = _read(jobs_root() / f"{job['id']}.json") or job
    if latest["state"] == "queued":  # resubmitted meanwhile: leave it for the next turn
        return
    if latest["state"] != "cancelled":
        latest["state"] = _outcome(latest, code)
        latest["returncode"] = code
    latest["ended"] = time.time()
    _write(latest)
