"""The in-process engine: results independent of batch layout, deterministic shared updates, state."""
import gymnasium as gym
import numpy as np
import pytest

from distcoagent import InProcessEngine, serialize
from distcoagent.contract import Observer
from distcoagent.examples import paper_network
from distcoagent.tick import NetworkBatch

GRID = "distcoagent/GridWorld-v0"


class TrialsSeen(Observer):
    """Records how many trials each tick ran once finished trials were dropped."""

    wants_ticks = True

    def __init__(self, sizes: list, envs_per_trial: int):
        self.sizes, self.envs_per_trial = sizes, envs_per_trial

    def on_tick(self, event):
        if event.rows is not None:
            self.sizes.append(event.rows.size // self.envs_per_trial)


def _run(trials, micro_batches=1, envs_per_trial=1, seed=5, episodes=6, env_id=GRID, kwargs=None, net=None):
    engine = InProcessEngine(net or paper_network(), env_id, {"size": 4} if kwargs is None else kwargs, trials=trials,
                             envs_per_trial=envs_per_trial, seed=seed, micro_batches=micro_batches)
    return engine.train(episodes)


def test_micro_batches_do_not_change_results():
    whole, split = _run(6), _run(6, micro_batches=3)
    assert np.array_equal(whole.returns, split.returns)
    for name in whole.params:
        for k in whole.params[name]:
            assert np.array_equal(whole.params[name][k], split.params[name][k])


def test_a_trial_is_the_same_in_a_small_and_a_large_batch():
    small, large = _run(2), _run(7)
    assert np.array_equal(small.returns, large.returns[:2])
    assert np.array_equal(small.params["act"]["W"], large.params["act"]["W"][:2])


def test_different_seeds_differ_and_trials_differ():
    a, b = _run(3, seed=1), _run(3, seed=2)
    assert not np.array_equal(a.returns, b.returns)
    assert not np.array_equal(a.returns[0], a.returns[1])


def test_shared_parameters_across_environments_are_deterministic_and_shared():
    one, two = _run(2, envs_per_trial=4), _run(2, envs_per_trial=4)
    assert np.array_equal(one.returns, two.returns)
    assert one.returns.shape == (2, 4, 6)
    assert one.params["act"]["W"].shape[0] == 2  # one parameter copy per trial, not per environment
    assert not np.array_equal(one.returns[0, 0], one.returns[0, 1])  # environments explore differently


def test_counters_add_up():
    result = _run(3, episodes=4)
    for name, c in result.counters.items():
        assert c["episodes"] == 3 * 4
        assert 0.3 * c["ticks"] < c["executions"] < 0.7 * c["ticks"]  # beta = 0.5
        assert c["updates"] <= c["executions"]


def test_state_round_trips_through_msgpack_without_pickle():
    engine = InProcessEngine(paper_network(), GRID, {"size": 3}, trials=2, seed=0)
    engine.train(3)
    nb = engine.batches[0]
    blob = serialize.dumps(nb.state_dict())
    assert b"numpy" not in blob  # plain bytes, no pickled objects
    fresh = NetworkBatch(paper_network(), engine.env_sides[0].env.observation_space, 2, 1, 0)
    for name, unit in fresh.units.items():
        unit.load_state_dict(serialize.loads(blob)["coagents"][name])
        original = nb.units[name].state_dict()
        for k, v in original["params"].items():
            assert np.array_equal(unit.params[k], v)
        assert unit.counters == original["counters"]
    with pytest.raises(ValueError, match="parameter 'W' has shape"):
        fresh.units["act"].load_state_dict({**nb.units["bit_a"].state_dict()})


def test_gymnasium_env_runs_batched_and_seeded():
    from distcoagent import Coagent, Network
    from distcoagent.policies import Softmax

    net = Network([Coagent("act", ["obs"], Softmax(2))], action="act")
    a = _run(3, env_id="CartPole-v1", kwargs={}, net=net, episodes=2)
    b = _run(3, env_id="CartPole-v1", kwargs={}, net=net, episodes=2)
    assert np.array_equal(a.returns, b.returns) and np.all(a.returns > 0)


def test_a_second_train_call_does_not_depend_on_micro_batches():
    """A micro-batch that finished early stops ticking; clocks are realigned when a run starts."""
    results = []
    for micro_batches in (1, 3):
        engine = InProcessEngine(paper_network(), GRID, {"size": 4}, trials=6, seed=9, micro_batches=micro_batches)
        engine.train(3)
        results.append(engine.train(3))
    assert np.array_equal(results[0].returns, results[1].returns)
    assert np.array_equal(results[0].params["act"]["W"], results[1].params["act"]["W"])


def test_dropping_finished_trials_changes_no_number():
    results = []
    for compact in (False, True):
        engine = InProcessEngine(paper_network(), GRID, {"size": 4}, trials=40, envs_per_trial=2, seed=3)
        engine.compact = compact
        sizes_seen = []
        engine.train(5, observers=[TrialsSeen(sizes_seen, 2)])
        assert (min(sizes_seen) < 20) if compact else not sizes_seen  # it did drop trials, or never
        results.append(engine.train(4))  # a second run starts from the restored full-size state
        sizes = {u.batch for u in engine.batches[0].units.values()}
        assert sizes == {80} and engine.env_sides[0].env.num_envs == 80
    assert np.array_equal(results[0].returns, results[1].returns)
    assert np.array_equal(results[0].lengths, results[1].lengths)
    for name in results[0].params:
        for k in results[0].params[name]:
            assert np.array_equal(results[0].params[name][k], results[1].params[name][k]), (name, k)
    assert results[0].counters == results[1].counters


def test_a_slice_of_trials_run_apart_is_the_same_as_in_the_whole_run():
    whole = _run(7)
    part = InProcessEngine(paper_network(), GRID, {"size": 4}, trials=3, seed=5, first_trial=2).train(6)
    assert np.array_equal(part.returns, whole.returns[2:5])
    assert np.array_equal(part.params["bit_a"]["W"], whole.params["bit_a"]["W"][2:5])


def test_a_tuple_of_coagents_drives_a_multidiscrete_action():
    from core_fakes import TWO_PART_ID

    from distcoagent import Coagent, Network, SpecError
    from distcoagent.policies import Softmax

    net = Network([Coagent("first", ["obs"], Softmax(2)), Coagent("second", ["obs", "first"], Softmax(3))],
                  action=("first", "second"))
    engine = InProcessEngine(net, TWO_PART_ID, {}, trials=3, seed=0)
    actions = []
    env = engine.env_sides[0].env
    original = env.step
    env.step = lambda a: (actions.append(np.array(a)), original(a))[1]  # a test spy on the env batch
    result = engine.train(2)
    stacked = np.stack(actions)  # (steps, B, 2): first part in column 0, second in column 1
    assert stacked.shape == (8, 3, 2) and set(np.unique(stacked[..., 0])) <= {0, 1}
    assert set(np.unique(stacked[..., 1])) == {0, 1, 2}
    expected = (10 * stacked[..., 0] + stacked[..., 1]).reshape(2, 4, 3).sum(axis=1).T  # per trial, episode
    assert np.array_equal(result.returns[:, 0, :], expected)
    wrong = Network([Coagent("first", ["obs"], Softmax(2)), Coagent("second", ["obs"], Softmax(2))],
                    action=("first", "second"))
    with pytest.raises(SpecError, match=r"MultiDiscrete\(\[2, 3\]\).*got \[2, 2\]"):
        InProcessEngine(wrong, TWO_PART_ID, {}, trials=1)


class OffsetSpaces(gym.Env):
    """A gymnasium env whose spaces do not start at 0: states 10..12, actions -1 and 0 (it refuses others)."""

    observation_space = gym.spaces.Discrete(3, start=10)
    action_space = gym.spaces.Discrete(2, start=-1)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.state, self.steps = 10, 0
        return self.state, {}

    def step(self, action):
        assert self.action_space.contains(action), action
        self.state, self.steps = 10 + (self.state - 9) % 3, self.steps + 1
        return self.state, float(action == 0), False, self.steps >= 5, {}


def test_discrete_spaces_that_do_not_start_at_zero_are_counted_from_it():
    """Observations 10..12 reach the coagents as 0..2 and their actions 0..1 reach the env as -1..0 (the env
    got action 1, outside its space, and a state of 10 indexed a table of 3)."""
    from distcoagent import Coagent, Network
    from distcoagent.policies import Softmax
    from distcoagent.rules import ActorCritic

    if "test/OffsetSpaces-v0" not in gym.registry:
        gym.register(id="test/OffsetSpaces-v0", entry_point=OffsetSpaces)
    net = Network([Coagent("act", ["obs"], Softmax(2), rule=ActorCritic(0.5, critic_step=0.5, lam=0.5,
                                                                        critic="own"))], action="act", gamma=0.9)
    with InProcessEngine(net, "test/OffsetSpaces-v0", {}, trials=2, seed=0) as engine:
        result = engine.train(60)
    assert result.params["act"]["W"].shape == (2, 3, 2)
    assert result.returns[..., -10:].mean() > result.returns[..., :10].mean() + 1  # it learns action 0 (-1 + 1)


def test_train_takes_the_in_process_engines_threads():
    from distcoagent import load_spec, train
    from distcoagent.network import SpecError

    from pathlib import Path

    spec = load_spec(Path(__file__).resolve().parents[1] / "examples" / "paper_gridworld.toml",
                     {"trials": 6, "episodes": 20})
    one, two = train(spec, threads=1), train(spec, threads=2)
    assert np.array_equal(one.returns, two.returns) and np.array_equal(one.params["act"]["W"], two.params["act"]["W"])
    with pytest.raises(SpecError, match="threads: only the in-process engine runs trials on threads"):
        train(spec, engine="ray", threads=2)
