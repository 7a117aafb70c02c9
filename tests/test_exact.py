"""The exact evaluator: reference values, agreement with central differences, clear errors."""
import numpy as np
import pytest

from distcoagent.coagent import Coagent
from distcoagent.gradients.common import flatten
from distcoagent.gradients.estimators import initial_params
from distcoagent.gradients.exact import NotExactError, exact, exact_central_differences, transition_model
from distcoagent.network import Network
from distcoagent.policies import Gaussian, Softmax

from fakes import GRID, GRID3, VARIANTS, reference_cases, reference_gradient, reference_network

CASES = reference_cases()


def test_gridworld_model_is_the_reference_mdp():
    (P, R, d0, terminal), _ = transition_model(GRID, GRID3)
    mdp = CASES[0]["mdp"]
    np.testing.assert_array_equal(P, mdp["P"])
    np.testing.assert_array_equal(R, mdp["R"])
    np.testing.assert_array_equal(d0, mdp["d0"])
    np.testing.assert_array_equal(terminal, mdp["terminal"])


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_exact_reproduces_reference(case):
    network, params = reference_network(case)
    result = exact(network, GRID, GRID3, params)
    assert abs(result.J - case["J"]) < 1e-8
    reference = reference_gradient(case)
    for name in reference:
        np.testing.assert_allclose(result.gradient[name]["W"], reference[name]["W"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_exact_gradient_matches_central_differences_of_exact_J(variant):
    network = VARIANTS[variant]()
    params = initial_params(network, GRID, GRID3, seed=11)
    gradient = exact(network, GRID, GRID3, params).gradient
    numeric = exact_central_differences(network, GRID, GRID3, params, step=1e-5)
    # central-difference error: h^2 J'''/6 ~ 1e-10 plus round-off eps |J| / h ~ 1e-10
    np.testing.assert_allclose(flatten(gradient), flatten(numeric), rtol=0, atol=1e-6)
    assert np.abs(flatten(gradient)).max() > 1e-3  # not trivially zero


def test_a_wrong_gradient_is_caught_by_central_differences():
    """The check above can fail: a 0.1% error in the gradient exceeds its tolerance."""
    network = VARIANTS["async_paper"]()
    params = initial_params(network, GRID, GRID3, seed=11)
    numeric = flatten(exact_central_differences(network, GRID, GRID3, params, step=1e-5))
    scaled = flatten(exact(network, GRID, GRID3, params).gradient) * 0.999  # a 0.1% error
    assert np.abs(scaled - numeric).max() > 1e-6


def test_the_start_phase_and_periods_fold_into_the_chain():
    r = exact(VARIANTS["option_critic"](), GRID, GRID3)
    assert np.isfinite(r.J) and r.n_states > 0
    r = exact(VARIANTS["periodic"](), GRID, GRID3)
    assert np.isfinite(r.J)


def test_continuous_policy_is_rejected_with_its_name():
    network = Network([Coagent("steer", ["obs"], Gaussian(1))], action="steer", gamma=0.9)
    with pytest.raises(NotExactError, match="steer"):
        exact(network, "MountainCarContinuous-v0")


def test_env_without_transition_model_is_rejected():
    network = Network([Coagent("a", ["obs"], Softmax(4))], action="a", gamma=0.9)
    with pytest.raises(NotExactError, match="transition model"):
        exact(network, "FrozenLake-v1", {"is_slippery": False})


def test_params_are_checked():
    network = VARIANTS["async_paper"]()
    with pytest.raises(ValueError, match="c0"):
        exact(network, GRID, GRID3, {"c0": np.zeros((3, 2))})
    with pytest.raises(ValueError, match="unknown coagent"):
        exact(network, GRID, GRID3, {"nope": np.zeros((9, 2))})
