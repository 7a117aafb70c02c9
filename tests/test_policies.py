"""Policies: numerically stable, correct scores, samples with the right distribution."""
import numpy as np
import pytest

from distcoagent.features import FeatureState, Fourier, InputSpace, TabularState, TileCoding
from distcoagent.policies import Bernoulli, Gaussian, Softmax, sigmoid, softmax
from distcoagent.rng import Stream


def test_softmax_and_sigmoid_are_finite_for_huge_logits():
    p = softmax(np.array([[1e308, 0.0, -1e308], [800.0, 799.0, -5.0]]))
    assert np.all(np.isfinite(p)) and np.allclose(p.sum(axis=1), 1.0)
    assert p[0, 0] == 1.0 and p[1, 0] == pytest.approx(1 / (1 + np.exp(-1)))
    s = sigmoid(np.array([-1000.0, 0.0, 1000.0]))
    assert np.all(np.isfinite(s)) and s.tolist() == [0.0, 0.5, 1.0]


@pytest.mark.parametrize("policy", [Softmax(3), Bernoulli()])
def test_score_is_the_gradient_of_log_probability(policy):
    rng = np.random.default_rng(0)
    params = {"W": rng.normal(size=(1, 4, policy.init_params(4, 1)["W"].shape[-1]))}
    x = TabularState(np.array([2]), 4)
    u = np.array([1])
    g = policy.score(policy.forward(params, x), u)["W"]
    grad = x.outer(g)[0]
    h = 1e-6
    numeric = np.zeros_like(params["W"][0])
    for idx in np.ndindex(*numeric.shape):
        for sign in (1, -1):
            p = {"W": params["W"].copy()}
            p["W"][(0,) + idx] += sign * h
            numeric[idx] += sign * np.log(policy.probabilities(policy.forward(p, x))[0, u[0]]) / (2 * h)
    assert np.allclose(grad, numeric, atol=1e-6)


def test_gaussian_samples_and_score():
    pol = Gaussian(dim=2, init_log_std=np.log(0.5))
    params = pol.init_params(3, 1)
    params["W"][0, 2] = [1.0, -2.0]  # bias feature
    n = 20000
    x = FeatureState(np.tile([0.0, 0.0, 1.0], (n, 1)))
    stats = pol.forward(params, x)
    u = pol.sample(stats, Stream.from_seed(0, "g"), np.arange(n), np.zeros(n, dtype=np.int64))
    assert np.allclose(u.mean(axis=0), [1.0, -2.0], atol=4 * 0.5 / np.sqrt(n))
    assert np.allclose(u.std(axis=0), 0.5, atol=0.02)
    score = pol.score(stats, u)
    assert np.allclose(score["log_std"].mean(axis=0), 0.0, atol=4 * np.sqrt(2 / n))  # E[z^2 - 1] = 0


def test_a_gaussian_keeps_its_std_floor_in_its_configuration():
    """The floor goes into the configuration a run records (a run resumed from it keeps it); the default is
    left out, so runs recorded before keep their hashes."""
    from distcoagent.policies import POLICIES
    from distcoagent.spec import _kind_object

    pol = Gaussian(dim=2, min_log_std=-1.0)
    assert _kind_object(pol.to_config(), POLICIES, "policy") == pol
    assert "min_log_std" not in Gaussian(dim=2).to_config()


def test_softmax_sampling_frequencies_match_probabilities():
    pol = Softmax(3)
    params = {"W": np.array([[[0.0, 1.0, 2.0]]])}
    n = 30000
    stats = pol.forward(params, TabularState(np.zeros(n, dtype=np.int64), 1))
    u = pol.sample(stats, Stream.from_seed(1, "s"), np.arange(n), np.zeros(n, dtype=np.int64))
    freq = np.bincount(u, minlength=3) / n
    p = stats[0]
    assert np.all(np.abs(freq - p) < 4 * np.sqrt(p * (1 - p) / n))


def test_features_shapes_and_bounds():
    space = InputSpace(dim=2, low=np.array([0.0, 0.0]), high=np.array([1.0, 2.0]))
    obs = np.array([[0.5, 1.0], [1.0, 2.0]])
    assert Fourier(2)(obs, space).shape == (2, 9)
    tiles = TileCoding(tilings=4, tiles=3)(obs, space)
    assert tiles.shape == (2, 4 * 16) and np.all(tiles.sum(axis=1) == 4)
    with pytest.raises(ValueError, match="finite observation bounds"):
        Fourier(2)(obs, InputSpace(dim=2, low=np.array([-np.inf] * 2), high=np.array([np.inf] * 2)))


def test_learning_rules_compare_by_kind_and_settings():
    """The frozen rule (every Coagent's default) equals itself and reads as what it is; a rule of a user's
    own, with settings, equals another only with the same ones."""
    from distcoagent.rules import LearningRule

    class Scaled(LearningRule):
        def __init__(self, step):
            self.step = step

    assert LearningRule() == LearningRule() and repr(LearningRule()) == "LearningRule()"
    assert Scaled(0.1) == Scaled(0.1) and Scaled(0.1) != Scaled(0.5) and Scaled(0.1) != LearningRule()
    assert repr(Scaled(0.1)) == "Scaled(step=0.1)" and hash(Scaled(0.1)) == hash(Scaled(0.1))
