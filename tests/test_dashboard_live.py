"""The dashboard in headless Chromium during a real training run, on both engines: the page's counts
equal the engine's own metrics at the tick the page shows, its raster equals the recorded executions,
and once the run ends it says so and shows the engine's final counters."""
import json
import os
import threading
from pathlib import Path

import pytest
from test_dashboard_browser import browser, open_page, wait_for  # noqa: F401  (the browser fixture)

ray = pytest.importorskip("ray")

from distcoagent.dashboard import start_background  # noqa: E402
from distcoagent.training import train  # noqa: E402
from ray_networks import GRID, paper  # noqa: E402


DOCS = Path(__file__).resolve().parents[1] / "docs"  # DISTCOAGENT_DOCS_SCREENSHOT=1 renews docs/dashboard.png


pytestmark = pytest.mark.usefixtures("local_ray")


def records(run_dir: Path, kind: str) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


@pytest.mark.parametrize("engine,trials,episodes", [("inprocess", 2000, 80), ("ray", 8, 12)])
def test_the_page_follows_a_real_run(browser, tmp_path, engine, trials, episodes):  # noqa: F811
    run_dir = tmp_path / f"paper_{engine}"
    outcome = {}

    def run():
        try:
            outcome["result"] = train(paper(), GRID, env_kwargs={"size": 5}, episodes=episodes, trials=trials,
                                      seed=3, engine=engine, out=run_dir, metrics_every=0.25)
        except BaseException as error:  # reported by the assertion below
            outcome["error"] = error

    worker = threading.Thread(target=run)
    worker.start()
    errors = []
    try:
        with start_background(run_dir, port=0, wait_for_run=True) as server:
            page = open_page(browser, server.url, errors)
            shown = wait_for(page, lambda s: len(s["rows"]) == 3 and s["rows"][0]["tick"] > 0,
                             "the three coagents with counts", timeout=60)
            if engine == "inprocess" and os.environ.get("DISTCOAGENT_DOCS_SCREENSHOT"):
                wait_for(page, lambda s: s["curvePoints"] >= 10 and s["raster"], "a curve and a raster", 30)
                page.screenshot(path=str(DOCS / "dashboard.png"), full_page=True)  # the README's picture
            by_tick = {m["tick"]: m for m in records(run_dir, "metrics")}
            record = by_tick[shown["rows"][0]["tick"]]
            for row in shown["rows"]:
                counts = record["coagents"][row["name"]]
                assert (row["tick"], row["executions"], row["ticks"]) == (record["tick"], counts["executions"],
                                                                         counts["ticks"])
            worker.join(timeout=120)
            assert not worker.is_alive() and "error" not in outcome, outcome
            result = outcome["result"]
            shown = wait_for(page, lambda s: s["status"] == "finished" and s["rows"][0]["tick"] == result.ticks,
                             "the finished run at its last tick", timeout=20)
            for row in shown["rows"]:  # the engine's own counters, as written to counters.json
                assert (row["executions"], row["ticks"]) == (result.counters[row["name"]]["executions"],
                                                             result.counters[row["name"]]["ticks"])
            raster = json.loads(shown["raster"])
            written = {r["tick_start"]: r for r in records(run_dir, "raster")}
            assert raster["envs"] == [0, 1, 2, 3] and raster["segments"]
            for segment in raster["segments"]:
                assert segment["executed"] == written[segment["tick_start"]]["executed"]
            if engine == "ray":
                page.wait_for_timeout(300)
                page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
            page.close()
    finally:
        worker.join(timeout=120)
    assert not errors, errors
