"""``python -m sdlora analyse RUN [--what ...] [--html DIR]``: every figure as HTML (and PNG
where a static export works offline) and the numbers behind it as CSV.

Each figure's HTML and CSV are written as soon as it is made; the PNGs come last, all from one
headless browser (kaleido), so a run without a Chrome/Chromium still gets everything else. A
progress bar (stderr) counts the analyses, then the PNGs.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

from .core import INTERPOLATION_POINTS, INTERPOLATION_POINTS_MAX  # noqa: E402 (numpy, pandas,
#                                                                    torch: already needed)

WHAT = ["accuracy", "magnitudes", "residuals", "interpolation", "efficiency", "distances",
        "theory", "landscape", "plane"]
PNG_SIZE = dict(width=1000, height=560)


def add_parser(sub) -> None:
    p = sub.add_parser("analyse", help="compute a run's analyses and write figures and CSVs")
    p.add_argument("run")
    p.add_argument("--what", nargs="+", default=["accuracy", "magnitudes", "residuals",
                                                 "interpolation", "efficiency"],
                   help=f"any of: {', '.join(WHAT)} (distances fine-tunes one model per task; "
                        f"plane evaluates a 15 x 15 grid of models: minutes)")
    p.add_argument("--html", default=None, help="output folder (default: <run>/analyses/figures)")
    p.add_argument("--points", type=int, default=INTERPOLATION_POINTS,
                   help=f"interpolation points (default {INTERPOLATION_POINTS}: lambda 0, .25, .5, "
                        f".75, 1; more for a finer line, up to {INTERPOLATION_POINTS_MAX}, each "
                        f"costs one pass over the test data)")
    p.add_argument("--no-png", action="store_true", help="HTML and CSV only (no browser)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=run_analyse)


class Figures:
    """Writes each figure's HTML and CSV to `out` at once and keeps it for the PNG pass."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.written: list[str] = []
        self.pending: list[tuple[object, Path]] = []

    def add(self, fig, frame: pd.DataFrame | None, name: str) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        html = self.out / f"{name}.html"
        fig.write_html(html, include_plotlyjs="cdn")
        self.written.append(str(html))
        if frame is not None:
            frame.to_csv(self.out / f"{name}.csv", index=False)
            self.written.append(str(self.out / f"{name}.csv"))
        self.pending.append((fig, self.out / f"{name}.png"))

    def write_pngs(self, bar=None) -> None:
        """Every pending PNG from one headless browser; a figure that fails is named and
        skipped; without a browser, none (HTML and CSV are enough)."""
        import asyncio

        try:
            import kaleido
        except ImportError as err:
            log.warning("no PNGs (kaleido is not installed: %s)", err)
            return
        async def export() -> None:
            # mathjax=False: no figure uses LaTeX, and its default source is a CDN (offline here)
            async with kaleido.Kaleido(n=1, timeout=120, mathjax=False) as k:
                for fig, path in self.pending:
                    try:
                        await k.write_fig(fig, path=path, opts=PNG_SIZE, cancel_on_error=True)
                        self.written.append(str(path))
                    except Exception as err:  # one bad figure does not cost the others
                        log.warning("no PNG for %s (%s)", path.name, str(err)[:160])
                    if bar is not None:
                        bar.update()

        try:
            asyncio.run(export())
        except Exception as err:  # no browser found or it did not start: HTML and CSV are enough
            log.warning("no PNGs (static export unavailable: %s)", str(err)[:160])


def _quiet_browser_logs() -> None:
    """kaleido and choreographer log every tab at INFO; the CLI's INFO is for the analyses."""
    for name in ("kaleido", "choreographer", "logistro"):
        logging.getLogger(name).setLevel(logging.WARNING)


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
    from tqdm import tqdm

    from ..config import ConfigError
    from ..runs import RunFolder, resolve_run
    from . import core, figures, landscape, theory

    unknown = [w for w in args.what if w not in WHAT]
    if unknown:
        raise ConfigError(f"--what {unknown} not valid; choose from: {', '.join(WHAT)}")
    if not 2 <= args.points <= INTERPOLATION_POINTS_MAX:
        raise ConfigError(f"--points {args.points} is not valid; interpolation needs from 2 "
                          f"points (the two checkpoints) to {INTERPOLATION_POINTS_MAX} (each "
                          f"point is one pass over the test data per task boundary)")
    run = RunFolder(resolve_run(args.run))
    if not run.exists():
        raise ConfigError(f"{run.path} is not a run folder ({run.config_path} is missing)")
    out = Path(args.html) if args.html else run.analyses_dir / "figures"
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--html {out} is a file; expected a folder for the figures (it is "
                          f"made if missing)")
    _check_writable(out, "--html" if args.html else "the figures folder")
    _check_writable(run.analyses_dir, "the run's analyses cache")
    run.config()  # a damaged config.json is named here, before anything is computed
    from ..train import check_backbone_weights
    check_backbone_weights(run)  # a run whose backbone weights changed since: refused
    metrics = run.metrics()
    _quiet_browser_logs()
    done = run.completed_tasks()  # a metrics row whose checkpoint is missing is named here
    if {"magnitudes", "residuals", "efficiency"} & set(args.what):
        run.check_step_logs(done)  # and a finished task's step log that is gone
    boundaries = list(range(2, done + 1)) if "interpolation" in args.what else []
    steps = sum(w in args.what for w in WHAT if w != "interpolation") + len(boundaries)
    bar = tqdm(total=steps, desc="analyses", unit="step", disable=args.quiet, leave=True)
    figs = Figures(out)

    def step(name: str) -> None:
        bar.set_postfix_str(name, refresh=True)

    if "accuracy" in args.what:
        step("accuracy")
        R = metrics["accuracy_matrix"]
        figs.add(figures.accuracy_heatmap(R), core.accuracy_matrix_frame(R).reset_index(),
                 "accuracy_matrix")
        figs.add(figures.forgetting_curves(R), None, "per_task_accuracy")
        bar.update()
    if "magnitudes" in args.what:
        step("magnitudes")
        series = core.magnitude_series(run)
        if len(series):
            figs.add(figures.magnitude_figure(series), series, "magnitudes")
        else:
            log.info("magnitudes: method %s has none", metrics["method"])
        bar.update()
    if "residuals" in args.what:
        step("residuals")
        series = core.residual_series(run)
        if len(series):
            figs.add(figures.residual_figure(series), series, "residual_series")
        table = core.residuals_at_task_end(run)
        if len(table) and any(c.startswith("block") for c in table.columns):
            figs.add(figures.residual_bars(table), table, "residuals_task_end")
        bar.update()
    if boundaries:
        from ..config import TrainConfig
        from ..train import load_data

        benchmark = None  # loaded once for every boundary, and only if one is not cached
        for t in boundaries:
            step(f"interpolation, task {t - 1} to {t}")

            def compute(t=t):
                nonlocal benchmark
                benchmark = benchmark or load_data(TrainConfig.from_dict(run.config()))
                return core.interpolate(run, t, args.points,
                                        benchmark=benchmark).to_dict("records")
            try:
                frame = pd.DataFrame(core.cached(run, f"interpolation_task{t}_{args.points}",
                                                 compute))
            except ValueError as err:  # a method without plain weights (L2P): no line to draw
                log.warning("interpolation skipped: %s", err)
                bar.update(len(boundaries) - boundaries.index(t))
                break
            figs.add(figures.interpolation_figure({run.id: frame}, t), frame,
                     f"interpolation_task{t}")
            bar.update()
    if "efficiency" in args.what:
        step("efficiency")
        eff = core.cached(run, "efficiency", lambda: core.efficiency(run))
        frame = pd.DataFrame(eff["per_task"])
        frame["step_ms_median"] = eff["step_ms_median"][: len(frame)] + [np.nan] * max(
            0, len(frame) - len(eff["step_ms_median"]))
        figs.add(figures.step_cost_figure([dict(label=run.id, method=eff["method"],
                                                step_ms=eff["step_ms_median"])]),
                 frame, "efficiency")
        bar.update()
    if "distances" in args.what:
        step("distances (fine-tunes one model per task)")
        from ..config import TrainConfig
        config = TrainConfig.from_dict(run.config())
        deltas = core.cached(run, "task_specific_deltas_norms", lambda: {
            k: core.relative_distances(v).tolist()
            for k, v in core.task_specific_weights(config).items()})
        for scope, matrix in deltas.items():
            m = np.array(matrix)
            figs.add(figures.distance_heatmap(m, f"Relative distances ({scope} weights)"),
                     pd.DataFrame(m), f"distances_{scope}")
        bar.update()
    if "plane" in args.what:
        step("path plane (a grid of models)")
        from .plane import path_frame, path_plane, plane_name

        try:
            result = core.cached(run, plane_name(done), lambda: path_plane(run))
            figs.add(figures.path_plane_figure({run.id: result}), path_frame({run.id: result}),
                     "path_plane")
        except ValueError as err:  # no plain weights (L2P), or a backbone that never moved
            log.warning("path plane skipped: %s", err)
        bar.update()
    if "theory" in args.what:
        step("theory")
        result = theory.matrix_factorisation_dynamics()
        frame = pd.DataFrame(result["singular_values"], index=result["iterations"])
        figs.add(figures.theorem_figure(result), frame.reset_index(), "theorem1")
        bar.update()
    if "landscape" in args.what:
        step("landscape")
        result = landscape.toy_landscape()
        figs.add(figures.landscape_figure(result), None, "landscape")
        bar.update()
    bar.close()
    if not args.no_png and figs.pending:
        with tqdm(total=len(figs.pending), desc="PNG images (one browser)", unit="png",
                  disable=args.quiet) as png_bar:
            figs.write_pngs(png_bar)
    for path in figs.written:
        print(path)
    return 0
