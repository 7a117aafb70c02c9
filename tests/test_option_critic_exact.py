"""Option-critic as coagents, exactly: Bacon et al.'s gradients, the ACPGT's, and the rules' expected updates.

On a tiny MDP (the 3x3 gridworld, no time limit, two options) with random tabular
parameters everything is computed exactly:

- ``gradients.option_critic.solve`` solves Bacon et al.'s equations (Q_Omega, Q_U, U,
  V_Omega, A_Omega) and their discounted occupancies, and evaluates their intra-option
  (Eq. 2) and termination (Eq. 3) gradients and the ACPGT gradient of the policy over
  options; the generic exact evaluator (``gradients.exact``: the whole network folded into
  a Markov chain) and central differences of its exact J must agree with them;
- each coagent's rule (``rules.ExpectedActorCritic``), given its exact critic, makes an
  update whose expectation under the coagent's execution occupancy must be step x the
  same gradient, to numerical precision;
- the sampled ACPGT estimate for the policy over options must agree with the exact
  gradient within variance-derived bounds.
Each check is shown to fail on a wrong input of the size of its tolerance or less.
"""
import dataclasses

import numpy as np
import pytest

from distcoagent.coagent import CoagentUnit
from distcoagent.features import TabularState
from distcoagent.gradients import acpgt_estimate, exact
from distcoagent.gradients import option_critic as bacon
from distcoagent.gradients.estimators import initial_params
from distcoagent.gradients.exact import exact_central_differences, transition_model
from distcoagent.networks import option_critic

from fakes import GRID, GRID3, NO_DISCOUNT, consistent

GAMMA, OPTIONS, STATES = 0.9, 2, 9
STEP = {"act": 0.7, "termination": 0.3, "option": 0.5}


def network(termination_at_start=False, xi=0.0, scale=0.8):
    net = option_critic(n_options=OPTIONS, gamma=GAMMA, intra_step=STEP["act"], termination_step=STEP["termination"],
                        option_step=STEP["option"], xi=xi, termination_at_start=termination_at_start)
    return dataclasses.replace(net, coagents=[dataclasses.replace(c, init_scale=scale) for c in net.coagents])


def solved(net, seed=3):
    params = initial_params(net, GRID, GRID3, seed=seed)
    (P, R, d0, terminal), _ = transition_model(GRID, GRID3)
    return params, bacon.solve(P, R, d0, terminal, GAMMA, *bacon.tables(params, STATES))


def blocks(b):
    return {"act": b.intra_gradient, "termination": b.termination_gradient, "option": b.option_gradient}


@pytest.mark.parametrize("at_start", [False, True], ids=["after_start", "every_tick"])
def test_bacon_gradients_are_the_exact_acpgt_gradient(at_start):
    """The whole network's exact dJ/dtheta, block by block, is Bacon et al.'s Eqs. (2), (3) and the
    policy-over-options gradient; J is sum_s d0(s) V_Omega(s).  Executing the termination at the
    first tick too (SPEC §5 literally) changes nothing: its output there is never read."""
    net = network(termination_at_start=at_start)
    params, b = solved(net)
    result = exact(net, GRID, GRID3, params)
    assert abs(result.J - b.J) < 1e-12
    for name, g in blocks(b).items():
        np.testing.assert_allclose(result.gradient[name]["W"], g, rtol=0, atol=1e-12, err_msg=name)
        assert np.abs(g).max() > 1e-2, name  # not trivially zero


def test_exact_gradient_equals_central_differences_of_exact_J():
    net = network()
    params, b = solved(net)
    numeric = exact_central_differences(net, GRID, GRID3, params, step=1e-5)
    for name, g in blocks(b).items():
        # central-difference error: h^2 J'''/6 ~ 1e-10, round-off eps |J| / h ~ 1e-10
        np.testing.assert_allclose(numeric[name]["W"], g, rtol=0, atol=1e-7, err_msg=name)
    wrong = b.termination_gradient * 1.001  # a 0.1% error is caught
    assert np.abs(wrong - numeric["termination"]["W"]).max() > 1e-7


def exact_critic(name, b):
    """Each coagent's exact action values over (local state, output): Q_U((s, w), a) for the
    intra-option policies; Q_Omega(s, w) (continue) and V_Omega(s) (stop) for the termination,
    at (s, previous option w); Q_Omega(s, w) for the policy over options."""
    if name == "act":
        return b.q_u.reshape(STATES * OPTIONS, -1)
    if name == "termination":
        return np.stack([b.q_omega, np.repeat(b.v_omega[:, None], OPTIONS, axis=1)], axis=-1).reshape(-1, 2)
    return b.q_omega


def occupancy(name, b):
    """Discounted occupancy of the coagent's executions by local state (tabular index order)."""
    return {"act": b.occupancy.ravel(), "termination": b.arrival.ravel(), "option": b.choice}[name]


def expected_update(net, name, params, critic, weights):
    """sum_x weights(x) * (the rule's update at an execution at x), run through the rule itself: one
    trial per local state, all with the same parameters and the same critic."""
    coagent = net.coagent(name)
    from distcoagent.envs import make_batch

    env = make_batch(GRID, 1, 0, **GRID3)
    spaces = net.input_spaces(env.observation_space, env.action_space)[name]
    n_local = int(np.prod([s.n for s in spaces]))
    unit = CoagentUnit(coagent, spaces, n_local, 1, net.gamma_atomic, seed=0)
    unit.params["W"][:] = params[name]["W"]
    unit.rule_state["q"][:] = critic
    x = TabularState(np.arange(n_local), n_local)
    stats = unit.policy.forward(unit.params, x)
    score = unit.policy.score(stats, np.zeros(n_local, dtype=np.int64))  # any output: the update is over all
    before = unit.params["W"].copy()
    unit.rule.open(unit, unit.rule_state, x, np.ones(n_local, dtype=bool), score, None)
    return np.einsum("x,xjk->jk", weights, unit.params["W"] - before)


@pytest.mark.parametrize("name", ["act", "termination", "option"])
def test_expected_update_with_exact_critic_is_step_times_the_gradient(name):
    """Intra-option: Bacon's Eq. (2) (with the baseline Q_Omega); termination: Eq. (3),
    -beta(1 - beta) A_Omega; policy over options: the ACPGT gradient."""
    net = network()
    params, b = solved(net)
    update = expected_update(net, name, params, exact_critic(name, b), occupancy(name, b))
    np.testing.assert_allclose(update, STEP[name] * blocks(b)[name], rtol=0, atol=1e-13)


def test_termination_regulariser_xi_adds_to_the_advantage():
    xi = 0.05
    net = network(xi=xi)
    params, b = solved(net)
    beta = bacon.tables(params, STATES)[1]
    update = expected_update(net, "termination", params, exact_critic("termination", b), b.arrival.ravel())
    want = -STEP["termination"] * b.arrival * beta * (1 - beta) * (b.advantage + xi)
    np.testing.assert_allclose(update, want.reshape(-1, 1), rtol=0, atol=1e-13)


@pytest.mark.parametrize("name", ["act", "termination", "option"])
def test_a_slightly_wrong_critic_is_detected(name):
    """The check above can fail: a critic off by 1e-4 somewhere moves the update past its tolerance."""
    net = network()
    params, b = solved(net)
    critic = exact_critic(name, b).copy()
    row = int(np.argmax(occupancy(name, b)))
    critic[row, 0] += 1e-4
    update = expected_update(net, name, params, critic, occupancy(name, b))
    assert np.abs(update - STEP[name] * blocks(b)[name]).max() > 1e-9


def test_termination_with_V_as_max_is_not_bacons_gradient_of_this_policy():
    """Bacon et al.'s code uses V_Omega = max_w Q_Omega (greedy policy over options); with a
    softmax policy over options that is a different (biased) direction, and the check sees it."""
    net = network()
    params, b = solved(net)
    critic = exact_critic("termination", b).copy().reshape(STATES, OPTIONS, 2)
    critic[:, :, 1] = b.q_omega.max(axis=1, keepdims=True)
    update = expected_update(net, "termination", params, critic.reshape(-1, 2), b.arrival.ravel())
    assert np.abs(update - STEP["termination"] * b.termination_gradient).max() > 1e-4


def test_acpgt_estimate_agrees_with_the_exact_gradient_and_a_wrong_estimator_does_not():
    """Sampled ACPGT (only executions count, weighted gamma^t G_t) for every coagent, the policy over
    options included; dropping gamma^t (a wrong estimator) is rejected by the same check."""
    net = network()
    params, b = solved(net)
    truth = blocks(b)
    for recorder, should_pass in ((None, True), (NO_DISCOUNT, False)):
        est = acpgt_estimate(net, GRID, GRID3, params, episodes=20_000, seed=2, keep_samples=True, recorder=recorder)
        for name in ("termination", "option", "act"):
            ok, z, threshold = consistent({name: est.mean[name]}, {name: est.stderr[name]},
                                          {name: {"W": truth[name]}}, samples=_columns(est, name))
            if should_pass:
                assert ok, f"{name}: max |z| {z:.2f} > {threshold:.2f}"
            elif name == "option":
                assert not ok, f"the wrong estimator passed for {name}: max |z| {z:.2f}"


def _columns(est, name):
    """The per-episode samples of one coagent's block (samples are flattened coagent by coagent)."""
    sizes = {n: np.size(est.mean[n]["W"]) for n in est.mean}
    start = sum(sizes[n] for n in list(sizes)[:list(sizes).index(name)])
    return est.samples[:, start:start + sizes[name]]
