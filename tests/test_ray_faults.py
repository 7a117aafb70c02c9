"""Ray faults are survived: a coagent actor killed by Ray, an environment actor's process SIGKILLed, each
mid-run: fresh actors, the last snapshot restored, and the finished run is bit for bit the in-process
engine's. A run that keeps failing stops with a clear error; a stopped (SIGSTOPped) actor is reported
within the spec's [ray] timeout, naming the coagent and the spec key."""
import json
import logging
import os
import signal
import time

import pytest

ray = pytest.importorskip("ray")

from distcoagent.contract import Observer  # noqa: E402
from distcoagent.ray_engine import RayEngine, RecoveryError, StallError  # noqa: E402
from distcoagent.ray_engine.sharded import ShardedEngine  # noqa: E402
from ray_networks import GRID, assert_identical, in_process, paper  # noqa: E402

OPTIONS = dict(trials=6, envs_per_trial=2, seed=21, micro_batches=2)
EPISODES = 12
# snapshots twice a second: a fault restores a recent tick (one every tick would fetch the whole state
# from every actor every tick)
SNAPSHOT_EVERY = 0.5


pytestmark = pytest.mark.usefixtures("local_ray")


@pytest.fixture(scope="module")
def expected():
    return in_process(paper(), GRID, {"size": 5}, episodes=EPISODES, **OPTIONS)


class Saboteur(Observer):
    """At its n-th metrics call (between ticks, mid-run), does ``act(engine)``: kills something."""

    metrics_every = 0.0

    def __init__(self, act, at=(3,)):
        self.act, self.at, self.calls, self.engine, self.ticks = act, set(at), 0, None, []

    def on_start(self, engine, episodes):
        self.engine = engine

    def on_metrics(self, metrics):
        self.calls += 1
        if self.calls in self.at:
            self.ticks.append(metrics.tick)
            self.act(self.engine)
        if self.calls >= max(self.at):
            self.metrics_every = 3600.0  # done: metrics fetched every tick would cost most of the run


class AfterASnapshot(Saboteur):
    """Acts once a snapshot holds a finished episode: at the first metrics call ``wait`` seconds after every
    environment had finished one (snapshots come every ``snapshot_every`` seconds). Acting at a fixed tick
    instead raced the snapshots' clock: a fast run reached that tick before any snapshot held an episode."""

    def __init__(self, act, wait: float):
        super().__init__(act, at=(1,))
        self.wait, self.since = wait, None

    def on_metrics(self, metrics):
        if self.ticks:
            return
        if self.since is None and metrics.episodes_done >= 1:
            self.since = time.monotonic()
        if self.since is not None and time.monotonic() - self.since >= self.wait:
            self.ticks.append(metrics.tick)
            self.act(self.engine)
            self.metrics_every = 3600.0


def kill_actor(name):
    return lambda engine: ray.kill(engine.actors[engine.actor_names.index(name)])


def sigkill(name):
    return lambda engine: os.kill(engine.placement[name]["pid"], signal.SIGKILL)


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")  # no error from a dropped result
@pytest.mark.parametrize("name,how", [("coagent:bit_b", kill_actor), ("env:1", sigkill), ("shard:1", sigkill)],
                         ids=["ray.kill a coagent actor", "SIGKILL the environment actor",
                              "SIGKILL a shard actor of the trials layout"])
def test_a_lost_actor_is_replaced_and_the_run_is_bit_identical(expected, caplog, name, how):
    saboteur = Saboteur(how(name))
    kind = ShardedEngine if name.startswith("shard:") else RayEngine
    engine = kind(paper(), GRID, {"size": 5}, snapshot_every=SNAPSHOT_EVERY, **OPTIONS)
    try:
        with caplog.at_level(logging.WARNING, logger="distcoagent"):
            result = engine.train(EPISODES, observers=[saboteur])
    finally:
        engine.close()
    assert saboteur.ticks and len(engine.recoveries) == 1
    record = engine.recoveries[0]
    assert record["dead"] == [name] and record["tick"] >= saboteur.ticks[0]
    logged = caplog.text
    assert name in logged and f"atomic tick {record['tick']}" in logged and "recovered" in logged
    if name.startswith("coagent:"):
        assert "coagent(s) bit_b" in logged
    if name.startswith("shard:"):
        assert "trials 3..5" in logged
    assert_identical(expected, result)


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")  # no error from a dropped result
def test_a_run_that_keeps_losing_actors_stops_with_a_clear_error():
    saboteur = Saboteur(kill_actor("coagent:act"), at=(2, 4, 6))
    engine = RayEngine(paper(), GRID, {"size": 5}, max_recoveries=1, snapshot_every=SNAPSHOT_EVERY, **OPTIONS)
    try:
        with pytest.raises(RecoveryError, match=r"lost actors 2 times, more than max_recoveries = 1.*"
                                                r"coagent:act \(coagent\(s\) act\) died at atomic tick"):
            engine.train(EPISODES, observers=[saboteur])
    finally:
        engine.close()


def test_a_stopped_actor_is_reported_within_the_timeout_naming_it_and_the_spec_key():
    stopped = {}

    def stop(engine):
        stopped["pid"] = engine.placement["coagent:bit_a"]["pid"]
        os.kill(stopped["pid"], signal.SIGSTOP)

    engine = RayEngine(paper(), GRID, {"size": 5}, timeout=4.0, **OPTIONS)
    began = None
    try:
        began = time.monotonic()
        with pytest.raises(StallError, match=r"\[ray\] timeout: a tick took longer than 4 s; stopped actor\(s\): "
                                             r"coagent:bit_a \(coagent\(s\) bit_a\)"):
            engine.train(200, observers=[Saboteur(stop, at=(2,))])
        assert time.monotonic() - began < 4.0 + 10
    finally:
        if "pid" in stopped:
            os.kill(stopped["pid"], signal.SIGCONT)
        engine.close()


def test_a_failed_run_keeps_its_episodes_and_checkpoint_and_resumes(tmp_path):
    """Beyond max_recoveries the run fails, but its directory keeps the config, the episodes finished by
    the last snapshot, a checkpoint and error.txt; --resume then finishes it as if nothing happened."""
    from distcoagent import checkpoint
    from distcoagent.training import train

    expected = in_process(paper(), GRID, {"size": 5}, episodes=EPISODES, **OPTIONS)
    out = tmp_path / "run"
    saboteur = AfterASnapshot(kill_actor("coagent:bit_a"), wait=2 * SNAPSHOT_EVERY)
    with pytest.raises(RecoveryError):
        train(paper(), GRID, env_kwargs={"size": 5}, episodes=EPISODES, engine="ray", out=out,
              ray_options={"max_recoveries": 0, "snapshot_every": SNAPSHOT_EVERY}, metrics_every=0.0,
              observers=[saboteur], **OPTIONS)
    assert "RecoveryError" in (out / "error.txt").read_text()
    assert (out / checkpoint.FILE).is_file() and (out / "returns.csv").read_text().count("\n") > 1
    placement = json.loads((out / "placement.json").read_text())  # where the actors ran, and what was lost
    assert [r["dead"] for r in placement["recoveries"]] == [["coagent:bit_a"]]
    result = train(paper(), GRID, env_kwargs={"size": 5}, episodes=EPISODES, out=out, resume=True, **OPTIONS)
    assert not (out / "error.txt").exists()
    assert_identical(expected, result)


def test_a_cluster_with_no_node_left_is_said_so(monkeypatch):
    """When the head stops during a run, recovery finds no node: it said 'no single node has that much
    (cluster: )', naming a resource; it must say the cluster is gone."""
    import ray

    monkeypatch.setattr(ray, "nodes", lambda: [])
    with pytest.raises(ConnectionError, match="the Ray cluster has no node alive"):
        RayEngine(paper(), GRID, {"size": 3}, **OPTIONS)
