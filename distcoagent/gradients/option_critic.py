"""Bacon et al.'s option-critic quantities, exactly, for tabular options on a finite MDP.

Independent of the coagent machinery: from the model (P, R, d0, terminal, gamma) and the
three tables pi_w(a | s) (``intra[s, w, a]``), beta_w(s) (``termination[s, w]``) and
pi_Omega(w | s) (``over_options[s, w]``) it solves Bacon, Harb & Precup (2017)'s equations

    Q_Omega(s, w) = sum_a pi_w(a | s) Q_U(s, w, a)
    Q_U(s, w, a)  = R(s, a) + gamma sum_s' P(s' | s, a) U(w, s')          (s' not terminal)
    U(w, s')      = (1 - beta_w(s')) Q_Omega(s', w) + beta_w(s') V_Omega(s')
    V_Omega(s)    = sum_w pi_Omega(w | s) Q_Omega(s, w),   A_Omega(s, w) = Q_Omega(s, w) - V_Omega(s)

and the discounted occupancies from the start (the option is drawn by pi_Omega at s_0):
``occupancy[s, w]`` of (state, option in force) when an action is taken, ``arrival[s, w]``
of (state, previous option) when a termination is evaluated (every step after the first),
``choice[s]`` of option choices.  The gradients of J = sum_s d0(s) V_Omega(s) in the
parameters of SPEC §5's network (tabular: softmax logits W_act[(s, w), a], bernoulli
logits W_term[(s, w)], softmax logits W_option[s, w]):

    intra-option (Eq. 2):  d J / d W_act[(s, w), a] = occupancy(s, w) pi_w(a|s) (Q_U(s, w, a) - Q_Omega(s, w))
    termination  (Eq. 3):  d J / d W_term[(s, w)]   = - arrival(s, w) beta_w(s) (1 - beta_w(s)) A_Omega(s, w)
    policy over options:   d J / d W_option[s, w]   = choice(s) pi_Omega(w|s) A_Omega(s, w)

(the last is the ACPGT's, which Bacon et al. do not derive).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class OptionCriticExact:
    """Everything of the module docstring; arrays over (state, option[, action])."""

    J: float
    q_omega: np.ndarray
    q_u: np.ndarray
    u: np.ndarray            # u[s', w] = U(w, s')
    v_omega: np.ndarray
    advantage: np.ndarray
    occupancy: np.ndarray
    arrival: np.ndarray
    choice: np.ndarray
    intra_gradient: np.ndarray        # (S * O, A): W_act's shape
    termination_gradient: np.ndarray  # (S * O, 1): W_term's shape
    option_gradient: np.ndarray       # (S, O): W_option's shape


def solve(P, R, d0, terminal, gamma: float, intra, termination, over_options) -> OptionCriticExact:
    """Solve Bacon et al.'s equations and the occupancies (see the module docstring)."""
    P, R, d0 = (np.asarray(a, dtype=np.float64) for a in (P, R, d0))
    live = ~np.asarray(terminal, dtype=bool)
    intra, beta, pi_omega = (np.asarray(a, dtype=np.float64) for a in (intra, termination, over_options))
    S, O, A = intra.shape
    # from (s, w) at action time to the next state s' (not terminal): sum_a pi_w(a|s) P(s'|s, a)
    to_state = np.einsum("swa,sat->swt", intra, P) * live[None, None, :] * live[:, None, None]
    # ... and on to the option in force at s': kept (1 - beta) or redrawn (beta pi_Omega)
    keep = np.einsum("swt,tw->swt", to_state, 1.0 - beta)
    M = np.einsum("swt,tw,tv->swtv", to_state, beta, pi_omega)
    M[:, np.arange(O), :, np.arange(O)] += np.transpose(keep, (1, 0, 2))
    M = M.reshape(S * O, S * O)
    reward = np.einsum("swa,sa->sw", intra, R) * live[:, None]
    system = np.eye(S * O) - gamma * M
    q_omega = np.linalg.solve(system, reward.ravel()).reshape(S, O)
    v_omega = (pi_omega * q_omega).sum(axis=1) * live
    u = ((1.0 - beta) * q_omega + beta * v_omega[:, None]) * live[:, None]
    q_u = R[:, None, :] + gamma * np.einsum("sat,tw->swa", P * live[None, None, :], u)
    q_u *= live[:, None, None]
    advantage = (q_omega - v_omega[:, None]) * live[:, None]
    start = (d0 * live)[:, None] * pi_omega
    occupancy = np.linalg.solve(system.T, start.ravel()).reshape(S, O)
    arrival = gamma * np.einsum("sw,swt->tw", occupancy, to_state)
    choice = d0 * live + (arrival * beta).sum(axis=1)
    intra_gradient = occupancy[:, :, None] * intra * (q_u - q_omega[:, :, None])
    termination_gradient = -arrival * beta * (1.0 - beta) * advantage
    option_gradient = choice[:, None] * pi_omega * advantage
    return OptionCriticExact(float(d0 @ v_omega), q_omega, q_u, u, v_omega, advantage, occupancy, arrival, choice,
                             intra_gradient.reshape(S * O, A), termination_gradient.reshape(S * O, 1),
                             option_gradient)


def tables(params: dict, n_states: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(intra[s, w, a], termination[s, w], over_options[s, w]) from the policy parameters of
    SPEC §5's tabular network ({"act": {"W"}, "termination": {"W"}, "option": {"W"}}, one trial)."""
    from ..policies import sigmoid, softmax

    over_options = softmax(np.asarray(params["option"]["W"], dtype=np.float64).reshape(n_states, -1))
    O = over_options.shape[1]
    intra = softmax(np.asarray(params["act"]["W"], dtype=np.float64)).reshape(n_states, O, -1)
    termination = sigmoid(np.asarray(params["termination"]["W"], dtype=np.float64)).reshape(n_states, O)
    return intra, termination, over_options
