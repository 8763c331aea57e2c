"""`python -m sdlora analyse`'s PNG export: one browser for all figures, none on failure."""
from pathlib import Path

import plotly.graph_objects as go
import pytest

from sdlora.analysis.cli import Figures

CHROMIUM = Path("/usr/bin/chromium")


def _figures(out: Path, n: int = 3) -> Figures:
    figs = Figures(out)
    for i in range(n):
        figs.add(go.Figure(go.Scatter(x=[0, 1], y=[i, i + 1])), None, f"fig{i}")
    return figs


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed")
def test_all_pngs_from_one_browser(tmp_path, monkeypatch):
    import kaleido

    opened = []
    real = kaleido.Kaleido

    class Counting(real):
        def __init__(self, *args, **kwargs):
            opened.append(kwargs)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(kaleido, "Kaleido", Counting)
    figs = _figures(tmp_path)
    ticks = []

    class Bar:
        def update(self, n=1):
            ticks.append(n)

    figs.write_pngs(Bar())
    assert len(opened) == 1, f"{len(opened)} browsers for 3 figures"
    for i in range(3):
        png = tmp_path / f"fig{i}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert str(png) in figs.written
    assert len(ticks) == 3


def test_no_browser_costs_only_the_pngs(tmp_path, monkeypatch, caplog):
    import kaleido

    class NoBrowser:
        def __init__(self, *args, **kwargs):
            raise RuntimeError("no Chrome found")

    monkeypatch.setattr(kaleido, "Kaleido", NoBrowser)
    figs = _figures(tmp_path, 2)
    figs.write_pngs()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig0.html", "fig1.html"]
    assert "no PNGs (static export unavailable: no Chrome found)" in caplog.text
