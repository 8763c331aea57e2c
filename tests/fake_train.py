"""A stand-in for `python -m sdlora train` in the queue tests (the real one takes minutes on a
loaded CPU): same arguments, a status.json like the real one, and a log of every start and end
so a test can see that each job ran exactly once and never two at once.

Environment: FAKE_TRAIN_LOG (the shared log), FAKE_TRAIN_SECONDS (how long it "trains"),
FAKE_TRAIN_GRANDCHILD (start a `sleep` child, as DataLoader workers are, and record its pid).

`finished_run` writes a finished run folder with a given accuracy matrix in an instant (config,
metrics, status and empty checkpoint files), for tests that only read runs.
"""
import json
import os
import signal
import subprocess
import sys
import time


def main() -> int:
    args = sys.argv[1:]
    out = args[args.index("--out") + 1] if "--out" in args else args[args.index("--resume") + 1]
    os.makedirs(out, exist_ok=True)
    log = os.environ["FAKE_TRAIN_LOG"]
    name = os.path.basename(out)

    def note(event: str) -> None:
        with open(log, "a") as f:
            f.write(f"{event} {name} {os.getpid()} {time.time()}\n")

    def status(state: str) -> None:
        tmp = os.path.join(out, f".status.json.{os.getpid()}.tmp")
        with open(tmp, "w") as f:
            json.dump(dict(state=state, pid=os.getpid(), updated=time.time()), f)
        os.replace(tmp, os.path.join(out, "status.json"))

    def stop(signum, frame):
        status("cancelled")
        note("cancelled")
        sys.exit(130)

    signal.signal(signal.SIGTERM, stop)
    note("start")
    status("running")
    if os.environ.get("FAKE_TRAIN_GRANDCHILD"):
        child = subprocess.Popen(["sleep", "600"])
        with open(os.path.join(out, "grandchild.pid"), "w") as f:
            f.write(str(child.pid))
    time.sleep(float(os.environ.get("FAKE_TRAIN_SECONDS", "1")))
    status("finished")
    note("end")
    return 0


def finished_run(out, config, matrix, tasks=None):
    """A run folder of `config` (a TrainConfig) whose accuracy matrix is `matrix`; with `tasks`
    larger than its rows, an interrupted one."""
    from sdlora.metrics import summarise
    from sdlora.runs import RunFolder, atomic_write_json

    run = RunFolder(out)
    run.checkpoints_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run.config_path, config.to_dict())
    summary = summarise(matrix, [10] * len(matrix))
    atomic_write_json(run.metrics_path, dict(
        method=config.method, benchmark=config.benchmark, seed=config.seed,
        tasks=tasks or len(matrix), tasks_done=len(matrix), config=config.to_dict(),
        accuracy_matrix=matrix, task_info=[], **summary))
    import torch
    from safetensors.torch import save_file

    for task in range(len(matrix)):  # whole (tiny) safetensors files: listing checks them
        save_file({"head": torch.zeros(1)}, str(run.checkpoint_path(task)))
    done = tasks is None or tasks == len(matrix)
    atomic_write_json(run.status_path, dict(state="finished" if done else "cancelled",
                                            updated=time.time()))
    return run


if __name__ == "__main__":
    sys.exit(main())
