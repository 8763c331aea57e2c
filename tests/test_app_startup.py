"""The app's first paint does not wait for torch, and the Efficiency page plots the measured
step cost (bench/results/step_cost.json) rather than typed-in figures."""
import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

REPO = Path(__file__).resolve().parent.parent
APP = str(REPO / "app.py")
PAGES = sorted((REPO / "pages").glob("*.py"))
STEP_COST = REPO / "bench" / "results" / "step_cost.json"
# What a page may import before its title and text are drawn: no torch, no pandas, no sdlora.
LIGHT = {"streamlit", "ui", "json", "os", "pathlib", "time"}  # stdlib or already loaded


def test_ui_and_run_listing_do_not_import_torch_or_pandas():
    code = ("import sys, ui; from sdlora.runs import list_runs; list_runs(); "
            "print(sorted(m for m in ('torch', 'pandas', 'safetensors') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"importing ui loads {out.stdout.strip()}"


@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_page_draws_its_title_before_any_heavy_import(page):
    """Module-level statements up to and including the page's intro text import only light
    modules; the first heavy import comes after st.title and the text under it."""
    tree = ast.parse(page.read_text())
    title_at = next(i for i, node in enumerate(tree.body)
                    if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)
                    and ast.unparse(node.value.func) == "st.title")
    text_after = tree.body[title_at + 1]
    assert "st.markdown" in ast.unparse(text_after), "the title is followed by its text"
    for node in tree.body[:title_at + 2]:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module])
            heavy = [n for n in names if n.split(".")[0] not in LIGHT]
            assert not heavy, f"{page.name} imports {heavy} before its first paint"


def test_app_draws_the_page_before_the_sidebar_asks_for_cuda():
    """app.py: the menu, then the page; the run picker and the CUDA check only after it."""
    source = (REPO / "app.py").read_text()
    assert source.index("page.run()") < source.index("ui.run_picker()")
    assert source.index("page.run()") < source.index("ui.device_status()")
    assert "import torch" not in source
    assert 'position="top"' in source


def test_efficiency_page_plots_the_measurement(tmp_path, monkeypatch):
    """The page shows what the bench's JSON says (a result in the bench's format, written
    here; the committed one when it exists)."""
    monkeypatch.setenv("SDLORA_CACHE", str(tmp_path / "empty"))
    if STEP_COST.exists():
        result = json.loads(STEP_COST.read_text())
    else:
        result = dict(date="2026-01-01T00:00:00+00:00", command="python bench/step_cost.py",
                      device="cpu", note="", tasks=[1, 10, 100],
                      settings=dict(backbone="embedded-vit", image_size=28, batch=32,
                                    repeats=3, inner=1, torch_threads=1),
                      sd_lora=dict(step_ms=[100.0, 101.0, 104.0], ratio=[1.0, 1.013, 1.046]),
                      autograd=None,
                      released=dict(step_ms=[110.0, 250.0, 900.0], ratio=[1.0, 2.27, 8.18]),
                      fused_pass=dict(tasks=[10, 100], ms=[1.5, 14.0],
                                      share_of_first_step=[0.015, 0.14]),
                      inference=dict(tasks=100, merged_ratio=0.99))
        path = tmp_path / "step_cost.json"
        path.write_text(json.dumps(result))
        monkeypatch.setenv("SDLORA_STEP_COST", str(path))
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    at.switch_page("pages/efficiency.py")
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    metrics = {m.label: m.value for m in at.metric}
    last = result["tasks"][-1]
    assert metrics[f"SD-LoRA step at {last} tasks"] == f"{result['sd_lora']['ratio'][-1]:.2f}x"
    if result.get("released"):
        assert metrics[f"Released code's step at {last} tasks"] == \
            f"{result['released']['ratio'][-1]:.2f}x"
    chart = json.loads(at.get("plotly_chart")[0].proto.spec)
    lines = {t["name"]: t for t in chart["data"]}
    ours = next(t for name, t in lines.items() if name.startswith("SD-LoRA here"))
    assert ours["x"] == result["tasks"] and ours["y"] == result["sd_lora"]["ratio"]
    assert any(c.value.startswith("`python bench/step_cost.py") for c in at.caption)


def test_efficiency_page_text_types_in_no_measured_figure():
    """Ratios like '1.02x' or timings like '294 ms' in the page's own strings would be figures
    typed in; they must come from the bench's JSON."""
    strings = [node.value for node in ast.walk(ast.parse((REPO / "pages" / "efficiency.py")
                                                         .read_text()))
               if isinstance(node, ast.Constant) and isinstance(node.value, str)]
    typed = [s for s in strings if re.search(r"\d+(\.\d+)?\s*(x\b|ms\b|%)", s)]
    assert not typed, typed
