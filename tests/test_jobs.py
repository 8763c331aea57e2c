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
