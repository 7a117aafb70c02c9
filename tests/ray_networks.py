"""Networks and helpers shared by the Ray engine tests (and the benchmark's sanity check)."""
from __future__ import annotations

import socket

import numpy as np

from distcoagent.coagent import Coagent
from distcoagent.engine import InProcessEngine
from distcoagent.execution import Constant, Driven
from distcoagent.features import Fourier
from distcoagent.network import Network, SharedCritic
from distcoagent.policies import Softmax
from distcoagent.rules import ActorCritic

GRID = "distcoagent/GridWorld-v0"
RULE = ActorCritic(actor_step=0.2, critic_step=0.1, lam=0.7, critic="shared")


def paper() -> Network:
    """SPEC §4: two Softmax(2) coagents on the state, a Softmax(4) on the two bits, beta = 0.5."""
    beta = Constant(0.5)
    return Network([Coagent("bit_a", ["obs"], Softmax(2), beta, RULE),
                    Coagent("bit_b", ["obs"], Softmax(2), beta, RULE),
                    Coagent("act", ["bit_a", "bit_b"], Softmax(4), beta, RULE)],
                   action="act", gamma=0.95, critic=SharedCritic(0.1, 0.7))


def recurrent() -> Network:
    """Previous-tick inputs: from a later coagent (prev:act), from itself, from an earlier one."""
    beta = Constant(0.5)
    return Network([Coagent("mem", ["obs", "prev:act"], Softmax(2), beta, RULE),
                    Coagent("gate", ["mem", "prev:gate"], Softmax(2), beta, RULE),
                    Coagent("act", ["obs", "gate", "prev:mem"], Softmax(4), beta, RULE)],
                   action="act", gamma=0.95, ticks_per_step=2, critic=SharedCritic(0.1, 0.7))


def option_critic() -> Network:
    """SPEC §5: termination -> option (executes when termination says stop) -> intra-option action."""
    return Network([Coagent("termination", ["obs", "prev:option"], Softmax(2), Constant(1.0), RULE),
                    Coagent("option", ["obs"], Softmax(2), Driven("termination", when=1), RULE),
                    Coagent("act", ["obs", "option"], Softmax(4), Constant(1.0), RULE)],
                   action="act", gamma=0.95, critic=SharedCritic(0.1, 0.7))


def cartpole() -> Network:
    features = Fourier(order=2, low=(-2.4, -3.0, -0.21, -3.5), high=(2.4, 3.0, 0.21, 3.5))
    rule = ActorCritic(actor_step=0.001, critic_step=0.002, lam=0.8, critic="own")
    return Network([Coagent("push", ["obs"], Softmax(2), rule=rule, features=features)], action="push", gamma=0.99)


def in_process(network, env_id, env_kwargs, *, trials, envs_per_trial=1, seed=0, micro_batches=1, episodes=3):
    engine = InProcessEngine(network, env_id, env_kwargs, trials=trials, envs_per_trial=envs_per_trial,
                             seed=seed, micro_batches=micro_batches)
    try:
        return engine.train(episodes)
    finally:
        engine.close()


def assert_identical(a, b) -> None:
    """Bit-for-bit: returns, lengths, every parameter array, counters, ticks."""
    assert a.returns.shape == b.returns.shape
    assert np.array_equal(a.returns, b.returns, equal_nan=True), "returns differ"
    assert np.array_equal(a.lengths, b.lengths), "episode lengths differ"
    assert a.params.keys() == b.params.keys()
    for name in a.params:
        assert a.params[name].keys() == b.params[name].keys(), name
        for k in a.params[name]:
            assert np.array_equal(a.params[name][k], b.params[name][k]), f"parameter {name}.{k} differs"
    assert a.counters == b.counters
    assert a.ticks == b.ticks


def free_port() -> int:
    """A port of 127.0.0.1 that nothing listens on (free when this returns)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
