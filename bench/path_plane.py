"""How long does `sdlora.analysis.path_plane` take on one run, from nothing cached?

Times the analysis of one run (default: the demo run cache/demo/sd-lora-s0, glyphs40, 5 tasks)
at the app's defaults (a 15 x 15 grid, 40 test images per task), in this process: the loading
(checkpoints, the benchmark) and the grid's forward passes together, as the app and the CLI run
it. Prints the CPU model, the threads torch uses and the load average beside the seconds: on a
shared machine the CPU seconds (user + system) are the steadier figure.

Target (issue 22): <= 2 minutes on this 2-core machine.

    OMP_NUM_THREADS=1 python bench/path_plane.py [--run cache/demo/sd-lora-s0] [--grid 15]
        [--images 40]
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sdlora.machine import cpu_model  # noqa: E402


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", default=str(REPO / "cache" / "demo" / "sd-lora-s0"))
    parser.add_argument("--grid", type=int, default=None, help="grid points per side (default 15)")
    parser.add_argument("--images", type=int, default=None,
                        help="test images per task at each grid point (default 40)")
    args = parser.parse_args()
    if not (Path(args.run) / "config.json").exists():
        parser.error(f"--run {args.run} is not a run folder (no config.json)")
    import torch

    from sdlora import argcheck
    from sdlora.analysis.plane import PLANE_GRID, PLANE_IMAGES, check_plane, path_plane

    grid = PLANE_GRID if args.grid is None else args.grid
    images = PLANE_IMAGES if args.images is None else args.images
    argcheck.count(parser, grid, "--grid", 3, "points per side")
    argcheck.count(parser, images, "--images", 1, "test images per task")
    argcheck.checked(parser, check_plane, args.run, grid=grid, images=images)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"CPU: {cpu_model()} ({os.cpu_count()} cores), torch threads: "
          f"{torch.get_num_threads()}, load average before: {load}")
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    result = argcheck.checked(parser, path_plane, args.run, grid=grid, images=images)
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    evaluations = grid * grid + len(result["path"])
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"path_plane({Path(args.run).name}, grid={grid}, images={images}): {wall:.1f} s wall, "
          f"{cpu:.1f} s CPU; {evaluations} forward passes of {2 * images} images "
          f"({wall / evaluations * 1e3:.0f} ms each, loading included); load average after: "
          f"{load}; target <= 120 s: {'met' if wall <= 120 else 'missed'} by the wall time, "
          f"{'met' if cpu <= 120 else 'missed'} by the CPU time (what the wall time is with "
          f"{torch.get_num_threads()} thread(s) on an idle core)")
    return 0


if __name__ == "__main__":
    from sdlora.argcheck import quiet_on_closed_pipe

    quiet_on_closed_pipe(main)
