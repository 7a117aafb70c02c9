"""The Ray engine's metrics through ray.util.metrics: names, tags and values read back from Ray's
metrics endpoint on 127.0.0.1 during and after a run, equal to the engine's own counters."""
import re
import time
import urllib.request

import pytest

ray = pytest.importorskip("ray")

from distcoagent.engine import InProcessEngine  # noqa: E402
from distcoagent.ray_engine import RayEngine  # noqa: E402
from ray_networks import GRID, paper  # noqa: E402


@pytest.fixture
def metrics_port(local_ray) -> int:
    """The shared local Ray's metrics endpoint (conftest)."""
    return local_ray


def scrape(port: int, each: bool = False) -> dict[tuple[str, str, str], float]:
    """{(name, coagent, run): value} of the distcoagent series, summed over Ray's own tags (the exporting
    worker's among them); ``each``: the list of the workers' values instead."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        m = re.match(r"^(ray_distcoagent_\w+)\{(.*)\} ([0-9.eE+-]+)$", line)
        if m:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
            if "le" in labels:
                continue
            key = (m.group(1), labels.get("coagent", ""), labels.get("run", ""))
            if each:
                out.setdefault(key, []).append(float(m.group(3)))
            else:
                out[key] = out.get(key, 0.0) + float(m.group(3))
    return out


@pytest.mark.parametrize("kind", ["tick", "free", "trials layout"])
def test_per_coagent_metrics_reach_the_endpoint_with_the_engines_values(metrics_port, kind):
    run = f"metrics-{kind.replace(' ', '-')}"
    if kind == "trials layout":  # the shards export their coagents' figures as coagent actors do
        from distcoagent.ray_engine.sharded import ShardedEngine

        engine = ShardedEngine(paper(), GRID, {"size": 5}, trials=16, seed=2, run_name=run, micro_batches=2)
    elif kind == "free":
        from distcoagent.ray_engine.free import FreeRunningEngine

        # 10 steps a second: every coagent executes even on a loaded machine (with two busy processes
        # beside the run, at 30 or 100 a second every step was a hold)
        engine = FreeRunningEngine(paper(), GRID, {"size": 3, "max_steps": 12}, trials=16, seed=2, run_name=run,
                                   env_rate=10)
    else:
        engine = RayEngine(paper(), GRID, {"size": 5}, trials=16, seed=2, run_name=run)
    try:
        result = engine.train(3 if kind == "free" else 20)
    finally:
        engine.close()
    assert all(c["executions"] > 0 for c in result.counters.values()), result.counters
    want = {(f"ray_distcoagent_coagent_{k}_total", name, run): float(c[k])
            for name, c in result.counters.items() for k in ("executions", "ticks", "updates")}
    # the environment actors publish the episodes on their own schedule: waited for as well
    want[("ray_distcoagent_run_episodes_total", "", run)] = float(16 * result.returns.shape[-1])
    deadline, got = time.monotonic() + 40, {}
    while time.monotonic() < deadline:  # Ray's agent publishes every few seconds
        got = scrape(metrics_port)
        if all(got.get(key) == value for key, value in want.items()):
            break
        time.sleep(1)
    assert {k: got.get(k) for k in want} == want
    # a gauge is each exporting actor's own figure: one coagent actor, or one per shard of the trials layout
    # (each shard's rate is that of its trials, as the in-process engine computes it for them alone)
    shards = [(0, 16)] if kind != "trials layout" else [(0, 8), (8, 16)]
    each = scrape(metrics_port, each=True)
    for name in result.counters:
        expected = []
        for a, b in shards:
            if (a, b) == (0, 16):
                counters = result.counters[name]
            else:
                with InProcessEngine(paper(), GRID, {"size": 5}, trials=b - a, first_trial=a, seed=2) as part:
                    counters = part.train(20).counters[name]
            expected.append(counters["executions"] / counters["ticks"])
        rates = each[("ray_distcoagent_coagent_execution_rate", name, run)]
        assert sorted(rates) == pytest.approx(sorted(expected), rel=1e-9), (name, rates, expected)
        assert ("ray_distcoagent_coagent_param_norm", name, run) in got
        assert got[("ray_distcoagent_coagent_ticks_between_executions_count", name, run)] >= 1
