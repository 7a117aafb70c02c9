"""Option-critic as a coagent network on Four Rooms: building it, running it, its baselines, the CLI.

The exact gradient checks are in test_option_critic_exact.py; the long learning study in
test_option_critic_learning.py (-m slow).
"""
import json
from pathlib import Path

import numpy as np
import pytest

from distcoagent import batched, kernels, load_spec
from distcoagent.baselines import ClassicOptionCritic
from distcoagent.cli import main
from distcoagent.coagent import Coagent
from distcoagent.engine import InProcessEngine
from distcoagent.envs.fourrooms import FOURROOMS_ID
from distcoagent.execution import AfterStart, Driven
from distcoagent.network import Network, SpecError
from distcoagent.networks import flat_actor_critic, option_critic
from distcoagent.policies import Bernoulli, Gaussian, Softmax
from distcoagent.rules import ExpectedActorCritic
from distcoagent.reproduce_option_critic import CLASSIC_SETTINGS
from distcoagent.study import run_network

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "examples" / "option_critic_fourrooms.toml"
SMALL = {"goal_move_episode": 3, "max_steps": 60}


def test_network_is_spec_section_5_from_library_parts():
    net = option_critic(n_options=4)
    assert net.order == ("termination", "option", "act") and net.action == "act"
    term, option, act = (net.coagent(n) for n in net.order)
    assert term.inputs == ("obs", "prev:option") and isinstance(term.policy, Bernoulli)
    assert isinstance(term.execution, AfterStart)
    assert option.inputs == ("obs",) and option.policy == Softmax(4)
    assert option.execution == Driven("termination", when=1, at_episode_start=True)
    assert act.inputs == ("obs", "option") and act.policy == Softmax(4)
    assert all(isinstance(c.rule, ExpectedActorCritic) for c in net.coagents)
    assert term.rule.costs == (0.0, 0.01)  # xi: a cost of stopping
    assert net.critic is None  # every critic is a coagent's own


def test_example_spec_builds_the_same_network():
    spec = load_spec(SPEC)
    assert spec.env_id == FOURROOMS_ID
    assert spec.network.to_config() == option_critic().to_config()
    assert main(["validate", str(SPEC)]) == 0


def test_rule_is_checked_where_it_is_built(tmp_path):
    with pytest.raises(ValueError, match="rule.lam"):
        ExpectedActorCritic(lam=2.0)
    net = Network([Coagent("a", ["obs"], Gaussian(1), rule=ExpectedActorCritic())], action="a")
    with pytest.raises(ValueError, match="discrete policy"):
        InProcessEngine(net, "MountainCarContinuous-v0", trials=1)
    text = SPEC.read_text().replace("costs = [0.0, 0.01]", "costs = [0.0, 0.01, 0.5]")
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    with pytest.raises(ValueError, match="rule.costs has 3 entries"):
        InProcessEngine(load_spec(bad).network, FOURROOMS_ID, trials=1)
    bad.write_text(SPEC.read_text().replace("initial_value = 1.0 }\n\n[[coagent]]\nname = \"termination\"",
                                            "initial_value = 1.0, nope = 1 }\n\n[[coagent]]\nname = \"termination\""))
    with pytest.raises(SpecError, match="nope"):
        load_spec(bad)


def _train(net, trials=4, episodes=4, seed=1, **options):
    engine = InProcessEngine(net, FOURROOMS_ID, SMALL, trials=trials, seed=seed, **options)
    return engine, engine.train(episodes)


def test_runs_on_the_engine_and_every_rule_array_declares_its_batch_axis():
    engine, result = _train(option_critic())
    assert np.isfinite(result.returns).all()
    assert set(result.params["act"]) == {"W", "q"}
    c = result.counters
    assert 0 < c["option"]["executions"] < c["option"]["ticks"]  # driven by the termination
    assert c["termination"]["executions"] == c["termination"]["ticks"] - 4 * 4  # all but each episode's first
    for unit in engine.batches[0].units.values():
        assert batched.undeclared(unit) == []


def test_dropping_finished_trials_and_restoring_a_checkpoint_change_nothing():
    net = option_critic()
    _, whole = _train(net, trials=16, episodes=3, compact=False)
    _, compacted = _train(net, trials=16, episodes=3, compact=True)
    np.testing.assert_array_equal(whole.lengths, compacted.lengths)
    for name in net.order:
        for k in whole.params[name]:
            np.testing.assert_array_equal(whole.params[name][k], compacted.params[name][k])
    engine = InProcessEngine(net, FOURROOMS_ID, SMALL, trials=16, seed=1, compact=False)
    engine.train(3, stop=lambda: engine.tick_count >= 40)
    state = engine.state()
    fresh = InProcessEngine(net, FOURROOMS_ID, SMALL, trials=16, seed=1, compact=False)
    fresh.restore(state)
    resumed = fresh.train(3)
    np.testing.assert_array_equal(resumed.lengths, whole.lengths)
    np.testing.assert_array_equal(resumed.params["termination"]["q"], whole.params["termination"]["q"])


def test_option_choices_count_every_execution_of_the_policy_over_options():
    net = option_critic()
    r = run_network(net, runs=3, episodes=5, seed=2, **SMALL)
    _, result = _train(net, trials=3, episodes=5, seed=2)
    assert r.option_choices.sum() == result.counters["option"]["executions"]
    assert (r.option_choices >= 1).all() and (r.option_choices <= r.lengths).all()
    assert r.intra.shape == (3, 104, 4, 4) and r.termination.shape == (3, 104, 4)
    np.testing.assert_allclose(r.over_options.sum(axis=2), 1.0)
    assert (r.option_duration() >= 1).all()


def test_classic_option_critic_is_deterministic_and_books_every_episode():
    classic = ClassicOptionCritic(**CLASSIC_SETTINGS)
    a = classic.run(5, 6, seed=3, **SMALL)
    b = classic.run(5, 6, seed=3, **SMALL)
    np.testing.assert_array_equal(a.lengths, b.lengths)
    assert (a.lengths >= 1).all() and (a.lengths <= SMALL["max_steps"]).all()
    assert (a.option_choices >= 1).all() and (a.option_choices <= a.lengths).all()
    assert a.steps >= a.lengths.sum(axis=1).max()
    with pytest.raises(ValueError, match="policy_over_options"):
        ClassicOptionCritic(policy_over_options="greedy")


@pytest.mark.parametrize("agent,episodes", [("coagent", 100), ("classic", 100), ("flat", 100)])
def test_every_agent_learns_in_a_short_run(agent, episodes):
    """Smoke version of the study (the full one is -m slow): 4 runs, no goal move.  The first 20
    episodes are near-random walks (~400 steps); the last 20 must take less than half as many
    steps, with a 95% band over runs (measured: about 0.3 for both option-critics, 0.2 flat)."""
    options = {"goal_move_episode": 0, "max_steps": 1000}
    if agent == "classic":
        r = ClassicOptionCritic(**CLASSIC_SETTINGS).run(4, episodes, 0, **options)
    else:
        r = run_network(option_critic() if agent == "coagent" else flat_actor_critic(), 4, episodes, 0, **options)
    first, last = r.lengths[:, :20].mean(axis=1), r.lengths[:, -20:].mean(axis=1)
    ratio = last / first
    print(f"{agent}: first 20 episodes {first.mean():.1f}, last 20 {last.mean():.1f} steps, ratios {ratio.round(2)}")
    assert ratio.mean() + 1.96 * ratio.std(ddof=1) / np.sqrt(ratio.size) < 0.5


def test_reproduce_option_critic_command_writes_figures_and_json(tmp_path, capsys):
    code = main(["reproduce", "option-critic", "--trials", "2", "--episodes", "6", "--out", str(tmp_path),
                 "--workers", "1"])
    assert code == 0
    for name in ("option_critic_steps", "option_critic_duration", "option_critic_options"):
        assert (tmp_path / f"{name}.png").stat().st_size > 1000
    summary = json.loads((tmp_path / "option_critic.json").read_text())
    assert set(summary["agents"]) == {"coagent option-critic", "classic option-critic", "flat actor-critic"}
    assert summary["goal_move_episode"] == 3 and len(summary["agents"]["flat actor-critic"]["mean_steps"]) == 6
    assert "mean_option_duration" not in summary["agents"]["flat actor-critic"]
    assert "optimal steps to goal" in capsys.readouterr().out


def test_one_step_critic_shortcut_gives_the_numbers_of_the_dense_trace():
    class DenseTrace(ExpectedActorCritic):
        def one_step(self, unit):
            return False

    net = option_critic()
    dense = Network([Coagent(c.name, c.inputs, c.policy, c.execution, DenseTrace(**{
        k: getattr(c.rule, k) for k in ("actor_step", "critic_step", "lam", "costs", "initial_value")}))
        for c in net.coagents], action="act", gamma=net.gamma)
    with kernels.disabled():  # both in numpy: the shortcut's own numbers (its kernel: test_kernels.py)
        _, fast = _train(net, trials=3, episodes=3)
    _, slow = _train(dense, trials=3, episodes=3)
    np.testing.assert_array_equal(fast.lengths, slow.lengths)
    for name in net.order:
        for k in ("W", "q"):
            np.testing.assert_array_equal(fast.params[name][k], slow.params[name][k])
