"""How long does `python -m sdlora analyse RUN --html DIR` take on a default run, from nothing cached?

1. The whole command, as a user runs it, on a copy of a run without its cached analyses
   (default: the demo run cache/demo/sd-lora-s0, made with `python -m sdlora train`'s defaults:
   5 tasks, 5 epochs): wall-clock seconds and the CPU seconds it used (user + system, its
   children included), and the files it wrote. On a busy machine the CPU seconds are the
   steadier figure; divide by the cores it could use for an idle-machine estimate.
2. The PNG export side by side, on the same figures (that run's HTML figures, re-made): one
   browser for all of them (what the command does now) against plotly's `write_image` per
   figure (a browser each, what it did before): seconds and ratio.

Target (issue 12): the whole analysis <= 60 s on an idle 2-core machine. The load average is
printed beside the numbers.

    python bench/analyse_time.py [--run cache/demo/sd-lora-s0] [--skip-analyse]
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def cpu_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def time_analyse(run: Path, tmp: Path) -> dict:
    copy = tmp / run.name
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("analyses"))
    out = tmp / "figures"
    cpu0, t0 = cpu_children(), time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "sdlora", "analyse", str(copy), "--html",
                             str(out)], cwd=REPO, capture_output=True, text=True,
                            env=dict(os.environ, HF_HUB_OFFLINE="1"))
    wall, cpu = time.perf_counter() - t0, cpu_children() - cpu0
    if result.returncode:
        raise SystemExit(f"analyse failed ({result.returncode}):\n{result.stderr[-2000:]}")
    files = sorted(p.name for p in out.iterdir())
    return dict(wall=wall, cpu=cpu, files=files, copy=copy)


def time_png_export(run: Path, tmp: Path) -> dict:
    """The run's figures (from its cached analyses), exported both ways."""
    import plotly.io as pio

    from sdlora.analysis import core, figures
    from sdlora.analysis.cli import Figures
    from sdlora.runs import RunFolder

    rf = RunFolder(run)
    R = rf.metrics()["accuracy_matrix"]
    figs = [figures.accuracy_heatmap(R), figures.forgetting_curves(R),
            figures.magnitude_figure(core.magnitude_series(rf)),
            figures.residual_figure(core.residual_series(rf))]
    one = Figures(tmp / "one-browser")
    for i, fig in enumerate(figs):
        one.add(fig, None, f"fig{i}")
    t0 = time.perf_counter()
    one.write_pngs()
    one_browser = time.perf_counter() - t0
    each = tmp / "browser-each"
    each.mkdir()
    t0 = time.perf_counter()
    for i, fig in enumerate(figs):
        pio.write_image(fig, each / f"fig{i}.png", width=1000, height=560)
    per_figure = time.perf_counter() - t0
    made = len([p for p in one.written if p.endswith(".png")])
    return dict(figures=len(figs), one_browser=one_browser, per_figure=per_figure, made=made)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", default=str(REPO / "cache" / "demo" / "sd-lora-s0"))
    parser.add_argument("--skip-analyse", action="store_true",
                        help="only the PNG export comparison")
    args = parser.parse_args()
    run = Path(args.run)
    if not (run / "config.json").exists():
        raise SystemExit(f"--run {run} is not a run folder (no config.json)")
    print(f"load average before: {loadavg()} on {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(prefix="sdlora-analyse-") as tmp:
        tmp = Path(tmp)
        if not args.skip_analyse:
            a = time_analyse(run, tmp)
            pngs = sum(f.endswith(".png") for f in a["files"])
            print(f"python -m sdlora analyse {run.name} (nothing cached): {a['wall']:.1f} s wall, "
                  f"{a['cpu']:.1f} s CPU (user + system); {len(a['files'])} files, {pngs} PNG; "
                  f"load average after: {loadavg()}")
            source = a["copy"]
        else:
            source = run
        p = time_png_export(source, tmp)
        print(f"PNG export of {p['figures']} figures: one browser {p['one_browser']:.1f} s "
              f"({p['made']} written), a browser per figure {p['per_figure']:.1f} s; ratio "
              f"{p['per_figure'] / p['one_browser']:.2f}x; load average after: {loadavg()}")


if __name__ == "__main__":
    main()
