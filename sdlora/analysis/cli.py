"""``python -m sdlora analyse RUN [--what ...] [--html DIR]``: every figure as HTML (and PNG
where a static export works offline) and the numbers behind it as CSV."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

WHAT = ["accuracy", "magnitudes", "residuals", "interpolation", "efficiency", "distances",
        "theory", "landscape"]


def add_parser(sub) -> None:
    p = sub.add_parser("analyse", help="compute a run's analyses and write figures and CSVs")
    p.add_argument("run")
    p.add_argument("--what", nargs="+", default=["accuracy", "magnitudes", "residuals",
                                                 "interpolation", "efficiency"],
                   help=f"any of: {', '.join(WHAT)} (distances fine-tunes one model per task)")
    p.add_argument("--html", default=None, help="output folder (default: <run>/analyses/figures)")
    p.add_argument("--points", type=int, default=11, help="interpolation points")
    p.set_defaults(handler=run_analyse)


def _export(fig, frame: pd.DataFrame | None, out: Path, name: str) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    written = [str(out / f"{name}.html")]
    fig.write_html(written[0], include_plotlyjs="cdn")
    if frame is not None:
        frame.to_csv(out / f"{name}.csv", index=False)
        written.append(str(out / f"{name}.csv"))
    try:
        fig.write_image(str(out / f"{name}.png"), width=1000, height=560)
        written.append(str(out / f"{name}.png"))
    except Exception as err:  # kaleido needs a Chrome/Chromium; HTML and CSV are enough
        log.warning("no PNG for %s (static export unavailable: %s)", name, str(err)[:120])
    return written


def _check_writable(folder: Path, what: str) -> None:
    """ConfigError unless `folder` (or the nearest existing folder above it) can be written."""
    import os

    from ..config import ConfigError

    probe = folder
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{what} {folder} cannot be made: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {folder} cannot be written ({probe} is read-only); pass "
                          f"--html DIR for the figures, and make {probe} writable for the "
                          f"cached analyses")


def run_analyse(args) -> int:
    from ..config import ConfigError
    from ..runs import RunFolder
    from . import core, figures, landscape, theory

    unknown = [w for w in args.what if w not in WHAT]
    if unknown:
        raise ConfigError(f"--what {unknown} not valid; choose from: {', '.join(WHAT)}")
    if args.points < 2:
        raise ConfigError(f"--points {args.points} is not valid; interpolation needs at least 2 "
                          f"points (the two checkpoints)")
    from ..cli import _resolve_run
    run = RunFolder(_resolve_run(args.run))
    if not run.exists():
        raise ConfigError(f"{run.path} is not a run folder ({run.config_path} is missing)")
    out = Path(args.html) if args.html else run.analyses_dir / "figures"
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--html {out} is a file; expected a folder for the figures (it is "
                          f"made if missing)")
    _check_writable(out, "--html" if args.html else "the figures folder")
    _check_writable(run.analyses_dir, "the run's analyses cache")
    run.config()  # a damaged config.json is named here, before anything is computed
    metrics = run.metrics()
    run.completed_tasks()  # a metrics row whose checkpoint is missing is named here
    written: list[str] = []
    if "accuracy" in args.what:
        R = metrics["accuracy_matrix"]
        written += _export(figures.accuracy_heatmap(R), core.accuracy_matrix_frame(R).reset_index(),
                           out, "accuracy_matrix")
        written += _export(figures.forgetting_curves(R), None, out, "per_task_accuracy")
    if "magnitudes" in args.what:
        series = core.magnitude_series(run)
        if len(series):
            written += _export(figures.magnitude_figure(series), series, out, "magnitudes")
        else:
            log.info("magnitudes: method %s has none", metrics["method"])
    if "residuals" in args.what:
        series = core.residual_series(run)
        if len(series):
            written += _export(figures.residual_figure(series), series, out, "residual_series")
        table = core.residuals_at_task_end(run)
        if len(table) and any(c.startswith("block") for c in table.columns):
            written += _export(figures.residual_bars(table), table, out, "residuals_task_end")
    if "interpolation" in args.what and run.completed_tasks() >= 2:
        panels = {}
        for t in range(2, run.completed_tasks() + 1):
            frame = pd.DataFrame(core.cached(
                run, f"interpolation_task{t}_{args.points}",
                lambda t=t: core.interpolate(run, t, args.points).to_dict("records")))
            panels[f"task {t}"] = frame
            written += _export(figures.interpolation_figure({run.id: frame}, t), frame, out,
                               f"interpolation_task{t}")
    if "efficiency" in args.what:
        eff = core.cached(run, "efficiency", lambda: core.efficiency(run))
        frame = pd.DataFrame(eff["per_task"])
        frame["step_ms_median"] = eff["step_ms_median"][: len(frame)] + [np.nan] * max(
            0, len(frame) - len(eff["step_ms_median"]))
        written += _export(figures.step_cost_figure([dict(label=run.id, method=eff["method"],
                                                          step_ms=eff["step_ms_median"])]),
                           frame, out, "efficiency")
    if "distances" in args.what:
        from ..config import TrainConfig
        config = TrainConfig.from_dict(run.config())
        deltas = core.cached(run, "task_specific_deltas_norms", lambda: {
            k: core.relative_distances(v).tolist()
            for k, v in core.task_specific_weights(config).items()})
        for scope, matrix in deltas.items():
            m = np.array(matrix)
            written += _export(figures.distance_heatmap(m, f"Relative distances ({scope} weights)"),
                               pd.DataFrame(m), out, f"distances_{scope}")
    if "theory" in args.what:
        result = theory.matrix_factorisation_dynamics()
        frame = pd.DataFrame(result["singular_values"], index=result["iterations"])
        written += _export(figures.theorem_figure(result), frame.reset_index(), out, "theorem1")
    if "landscape" in args.what:
        result = landscape.toy_landscape()
        written += _export(figures.landscape_figure(result), None, out, "landscape")
    for path in written:
        print(path)
    return 0
