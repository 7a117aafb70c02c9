"""The dashboard in a real headless Chromium, against a run that a thread keeps appending to.

Needs Debian's chromium (``apt-get install -y chromium``) and Playwright for Python
(``pip install playwright``, in the ``test`` extra; ``playwright install`` is NOT needed: the
test launches /usr/bin/chromium). If either is missing the tests fail and say so.
"""
import json
import shutil
import time
from pathlib import Path

import pytest
from dashboard_fakes import FakeRun, large_network

from distcoagent.dashboard import start_background

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
READ_PAGE = """() => ({
  status: document.querySelector('#status').dataset.status,
  statusText: document.querySelector('#status').innerText,
  rows: [...document.querySelectorAll('#coagent-table tbody tr[data-tick]')].map(tr => ({
    name: tr.dataset.coagent, tick: Number(tr.dataset.tick),
    executions: Number(tr.dataset.executions), ticks: Number(tr.dataset.ticks)})),
  raster: document.querySelector('#raster').dataset.raster,
  nodes: [...document.querySelectorAll('#graph-svg g.node')].map(g => g.dataset.coagent),
  curvePoints: Number(document.querySelector('#curve').dataset.points),
})"""


def chromium_executable() -> str:
    path = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        pytest.fail("Chromium is missing: the dashboard browser tests need Debian's chromium at /usr/bin/chromium; "
                    "install it with `apt-get install -y chromium`")
    return path


@pytest.fixture(scope="module")
def browser():
    executable = chromium_executable()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("Playwright for Python is missing: `pip install -e '.[test]'` (or `pip install playwright`); "
                    "`playwright install` is not needed, the tests launch /usr/bin/chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, timeout=30_000)
        yield browser
        browser.close()


def wait_for(page, predicate, what: str, timeout: float = 10.0) -> dict:
    """Read the page until ``predicate(shown)`` holds; fail after ``timeout`` seconds naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        shown = page.evaluate(READ_PAGE)
        if predicate(shown):
            return shown
        if time.monotonic() > deadline:
            pytest.fail(f"the page did not show {what} within {timeout} s; it shows {shown}")
        page.wait_for_timeout(100)


def open_page(browser, url, errors):
    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda message: message.type == "error" and errors.append(message.text))
    page.on("requestfailed", lambda request: errors.append(f"failed: {request.url}"))
    page.on("request", lambda request: request.url.startswith((url, "data:"))
            or errors.append(f"external: {request.url}"))
    page.goto(url)
    return page


def test_live_page_matches_the_file(browser, tmp_path):
    run = FakeRun(tmp_path / "paper_gridworld", window=200, ticks_per_step_record=50, seconds_per_step=0.06)
    errors = []
    with start_background(run.run_dir, port=0) as server:
        page = open_page(browser, server.url, errors)
        shown = wait_for(page, lambda s: s["status"] == "waiting" and len(s["nodes"]) == 4,
                         "'waiting for data' and the network from config.json")
        assert "Waiting for data" in shown["statusText"]
        run.start()
        appender = run.run_in_background(interval=0.15)
        try:
            shown = wait_for(page, lambda s: s["status"] == "running" and len(s["rows"]) == 4
                             and s["rows"][0]["tick"] >= 500 and s["raster"],
                             "a running run with 4 coagents past tick 500 and a raster")
            by_tick = {m["tick"]: m for m in run.of_kind("metrics")}
            record = by_tick[shown["rows"][0]["tick"]]
            for row in shown["rows"]:
                assert row["tick"] == record["tick"]
                assert (row["executions"], row["ticks"]) == (record["coagents"][row["name"]]["executions"],
                                                             record["coagents"][row["name"]]["ticks"]), row
            raster = json.loads(shown["raster"])
            written = {r["tick_start"]: r for r in run.of_kind("raster")}
            assert raster["envs"] == run.raster_envs and raster["coagents"] == run.names
            assert sum(s["ticks"] for s in raster["segments"]) == 200  # the window: the last four 50-tick records
            for segment in raster["segments"]:
                assert segment["executed"] == written[segment["tick_start"]]["executed"]
                assert segment["ticks"] == written[segment["tick_start"]]["ticks"]
        finally:
            appender.stop()
        while run.tick < run.episodes * run.episode_ticks:  # the run goes on to its last episode, then ends
            run.step()
        run.end("finished")
        shown = wait_for(page, lambda s: s["status"] == "finished", "the finished banner")
        assert "Finished" in shown["statusText"]
        wait_for(page, lambda s: s["curvePoints"] == run.episodes and s["rows"][0]["tick"] == run.tick,
                 "the last records")
        page.wait_for_timeout(300)  # let the last frame paint before the picture
        page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
        assert (tmp_path / "dashboard.png").stat().st_size > 10_000
        page.close()
    assert not errors, errors


@pytest.mark.parametrize("status, error, says", [
    ("failed", "coagent act: parameters are not finite at tick 50", "Failed\ncoagent act: parameters are not finite"),
    ("interrupted", None, "Interrupted")], ids=["failed", "interrupted"])
def test_an_ended_run_says_how(browser, tmp_path, status, error, says):
    run = FakeRun(tmp_path / "run")
    run.start()
    run.step()
    run.end(status, error=error)
    errors = []
    with start_background(run.run_dir, port=0) as server:
        page = open_page(browser, server.url, errors)
        shown = wait_for(page, lambda s: s["status"] == status, f"the {status} banner")
        assert says in shown["statusText"]
        page.close()
    assert not errors, errors


def test_values_from_the_files_are_shown_as_text_not_markup(browser, tmp_path):
    """A hand-edited or foreign metrics.jsonl: its values go into the page as text."""
    run = FakeRun(tmp_path / "run")
    start = run.start()
    run.records.clear()
    run.path.write_text(json.dumps(dict(start, trials="<i>3</i>", network=dict(start["network"], gamma="<b>g</b>")))
                        + "\n")
    errors = []
    with start_background(run.run_dir, port=0) as server:
        page = open_page(browser, server.url, errors)
        wait_for(page, lambda s: s["status"] == "running", "the running banner")
        meta = page.eval_on_selector("#run-meta", "e => [e.innerText, e.querySelectorAll('i, b b').length]")
        assert "<i>3</i>" in meta[0] and "γ <b>g</b>" in meta[0] and meta[1] == 0, meta
        page.close()
    assert not errors, errors


def test_large_run_stays_responsive(browser, tmp_path):
    """100 coagents, 10,000 episodes, 16 sampled environments: the first full picture comes quickly."""
    run = FakeRun(tmp_path / "big", large_network(100), episodes=10_000, trials=5, envs_per_trial=4,
                  raster_envs=list(range(16)), window=600, ticks_per_step_record=1000, episode_ticks=20,
                  episodes_per_curve_record=100)
    run.start()
    for i in range(200):
        run.step(raster=i % 20 == 0)
    errors = []
    with start_background(run.run_dir, port=0) as server:
        began, last_tick = time.monotonic(), run.of_kind("metrics")[-1]["tick"]
        page = open_page(browser, server.url, errors)  # a 40 MB file, read in chunks: the page catches up
        shown = wait_for(page, lambda s: len(s["rows"]) == 100 and s["rows"][0]["tick"] == last_tick and s["raster"]
                         and s["curvePoints"] > 0, "all 100 coagents at the last tick, a raster and a curve")
        assert time.monotonic() - began < 8 and len(shown["nodes"]) == 100
        raster = json.loads(shown["raster"])
        assert len(raster["envs"]) == 8 and len(raster["coagents"]) == 100 and shown["curvePoints"] <= 1000
        page.close()
    assert not errors, errors


def test_a_free_running_run_shows_its_clocks(browser, tmp_path):
    """A metrics record with the free-running clock's figures fills the clocks panel; a logical-tick run
    keeps it hidden."""
    run = FakeRun(tmp_path / "free")
    run.start()
    run.step()
    errors = []
    with start_background(run.run_dir, port=0) as server:
        page = open_page(browser, server.url, errors)
        wait_for(page, lambda s: len(s["rows"]) == len(run.names), "the coagent rows")
        assert page.eval_on_selector("#clock-panel", "e => e.hidden && getComputedStyle(e).display === 'none'")
        names = run.names
        clock = {"clock": "free", "env_steps": 1234,
                 "coagents": {n: {"opportunities": 100 + i, "published": 60 + i, "retried": i, "late": 7 * i,
                                  "revoked": 3 * i}
                              for i, n in enumerate(names)},
                 "loops": [{"names": [n], "loops": 500, "seconds": 10.0, "loops_per_second": 50.0 + i}
                           for i, n in enumerate(names)]}
        record = dict(run.of_kind("metrics")[-1], clock=clock, tick=run.tick + 1)
        run.append(record)
        deadline = time.monotonic() + 10
        rows = []
        while time.monotonic() < deadline and len(rows) < len(names):
            page.wait_for_timeout(100)
            rows = page.eval_on_selector_all("#clock-table tbody tr", "rows => rows.map(r => [...r.cells]"
                                             ".map(c => c.textContent))")
        assert not page.eval_on_selector("#clock-panel", "e => e.hidden")
        assert page.inner_text("#clock-steps") == "1,234"
        assert [[r[0], *r[2:]] for r in rows] == [[n, str(100 + i), str(60 + i), str(i), str(7 * i), str(3 * i)]
                                                  for i, n in enumerate(names)], rows
        assert [float(r[1]) for r in rows] == [50.0 + i for i in range(len(names))]  # loops per second
        page.close()
    assert not errors, errors
