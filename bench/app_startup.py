"""How soon does the app show something, and how fast is a page switch? A real server, a real browser.

1. First paint of a freshly started server (`streamlit run app.py`, Debian's Chromium driven by
   Playwright), opened at `/` and, on another fresh server, at a page's own URL: milliseconds
   from the request to the titled menu, to the page's title (first content), to the first
   chart, and to the end of the first script run. Also whether Streamlit's own pages/-folder
   menu or "Page not found" was ever drawn.
2. Page switches on a warm server, with every analysis already cached in the run folders:
   clicking the menu's link to a page, milliseconds until its title is drawn and until its
   script run ends (all its charts drawn), median over the repeats.

The runs are a copy of the repo's demo runs (cache/demo) in a temporary folder, so nothing in
the repo is written. Targets (issue 12): first content <= 2.5 s, page switch <= 1 s, on an
idle 2-core machine; the load average is printed beside the numbers.

    python bench/app_startup.py [--repeats 3] [--page accuracy] [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--no-first-run"]
TITLES = {"overview": "SD-LoRA Lab", "train": "Train", "accuracy": "Accuracy",
          "magnitudes": "Magnitudes", "directions": "Directions",
          "interpolation": "Interpolation", "theory": "Theory", "efficiency": "Efficiency"}
MENU = {"overview": "Overview", **{k: v for k, v in TITLES.items() if k != "overview"}}

# The titled menu's links (st.navigation at the top of the page; in the sidebar or as page links
# in other layouts).
LINK_SELECTOR = ('[data-testid="stTopNavLink"], [data-testid="stTopNav"] a, '
                 '[data-testid="stPageLink"] a')
# Installed before the app's scripts; on every DOM change (and every 50 ms) notes the first time
# (ms after navigation start) each thing was seen.
WATCH_JS = """(() => {
  const LINKS = '%s';
  const seen = {menu: null, folderMenu: null, notFound: null, h1: {}, chart: null, idle: null,
                running: null};
  const now = () => Math.round(performance.now());
  const look = () => {
    if (!document.body) return;
    const links = Array.from(document.querySelectorAll(LINKS),
                             e => e.innerText);
    if (seen.menu === null && links.length >= %d) seen.menu = now();
    if (seen.folderMenu === null && document.querySelector(
        '[data-testid="stSidebarNavLink"], [data-testid="stSidebarNav"] a')) seen.folderMenu = now();
    if (seen.notFound === null && document.body.innerText.includes("Page not found"))
      seen.notFound = now();
    document.querySelectorAll('h1').forEach(h => {
      const t = h.innerText.trim(); if (t && !(t in seen.h1)) seen.h1[t] = now(); });
    if (seen.chart === null && document.querySelector('.js-plotly-plot .main-svg'))
      seen.chart = now();
    const running = document.querySelector('[data-testid="stStatusWidgetRunningIcon"]');
    if (running && seen.running === null) seen.running = now();
    if (!running && seen.running !== null && seen.idle === null) seen.idle = now();
  };
  new MutationObserver(look).observe(document, {subtree: true, childList: true,
                                                characterData: true, attributes: true});
  setInterval(look, 50);
  window.__seen = seen;
})();""" % (LINK_SELECTOR, len(MENU))

# Clicks the menu's link to a page and measures, from the click, the ms until the new page's
# title is drawn and until its run has ended (the title there, no element left stale from the
# page before, no running icon).
SWITCH_JS = """([link, title]) => new Promise(resolve => {
  const LINKS = '%s';
  const a = Array.from(document.querySelectorAll(LINKS))
                 .find(e => e.innerText.trim().endsWith(link));
  const t0 = performance.now();
  a.click();
  const out = {title: null, idle: null, charts: 0};
  const look = () => {
    const h1 = Array.from(document.querySelectorAll('h1'), h => h.innerText.trim());
    if (out.title === null && h1.includes(title)) out.title = performance.now() - t0;
    const busy = document.querySelector(
        '[data-testid="stStatusWidgetRunningIcon"], [data-stale="true"]');
    if (out.title !== null && !busy) {
      out.idle = performance.now() - t0;
      out.charts = document.querySelectorAll('.js-plotly-plot').length;
      clearInterval(timer);
      resolve(out);
    }
  };
  const timer = setInterval(look, 10);
})""" % LINK_SELECTOR



def free_port() -> int:
    for port in range(8600, 9000):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise SystemExit("no free port in 8600-8999")


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


class Server:
    """`streamlit run app.py` on a free port with SDLORA_CACHE at `cache`; up when healthy."""

    def __init__(self, cache: Path) -> None:
        self.port = free_port()
        env = dict(os.environ, SDLORA_CACHE=str(cache), HF_HUB_OFFLINE="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(REPO / "app.py"), "--server.headless",
             "true", "--server.port", str(self.port), "--server.address", "127.0.0.1",
             "--browser.gatherUsageStats", "false"], cwd=REPO, env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.url = f"http://127.0.0.1:{self.port}"
        for _ in range(240):
            try:
                urllib.request.urlopen(self.url + "/_stcore/health", timeout=1)
                return
            except OSError:
                time.sleep(0.25)
        self.stop()
        raise SystemExit("streamlit did not start in 60 s")

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, signal.SIGKILL)


def first_paint(browser, cache: Path, page_name: str) -> dict:
    """A fresh server; open `page_name`'s URL; the times at which things were first drawn."""
    server = Server(cache)
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.add_init_script(WATCH_JS)
        path = "" if page_name == "overview" else f"/{page_name}"
        page.goto(server.url + path, wait_until="commit")
        deadline = time.monotonic() + 120
        seen = {}
        while time.monotonic() < deadline:
            page.wait_for_timeout(200)
            seen = page.evaluate("window.__seen") or {}
            if seen.get("idle") is not None:
                break
        page.close()
    finally:
        server.stop()
    return dict(page=page_name, menu_ms=seen.get("menu"),
                first_content_ms=seen.get("h1", {}).get(TITLES[page_name]),
                first_chart_ms=seen.get("chart"), run_end_ms=seen.get("idle"),
                folder_menu_ms=seen.get("folderMenu"), page_not_found_ms=seen.get("notFound"))


def page_switches(browser, cache: Path, pages: list[str], repeats: int) -> dict[str, list]:
    """A warm server: every page opened once (analyses cached), then `repeats` rounds of
    clicking through `pages` in the menu; per page the (title ms, run end ms, charts) list."""
    server = Server(cache)
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(server.url)
        page.get_by_role("link", name="Efficiency").wait_for(timeout=120_000)
        results: dict[str, list] = {p: [] for p in pages}
        for round_ in range(repeats + 1):  # round 0 warms: imports, cached analyses
            for name in pages:
                out = page.evaluate(SWITCH_JS, [MENU[name], TITLES[name]])
                if round_:
                    results[name].append(out)
        page.close()
    finally:
        server.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--page", default="accuracy", help="the page opened by its own URL")
    parser.add_argument("--switch", nargs="+",
                        default=["accuracy", "magnitudes", "directions", "efficiency",
                                 "overview", "theory"],
                        help="pages clicked through for the page-switch times")
    parser.add_argument("--json", default=None, help="also write the result here as JSON")
    args = parser.parse_args()
    bad = [p for p in [args.page, *args.switch] if p not in TITLES]
    if bad:
        raise SystemExit(f"unknown page(s) {bad}; choose from: {', '.join(TITLES)}")
    if not Path(CHROMIUM).exists():
        raise SystemExit(f"needs Debian's Chromium at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    load_before = loadavg()
    with tempfile.TemporaryDirectory(prefix="sdlora-bench-") as tmp:
        cache = Path(tmp) / "cache"
        shutil.copytree(REPO / "cache" / "demo", cache / "demo")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
            paints = [first_paint(browser, cache, name)
                      for _ in range(args.repeats) for name in ("overview", args.page)]
            switches = page_switches(browser, cache, args.switch, args.repeats)
            browser.close()
    load_after = loadavg()

    print(f"load average before {load_before}, after {load_after} on {os.cpu_count()} CPUs; "
          f"ms after the request (first paint) or after the click (page switch)")
    print(f"{'first paint of':>16} {'menu':>7} {'title':>7} {'chart':>7} {'run end':>8} "
          f"{'folder menu':>12} {'not found':>10}")
    for r in paints:
        print(f"{r['page']:>16} " + " ".join(
            f"{'-' if r[k] is None else r[k]:>{w}}" for k, w in (
                ("menu_ms", 7), ("first_content_ms", 7), ("first_chart_ms", 7), ("run_end_ms", 8),
                ("folder_menu_ms", 12), ("page_not_found_ms", 10))))
    print(f"{'page switch to':>16} {'title':>7} {'run end':>8} {'charts':>7}  (median of "
          f"{args.repeats})")
    summary = {}
    for name, outs in switches.items():
        title = statistics.median(o["title"] for o in outs)
        idle = statistics.median(o["idle"] for o in outs)
        summary[name] = dict(title_ms=round(title), run_end_ms=round(idle),
                             charts=outs[-1]["charts"])
        print(f"{name:>16} {title:7.0f} {idle:8.0f} {outs[-1]['charts']:>7}")
    worst_first = max(r["first_content_ms"] or float("inf") for r in paints)
    worst_switch = max(s["run_end_ms"] for s in summary.values())
    print(f"slowest first content {worst_first:.0f} ms (target 2500); slowest page switch to "
          f"the end of its run {worst_switch:.0f} ms (target 1000)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(dict(
            date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            machine=f"{platform.node()}: {os.cpu_count()} CPUs",
            load_average_before=load_before, load_average_after=load_after,
            first_paint=paints, page_switch=summary, page_switch_rounds=switches), indent=1))


if __name__ == "__main__":
    main()
