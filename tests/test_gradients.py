"""ACPGT and finite-difference estimates against the exact gradient, with variance-derived bounds.

Every check is ``fakes.consistent``: a Bonferroni bound on per-entry z-scores built from
the estimators' own standard errors (per-episode spread), at alpha = 1e-3 per check.
Seeds are fixed, so the outcome is deterministic; the wrong estimators show the
same check rejects a biased estimate at the same sample size.
"""
import json

import numpy as np
import pytest

from distcoagent.gradients import acpgt_estimate, exact, fd_estimate, gradcheck, j_estimate
from distcoagent.gradients.common import cosine_distance, flatten
from distcoagent.gradients.estimators import acpgt_samples, fd_samples, initial_params
from distcoagent.gradients.exact import NotExactError, exact_central_differences

from fakes import (GRID, GRID3, NO_DISCOUNT, VARIANTS, consistent, count_every_tick, reference_cases,
                   reference_gradient, reference_network)

EPISODES = 20_000      # ACPGT episodes per check
FD_PAIRS = 3_000       # finite-difference episode pairs per coordinate
FD_COORDINATES = 8     # coordinates checked per variant by default (all with -m slow)
STEP = 0.1


def setup(variant, seed=11):
    network = VARIANTS[variant]()
    params = initial_params(network, GRID, GRID3, seed=seed)
    return network, params, exact(network, GRID, GRID3, params)


@pytest.mark.parametrize("case", reference_cases(), ids=lambda c: c["name"])
def test_acpgt_converges_to_the_reference_gradient(case):
    network, params = reference_network(case)
    est = acpgt_estimate(network, GRID, GRID3, params, episodes=EPISODES, seed=1, keep_samples=True)
    ok, z, threshold = consistent(est.mean, est.stderr, reference_gradient(case), samples=est.samples)
    assert ok, f"max |z| {z:.2f} > {threshold:.2f}"


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_acpgt_agrees_with_the_exact_gradient(variant):
    network, params, truth = setup(variant)
    est = acpgt_estimate(network, GRID, GRID3, params, episodes=EPISODES, seed=2, keep_samples=True)
    ok, z, threshold = consistent(est.mean, est.stderr, truth.gradient, samples=est.samples)
    assert ok, f"{variant}: max |z| {z:.2f} > {threshold:.2f}"
    assert cosine_distance(est.mean, truth.gradient) < 0.1


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_monte_carlo_J_agrees_with_exact_J(variant):
    """The engine and the folded chain implement the same semantics (SPEC §3a)."""
    network, params, truth = setup(variant)
    mean, stderr = j_estimate(network, GRID, GRID3, params, episodes=EPISODES, seed=3)
    ok, z, threshold = consistent({"J": {"J": np.array([mean])}}, {"J": {"J": np.array([stderr])}},
                                  {"J": {"J": np.array([truth.J])}})
    assert ok, f"{variant}: J {mean:.4f} +- {stderr:.4f} vs exact {truth.J:.4f}"


def _fd_check(variant, coordinates):
    network, params, _ = setup(variant)
    x = fd_samples(network, GRID, GRID3, params, FD_PAIRS, 1, STEP, seed=4, coordinates=coordinates)
    # the estimator's expectation at step h: central differences of exact J at h
    expected = flatten(exact_central_differences(network, GRID, GRID3, params, step=STEP))[coordinates]
    mean, stderr = x.mean(axis=0), x.std(axis=0, ddof=1) / np.sqrt(x.shape[0])
    return consistent({"g": {"g": mean}}, {"g": {"g": stderr}}, {"g": {"g": expected}}, samples=x)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_finite_differences_agree_with_exact_J(variant):
    n = flatten(initial_params(VARIANTS[variant](), GRID, GRID3)).size
    coordinates = np.random.default_rng(5).choice(n, FD_COORDINATES, replace=False)
    ok, z, threshold = _fd_check(variant, coordinates)
    assert ok, f"{variant}: max |z| {z:.2f} > {threshold:.2f}"


@pytest.mark.slow
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_finite_differences_agree_with_exact_J_every_coordinate(variant):
    n = flatten(initial_params(VARIANTS[variant](), GRID, GRID3)).size
    ok, z, threshold = _fd_check(variant, np.arange(n))
    assert ok, f"{variant}: max |z| {z:.2f} > {threshold:.2f}"


def test_fd_estimate_agrees_with_the_exact_gradient():
    """The whole FD estimator, every coordinate: consistent with its exact expectation (central
    differences of exact J at the same h), which is within O(h^2) of the exact gradient."""
    network, params, truth = setup("async_paper")
    est = fd_estimate(network, GRID, GRID3, params, episodes=1000, step=STEP, seed=6, keep_samples=True)
    expected = exact_central_differences(network, GRID, GRID3, params, step=STEP)
    assert np.abs(flatten(expected) - flatten(truth.gradient)).max() < STEP ** 2
    ok, z, threshold = consistent(est.mean, est.stderr, expected, samples=est.samples)
    assert ok, f"max |z| {z:.2f} > {threshold:.2f}"
    assert cosine_distance(est.mean, truth.gradient) < 0.1


@pytest.mark.parametrize("wrong", ["drops gamma^t", "counts non-executed ticks"])
def test_the_check_rejects_a_wrong_estimator(wrong):
    network, params, truth = setup("async_paper")
    kwargs = {"recorder": NO_DISCOUNT} if wrong == "drops gamma^t" else {"instrument": count_every_tick}
    est = acpgt_estimate(network, GRID, GRID3, params, episodes=EPISODES, seed=2, keep_samples=True, **kwargs)
    ok, z, threshold = consistent(est.mean, est.stderr, truth.gradient, samples=est.samples)
    assert not ok, f"{wrong}: max |z| {z:.2f} <= {threshold:.2f} -- the test has no power"


def test_counting_every_tick_is_harmless_when_every_coagent_always_executes():
    """Sanity check of the wrong estimator itself: with beta = 1 it is the right one."""
    network, params, _ = setup("synchronous")
    right = acpgt_estimate(network, GRID, GRID3, params, episodes=500, seed=7)
    wrong = acpgt_estimate(network, GRID, GRID3, params, episodes=500, seed=7, instrument=count_every_tick)
    np.testing.assert_allclose(flatten(right.mean), flatten(wrong.mean), atol=1e-12)


def test_estimates_are_deterministic_and_do_not_depend_on_batching():
    network, params, _ = setup("recurrent")
    whole = acpgt_samples(network, GRID, GRID3, [params], envs=40, per_env=2, seed=8)[0]
    first = acpgt_samples(network, GRID, GRID3, [params], envs=15, per_env=2, seed=8)[0]
    rest = acpgt_samples(network, GRID, GRID3, [params], envs=25, per_env=2, seed=8, env_offset=15)[0]
    np.testing.assert_array_equal(whole, np.concatenate([first, rest]))
    again = acpgt_samples(network, GRID, GRID3, [params], envs=40, per_env=2, seed=8)[0]
    np.testing.assert_array_equal(whole, again)


def test_gradcheck_report_is_json_and_names_each_method():
    network, params, truth = setup("async_paper")
    report = gradcheck(network, GRID, GRID3, episodes=300, fd_episodes=50, exact=True, seed=0, params=params)
    data = json.loads(json.dumps(report.to_dict()))
    assert set(data["gradients"]) == {"acpgt", "fd", "exact"}
    assert np.asarray(data["gradients"]["exact"]["c0"]["W"]).shape == (9, 2)
    np.testing.assert_allclose(report.gradients["exact"]["c2"]["W"], truth.gradient["c2"]["W"])
    assert set(data["cosine_distance"]) == {"acpgt_vs_fd", "acpgt_vs_exact", "fd_vs_exact"}
    assert "c2" in report.table() and "cosine distance" in report.table()


def test_gradcheck_exact_fails_fast_on_a_non_tabular_network():
    from distcoagent.coagent import Coagent
    from distcoagent.network import Network
    from distcoagent.policies import Gaussian

    network = Network([Coagent("steer", ["obs"], Gaussian(1))], action="steer", gamma=0.9)
    with pytest.raises(NotExactError, match="steer.*continuous"):
        gradcheck(network, "MountainCarContinuous-v0", exact=True, episodes=10)


@pytest.mark.parametrize("env_id, env_kwargs, n, features", [
    ("distcoagent/FourRooms-v0", {}, 4, None), ("CartPole-v1", {}, 2, "raw"), ("FrozenLake-v1", {}, 4, None)])
def test_finite_difference_pairs_share_the_environments_randomness(env_id, env_kwargs, n, features):
    """Common random numbers: with h so small that both runs of a pair act alike, every pair's returns are
    equal, on stochastic environments too (starts, slips, noise), every episode of an environment."""
    from distcoagent import Coagent, Network
    from distcoagent.features import Raw
    from distcoagent.policies import Softmax

    net = Network([Coagent("act", ["obs"], Softmax(n), features=Raw() if features else None)], action="act",
                  gamma=0.95)
    params = initial_params(net, env_id, env_kwargs, 0)
    same = fd_samples(net, env_id, env_kwargs, params, envs=30, per_env=2, step=1e-9, coordinates=np.arange(1))
    assert np.count_nonzero(same) == 0
    moved = fd_samples(net, env_id, env_kwargs, params, envs=30, per_env=2, step=0.5, coordinates=np.arange(1))
    assert np.count_nonzero(moved) > 0 or env_id == "FrozenLake-v1"  # they differ once the policies do
                                                                       # (FrozenLake's reward is too sparse)


def test_keyed_environments_start_each_episode_alike_whatever_came_before():
    """Two rows with one episode key, acting differently: every episode starts in the same state (the next
    episode's start is keyed by the episode, not by how long the last one took)."""
    from distcoagent.envs import make_batch
    from distcoagent.tick import EpisodeKeys

    for env_id, options in (("distcoagent/FourRooms-v0", {"max_steps": 9}), ("CartPole-v1", {})):
        batch = make_batch(env_id, 3, seed=5, episode_keys=EpisodeKeys(np.array([7, 7, 8]), per_env=4), **options)
        obs, starts = batch.reset(), {b: [] for b in range(3)}
        for b in range(3):
            starts[b].append(np.asarray(obs[b]).tolist())
        for t in range(400):
            actions = np.array([0, t % 2, 1])
            obs, _, terminated, truncated = batch.step(actions)
            for b in np.flatnonzero(terminated | truncated):
                starts[b].append(np.asarray(obs[b]).tolist())
        episodes = min(len(starts[0]), len(starts[1]))
        assert episodes >= 3, (env_id, starts)
        assert starts[0][:episodes] == starts[1][:episodes], env_id
        assert starts[0][:episodes] != starts[2][:episodes], env_id  # another key, other starts
        batch.close()


def test_gradcheck_takes_parameters_as_train_returns_them():
    """train's params (and params.msgpack) carry a trial axis and the shared critic's weights: a trial is
    chosen with trial=, the critic left out; several trials without trial= are refused, naming it."""
    from distcoagent import train
    from distcoagent.examples import paper_network

    kwargs = {"size": 3, "max_steps": 0}
    result = train(paper_network(), GRID, env_kwargs=kwargs, trials=3, episodes=3, seed=1)
    assert "critic" in result.params
    chosen = gradcheck(paper_network(), GRID, kwargs, episodes=50, fd=False, params=result.params, trial=2)
    one = {name: {k: v[2] for k, v in group.items()} for name, group in result.params.items() if name != "critic"}
    alone = gradcheck(paper_network(), GRID, kwargs, episodes=50, fd=False, params=one)
    for name in one:
        np.testing.assert_array_equal(chosen.params[name]["W"], one[name]["W"])
        np.testing.assert_array_equal(chosen.gradients["acpgt"][name]["W"], alone.gradients["acpgt"][name]["W"])
    with pytest.raises(ValueError, match=r"3 trials' parameters .*pass trial= to choose one"):
        gradcheck(paper_network(), GRID, kwargs, episodes=50, fd=False, params=result.params)
    with pytest.raises(ValueError, match=r"trial: expected 0\.\.2"):
        gradcheck(paper_network(), GRID, kwargs, episodes=50, fd=False, params=result.params, trial=5)
    with pytest.raises(ValueError, match=r"trial: chooses among params="):
        gradcheck(paper_network(), GRID, kwargs, episodes=50, fd=False, train_episodes=3, trial=1)


def test_parameters_of_rules_that_learn_more_than_a_policy_are_taken_as_train_returns_them():
    """An own critic (or a baseline) comes with train's params, under the coagent: gradcheck and evaluate
    take them as they are and use the policy's alone."""
    from pathlib import Path

    from distcoagent import evaluate, load_spec, train

    spec = load_spec(Path(__file__).resolve().parents[1] / "examples" / "cartpole_linear.toml",
                     {"trials": 2, "episodes": 3})
    result = train(spec)
    assert set(result.params["push"]) == {"W", "critic"}
    report = gradcheck(spec, episodes=10, fd=False, params=result.params, trial=1)
    np.testing.assert_array_equal(report.params["push"]["W"], result.params["push"]["W"][1])
    again = evaluate(spec.network, spec.env_id, result.params, env_kwargs=spec.env_kwargs, episodes=2)
    np.testing.assert_array_equal(again.params["push"]["W"], result.params["push"]["W"])  # frozen


def test_the_report_says_whether_the_estimates_agree_within_their_noise():
    """Mean z^2 near 1 for estimates of the same gradient; far above it for a wrong one (here, the exact
    gradient scaled by 3, with the ACPGT's own standard errors)."""
    network, params, _ = setup("recurrent")
    report = gradcheck(network, GRID, GRID3, episodes=3000, fd_episodes=600, exact=True, params=params, seed=3)
    agreement = report.mean_square_z
    for pair in ("acpgt_vs_exact", "acpgt_vs_fd"):
        n = agreement[pair]["coordinates"]
        assert n > 5 and agreement[pair]["noiseless_differ"] == 0
        assert abs(agreement[pair]["mean_z2"] - 1) < 6 * np.sqrt(2 / n) + 0.5, (pair, agreement[pair])
    fd_error = report.stderr["fd"][next(iter(report.stderr["fd"]))]["W"]
    fd_error.flat[np.argmax(fd_error)] = 1e-11  # one nonzero sample in a thousand: no noise to speak of
    lone = report.mean_square_z["fd_vs_exact"]
    assert lone["mean_z2"] < 10 and lone["noiseless_differ"] >= 1, lone
    report.gradients["exact"] = {n: {k: 3 * v for k, v in g.items()} for n, g in report.gradients["exact"].items()}
    assert report.mean_square_z["acpgt_vs_exact"]["mean_z2"] > 10
    assert "agreement: mean z^2" in report.table() and "mean_square_z" in report.to_dict()
    report.stderr["acpgt"] = {n: {k: np.full_like(v, np.inf) for k, v in g.items()}  # one sample: no error known
                              for n, g in report.stderr["acpgt"].items()}
    unknown = report.mean_square_z["acpgt_vs_exact"]
    assert unknown["mean_z2"] is None and unknown["coordinates"] == 0 and unknown["noiseless_differ"] == 0
    json.dumps(report.mean_square_z, allow_nan=False)  # JSON: no NaN where no mean exists
