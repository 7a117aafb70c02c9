"""Figure 5 beyond the paper: the compiled estimators, the time-limited exact gradient, the study.

- The compiled estimators (``gradients.compiled``) give the engine's numbers: finite
  differences bit for bit (branching only shares work), ACPGT to rounding.
- ``gradients.time_limit``: with a long limit it is the reference gradient; with a short
  one it is what the estimators estimate and the unlimited gradient is not.
- On the paper's setting the ACPGT's distance to the exact gradient falls as its own
  variance says it must, and the same check rejects a wrong target.
"""
import dataclasses
import time

import numpy as np
import pytest

from distcoagent import kernels, reproduce
from distcoagent.gradients.common import cosine_distance, flatten
from distcoagent.gradients.compiled import Compiled
from distcoagent.gradients.estimators import acpgt_samples, fd_samples, initial_params, j_estimate, trained_params
from distcoagent.gradients.exact import exact
from distcoagent.gradients.time_limit import exact_time_limited

from fakes import GRID, VARIANTS, consistent, paper_like, reference_cases, reference_gradient, reference_network

pytestmark = pytest.mark.skipif(not kernels.available(), reason="numba is not installed")

SHORT = {"size": 3, "max_steps": 6}  # a time limit that changes the gradient a lot


def _paper(trials=2, seed=0):
    network, env_id, env_kwargs = reproduce.paper_setup()
    return network, env_id, env_kwargs, trained_params(network, env_id, env_kwargs, 5, trials, seed)


def _per_episode(sums):
    """Per-episode samples from running sums on the grid 1..N."""
    return np.diff(np.concatenate([np.zeros_like(sums[:, :1]), sums], axis=1), axis=1)


@pytest.mark.parametrize("setting", ["paper", "recurrent_short_limit"])
def test_compiled_estimators_are_the_engines(setting):
    if setting == "paper":
        network, env_id, env_kwargs, params = _paper()
    else:
        network, env_id, env_kwargs = VARIANTS["recurrent"](), GRID, SHORT
        params = [initial_params(network, GRID, SHORT, seed=s) for s in (3, 4)]
    plan = Compiled.of(network, env_id, env_kwargs)
    assert plan is not None
    N, h = 60, 0.1
    grid = np.arange(1, N + 1)
    bases = np.arange(len(params)) * N
    acpgt, _ = plan.acpgt_sums(params, grid, 1, bases)
    engine = acpgt_samples(network, env_id, env_kwargs, params, N, 1, 1, env_offset=0)
    np.testing.assert_allclose(_per_episode(acpgt), engine, rtol=1e-12, atol=1e-12)
    assert np.abs(engine).max() > 0.1
    fd, (base_ticks, branch_ticks) = plan.fd_sums(params, grid, h, 2, bases)
    for p, theta in enumerate(params):
        engine = fd_samples(network, env_id, env_kwargs, theta, N, 1, h, 2, env_offset=int(bases[p]))
        np.testing.assert_array_equal(fd[p], np.cumsum(engine, axis=0))  # the same returns, bit for bit
    assert np.count_nonzero(fd[:, -1]) > 0 and 0 < branch_ticks < 2 * plan.n_flat * base_ticks


def test_kinds_the_kernels_do_not_run_fall_back_to_the_engine():
    network, env_id, env_kwargs = reproduce.paper_setup()
    assert Compiled.of(network, env_id, {**env_kwargs, "max_steps": 0}) is None  # no time limit
    assert Compiled.of(VARIANTS["periodic"](), GRID, SHORT) is None
    assert Compiled.of(VARIANTS["two_ticks_per_step"](), GRID, SHORT) is None
    with kernels.disabled():
        assert Compiled.of(network, env_id, env_kwargs) is None


def test_the_engine_path_draws_the_same_curves():
    network, env_id, env_kwargs = reproduce.paper_setup()
    args = (network, env_id, env_kwargs, 2, 40, 3)
    grid, compiled, _ = reproduce.fig5_curves(*args, workers=1)
    with kernels.disabled():
        grid2, engine, _ = reproduce.fig5_curves(*args, workers=1)
    np.testing.assert_array_equal(grid, grid2)
    assert set(compiled) == set(engine) == set(reproduce.LINES)
    for name in compiled:
        np.testing.assert_allclose(compiled[name], engine[name], rtol=0, atol=1e-9)


def test_curves_do_not_depend_on_the_number_of_workers():
    network, env_id, env_kwargs = reproduce.paper_setup()
    _, one, _ = reproduce.fig5_curves(network, env_id, env_kwargs, 3, 30, seed=2, workers=1)
    _, two, _ = reproduce.fig5_curves(network, env_id, env_kwargs, 3, 30, seed=2, workers=2)
    for name in one:
        np.testing.assert_array_equal(one[name], two[name])


@pytest.mark.parametrize("case", reference_cases(), ids=lambda c: c["name"])
def test_time_limited_exact_with_a_long_limit_is_the_reference(case):
    network, params = reference_network(case)
    result = exact_time_limited(network, GRID, {"size": 3, "max_steps": 600}, params)
    assert abs(result.J - case["J"]) < 1e-8
    reference = reference_gradient(case)
    for name in reference:
        np.testing.assert_allclose(result.gradient[name]["W"], reference[name]["W"], rtol=0, atol=1e-6)


def test_the_time_limited_gradient_is_what_the_estimators_estimate():
    """With 6 steps at most, ACPGT and Monte Carlo J agree with the time-limited exact values,
    and the same variance-derived check rejects the unlimited gradient (it has power)."""
    network = paper_like()
    params = initial_params(network, GRID, SHORT, seed=11)
    limited = exact_time_limited(network, GRID, SHORT, params)
    unlimited = exact(network, GRID, {"size": 3, "max_steps": None}, params)
    N = 40_000
    sums, _ = Compiled.of(network, GRID, SHORT).acpgt_sums([params], np.arange(1, N + 1), 5, [0])
    x = _per_episode(sums)[0]
    mean, stderr = x.mean(axis=0), x.std(axis=0, ddof=1) / np.sqrt(N)
    as_grad = lambda v: {"g": {"g": v}}  # noqa: E731
    ok, z, threshold = consistent(as_grad(mean), as_grad(stderr), as_grad(flatten(limited.gradient)), samples=x)
    assert ok, f"time-limited: max |z| {z:.2f} > {threshold:.2f}"
    ok, z, threshold = consistent(as_grad(mean), as_grad(stderr), as_grad(flatten(unlimited.gradient)), samples=x)
    assert not ok, f"unlimited: max |z| {z:.2f} <= {threshold:.2f} -- the check has no power here"
    J, J_err = j_estimate(network, GRID, SHORT, params, episodes=20_000, seed=6)
    assert abs(J - limited.J) < 4 * J_err < abs(J - unlimited.J)


def test_acpgt_distance_to_exact_falls_as_its_variance_says():
    """Paper setting, trial 0 after 5 training episodes.  The mean of n i.i.d. per-episode
    estimates with covariance Sigma has E||mean - g||^2 = tr(Sigma) / n: the squared error
    stays under 3 tr(Sigma) / n (116 entries: it concentrates near its mean), so the cosine
    distance falls about as 1/n, to a few thousandths.  A wrong target (the gradient for
    gamma = 0.9) breaks the same bound."""
    network, env_id, env_kwargs, params = _paper(trials=1)
    N = 20_000
    sums, _ = Compiled.of(network, env_id, env_kwargs).acpgt_sums(params, np.arange(1, N + 1), 1, [0])
    x = _per_episode(sums)[0]
    trace = x.var(axis=0, ddof=1).sum()
    g = flatten(exact_time_limited(network, env_id, env_kwargs, params[0]).gradient)
    counts = np.array([100, 1_000, 10_000, N])
    means = np.cumsum(x, axis=0)[counts - 1] / counts[:, None]
    squared_error = ((means - g) ** 2).sum(axis=1)
    assert np.all(squared_error <= 3 * trace / counts), (squared_error, trace / counts)
    distance = [cosine_distance({"g": {"g": m}}, {"g": {"g": g}}) for m in means]
    assert distance[-1] < distance[0] / 20 and distance[-1] < 0.01, distance
    wrong = flatten(exact_time_limited(dataclasses.replace(network, gamma=0.9), env_id, env_kwargs,
                                       params[0]).gradient)
    assert ((means[-1] - wrong) ** 2).sum() > 3 * trace / N


@pytest.mark.slow
def test_full_study_fits_in_ten_minutes(tmp_path):
    start = time.perf_counter()
    summary = reproduce.fig5(trials=reproduce.FULL_TRIALS, episodes=reproduce.FULL_EPISODES, out=tmp_path)
    seconds = time.perf_counter() - start
    assert seconds < 600, f"{seconds:.0f} s"
    lines = summary["lines"]
    assert set(lines) == set(reproduce.LINES)
    for name, line in lines.items():
        assert line["end"]["episodes"] == 30_000
        assert line["end"]["mean"] < 0.1 and line["end"]["median"] < 0.02, (name, line["end"])
        assert -1.3 < line["median_slope_last_decade"] < -0.7, (name, line["median_slope_last_decade"])
        assert line["mean"][-1] < line["mean"][0] / 10
