"""The Directions page with both residuals (and with an older run that logged only one), and the
Accuracy page's seed groups, under AppTest."""
import json
import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from sdlora.config import TrainConfig
from sdlora.train import train

APP = str(Path(__file__).resolve().parent.parent / "app.py")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """An sd-lora run (seeds 0 and 1), the same at another learning rate, and a copy of seed 0
    whose step logs predate the absolute residual."""
    from tests.conftest import small_benchmark

    root = tmp_path_factory.mktemp("cache")
    bench = small_benchmark(classes=4)
    for name, kw in (("sd-s0", {}), ("sd-s1", dict(seed=1)), ("sd-lr", dict(lr=1e-3))):
        cfg = TrainConfig(method="sd-lora", benchmark="digits", tasks=2, epochs=1, batch_size=12,
                          residual_every=1, **kw)
        train(cfg, out=root / "runs" / name, progress=False, benchmark=bench)
    old = root / "runs" / "old"
    shutil.copytree(root / "runs" / "sd-s0", old)
    for log in (old / "steps").glob("*.jsonl"):
        rows = [json.loads(x) for x in log.read_text().splitlines()]
        log.write_text("".join(json.dumps({k: v for k, v in r.items()
                                           if k != "residual_absolute"}) + "\n" for r in rows))
    return root


def _open(page: str, run: Path | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    at.switch_page(f"pages/{page}.py")
    at.run()
    if run is not None:
        at.session_state["selected_run"] = str(run)
        at.run()
    assert not at.exception, [e.message for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def _titles(at: AppTest) -> list[str]:
    return [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in at.get("plotly_chart")]


def test_directions_page_plots_both_residuals(cache, monkeypatch):
    monkeypatch.setenv("SDLORA_CACHE", str(cache))
    at = _open("directions", cache / "runs" / "sd-s0")
    titles = " | ".join(_titles(at))
    for part in ("Relative residual of the new direction", "Absolute residual of the new product",
                 "Relative residual per adapted projection", "Absolute residual (unnormalised"):
        assert part in titles
    text = " ".join(m.value for m in at.markdown)
    assert "Why the two curves differ" in text and "tau" in text
    frames = [d.value for d in at.dataframe]
    table = frames[0].data if hasattr(frames[0], "data") else frames[0]
    assert "tau needed / tau (absolute)" in table.columns and len(table) == 1


def test_directions_page_on_a_run_without_the_absolute_log(cache, monkeypatch):
    monkeypatch.setenv("SDLORA_CACHE", str(cache))
    at = _open("directions", cache / "runs" / "old")
    assert any("logged by newer runs" in i.value for i in at.info)
    titles = " | ".join(_titles(at))
    assert "Relative residual of the new direction" in titles
    assert "Absolute residual of the new product" not in titles
    assert "Absolute residual (unnormalised" in titles  # task ends: from the checkpoints


def test_accuracy_page_groups_by_configuration(cache, monkeypatch):
    monkeypatch.setenv("SDLORA_CACHE", str(cache))
    at = _open("accuracy", cache / "runs" / "sd-s0")
    at.multiselect[0].set_value([str(cache / "runs" / n) for n in ("sd-s0", "sd-s1", "sd-lr")])
    at.run()
    assert not at.exception
    summary = at.dataframe[-1].value
    groups = dict(zip(summary["group"], summary["runs"]))
    assert groups == {"sd-lora · lr=0.008": 2, "sd-lora · lr=0.001": 1}
