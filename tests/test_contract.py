"""The engine contract (``contract.Engine``), one suite run against both engines, as gymnasium tests
its sync and async vector envs with the same cases: results, stop and continue, state and restore
(bit for bit, through msgpack, into a fresh engine), metrics, observers, bad state."""

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from distcoagent import batched, serialize  # noqa: E402
from distcoagent.contract import Engine, Observer  # noqa: E402
from distcoagent.engine import InProcessEngine  # noqa: E402
from distcoagent.network import SpecError  # noqa: E402
from distcoagent.ray_engine import RayEngine  # noqa: E402
from distcoagent.ray_engine.sharded import ShardedEngine  # noqa: E402
from distcoagent.tick import RasterSpec  # noqa: E402
from ray_networks import GRID, assert_identical, cartpole, option_critic, paper, recurrent  # noqa: E402

ENGINES = ["inprocess", "ray", "ray-sharded"]


pytestmark = pytest.mark.usefixtures("local_ray")


def build(kind, network, env_id=GRID, env_kwargs=None, **options) -> Engine:
    env_kwargs = {"size": 4} if env_kwargs is None else env_kwargs
    if kind == "ray":
        return RayEngine(network, env_id, env_kwargs, **options)
    if kind == "ray-sharded":  # the Ray engine's trials layout: an actor per micro-batch
        return ShardedEngine(network, env_id, env_kwargs, **options)
    return InProcessEngine(network, env_id, env_kwargs, **options)


class Recorder(Observer):
    """Counts hook calls and sums each tick's delivered rewards per micro-batch."""

    wants_ticks = True
    metrics_every = 0.0  # as often as the engine checks

    def __init__(self):
        self.starts, self.ends, self.metrics, self.reward = 0, [], [], 0.0

    def on_start(self, engine, episodes):
        self.starts += 1

    def on_tick(self, event):
        f = event.feedback
        self.reward += float(np.sum(np.where(f.active, f.reward, 0.0)))

    def on_metrics(self, metrics):
        self.metrics.append(metrics)

    def on_end(self, result):
        self.ends.append(result)


@pytest.mark.parametrize("kind", ENGINES)
def test_train_returns_a_whole_result_and_reports_progress(kind):
    with build(kind, paper(), trials=3, envs_per_trial=2, seed=4, micro_batches=2) as engine:
        progress = []
        result = engine.train(5, progress=progress.append)
    assert result.finished and result.engine == kind
    assert result.returns.shape == (3, 2, 5) and np.isfinite(result.returns).all()
    assert sum(progress) == 5
    assert set(result.params) == {"bit_a", "bit_b", "act", "critic"}
    for name, c in result.counters.items():
        assert c["episodes"] == 3 * 2 * 5 and c["executions"] <= c["ticks"]


# stop points: the first tick, one in the first episodes, one near the end; on Ray (about 20 s per
# stop point) the middle one runs by default and the other two with -m slow. The trials layout's
# shards are in-process engines: the recurrent network's previous outputs, which they keep as the
# in-process engine does, are saved and restored through them with -m slow. The option-critic network
# on Ray (14 s) runs with -m slow too: its state on Ray travels the same way as the paper network's
# and the recurrent one's (which adds the previous outputs), and it is restored in-process by default.
STOPS = [pytest.param("inprocess", paper, (1, 9, 40), id="paper-inprocess"),
         pytest.param("ray", paper, (9,), id="paper-ray"),
         pytest.param("ray-sharded", paper, (9,), id="paper-ray-sharded"),
         pytest.param("ray", paper, (1, 40), id="paper-first-and-late-ticks-ray", marks=pytest.mark.slow),
         *[pytest.param(kind, make, stops, id=f"{name}-{kind}",
                        marks=[pytest.mark.slow] if kind == "ray-sharded" else []) for kind in ENGINES
           for name, make, stops in [("recurrent", recurrent, (7,))]],
         pytest.param("inprocess", option_critic, (5,), id="option-critic-inprocess"),
         pytest.param("ray", option_critic, (5,), id="option-critic-ray", marks=pytest.mark.slow)]


@pytest.mark.parametrize("kind,make,stops", STOPS)
def test_a_run_stopped_saved_and_restored_in_a_fresh_engine_continues_bit_for_bit(kind, make, stops):
    options = dict(trials=4, envs_per_trial=2, seed=13, micro_batches=2)
    with build("inprocess", make(), **options) as reference:
        whole = reference.train(6)
    for stop_at in stops:
        with build(kind, make(), **options) as first:
            part = first.train(6, stop=lambda: first.tick_count >= stop_at)
            assert not part.finished and first.tick_count >= stop_at
            assert np.isnan(part.returns).any()  # episodes still to come
            blob = serialize.dumps(first.state())
        assert b"numpy" not in blob  # plain arrays, no pickle
        with build(kind, make(), **options) as second:
            second.restore(serialize.loads(blob))
            with pytest.raises(SpecError, match="unfinished run of 6 episodes"):
                second.train(7)
            assert_identical(whole, second.train(6))


def test_a_run_saved_in_process_continues_on_ray_and_back():
    options = dict(trials=3, seed=2, micro_batches=3)
    with build("inprocess", paper(), **options) as reference:
        whole = reference.train(5)
    with build("inprocess", paper(), **options) as first:
        first.train(5, stop=lambda: first.tick_count >= 12)
        state = first.state()
    with build("ray", paper(), **options) as second:
        second.restore(state)
        second.train(5, stop=lambda: second.tick_count >= 30)
        state = second.state()
    with build("inprocess", paper(), **options) as third:
        third.restore(state)
        assert_identical(whole, third.train(5))


@pytest.mark.parametrize("kind", ENGINES)
def test_metrics_agree_with_the_result(kind):
    with build(kind, paper(), trials=3, seed=1) as engine:
        result = engine.train(4)
        m = engine.metrics()
    assert m.tick == result.ticks and m.environments == 3
    assert m.episodes_done == 4 and m.episodes_finished == 12
    mean, stderr, n = m.curve()
    assert np.array_equal(n, [3, 3, 3, 3]) and np.allclose(mean, result.curve)
    for name, c in result.counters.items():
        got = m.coagents[name]
        assert (got.executions, got.ticks, got.updates, got.episodes) == (c["executions"], c["ticks"],
                                                                           c["updates"], c["episodes"])
        assert 0.35 < got.execution_rate < 0.65  # beta = 0.5
        assert got.mean_ticks_between_executions == pytest.approx(2.0, rel=0.3)  # geometric, mean 1/beta
        norm = np.sqrt(sum(np.sum(np.square(v)) for v in result.params[name].values()))
        assert got.param_norm == pytest.approx(norm, rel=1e-12)
        assert got.last_update is not None and got.last_update >= 0


@pytest.mark.parametrize("kind", ENGINES)
def test_the_raster_holds_the_sampled_environments_of_every_micro_batch(kind):
    """Micro-batches hold different sampled environments: the raster is theirs together, each environment
    with its own bits, the same bits as with one micro-batch (draws are keyed by environment and tick)."""
    sampled = RasterSpec((0, 1, 2, 3))
    with InProcessEngine(paper(), GRID, {"size": 4}, trials=4, seed=2, raster=sampled) as whole:
        whole.train(3)
        expected = whole.metrics().raster
    with build(kind, paper(), trials=4, seed=2, micro_batches=2, raster=sampled) as split:
        split.train(3)
        got = split.metrics().raster
    assert set(got) == set(expected)
    all_running = [t for t, row in got.items() if row["envs"] == [0, 1, 2, 3]]
    assert len(all_running) >= 100, len(all_running)  # until the first micro-batch's trials finish
    for tick, row in got.items():  # later, a finished micro-batch records nothing
        for name in ("bit_a", "bit_b", "act"):
            assert row[name] == [expected[tick][name][expected[tick]["envs"].index(e)] for e in row["envs"]], tick
    assert any(any(got[t]["bit_a"][:2]) for t in all_running)  # micro-batch 0's environments executed


@pytest.mark.parametrize("kind", ENGINES)
def test_observers_see_every_tick_metrics_and_the_end(kind):
    observer = Recorder()
    with build(kind, paper(), trials=2, envs_per_trial=2, seed=6, micro_batches=2) as engine:
        result = engine.train(3, observers=[observer])
    assert observer.starts == 1 and observer.ends == [result]
    assert observer.reward == pytest.approx(np.sum(result.returns), rel=1e-12)  # every reward, once
    assert observer.metrics and observer.metrics[-1].tick <= result.ticks
    ticks = [m.tick for m in observer.metrics]
    assert ticks == sorted(ticks)


# the trials layout's shards restore their episodes with the in-process engine's code: -m slow
@pytest.mark.parametrize("kind", ["inprocess", "ray", pytest.param("ray-sharded", marks=pytest.mark.slow)])
def test_a_gymnasium_env_restarts_its_episodes_after_a_restore(kind):
    options = dict(env_id="CartPole-v1", env_kwargs={}, trials=2, seed=0)
    with build(kind, cartpole(), **options) as first:
        first.train(3, stop=lambda: first.tick_count >= 15)
        state = first.state()
    with build(kind, cartpole(), **options) as second:
        second.restore(state)
        result = second.train(3)
    assert result.finished and np.isfinite(result.returns).all() and result.returns.shape == (2, 1, 3)
    assert all(c["episodes"] >= 2 * 3 for c in result.counters.values())  # the cut episode counts too


# restore's first step on every engine is the same check (engine.check_state): the Ray engines' cases,
# which spend their time starting actors, run with -m slow
@pytest.mark.parametrize("kind", ["inprocess", *[pytest.param(k, marks=pytest.mark.slow) for k in ENGINES[1:]]])
def test_a_state_from_another_layout_is_refused_naming_the_field(kind):
    with build("inprocess", paper(), trials=2, seed=0) as other:
        other.train(1)
        state = other.state()
    with build(kind, paper(), trials=3, seed=0) as engine:
        with pytest.raises(ValueError, match="trials is 2, this engine's is 3"):
            engine.restore(state)
        with pytest.raises(ValueError, match="format"):
            engine.restore({"format": "something else"})


def test_every_array_of_a_run_declares_its_axis():
    engine = InProcessEngine(paper(), GRID, {"size": 4}, trials=20, envs_per_trial=2, seed=0)
    engine.train(3)
    holders = [*engine.env_sides[0].holders(), *engine.coagent_sides[0].holders()]
    assert len(holders) == 8  # side, env batch, critic, book; side, three units
    assert {type(h).__name__: batched.undeclared(h) for h in holders} == {type(h).__name__: [] for h in holders}


def test_ray_actors_are_named_after_what_they_hold():
    with build("ray", paper(), trials=2, micro_batches=2, coagents_per_actor=2) as engine:
        named = {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                 if a["namespace"] == engine.namespace}
        placement = engine.train(1).extra["placement"]
    assert named == {"coagent:bit_a+bit_b", "coagent:act", "env:0", "env:1"}
    assert set(placement) == named and all(p["node_id"] for p in placement.values())


def test_metrics_and_stops_while_finished_trials_are_dropped_change_no_number():
    """The in-process engine cuts finished trials out (40 trials, 2 envs each); asking for metrics every
    tick, or stopping, saving and restoring at several ticks, must give the uninterrupted run."""
    options = dict(trials=40, envs_per_trial=2, seed=3)
    with build("inprocess", paper(), **options) as reference:
        whole = reference.train(8)
    with build("inprocess", paper(), **options) as watched:
        observer = Recorder()
        assert_identical(whole, watched.train(8, observers=[observer]))
        assert len(observer.metrics) > 100
    engine = build("inprocess", paper(), **options)
    stops = iter([150, 200, 260, 330, 10**9])
    target = next(stops)
    while True:
        result = engine.train(8, stop=lambda: engine.tick_count >= target)
        if result.finished:
            break
        state = serialize.loads(serialize.dumps(engine.state()))
        engine = build("inprocess", paper(), **options)
        engine.restore(state)
        target = next(stops)
    assert_identical(whole, result)
