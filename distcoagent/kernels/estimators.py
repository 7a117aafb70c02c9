"""Gradient estimators for a frozen tabular softmax network on a deterministic grid, compiled.

The same numbers as ``gradients.estimators.acpgt_samples`` and ``fd_samples`` run on the
in-process engine (same keyed draws, same arithmetic for the sampled outputs and returns),
but episode after episode in one loop, and summed as they go: a call returns, per trial,
the running sum of the per-episode estimates after each count of episodes in ``grid``.

Finite differences by branching.  Both runs of every pair, for every coordinate, draw the
same keyed numbers (common random numbers), so run ``theta + h e_j`` is the unperturbed run
until the first tick at which coordinate j's coagent executes in j's local state and the
perturbed probabilities turn the same uniform draw into a different output.  One
unperturbed run per episode, recorded tick by tick, finds that tick for each of the 2n
perturbed runs; only those that diverge are simulated onwards, from the recorded state at
that tick.  A run that never diverges has the unperturbed return, exactly.  Each return
is the one the engine computes for that run; only the work is shared.

Conventions (SPEC §3a with ticks_per_step 1, the engine's episode keys): episode e of trial p
draws as environment ``(bases[p] + e) * 2``, from tick 0; U_{-1} by slot 48, executions by
slot 0, outputs by slot 1; the reward ``reward`` at every step; the episode ends at the goal or
after ``limit`` steps.  Local state of coagent i: sum over its inputs m of value * stride, the
value the observation (kind 0), this tick's output of coagent src (kind 1) or its last tick's
(kind 2).
"""
from __future__ import annotations

import numpy as np

from . import policy as policies
from ._jit import inline, kernel
from .draws import uniform

EXECUTION_SLOT, POLICY_SLOT, INITIAL_OUTPUT_SLOT = 0, 1, 48
OBS, CUR, PREV = 0, 1, 2


@inline
def _begin(keys, K, initial, env, prev):
    """U_{-1} of every coagent for the episode keyed ``env``."""
    for i in range(K.shape[0]):
        prev[i] = policies.sample(policies.SOFTMAX, initial[i], K[i], uniform(keys[i], env, 0, INITIAL_OUTPUT_SLOT))


@inline
def _probabilities(theta, row, Ki, pj, pdelta, probs):
    """softmax(W[x] (+ pdelta on flat coordinate pj)) into ``probs[:Ki]`` (the engine's arithmetic)."""
    p = probs[:Ki]
    for k in range(Ki):
        p[k] = theta[row + k]
    if row <= pj < row + Ki:
        p[pj - row] = theta[pj] + pdelta
    policies.normalize(policies.SOFTMAX, p)
    return p


@kernel
def _run(theta, off, K, beta, keys, in_kind, in_src, in_stride, n_in, action, next_cells, goal, limit, reward,
         gamma, env, t, first, s, steps, running, discount, prev, cur, probs, pj, pdelta, record,
         rec_s, rec_steps, rec_prev, rec_cur, rec_run, rec_disc, rec_exec, rec_x, rec_u):
    """Run the episode keyed ``env`` from tick ``t``, coagent ``first`` (``cur[:first]`` already set)
    to its end; returns (discounted return, ticks).  ``record``: keep every tick's state."""
    C = K.shape[0]
    while True:
        if record:
            rec_s[t] = s
            rec_steps[t] = steps
            rec_run[t] = running
            rec_disc[t] = discount
            for i in range(C):
                rec_prev[t, i] = prev[i]
        for i in range(first, C):
            x = 0
            for m in range(n_in[i]):
                kind, src = in_kind[i, m], in_src[i, m]
                v = s if kind == OBS else (cur[src] if kind == CUR else prev[src])
                x += v * in_stride[i, m]
            if uniform(keys[i], env, t, EXECUTION_SLOT) < beta[i]:
                p = _probabilities(theta, off[i] + x * K[i], K[i], pj, pdelta, probs)
                u = uniform(keys[i], env, t, POLICY_SLOT)
                out = policies.sample(policies.SOFTMAX, p, K[i], u)
                if record:
                    rec_exec[t, i] = True
                    rec_x[t, i] = x
                    rec_u[t, i] = u
            else:
                out = prev[i]
                if record:
                    rec_exec[t, i] = False
            cur[i] = out
        first = 0
        s = next_cells[s, cur[action]]
        steps += 1
        running = running + discount * reward
        discount = discount * gamma
        for i in range(C):
            if record:
                rec_cur[t, i] = cur[i]
            prev[i] = cur[i]
        t += 1
        if s == goal or (limit >= 0 and steps >= limit):
            return running, t


@kernel
def acpgt_sums(theta, off, K, beta, keys, in_kind, in_src, in_stride, n_in, action, initial, next_cells, start,
               goal, limit, reward, gamma, bases, grid, out, prev, cur, probs, rec_s, rec_steps, rec_prev, rec_cur,
               rec_run, rec_disc, rec_exec, rec_x, rec_u, returns, sample, total):
    """``out[p, g]``: the sum over trial p's first ``grid[g]`` episodes of the per-episode ACPGT
    estimate sum over executions of gamma^t G_t grad ln pi(u_t | x_t), every coagent; returns the
    ticks simulated."""
    C = K.shape[0]
    ticks = 0
    for p in range(theta.shape[0]):
        th = theta[p]
        for j in range(total.shape[0]):
            total[j] = 0.0
        g = 0
        for e in range(grid[grid.shape[0] - 1]):
            env = (bases[p] + e) * 2
            _begin(keys, K, initial, env, prev)
            _, T = _run(th, off, K, beta, keys, in_kind, in_src, in_stride, n_in, action, next_cells, goal, limit,
                        reward, gamma, env, 0, 0, start, 0, 0.0, 1.0, prev, cur, probs, -1, 0.0, True,
                        rec_s, rec_steps, rec_prev, rec_cur, rec_run, rec_disc, rec_exec, rec_x, rec_u)
            ticks += T
            G = 0.0
            for t in range(T - 1, -1, -1):
                G = reward + gamma * G
                returns[t] = G
            for j in range(sample.shape[0]):
                sample[j] = 0.0
            for t in range(T):
                weight = gamma ** np.float64(t) * returns[t]
                for i in range(C):
                    if rec_exec[t, i]:
                        row = off[i] + rec_x[t, i] * K[i]
                        pr = _probabilities(th, row, K[i], -1, 0.0, probs)
                        for k in range(K[i]):
                            sample[row + k] += weight * ((1.0 if k == rec_cur[t, i] else 0.0) - pr[k])
            for j in range(total.shape[0]):
                total[j] += sample[j]
            while g < grid.shape[0] and grid[g] == e + 1:
                for j in range(total.shape[0]):
                    out[p, g, j] = total[j]
                g += 1
    return ticks


@kernel
def fd_sums(theta, off, K, beta, keys, in_kind, in_src, in_stride, n_in, action, initial, next_cells, start, goal,
            limit, reward, gamma, step, bases, grid, out, prev, cur, probs, rec_s, rec_steps, rec_prev, rec_cur,
            rec_run, rec_disc, rec_exec, rec_x, rec_u, diverged, branch, total):
    """``out[p, g, j]``: the sum over trial p's first ``grid[g]`` episodes of
    (G(theta + h e_j) - G(theta - h e_j)) / 2h, both runs on the episode's keyed draws.
    Returns (ticks of the unperturbed runs, ticks of the branches simulated)."""
    C = K.shape[0]
    n = theta.shape[1]
    base_ticks = branch_ticks = 0
    for p in range(theta.shape[0]):
        th = theta[p]
        for j in range(total.shape[0]):
            total[j] = 0.0
        g = 0
        for e in range(grid[grid.shape[0] - 1]):
            env = (bases[p] + e) * 2
            _begin(keys, K, initial, env, prev)
            G0, T = _run(th, off, K, beta, keys, in_kind, in_src, in_stride, n_in, action, next_cells, goal, limit,
                         reward, gamma, env, 0, 0, start, 0, 0.0, 1.0, prev, cur, probs, -1, 0.0, True,
                         rec_s, rec_steps, rec_prev, rec_cur, rec_run, rec_disc, rec_exec, rec_x, rec_u)
            base_ticks += T
            for j in range(n):
                diverged[0, j] = diverged[1, j] = False
            for t in range(T):
                for i in range(C):
                    if not rec_exec[t, i]:
                        continue
                    row = off[i] + rec_x[t, i] * K[i]
                    u = rec_u[t, i]
                    for k in range(K[i]):
                        j = row + k
                        for sign in range(2):
                            if diverged[sign, j]:
                                continue
                            delta = step if sign == 0 else -step
                            pr = _probabilities(th, row, K[i], j, delta, probs)
                            out_j = policies.sample(policies.SOFTMAX, pr, K[i], u)
                            if out_j == rec_cur[t, i]:
                                continue
                            diverged[sign, j] = True
                            for c in range(C):  # the state at tick t, coagent i just emitted out_j
                                prev[c] = rec_prev[t, c]
                                cur[c] = rec_cur[t, c]
                            cur[i] = out_j
                            G, T_end = _run(th, off, K, beta, keys, in_kind, in_src, in_stride, n_in, action,
                                            next_cells, goal, limit, reward, gamma, env, t, i + 1, rec_s[t],
                                            rec_steps[t], rec_run[t], rec_disc[t], prev, cur, probs, j, delta,
                                            False, rec_s, rec_steps, rec_prev, rec_cur, rec_run, rec_disc,
                                            rec_exec, rec_x, rec_u)
                            branch[sign, j] = G
                            branch_ticks += T_end - t
            for j in range(n):
                plus = branch[0, j] if diverged[0, j] else G0
                minus = branch[1, j] if diverged[1, j] else G0
                total[j] += (plus - minus) / (2 * step)
            while g < grid.shape[0] and grid[g] == e + 1:
                for j in range(total.shape[0]):
                    out[p, g, j] = total[j]
                g += 1
    return base_ticks, branch_ticks
