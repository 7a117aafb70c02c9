"""The compiled kernels against the numpy code they replace: same draws, same episodes, parameters
equal up to the last bits (libm's exp and pow are not numpy's), same errors at the same tick."""
import numpy as np
import pytest
from core_fakes import SCRIPTED_ID

pytest.importorskip("numba")

from distcoagent import InProcessEngine, kernels  # noqa: E402
from distcoagent.coagent import Coagent, NonFiniteError  # noqa: E402
from distcoagent.envs.gridworld import GridWorldBatch  # noqa: E402
from distcoagent.examples import paper_network  # noqa: E402
from distcoagent.execution import Constant, Periodic, Table  # noqa: E402
from distcoagent.features import Fourier  # noqa: E402
from distcoagent.network import Network, SharedCritic  # noqa: E402
from distcoagent.policies import Bernoulli, Gaussian, Softmax  # noqa: E402
from distcoagent.rng import Stream  # noqa: E402
from distcoagent.networks import option_critic as expected_option_critic  # noqa: E402
from distcoagent.rules import ActorCritic, ExpectedActorCritic, LearningRule, Reinforce  # noqa: E402
from ray_networks import option_critic  # noqa: E402

GRID = "distcoagent/GridWorld-v0"
OWN = ActorCritic(actor_step=0.2, critic_step=0.1, lam=0.7, critic="own")
SHARED = ActorCritic(actor_step=0.2, critic_step=0.1, lam=0.7, critic="shared")


def bernoulli_bits() -> Network:
    """Bernoulli bits with their own critics feeding a softmax mover; different execution kinds."""
    return Network([Coagent("a", ["obs"], Bernoulli(), Periodic(2, 1), OWN),
                    Coagent("b", ["obs", "prev:a"], Bernoulli(), Table(tuple(np.linspace(0.2, 0.9, 32))), OWN),
                    Coagent("act", ["a", "b"], Softmax(4), Constant(0.7), SHARED, initial=(0.1, 0.2, 0.3, 0.4))],
                   action="act", gamma=0.9, ticks_per_step=2, critic=SharedCritic(0.1, 0.5))


def frozen_and_numpy_only() -> Network:
    """A frozen coagent (kernel) beside coagents that have no kernel (numpy): they mix in one run."""
    return Network([Coagent("still", ["obs"], Softmax(2), init_scale=0.5),
                    Coagent("learner", ["obs", "still"], Softmax(4), rule=Reinforce(step=0.05, baseline=True))],
                   action="learner", gamma=0.9)


def linear() -> Network:
    """Features: the dot products are summed in feature order, numpy's by BLAS: a few more last bits."""
    features = Fourier(order=2, low=(-2.4, -3.0, -0.21, -3.5), high=(2.4, 3.0, 0.21, 3.5))
    rule = ActorCritic(actor_step=0.002, critic_step=0.004, lam=0.8, critic="own")
    return Network([Coagent("push", ["obs"], Softmax(2), rule=rule, features=features, init_scale=0.1)],
                   action="push", gamma=0.99)


CASES = {
    "paper": (paper_network, GRID, {"size": 5, "max_steps": 100}, dict(trials=5)),
    "paper, envs share a trial": (paper_network, GRID, {"size": 4}, dict(trials=3, envs_per_trial=3,
                                                                         micro_batches=2)),
    "bernoulli, own critics, two ticks per step": (bernoulli_bits, GRID, {"size": 4}, dict(trials=4)),
    "option-critic shape": (option_critic, GRID, {"size": 4}, dict(trials=4, envs_per_trial=2)),
    # the expected actor-critic (one-step Q critics, a bernoulli termination with a cost of stopping, a
    # driven policy over options): the sums over outputs are numpy's in another order, a few last bits
    "expected actor-critic (option-critic, Four Rooms)": (expected_option_critic, "distcoagent/FourRooms-v0",
                                                          {"max_steps": 200}, dict(trials=3, envs_per_trial=2)),
    "frozen beside numpy-only coagents": (frozen_and_numpy_only, GRID, {"size": 3}, dict(trials=3)),
    "linear features (gymnasium env)": (linear, "CartPole-v1", {}, dict(trials=2, envs_per_trial=2)),
}


def _train(case, episodes=12, seed=3):
    make, env_id, env_kwargs, options = CASES[case]
    engine = InProcessEngine(make(), env_id, env_kwargs, seed=seed, **options)
    try:
        return engine.train(episodes)
    finally:
        engine.close()


def assert_same_run(compiled, numpy_run, rtol=1e-9):
    """Same episodes and counters; parameters equal up to rounding."""
    assert np.array_equal(compiled.returns, numpy_run.returns, equal_nan=True)
    assert np.array_equal(compiled.lengths, numpy_run.lengths)
    assert compiled.counters == numpy_run.counters
    assert compiled.ticks == numpy_run.ticks
    for name in numpy_run.params:
        for k, expected in numpy_run.params[name].items():
            got = compiled.params[name][k]
            scale = max(1.0, float(np.abs(expected).max()))
            np.testing.assert_allclose(got, expected, rtol=rtol, atol=rtol * scale, err_msg=f"{name}.{k}")


@pytest.mark.parametrize("case", list(CASES))
def test_kernels_and_numpy_run_the_same_episodes(case):
    compiled = _train(case)
    with kernels.disabled():
        numpy_run = _train(case)
    assert_same_run(compiled, numpy_run, rtol=1e-7 if "linear" in case else 1e-9)
    # the runs above ran on the kernels they test (a unit without one runs numpy in both)
    engine = InProcessEngine(CASES[case][0](), CASES[case][1], CASES[case][2], trials=2)
    assert any(unit.kernel is not None for unit in engine.batches[0].units.values())
    engine.close()


def test_the_paper_network_runs_on_kernels_and_others_fall_back():
    engine = InProcessEngine(frozen_and_numpy_only(), GRID, {"size": 3}, trials=2)
    units = engine.batches[0].units
    assert units["still"].kernel is not None and units["learner"].kernel is None
    gaussian = Network([Coagent("g", ["obs"], Gaussian(1), rule=LearningRule())], action="g")
    unit = InProcessEngine(gaussian, "Pendulum-v1", {}, trials=1).batches[0].units["g"]
    assert unit.kernel is None
    paper = InProcessEngine(paper_network(), GRID, {"size": 5}, trials=2)
    assert all(u.kernel is not None for u in paper.batches[0].units.values())
    options = InProcessEngine(expected_option_critic(), "distcoagent/FourRooms-v0", {}, trials=2)
    assert all(u.kernel is not None for u in options.batches[0].units.values())
    traced = expected_option_critic(rules={"act": ExpectedActorCritic(1.0, lam=0.5)})  # dense traces: numpy
    units = InProcessEngine(traced, "distcoagent/FourRooms-v0", {}, trials=2).batches[0].units
    assert units["act"].kernel is None and units["option"].kernel is not None


def test_switching_between_kernels_and_numpy_mid_run_changes_no_episode():
    whole = _train("paper", episodes=10)
    make, env_id, env_kwargs, options = CASES["paper"]
    engine = InProcessEngine(make(), env_id, env_kwargs, seed=3, **options)
    engine.train(10, stop=lambda: engine.tick_count >= 60)
    with kernels.disabled():
        engine.train(10, stop=lambda: engine.tick_count >= 150)
    assert_same_run(engine.train(10), whole)


def test_draws_are_the_streams_bit_for_bit():
    from distcoagent.kernels.draws import uniform_rows

    stream = Stream.from_seed(11, "coagent:bit_a")
    env = np.arange(0, 5000, 7)
    tick = (env * 31) % 997
    for slot in (0, 1, 48, 63):
        out = np.empty(env.size)
        uniform_rows(np.uint64(stream.key), env, tick, slot, out)
        assert np.array_equal(out, stream.uniform(env, tick, slot))


def test_gridworld_step_is_the_numpy_step():
    rng = np.random.default_rng(0)
    batches = [GridWorldBatch(64, size=4, max_steps=7) for _ in range(2)]
    for _ in range(40):
        actions = rng.integers(0, 4, 64)
        stepped = []
        for batch, on in zip(batches, (True, False)):
            if on:
                stepped.append(batch.step(actions))
            else:
                with kernels.disabled():
                    stepped.append(batch.step(actions))
        for a, b in zip(*stepped):
            assert np.array_equal(a, b) and a.dtype == b.dtype
        assert np.array_equal(batches[0].cells, batches[1].cells)
        assert np.array_equal(batches[0].steps, batches[1].steps)
    with pytest.raises(ValueError, match="action: expected 0..3, got 4"):
        batches[0].step(np.full(64, 4))


def _error(run) -> str:
    with pytest.raises(NonFiniteError) as caught:
        run()
    return str(caught.value)


@pytest.mark.parametrize("network, kwargs", [
    (lambda: Network([Coagent("act", ["obs"], Softmax(2), rule=OWN)], action="act"),
     {"rewards": [1.0] * 5, "nan_at": 12}),  # a NaN reward
    (lambda: Network([Coagent("act", ["obs"], Softmax(2), rule=ActorCritic(actor_step=1e306, critic_step=1e306,
                                                                           critic="own"))], action="act"),
     {"rewards": [1e10] * 5}),  # diverging parameters
    (lambda: Network([Coagent("act", ["obs"], Softmax(2), rule=ExpectedActorCritic(1e306, initial_value=1e306))],
                     action="act"), {"rewards": [1.0] * 5}),  # an expected actor update overflows
    (lambda: Network([Coagent("act", ["obs"], Bernoulli(), rule=ExpectedActorCritic(critic_step=1e306))],
                     action="act"), {"rewards": [1e306] * 5}),  # its critic diverges
])
def test_non_finite_values_stop_the_run_with_the_same_message(network, kwargs):
    def run():
        InProcessEngine(network(), SCRIPTED_ID, kwargs, trials=2).train(20)

    message = _error(run)
    with kernels.disabled():
        assert _error(run) == message
    assert "at atomic tick" in message


def test_compile_all_reports_seconds_and_loads_from_the_cache():
    first = kernels.compile_all()
    assert first >= 0 and kernels.compile_all() < 5.0


@pytest.mark.slow  # compiles every kernel again, with bounds checks, into a cache of its own (about a minute)
def test_kernels_index_only_inside_their_arrays(tmp_path):
    """The kernels run unchecked: an index past an array's end writes into whatever lies there, and a
    crash may come tests later (an expected-actor-critic kernel once wrote a bernoulli's second weight
    one element past its row). Here the comparisons above run with numba's bounds checks on."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "NUMBA_BOUNDSCHECK": "1", "NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k",
                           "same_episodes or same_message or switching"], env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0 and " passed" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-2000:]


def test_loading_the_kernels_leaves_scipys_blas_to_whoever_needs_it():
    """numba's numpy support probes scipy's BLAS when a process first loads a kernel (importing
    scipy.linalg: about 15 MiB per process, each Ray actor and Figure 6 worker). The kernels load
    without it, numba still knows BLAS is there, and a function that needs it still compiles."""
    import subprocess
    import sys

    probe = """
import sys, numpy as np, numba
from distcoagent import kernels
assert kernels.available()
kernels.load("gridworld")
import numba.np.arraymath as arraymath
print("scipy.linalg" in sys.modules, arraymath._HAVE_BLAS)
@numba.njit
def inner(a, b):
    return np.dot(a, b) + np.correlate(a, b)[0]
print(inner(np.arange(3.0), np.ones(3)), "scipy.linalg" in sys.modules)
"""
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split() == ["False", "True", "6.0", "True"], run.stdout
