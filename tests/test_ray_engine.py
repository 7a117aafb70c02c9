"""The Ray engine agrees bit for bit with the in-process engine (as gymnasium's sync and async vector
envs agree), whatever the packing, micro-batching and transport; bad placements and addresses fail fast."""
import json
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from distcoagent.ray_engine import PlacementError, RayEngine  # noqa: E402
from ray_networks import (GRID, assert_identical, cartpole, free_port, in_process, option_critic,  # noqa: E402
                          paper, recurrent)


pytestmark = pytest.mark.usefixtures("local_ray")


def _ray(network, env_id, env_kwargs, *, trials, envs_per_trial=1, seed=0, episodes=3, **options):
    engine = RayEngine(network, env_id, env_kwargs, trials=trials, envs_per_trial=envs_per_trial, seed=seed,
                       **options)
    try:
        return engine.train(episodes)
    finally:
        engine.close()


def _agree(make, env_id, env_kwargs, *, trials, envs_per_trial, seed, episodes, **options):
    expected = in_process(make(), env_id, env_kwargs, trials=trials, envs_per_trial=envs_per_trial, seed=seed,
                          micro_batches=options.get("micro_batches", 1), episodes=episodes)
    got = _ray(make(), env_id, env_kwargs, trials=trials, envs_per_trial=envs_per_trial, seed=seed,
               episodes=episodes, **options)
    assert got.engine == "ray"
    assert_identical(expected, got)
    return got


@pytest.mark.parametrize("options", [
    {},
    {"micro_batches": 2, "coagents_per_actor": 2},
    # plain actor calls are checked by default on two nodes (test_ray_cluster); here with -m slow
    pytest.param({"micro_batches": 3, "transport": "actors"}, marks=pytest.mark.slow),
], ids=["per-coagent", "micro-batches+packed", "plain-actor-calls"])
def test_paper_network_agrees_with_in_process(options):
    got = _agree(paper, GRID, {"size": 5}, trials=6, envs_per_trial=2, seed=3, episodes=4, **options)
    assert got.counters["act"]["executions"] > 0
    # the result reports how the coagents were placed
    groups = {1: [["bit_a"], ["bit_b"], ["act"]], 2: [["bit_a", "bit_b"], ["act"]]}
    assert got.extra["groups"] == groups[options.get("coagents_per_actor", 1)]
    assert got.extra["depth"] == 2 and got.extra["transport"] == options.get("transport", "compiled")


@pytest.mark.parametrize("options", [
    {"coagents_per_actor": 2},  # prev:act crosses actors, prev:gate and prev:mem stay inside
    {"micro_batches": 2},
], ids=["packed", "micro-batches"])
def test_recurrent_network_agrees_with_in_process(options):
    _agree(recurrent, GRID, {"size": 4}, trials=4, envs_per_trial=2, seed=11, episodes=3, **options)


# one actor per coagent with -m slow: test_option_critic_ray's default variant runs the option-critic network that way
@pytest.mark.parametrize("options", [
    pytest.param({}, marks=pytest.mark.slow),
    {"groups": [["termination", "act"], ["option"]], "micro_batches": 2},
], ids=["per-coagent", "grouped+micro-batches"])
def test_coagent_driven_execution_agrees_with_in_process(options):
    got = _agree(option_critic, GRID, {"size": 4}, trials=4, envs_per_trial=1, seed=5, episodes=3, **options)
    c = got.counters
    assert c["termination"]["executions"] == c["termination"]["ticks"]  # beta = 1
    assert 0 < c["option"]["executions"] < c["option"]["ticks"]  # driven by termination


def test_cartpole_with_linear_features_agrees_with_in_process():
    _agree(cartpole, "CartPole-v1", {}, trials=2, envs_per_trial=2, seed=0, episodes=2, micro_batches=2)


def test_a_second_train_call_continues_like_in_process():
    from distcoagent.engine import InProcessEngine
    from ray_networks import assert_identical as same

    ref = InProcessEngine(paper(), GRID, {"size": 4}, trials=3, seed=2)
    engine = RayEngine(paper(), GRID, {"size": 4}, trials=3, seed=2)
    try:
        first = engine.train(2)
        same(ref.train(2), first)
        same(ref.train(3), engine.train(3))
    finally:
        engine.close()
    # guard against a vacuous agreement: another seed must give other results
    with pytest.raises(AssertionError):
        same(in_process(paper(), GRID, {"size": 4}, trials=3, seed=1, episodes=2), first)


def _loaded_kernels(actor) -> dict[str, int]:
    """The compiled kernels an actor's process holds now: each numba dispatcher with a loaded version, and
    how many versions (argument types) it holds."""
    def look(_):
        from distcoagent.kernels import coagent, critic, gridworld

        found = {}
        for m in (coagent, critic, gridworld):
            for name in ("act", "observe", "begin_episode", "update", "value", "step"):
                signatures = getattr(getattr(m, name, None), "signatures", None)
                if signatures:
                    found[f"{m.__name__.rsplit('.', 1)[1]}.{name}"] = len(signatures)
        return found
    return ray.get(actor.__ray_call__.remote(look))


def test_actors_load_their_kernels_before_the_first_tick():
    """Loading kernels from numba's cache takes a fresh actor process about 0.3 s a module (compiling them
    into an empty cache, seconds): done in the first tick, it would sit on that tick's critical path once
    per actor in turn; done while the actors start, it overlaps. Each actor holds exactly what its side
    runs before anything has ticked, and a run needs no other version (the arrays that arrive through
    the graph's channels are read-only views: handed to a kernel as they are, they would need one)."""
    kernels = pytest.importorskip("distcoagent.kernels")
    if not (kernels.available() and kernels.enabled()):
        pytest.skip("numba missing or DISTCOAGENT_KERNELS=0: nothing to load")
    engine = RayEngine(paper(), GRID, {"size": 3}, trials=2, seed=0)
    try:
        assert engine.tick_count == 0
        before = {actor: _loaded_kernels(actor) for actor in engine.actors + engine.env_actors}
        for actor in engine.actors:
            assert sorted(before[actor]) == ["coagent.act", "coagent.begin_episode", "coagent.observe"]
        for actor in engine.env_actors:
            assert sorted(before[actor]) == ["critic.update", "critic.value", "gridworld.step"]
        engine.train(2)
        assert {actor: _loaded_kernels(actor) for actor in before} == before
    finally:
        engine.close()


def test_workers_import_the_compiled_graphs_code_while_they_start():
    """Ray's compiled-graph code (``ray.dag`` and its channels, about 0.1 s) is imported in an actor by the
    graph's first call there, a channel allocation; the driver makes those calls one actor after
    another while it compiles. A worker told at ``ready`` that it will run in a compiled graph has
    imported it by then, in parallel with the other actors; one that will not, has not."""
    from distcoagent.ray_engine.actors import EnvironmentWorker

    def imported(_):
        import sys

        return "ray.dag.compiled_dag_node" in sys.modules

    worker = ray.remote(EnvironmentWorker).options(num_cpus=0).remote(0, paper(), GRID, {"size": 3}, 0, 0, 1, 1)
    try:
        assert ray.get(worker.__ray_call__.remote(imported)) is False  # a fresh worker has not
        assert ray.get(worker.ready.remote(False))["pid"] > 0
        assert ray.get(worker.__ray_call__.remote(imported)) is False
        ray.get(worker.ready.remote(True))
        assert ray.get(worker.__ray_call__.remote(imported)) is True
    finally:
        ray.kill(worker)


def test_placement_group_spread_runs():
    _agree(paper, GRID, {"size": 3}, trials=2, envs_per_trial=1, seed=0, episodes=2, placement="SPREAD")


# ---------------------------------------------------------------------- bad input
def test_unknown_custom_resource_fails_fast_naming_it():
    start = time.perf_counter()
    with pytest.raises(PlacementError, match="node_nowhere"):
        RayEngine(paper(), GRID, {"size": 3}, resources={"act": {"node_nowhere": 1}})
    assert time.perf_counter() - start < 10


def test_more_cpus_than_the_cluster_has_fails_naming_cpu():
    with pytest.raises(PlacementError, match="CPU"):
        RayEngine(paper(), GRID, {"size": 3}, cpus_per_actor=8)


def test_resources_for_an_unknown_coagent_and_bad_groups_fail():
    with pytest.raises(PlacementError, match="unknown coagent"):
        RayEngine(paper(), GRID, {"size": 3}, resources={"nobody": {"CPU": 1}})
    with pytest.raises(PlacementError, match="missing"):
        RayEngine(paper(), GRID, {"size": 3}, groups=[["bit_a"], ["act"]])
    with pytest.raises(PlacementError, match="placement"):
        RayEngine(paper(), GRID, {"size": 3}, placement="EVERYWHERE")


def test_unreachable_address_fails_within_seconds():
    port = free_port()  # nobody listens on it
    start = time.perf_counter()
    with pytest.raises(ConnectionError, match=f"127.0.0.1:{port}"):
        RayEngine(paper(), GRID, {"size": 3}, address=f"127.0.0.1:{port}")
    assert time.perf_counter() - start < 5
    with pytest.raises(ConnectionError, match="HOST:PORT"):
        RayEngine(paper(), GRID, {"size": 3}, address="not-an-address")


def test_nonfinite_reward_surfaces_as_the_core_error():
    from core_fakes import SCRIPTED_ID  # noqa: F401  (registers the env here; "module:id" in the actor)
    from distcoagent.coagent import Coagent, NonFiniteError
    from distcoagent.network import Network
    from distcoagent.policies import Softmax

    net = Network([Coagent("c", ["obs"], Softmax(2))], action="c")
    engine = RayEngine(net, "core_fakes:tests/Scripted-v0", {"nan_at": 3}, trials=1)
    try:
        with pytest.raises(NonFiniteError, match="reward"):
            engine.train(2)
    finally:
        engine.close()


def test_the_command_lines_trials_layout_matches_the_in_process_engine(tmp_path, capsys):
    """``--layout trials``: an actor per micro-batch running the whole network (here on the tests' shared
    Ray, which ``train`` joins), the in-process engine's returns to the byte, the layout in config.json."""
    from distcoagent.cli import main

    example = str(Path(__file__).resolve().parents[1] / "examples" / "paper_gridworld.toml")
    common = ["--episodes", "4", "--trials", "3", "--seed", "4", "--micro-batches", "2", "--quiet"]
    assert main(["train", example, *common, "--engine", "ray", "--layout", "trials",
                 "--out", str(tmp_path / "sharded")]) == 0
    assert "ray-sharded" in capsys.readouterr().out
    assert main(["train", example, *common, "--out", str(tmp_path / "local")]) == 0
    assert (tmp_path / "sharded" / "returns.csv").read_text() == (tmp_path / "local" / "returns.csv").read_text()
    assert json.loads((tmp_path / "sharded" / "config.json").read_text())["ray"] == {"layout": "trials"}
    placement = json.loads((tmp_path / "sharded" / "placement.json").read_text())["actors"]
    assert sorted(placement) == ["shard:0", "shard:1"]
