"""Exact J and dJ/dtheta of episodes cut by a time limit, the objective the estimators sample.

``exact.exact`` solves the folded Markov chain (SPEC §3a) without a time limit.  Episodes
that stop after ``max_steps`` environment steps (the gridworld's ``max_steps``, H = max_steps
x ticks_per_step atomic ticks) have

    J_H = mu0 . v_H,   v_0 = 0,   v_n = r + gamma_atomic T v_{n-1}   (n ticks left),

and, with d_t = mu0 (gamma_atomic T)^t the discounted occupancy at tick t,

    dJ_H/dtheta = sum_{t<H} sum_c d_t(c) sum_o p(o | c) score(o) (r(c, o) + gamma_atomic E[v_{H-t-1}(c') | c, o]),

the same sum as ``exact``'s with the value of the ticks that remain.  REINFORCE-type
estimators (ACPGT) and finite differences on common random numbers are unbiased for
this J_H (for finite differences: for its central differences), not for the unlimited J.
As H grows it tends to ``exact.exact`` (tested against the reference cases).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ..network import Network
from .common import normalize_params
from .exact import ExactResult, _Chain, exact


def exact_time_limited(network: Network, env_id: str, env_kwargs: dict | None = None, params: dict | None = None,
                       max_steps: int | None = None, gradient: bool = True, seed: int = 0) -> ExactResult:
    """Exact J_H (and dJ_H/dtheta) for episodes of at most ``max_steps`` environment steps
    (default: the environment's own time limit; none: ``exact.exact``)."""
    if max_steps is None:
        from .gradcheck import time_limit

        max_steps = time_limit(env_id, env_kwargs)
    if max_steps is None:
        return exact(network, env_id, env_kwargs, params, gradient, seed)
    if not isinstance(max_steps, (int, np.integer)) or max_steps < 1:
        raise ValueError(f"max_steps: expected a positive number of steps, got {max_steps!r}")
    chain = _Chain(network, env_id, env_kwargs, seed)
    params = normalize_params(chain.batch, params)
    c, phase, s, prev, p, outs, execs = chain.outcomes(params)
    a = outs[:, chain.order.index(network.action_coagents[0])]
    stepped = (chain.phase_mod[phase] + 1) % chain.m == 0
    next_phase = (chain.phase_mod[phase] + 1) % chain.L
    reward = np.where(stepped, chain.R[s, a], 0.0)
    probs_next = np.where(stepped[:, None], chain.P[s, a], np.eye(chain.n_s)[s])
    row, s_next = np.nonzero(probs_next)
    weight = probs_next[row, s_next]
    keep = ~chain.terminal[s_next] | ~stepped[row]
    row, s_next, weight = row[keep], s_next[keep], weight[keep]
    c_next = (next_phase[row] * chain.n_s + s_next) * chain.n_prev + outs[row] @ chain.radix
    N, n_rows, g = chain.n_states, len(p), chain.gamma_atomic
    successor = sp.csr_matrix((weight, (row, c_next)), shape=(n_rows, N))  # outcome -> next chain state
    T = sp.csr_matrix((p[row] * weight, (c[row], c_next)), shape=(N, N))
    r = np.bincount(c, weights=p * reward, minlength=N)
    mu0 = chain._initial()
    H = int(max_steps) * chain.m
    v = np.zeros((H + 1, N))  # v[n]: the value with n ticks left
    for n in range(1, H + 1):
        v[n] = r + g * (T @ v[n - 1])
    J = float(mu0 @ v[H])
    if not np.isfinite(J):
        raise ValueError("exact_time_limited: J is not finite")
    reach = len(chain._reachable(T, mu0))
    if not gradient:
        return ExactResult(J, None, reach)
    w = np.zeros(n_rows)  # sum_t d_t(c) (r + gamma E[v_{H-t-1}(c')]) per outcome
    d = mu0.copy()
    Tt = T.T.tocsr()
    for t in range(H):
        w += d[c] * (reward + g * (successor @ v[H - t - 1]))
        d = g * (Tt @ d)
    w *= p
    return ExactResult(J, chain.weighted_scores(w, s, prev, outs, execs), reach)
