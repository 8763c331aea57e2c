"""The run queue the app uses: a worker process trains queued runs; cancel and resume work."""
import time

from sdlora import jobs
from sdlora.config import TrainConfig
from sdlora.runs import RunFolder


def _wait(predicate, seconds: float = 240) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.5)
    return False


def _state(job_id: str) -> str:
    return next(j["state"] for j in jobs.list_jobs() if j["id"] == job_id)


def test_queue_runs_in_order_and_cancels(tmp_path):
    cfg = TrainConfig(benchmark="digits", tasks=2, epochs=1, method="lora")
    first = jobs.submit(cfg, run_id="first")
    second = jobs.submit(cfg, run_id="second")
    third = jobs.submit(cfg, run_id="third")
    jobs.cancel(third["id"])  # still queued: dropped, never started
    assert _wait(lambda: _state("first") == "running")
    assert _state("second") == "queued"  # one at a time
    assert _wait(lambda: _state("first") == "finished")
    assert RunFolder(first["run"]).metrics()["tasks_done"] == 2
    assert _wait(lambda: _state("second") == "running")
    assert _wait(lambda: (RunFolder(second["run"]).status() or {}).get("global_step", 0) > 0)
    jobs.cancel(second["id"])  # running: its process is stopped
    assert _wait(lambda: (RunFolder(second["run"]).status() or {}).get("state") == "cancelled",
                 60)
    assert _state("third") == "cancelled" and not RunFolder(third["run"]).exists()
    resumed = jobs.resume(second["id"])
    assert resumed["state"] == "queued"
    assert _wait(lambda: _state("second") == "finished")
    assert RunFolder(second["run"]).metrics()["tasks_done"] == 2


def test_dead_worker_is_marked_interrupted(tmp_path):
    cfg = TrainConfig(benchmark="digits", tasks=2, epochs=1)
    job = jobs.submit(cfg, run_id="ghost", start_worker=False)
    job.update(state="running", pid=999_999_999)
    jobs._write(job)
    assert [j["state"] for j in jobs.reconcile()] == ["interrupted"]


# -- races (issue 13): a stand-in trainer (tests/fake_train.py) so the queue, not training, is
# what takes the time
import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from sdlora.runs import pid_alive  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def fake_trainer(tmp_path, monkeypatch):
    log = tmp_path / "trainings.log"
    log.touch()
    monkeypatch.setenv("SDLORA_TRAIN_COMMAND",
                       json.dumps([sys.executable, str(REPO / "tests" / "fake_train.py")]))
    monkeypatch.setenv("FAKE_TRAIN_LOG", str(log))
    monkeypatch.setenv("FAKE_TRAIN_SECONDS", "1.5")
    yield log
    for line in (jobs.jobs_root() / "worker.history").read_text().splitlines() \
            if (jobs.jobs_root() / "worker.history").exists() else []:
        pid = int(line.split()[1])
        if pid_alive(pid):  # a worker idling after its test: stop it
            os.kill(pid, signal.SIGTERM)


def _trainings(log: Path) -> dict[str, list[tuple[str, float]]]:
    """run id -> [(event, time)] from the stand-in trainer's log."""
    out: dict[str, list] = {}
    for line in log.read_text().splitlines():
        event, name, _pid, t = line.split()
        out.setdefault(name, []).append((event, float(t)))
    return out


def _never_two_at_once(log: Path) -> None:
    spans = sorted((v[0][1], v[-1][1]) for v in _trainings(log).values())
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert start >= end, f"two trainings overlapped: {spans}"


def _workers_never_overlap() -> None:
    lines = [ln.split() for ln in (jobs.jobs_root() / "worker.history").read_text().splitlines()]
    running = set()
    for event, pid, _ in lines:
        if event == "start":
            assert not running, f"worker {pid} started while {running} held the lock"
            running.add(pid)
        else:
            running.discard(pid)


SUBMITTER = """
import sys, time
from pathlib import Path
from sdlora import jobs
from sdlora.config import TrainConfig
me, other = Path(sys.argv[1]), Path(sys.argv[2])
me.touch()
while not other.exists():  # both imported: submit at the same instant
    time.sleep(0.001)
for name in sys.argv[3:]:
    jobs.submit(TrainConfig(benchmark="digits", tasks=2, epochs=1), run_id=name)
"""


def test_two_submitters_at_once_one_worker_each_job_once(tmp_path, fake_trainer):
    a, b = tmp_path / "ready-a", tmp_path / "ready-b"
    procs = [subprocess.Popen([sys.executable, "-c", SUBMITTER, str(x), str(y), *names],
                              cwd=REPO)
             for x, y, names in ((a, b, ["a1", "a2"]), (b, a, ["b1", "b2"]))]
    assert [p.wait(timeout=180) for p in procs] == [0, 0]
    names = ["a1", "a2", "b1", "b2"]
    assert _wait(lambda: all(_state(n) == "finished" for n in names), 180), jobs.list_jobs()
    runs = _trainings(fake_trainer)
    assert sorted(runs) == names
    assert all([e for e, _ in v] == ["start", "end"] for v in runs.values()), runs  # once each
    _never_two_at_once(fake_trainer)
    _workers_never_overlap()
    assert all((jobs.jobs_root() / f"{n}.0.claim").exists() for n in names)


def test_worker_killed_mid_job_is_replaced_and_queue_drains(fake_trainer, monkeypatch):
    monkeypatch.setenv("FAKE_TRAIN_SECONDS", "4")
    cfg = TrainConfig(benchmark="digits", tasks=2, epochs=1)
    for name in ("k1", "k2", "k3"):
        jobs.submit(cfg, run_id=name, start_worker=False)
    jobs.ensure_worker()  # one worker, so no spare one is still starting when it is killed
    assert _wait(lambda: _state("k1") == "running", 120)
    worker = next(j for j in jobs.list_jobs() if j["id"] == "k1")["worker"]
    os.kill(worker, signal.SIGKILL)
    assert _wait(lambda: not pid_alive(worker), 10)
    assert _wait(lambda: not jobs.worker_alive(), 20)  # its lock goes with it
    # the Train page calls reconcile every 2 s
    assert _wait(lambda: jobs.reconcile() and all(_state(n) == "finished"
                                                  for n in ("k1", "k2", "k3")), 180), \
        jobs.list_jobs()
    runs = _trainings(fake_trainer)
    assert all([e for e, _ in runs[n]] == ["start", "end"] for n in ("k1", "k2", "k3")), runs
    _never_two_at_once(fake_trainer)  # k2 waited for k1's orphaned training to end


def test_cancel_stops_the_whole_process_group(fake_trainer, monkeypatch):
    monkeypatch.setenv("FAKE_TRAIN_SECONDS", "120")
    monkeypatch.setenv("FAKE_TRAIN_GRANDCHILD", "1")
    job = jobs.submit(TrainConfig(benchmark="digits", tasks=2, epochs=1), run_id="c1")
    pid_file = Path(job["run"]) / "grandchild.pid"
    assert _wait(lambda: pid_file.exists() and pid_file.read_text().strip(), 120)
    grandchild = int(pid_file.read_text())
    assert pid_alive(grandchild)
    jobs.cancel("c1")
    assert _wait(lambda: not pid_alive(grandchild), 15)  # not only the recorded process
    assert _wait(lambda: _state("c1") == "cancelled", 30)
    assert RunFolder(job["run"]).status()["state"] == "cancelled"


def test_reconcile_does_not_start_a_second_worker_while_one_is_still_starting():
    """A worker needs seconds to import on a busy machine before it takes the worker lock; the
    Train page reconciles on every refresh in that window. Each call must not start another
    (a runaway of dozens of workers was seen under load before this)."""
    import os
    import signal

    from sdlora.jobs import ensure_worker

    first = ensure_worker()
    try:
        # whether it already holds the lock (its pid is in the lock file) or is still
        # importing (its pid is in worker.starting), the answer is that same worker
        again = [ensure_worker() for _ in range(3)]
        assert again == [first] * 3
    finally:
        try:
            os.killpg(first, signal.SIGKILL)
        except ProcessLookupError:
            pass
