"""End to end in a real browser: `streamlit run app.py`, Debian's Chromium driven by Playwright.

Launch a short training from the Train page, wait for it to finish, open Accuracy and find the
heatmap; screenshots of every page go to test-artifacts/ (kept as CI artefacts).
"""
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = REPO / "test-artifacts"
PAGES = ["overview", "train", "accuracy", "magnitudes", "directions", "interpolation", "theory",
         "efficiency"]

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason="Debian's chromium is not installed (.ci/run installs it)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    port = _free_port()
    env = dict(os.environ, SDLORA_CACHE=str(tmp_path / "cache"), HF_HUB_OFFLINE="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(REPO / "app.py"), "--server.headless",
         "true", "--server.port", str(port), "--server.address", "127.0.0.1",
         "--browser.gatherUsageStats", "false"], cwd=REPO, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            urllib.request.urlopen(url + "/_stcore/health", timeout=1)
            break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("streamlit did not start")
    yield url, tmp_path / "cache"
    os.killpg(proc.pid, 15)
    proc.wait(timeout=20)
    from sdlora import jobs  # stop a queue worker the test started
    os.environ["SDLORA_CACHE"] = str(tmp_path / "cache")
    pid_file = jobs.jobs_root() / "worker.pid"
    if pid_file.exists():
        try:
            os.killpg(int(pid_file.read_text()), 15)
        except (ProcessLookupError, ValueError):
            pass


def test_train_in_browser_then_see_the_heatmap(server):
    from playwright.sync_api import expect, sync_playwright

    url, cache = server
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url + "/train")
        page.get_by_text("Queue selected method(s)").wait_for(timeout=60_000)
        # Opened by its own URL on a fresh server, the page still runs through app.py: the
        # navigation shows the pages' titles and the shared sidebar is there.
        expect(page.get_by_text("Device:").first).to_be_visible(timeout=30_000)
        expect(page.get_by_role("link", name="Interpolation")).to_be_visible()
        # A short run: scikit-learn's digits, 2 tasks, 1 epoch.
        page.get_by_role("combobox", name="Benchmark", exact=True).click()
        page.get_by_role("option", name="digits", exact=True).click()
        for label, value in (("Tasks", "2"), ("Epochs per task", "1")):
            box = page.get_by_label(label, exact=True)
            box.fill(value)
        page.get_by_text("Queue selected method(s)").click()
        page.get_by_text("Queued").first.wait_for(timeout=30_000)
        page.screenshot(path=str(ARTIFACTS / "train-queued.png"), full_page=True)
        deadline = time.time() + 240
        while time.time() < deadline and not page.get_by_text("· finished").count():
            time.sleep(2)
        assert page.get_by_text("· finished").count(), "the run did not finish in 4 minutes"
        page.screenshot(path=str(ARTIFACTS / "train-finished.png"), full_page=True)
        page.goto(url + "/accuracy")
        heatmap = page.locator(".js-plotly-plot").first
        heatmap.wait_for(timeout=60_000)
        expect(page.get_by_text("Accuracy matrix:").first).to_be_visible(timeout=30_000)
        assert page.locator(".js-plotly-plot .heatmaplayer").count() >= 1
        for name in PAGES:
            page.goto(f"{url}/{name}" if name != "overview" else url)
            page.wait_for_timeout(4000)
            assert not page.get_by_text("Traceback").count()
            page.screenshot(path=str(ARTIFACTS / f"page-{name}.png"), full_page=True)
        browser.close()
    assert len(list((cache / "runs").iterdir())) == 1
