"""How soon does the app answer? First paint, page switches, control moves: a real server and browser.

1. First paint of a freshly started server (`streamlit run app.py`, Debian's Chromium driven by
   Playwright), opened at `/` and, on another fresh server, at a page's own URL: milliseconds
   from the request to the titled menu, to the page's title (first content), to the first
   chart, and to the end of the first script run. Also whether Streamlit's own pages/-folder
   menu or "Page not found" was ever drawn.
2. Page switches on a warm server, with every analysis already cached in the run folders:
   clicking the menu's link to a page, milliseconds until its title is drawn, until its script
   run ends, and until its last chart and its last element are drawn (the last change to the
   page's DOM before it stays quiet for a second), median over the repeats.
3. Control moves on the same warm server (`--move PAGE[?QUERY]:LABEL`, any page by its file
   name, a link's query string allowed): the control labelled LABEL (a slider or select slider
   moved one step by the keyboard, a select box, radio, multiselect, checkbox, tab or button)
   is moved back and forth; per move, milliseconds from the rerun request the browser sends
   until the server's last message of that run (server time) and until the page's last element
   is redrawn, median of the repeats after one warm-up move each way.

The runs are a copy of the repo's demo runs (cache/demo) in a temporary folder, so nothing in
the repo is written. Targets: first content <= 2.5 s, page switch <= 1 s (issue 12), a control
move <= 500 ms of server time (issue 20), on an idle 2-core machine; the load average and the
CPU model are printed beside the numbers.

    python bench/app_startup.py [--repeats 3] [--page accuracy] [--switch PAGE ...]
        [--move PAGE[?QUERY]:LABEL ...] [--parts paint switch move] [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
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


def app_pages() -> tuple[dict[str, str], dict[str, str]]:
    """app.py's pages by file name: the menu's title of each, and its page's h1 (st.title)."""
    menu, titles = {}, {}
    for name, title in re.findall(r'st\.Page\("pages/(\w+)\.py", title="([^"]+)"',
                                  (REPO / "app.py").read_text()):
        menu[name] = title
        h1 = re.search(r'st\.title\("([^"]+)"', (REPO / "pages" / f"{name}.py").read_text())
        titles[name] = h1.group(1) if h1 else title
    return menu, titles


MENU, TITLES = app_pages()

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

# Installed before the app's scripts on the warm server: the times (performance.now()) of every
# message the page sends to and receives from the server over Streamlit's websocket, and of the
# last change anywhere in the DOM and inside a plotly chart.
IO_JS = """(() => {
  const log = {sent: [], recv: [], mutation: 0, chart: 0};
  window.__io = log;
  const Native = window.WebSocket;
  class Watched extends Native {
    constructor(...args) {
      super(...args);
      this.addEventListener('message', () => log.recv.push(performance.now()));
    }
    send(data) { log.sent.push(performance.now()); return super.send(data); }
  }
  window.WebSocket = Watched;
  const inChart = r => {
    const e = r.target.nodeType === 1 ? r.target : r.target.parentElement;
    return e && e.closest && e.closest('.js-plotly-plot');
  };
  new MutationObserver(records => {
    const t = performance.now();
    log.mutation = t;
    if (records.some(inChart)) log.chart = t;
  }).observe(document, {subtree: true, childList: true, characterData: true, attributes: true});
})();"""

# From t0 (a click or key press just made): waits until the page has sent a request, received
# the answer, shows no running icon and no stale element, and has not changed for `quiet` ms;
# then returns, in ms: from t0 to the request sent, to the page's title (when `title` is given),
# to the first moment nothing was running, stale or loading after that (run end), to the last message
# received (the server's last), to the last change inside a chart and anywhere in the page.
SETTLE_JS = """([t0, title, quiet, timeout]) => new Promise(resolve => {
  const log = window.__io;
  const out = {title: null, run_end: null, timed_out: false};
  const ms = t => t > t0 ? Math.round(t - t0) : null;
  const look = () => {
    const now = performance.now();
    const h1 = Array.from(document.querySelectorAll('h1'), h => h.innerText.trim());
    if (title && out.title === null && h1.includes(title)) out.title = ms(now);
    const busy = document.querySelector('[data-testid="stStatusWidgetRunningIcon"], ' +
        '[data-stale="true"], [data-testid="stSkeleton"]');  // a skeleton: a chart's code loading
    const sent = log.sent.find(t => t >= t0);
    const recv = log.recv.length ? log.recv[log.recv.length - 1] : 0;
    const answered = sent !== undefined && recv > sent && (!title || out.title !== null);
    if (answered && !busy && out.run_end === null) out.run_end = ms(now);
    if ((answered && !busy && now - Math.max(log.mutation, recv) >= quiet)
        || now - t0 > timeout) {
      clearInterval(timer);
      Object.assign(out, {request: ms(sent), server_last: ms(recv), chart_last: ms(log.chart),
                          drawn_last: ms(log.mutation), timed_out: !answered || !!busy,
                          charts: document.querySelectorAll('.js-plotly-plot').length});
      resolve(out);
    }
  };
  const timer = setInterval(look, 10);
})"""
QUIET_MS = 1000


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


def click_link(page, name: str) -> float:
    """Click the menu's link to page `name`; the click's performance.now()."""
    return page.evaluate("""([links, text]) => {
      const a = Array.from(document.querySelectorAll(links))
                     .find(e => e.innerText.trim().endsWith(text));
      const t0 = performance.now();
      a.click();
      return t0;
    }""", [LINK_SELECTOR, MENU[name]])


def settle(page, t0: float, title: str | None = None, timeout_ms: int = 120_000) -> dict:
    return page.evaluate(SETTLE_JS, [t0, title, QUIET_MS, timeout_ms])


def page_switches(page, pages: list[str], repeats: int) -> dict[str, list]:
    """On the warm server: `repeats` rounds of clicking through `pages` in the menu after a
    round that warms (imports, cached analyses); per page, each round's times (SETTLE_JS)."""
    results: dict[str, list] = {p: [] for p in pages}
    for round_ in range(repeats + 1):
        for name in pages:
            out = settle(page, click_link(page, name), TITLES[name])
            if round_:
                results[name].append(out)
    return results


def now(page) -> float:
    return page.evaluate("performance.now()")


REMOVED: dict[str, str] = {}  # a multiselect's item taken out by the last move


def move(page, label: str, forward: bool) -> float:
    """Move the control labelled `label` one step, forward or back; the performance.now()
    just before the move's input (a dropdown is opened before it)."""
    from playwright.sync_api import Error as PlaywrightError

    def box(testid: str):
        found = page.locator(f'[data-testid="{testid}"]').filter(has_text=label)
        return found.first if found.count() else None

    if (slider := box("stSlider")) is not None:
        thumb = slider.locator('input[type="range"]').first
        thumb.focus()
        t0 = now(page)
        thumb.press("ArrowRight" if forward else "ArrowLeft")
        return t0
    if (radio := box("stRadio")) is not None:
        options = radio.locator('label:has(input[type="radio"])')
        checked = next((i for i in range(options.count())
                        if options.nth(i).locator("input").is_checked()), 0)
        target = options.nth((checked + (1 if forward else -1)) % options.count())
        t0 = now(page)
        target.click()
        return t0
    if (check := box("stCheckbox")) is not None:
        t0 = now(page)
        check.locator("label").first.click()
        return t0
    if (select := box("stSelectbox")) is not None:
        select.click()
        options = page.locator('[role="option"]')
        options.first.wait_for()
        chosen = next((i for i in range(options.count())
                       if options.nth(i).get_attribute("aria-selected") == "true"), 0)
        target = options.nth((chosen + (1 if forward else -1)) % options.count())
        t0 = now(page)
        target.click()
        return t0
    if (multi := box("stMultiSelect")) is not None:
        # one move takes the last chosen item out, the next puts it back
        if label not in REMOVED:
            remove = multi.locator('button[aria-label^="Remove "]').last
            REMOVED[label] = remove.get_attribute("aria-label").removeprefix("Remove ")
            t0 = now(page)
            remove.click()
            return t0
        multi.locator("input").click()
        option = page.locator('[role="option"]').filter(has_text=REMOVED.pop(label)).first
        option.wait_for()
        t0 = now(page)
        option.click()
        return t0
    tabs = page.locator('[role="tab"]')
    if tabs.filter(has_text=label).count():
        target = tabs.filter(has_text=label).first if forward else tabs.first
        t0 = now(page)
        target.click()
        return t0
    button = page.locator('[data-testid="stButton"] button').filter(has_text=label)
    if button.count():
        t0 = now(page)
        button.first.click()
        return t0
    raise PlaywrightError(f"no control labelled {label!r}")


def control_moves(page, url: str, moves: list[str], repeats: int) -> dict[str, list]:
    """Each `PAGE[?QUERY]:LABEL` in `moves`: the page opened at its URL, the control moved
    back and forth, one warm-up move each way, then `repeats` moves; each move's times."""
    from playwright.sync_api import Error as PlaywrightError

    results = {}
    for spec in moves:
        where, label = spec.split(":", 1)
        name = where.split("?")[0]
        page.goto(f"{url}/{'' if name == 'overview' else name}{where[len(name):]}")
        settle(page, 0, TITLES[name])  # loaded: its first run answered and drawn
        outs = []
        for i in range(repeats + 2):
            try:
                t0 = move(page, label, forward=i % 2 == 0)
            except PlaywrightError as err:  # a control that is not there, or not movable:
                outs = f"could not move {label!r} on {where}: {err.message.splitlines()[0]}"
                break                       # said at the end; the other moves are measured
            out = settle(page, t0)
            if i >= 2:
                outs.append(out)
        results[spec] = outs
    return results


def warm_server(browser, cache: Path, pages: list[str], moves: list[str],
                repeats: int) -> tuple[dict, dict]:
    """One warm server for the page switches and then the control moves."""
    server = Server(cache)
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.add_init_script(IO_JS)
        page.goto(server.url)
        page.get_by_role("link", name=MENU[pages[0]] if pages else "Overview").wait_for(
            timeout=120_000)
        settle(page, 0, TITLES["overview"])
        switches = page_switches(page, pages, repeats) if pages else {}
        moved = control_moves(page, server.url, moves, repeats) if moves else {}
        page.close()
    finally:
        server.stop()
    return switches, moved


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def median(outs: list[dict], key: str) -> int | None:
    values = [o[key] for o in outs if o.get(key) is not None]
    return round(statistics.median(values)) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3,
                        help="rounds of first paints and page switches")
    parser.add_argument("--move-repeats", type=int, default=5,
                        help="measured moves of each control (after two warm-up moves)")
    parser.add_argument("--page", default="accuracy", help="the page opened by its own URL")
    parser.add_argument("--switch", nargs="+",
                        default=["accuracy", "magnitudes", "directions", "efficiency",
                                 "overview", "tradeoff", "theory", "interpolation"],
                        help="pages clicked through for the page-switch times")
    parser.add_argument("--move", nargs="+", metavar="PAGE[?QUERY]:LABEL",
                        default=["interpolation:Task boundary t",
                                 "interpolation:Points on the line",
                                 "accuracy:Runs to overlay", "overview:renditions20",
                                 "tradeoff:After task t", "tradeoff:Mean ± s.e. over seeds",
                                 "tradeoff:Run shown", "tradeoff?view=Frontiers:After task t",
                                 "tradeoff?view=Frontiers:Knob",
                                 "tradeoff?view=Frontiers:Methods drawn",
                                 "tradeoff?view=Lesson:Right after learning each task"],
                        help="controls moved for the control-move times (a page's file name, "
                             "a link's query string allowed, and the control's label)")
    parser.add_argument("--parts", nargs="+", choices=["paint", "switch", "move"],
                        default=["paint", "switch", "move"], help="what to measure")
    parser.add_argument("--note", default="", help="stored with the result (e.g. the load)")
    parser.add_argument("--json", default=None, help="also write the result here as JSON")
    args = parser.parse_args()
    moves = args.move if "move" in args.parts else []
    switch = args.switch if "switch" in args.parts else []
    bad = [p for p in [args.page, *switch] if p not in TITLES]
    bad += [m for m in moves if ":" not in m or m.split(":")[0].split("?")[0] not in TITLES]
    if bad:
        parser.error(f"unknown page(s) or moves {bad}; pages: {', '.join(TITLES)}; a move is "
                     f"PAGE[?QUERY]:LABEL")
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
                      for _ in range(args.repeats) for name in ("overview", args.page)] \
                if "paint" in args.parts else []
            switches, moved = warm_server(browser, cache, switch, moves, args.move_repeats) \
                if switch or moves else ({}, {})
            browser.close()
    load_after = loadavg()

    print(f"{cpu_model()}, {os.cpu_count()} CPUs; load average before {load_before}, after "
          f"{load_after}; ms after the request (first paint), the click (page switch) or the "
          f"move's request to the server (control move)")
    if paints:
        print(f"{'first paint of':>16} {'menu':>7} {'title':>7} {'chart':>7} {'run end':>8} "
              f"{'folder menu':>12} {'not found':>10}")
    for r in paints:
        print(f"{r['page']:>16} " + " ".join(
            f"{'-' if r[k] is None else r[k]:>{w}}" for k, w in (
                ("menu_ms", 7), ("first_content_ms", 7), ("first_chart_ms", 7), ("run_end_ms", 8),
                ("folder_menu_ms", 12), ("page_not_found_ms", 10))))
    summary = {}
    if switches:
        print(f"{'page switch to':>16} {'title':>7} {'run end':>8} {'last chart':>11} "
              f"{'last element':>13} {'charts':>7}  (median of {args.repeats})")
    for name, outs in switches.items():
        summary[name] = dict(title_ms=median(outs, "title"), run_end_ms=median(outs, "run_end"),
                             last_chart_ms=median(outs, "chart_last"),
                             last_element_ms=median(outs, "drawn_last"),
                             charts=outs[-1]["charts"],
                             timed_out=sum(o["timed_out"] for o in outs))
        s = summary[name]
        print(f"{name:>16} " + " ".join(f"{'-' if s[k] is None else s[k]:>{w}}" for k, w in (
            ("title_ms", 7), ("run_end_ms", 8), ("last_chart_ms", 11), ("last_element_ms", 13),
            ("charts", 7))))
    moves_summary = {}
    if moved:
        print(f"{'control move':>44} {'server':>7} {'last element':>13} {'input':>6}  (median "
              f"of {args.move_repeats}, ms from the request; input: key or click to request)")
    failed = {spec: outs for spec, outs in moved.items() if isinstance(outs, str)}
    moved = {spec: outs for spec, outs in moved.items() if spec not in failed}
    for spec, outs in moved.items():
        rel = [dict(server=o["server_last"] - o["request"],
                    drawn=o["drawn_last"] - o["request"], input=o["request"]) for o in outs
               if None not in (o["server_last"], o["request"], o["drawn_last"])]
        moves_summary[spec] = dict(server_ms=median(rel, "server"),
                                   last_element_ms=median(rel, "drawn"),
                                   input_ms=median(rel, "input"), measured=len(rel),
                                   timed_out=sum(o["timed_out"] for o in outs))
        m = moves_summary[spec]
        print(f"{spec[:44]:>44} {m['server_ms']:>7} {m['last_element_ms']:>13} "
              f"{m['input_ms']:>6}" + (f"  ({m['timed_out']} timed out)" if m["timed_out"]
                                       else ""))
    if paints:
        worst_first = max(r["first_content_ms"] or float("inf") for r in paints)
        print(f"slowest first content {worst_first:.0f} ms (target 2500)")
    if summary:
        worst = max(summary, key=lambda k: summary[k]["last_chart_ms"] or 0)
        print(f"slowest page switch to its last chart: {worst} "
              f"{summary[worst]['last_chart_ms']} ms (target 1000)")
    if moves_summary:
        worst = max(moves_summary, key=lambda k: moves_summary[k]["server_ms"] or 0)
        print(f"slowest control move: {worst} {moves_summary[worst]['server_ms']} ms of server "
              f"time (target 500)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(dict(
            date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            command="python bench/app_startup.py " + " ".join(
                f"'{a}'" if " " in a else a for a in sys.argv[1:]),
            machine=f"{platform.node()}: {os.cpu_count()} CPUs, {cpu_model()}",
            load_average_before=load_before, load_average_after=load_after, note=args.note,
            first_paint=paints, page_switch=summary, page_switch_rounds=switches,
            control_move=moves_summary, control_move_rounds=moved,
            control_move_errors=failed), indent=1))
    for why in failed.values():
        print(f"error: {why}", file=sys.stderr)
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
