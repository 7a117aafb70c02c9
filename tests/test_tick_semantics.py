"""One tick's semantics (SPEC §3a) on tiny scripted cases with hand-computed expectations."""
import numpy as np
import pytest
from core_fakes import SCRIPTED_ID, RecordingRule, ScriptedEnv

from distcoagent import Coagent, InProcessEngine, Network
from distcoagent.execution import Constant, Driven, Periodic
from distcoagent.tick import NetworkBatch
from distcoagent.policies import Softmax
from distcoagent.rng import Stream

BIG = 50.0  # logits this far apart make a softmax deterministic to within exp(-100)
FLIP = np.array([[-BIG, BIG], [BIG, -BIG]])  # output = 1 - input
COPY = np.array([[BIG, -BIG], [-BIG, BIG]])  # output = input


def run_ticks(network, ticks, trials=1, seed=0):
    nb = NetworkBatch(network, ScriptedEnv().observation_space, trials, 1, seed)
    for name, table in TABLES.items():
        if name in nb.units:
            nb.units[name].params["W"][:] = table
    nb.begin_episode(np.ones(trials, dtype=bool))
    outputs = []
    for _ in range(ticks):
        outputs.append(nb.tick(np.zeros(trials, dtype=np.int64), np.ones(trials, dtype=bool)))
        nb.observe(np.zeros(trials), np.zeros(trials, dtype=bool), np.ones(trials, dtype=bool))
    return {name: [int(o[name][0]) for o in outputs] for name in nb.units}


TABLES = {"src": FLIP, "copy": COPY, "sometimes": COPY, "half": FLIP, "driven": FLIP}


def test_previous_tick_edges_and_holding():
    net = Network([
        Coagent("src", ["prev:src"], Softmax(2), initial=(1.0, 0.0)),               # U_-1 = 0, then flips
        Coagent("copy", ["prev:src"], Softmax(2)),                                   # src one tick late
        Coagent("lazy", ["src"], Softmax(2), execution=Constant(0.0), initial=(0.0, 1.0)),  # never runs
        Coagent("sometimes", ["src"], Softmax(2), execution=Periodic(3)),           # runs at 0, 3, 6
    ], action="src")
    out = run_ticks(net, 7)
    assert out["src"] == [1, 0, 1, 0, 1, 0, 1]
    assert out["copy"] == [0, 1, 0, 1, 0, 1, 0]
    assert out["lazy"] == [1] * 7
    assert out["sometimes"] == [1, 1, 1, 0, 0, 0, 1]


def test_execution_draws_follow_the_coagents_own_stream():
    """With beta = 0.5 the coagent flips its own output exactly at the ticks its stream says."""
    net = Network([Coagent("half", ["prev:half"], Softmax(2), execution=Constant(0.5), initial=(1.0, 0.0))],
                  action="half")
    out = run_ticks(net, 40, seed=3)["half"]
    stream = Stream.from_seed(3, "coagent:half")
    executed = [stream.uniform(np.array([0]), np.array([t]), 0)[0] < 0.5 for t in range(40)]
    expected, value = [], 0
    for e in executed:
        value = 1 - value if e else value
        expected.append(value)
    assert 5 < sum(executed) < 35  # both cases occur
    assert out == expected


def test_driven_execution_runs_at_episode_start_and_when_driver_fires():
    net = Network([
        Coagent("src", ["prev:src"], Softmax(2), initial=(1.0, 0.0)),  # 1, 0, 1, 0, ...
        Coagent("driven", ["prev:driven"], Softmax(2), execution=Driven("src", when=1), initial=(1.0, 0.0)),
    ], action="src")
    out = run_ticks(net, 6)
    # executes (flips) at tick 0 (episode start, src=1), tick 2, tick 4; holds at 1, 3, 5
    assert out["driven"] == [1, 1, 0, 0, 1, 1]


def _recorded_engine(rewards, ticks_per_step, gamma, execution, trials=1, seed=0):
    rule = RecordingRule()
    net = Network([Coagent("c", ["obs"], Softmax(2), execution=execution, rule=rule)], action="c",
                  gamma=gamma, ticks_per_step=ticks_per_step)
    engine = InProcessEngine(net, SCRIPTED_ID, {"rewards": rewards}, trials=trials, seed=seed)
    result = engine.train(1)
    return rule.log, result, net


def test_k_atomic_ticks_per_step_use_gamma_to_the_one_over_k():
    log, result, net = _recorded_engine([1.0, 2.0, 3.0], ticks_per_step=2, gamma=0.81, execution=Constant(1.0))
    assert net.gamma_atomic == pytest.approx(0.9, abs=1e-15)
    assert result.ticks == 6  # 3 environment steps of 2 atomic ticks each
    closes = [(t, r, d) for _, ev, t, r, d in log if ev == "close"]
    # the environment steps at ticks 1, 3, 5 (t + 1 a multiple of 2): rewards land there, 0 elsewhere
    expected = [(1, 0.0, 0.9), (2, 1.0, 0.9), (3, 0.0, 0.9), (4, 2.0, 0.9), (5, 0.0, 0.9), (5, 3.0, 0.9)]
    assert [(t, r) for t, r, _ in closes] == [(t, r) for t, r, _ in expected]
    assert np.allclose([d for *_, d in closes], [d for *_, d in expected], rtol=1e-15)
    assert result.returns[0, 0, 0] == 6.0


@pytest.mark.parametrize("ticks_per_step", [1, 2])
def test_reward_stream_recursion_G_equals_Rbar_plus_discounted_G(ticks_per_step):
    rewards = [1.0, -2.0, 3.0, 0.5, 4.0, -1.0, 2.0, 7.0]
    gamma = 0.9
    log, result, net = _recorded_engine(rewards, ticks_per_step, gamma, Constant(0.5), trials=8, seed=11)
    g = net.gamma_atomic
    # rewards per atomic tick: R_t = rewards[step] at ticks where (t + 1) % k == 0, else 0
    R = np.zeros(len(rewards) * ticks_per_step)
    R[ticks_per_step - 1::ticks_per_step] = rewards
    G = np.array([sum(g ** (tau - t) * R[tau] for tau in range(t, len(R))) for t in range(len(R))] + [0.0])
    checked = 0
    for env in range(8):
        events = [e[1:] for e in log if e[0] == env]
        opens = [t for ev, t, *_ in events if ev == "open"]
        closes = [(r, d) for ev, t, r, d in events if ev == "close"]
        assert len(opens) == len(closes) >= 1 and events[-1][0] == "finish"
        nexts = opens[1:] + [len(R)]
        for t_j, t_next, (rbar, disc) in zip(opens, nexts, closes):
            assert rbar == pytest.approx(sum(g ** (tau - t_j) * R[tau] for tau in range(t_j, t_next)), rel=1e-12)
            assert disc == pytest.approx(g ** (t_next - t_j), rel=1e-12)
            assert G[t_j] == pytest.approx(rbar + disc * G[t_next], rel=1e-12)
            checked += 1
    assert checked > 8  # several executions per episode on average
