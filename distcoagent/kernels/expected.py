"""The expected actor-critic (``rules.ExpectedActorCritic``) on a tabular local state with lambda = 0:
the coagent step of the option-critic network (termination, policy over options, intra-option policy).

The numpy code keeps, per environment, the (x_j, u_j) of the open execution and Q(x_j, u_j); at the
next execution (or the episode's end) it applies q[x_j, u_j] += critic_step * delta, with
delta = Rbar + gamma**Delta * V(x_{j+1}) - Q(x_j, u_j) and V(x) = sum_u pi(u | x) Q(x, u); then the
executing rows sample and follow the expected policy gradient over all outputs,
W[x] += actor_step * (pi * (Q - cost - mean) - pi * sum(...)) (softmax), its bernoulli form likewise.

The order is the numpy code's: every TD error is computed (from Q and W before this tick's changes)
and checked before Q changes; Q's updates, then every executing row's policy and gradient from W
before any row changes it; all gradients are checked before any is added; additions run in row
order.  The results are the numpy code's up to the last bits of exp and of numpy's sums.  Errors come
back as a code and a row, like ``coagent.act``'s.
"""
from __future__ import annotations

import numpy as np

from . import policy as policies
from ._jit import inline, kernel
from .coagent import (FROZEN, LOCAL_STATE, OK, POLICY_OUTPUT, POLICY_SLOT, REWARD, TD_ERROR, UnitKernel,
                      execution_draw, hold, stream_and_ends)
from .draws import uniform

ACTOR_UPDATE = 5  # a non-finite actor update (the numpy code's "actor update")


@inline
def _probabilities(policy, W, p, i, probs):
    """pi(. | x = i) of trial p into ``probs`` (n outputs)."""
    if policy == policies.BERNOULLI:
        probs[1] = W[p, i, 0]
        policies.normalize(policy, probs[1:])
        probs[0] = 1.0 - probs[1]
        return
    for k in range(probs.shape[0]):
        probs[k] = W[p, i, k]
    policies.normalize(policy, probs)


@kernel
def act(policy, index, n_local, beta, active, key, env_ids, env_tick, output, stream_reward, stream_discount,
        executed, last_execution_tick, episode_tick, W, q, q_last, x_last, u_last, costs, actor_step,
        critic_step, E, executes, closing, delta, probs, grads):
    """One atomic tick of a coagent with this rule: who executes, close (learn Q), sample, open (learn W).

    ``probs`` (>= B, n) and ``grads`` (>= B, K) are work space.  Returns (executions, closed intervals,
    their ticks, active rows, error code, error row)."""
    B = env_ids.shape[0]
    n = q.shape[2]
    n_exec = n_close = interval_ticks = n_active = 0
    # 1. who executes and closes; each executing row's policy (W changes only in step 4, so these are
    # the probabilities of both its TD error and its draw); the TD errors of the closing, from this tick's Q
    for b in range(B):
        if not 0 <= index[b] < n_local:
            return n_exec, n_close, interval_ticks, n_active, LOCAL_STATE, b
        n_active += active[b]
        n_exec += execution_draw(b, active, key, env_ids, env_tick, beta, executed, executes, closing)
        d = 0.0
        if executes[b]:
            _probabilities(policy, W, b // E, index[b], probs[b])  # finite or not: checked in step 3
        if closing[b]:
            n_close += 1
            interval_ticks += episode_tick[b] - last_execution_tick[b]
            p, i = b // E, index[b]
            row = probs[b]
            v_next = 0.0  # a non-finite pi makes delta non-finite: reported below
            for u in range(n):
                v_next += row[u] * q[p, i, u]
            d = (stream_reward[b] + stream_discount[b] * v_next) - q_last[b]
        delta[b] = d
    for b in range(B):
        if closing[b] and not np.isfinite(delta[b]):
            return n_exec, n_close, interval_ticks, n_active, TD_ERROR, b
    # 2. the critic of the closed intervals, in row order
    for b in range(B):
        if closing[b]:
            q[b // E, x_last[b], u_last[b]] += critic_step * delta[b]
    # 3. every executing row's policy must be finite; then its draw
    for b in range(B):
        if executes[b]:
            for u in range(n):
                if not np.isfinite(probs[b, u]):
                    return n_exec, n_close, interval_ticks, n_active, POLICY_OUTPUT, b
    for b in range(B):
        if not executes[b]:
            continue
        row = probs[b]
        u_draw = uniform(key, env_ids[b], env_tick[b], POLICY_SLOT)
        if policy == policies.BERNOULLI:
            u = 1 if u_draw < row[1] else 0
        else:
            u = policies.sample(policy, row, n, u_draw)
        p, i = b // E, index[b]
        # the expected gradient: weight_u = actor_step * pi_u * (Q_u - cost_u - sum_v pi_v (Q_v - cost_v))
        mean = 0.0
        for v in range(n):
            mean += row[v] * (q[p, i, v] - costs[v])
        g = grads[b]  # softmax: n columns; bernoulli: one (the weight of output 1 goes there)
        total = 0.0
        for v in range(n):
            w = (actor_step * row[v]) * ((q[p, i, v] - costs[v]) - mean)
            if policy == policies.SOFTMAX:
                g[v] = w
            elif v == 1:
                g[0] = w
            total += w
        if policy == policies.BERNOULLI:
            g[0] = g[0] - row[1] * total
        else:
            for v in range(n):
                g[v] = g[v] - row[v] * total
        q_last[b] = q[p, i, u]
        x_last[b] = i
        u_last[b] = u
    K = W.shape[2]
    for b in range(B):
        if executes[b]:
            for k in range(K):
                if not np.isfinite(grads[b, k]):
                    return n_exec, n_close, interval_ticks, n_active, ACTOR_UPDATE, b
    # 4. the actor, in row order; the stream and clocks of the executing rows
    for b in range(B):
        if not executes[b]:
            continue
        p, i = b // E, index[b]
        for k in range(K):
            W[p, i, k] += grads[b, k]
        hold(b, u_last[b], output, stream_reward, stream_discount, last_execution_tick, episode_tick, executed)
    return n_exec, n_close, interval_ticks, n_active, OK, -1


@kernel
def observe(reward, ended, active, executed, stream_reward, stream_discount, env_tick, episode_tick,
            gamma_atomic, q, q_last, x_last, u_last, critic_step, E, ending, delta):
    """The tick's reward into the stream; the intervals of ended episodes close (V = 0); clocks on.

    Returns (episodes ended, intervals closed, error code, error row)."""
    B = reward.shape[0]
    n_episodes, n_close, bad = stream_and_ends(reward, ended, active, executed, stream_reward, stream_discount,
                                               gamma_atomic, True, q_last, ending, delta)
    if bad >= 0:
        return 0, 0, REWARD, bad
    for b in range(B):
        if ending[b] and not np.isfinite(delta[b]):
            return n_episodes, n_close, TD_ERROR, b
    for b in range(B):
        if ending[b]:
            q[b // E, x_last[b], u_last[b]] += critic_step * delta[b]
    for b in range(B):
        env_tick[b] += 1
        episode_tick[b] += 1
    return n_episodes, n_close, OK, -1


# ---------------------------------------------------------------------- the unit's side
EXPECTED = 3  # the rule's code beside coagent.FROZEN, SHARED, OWN (the blocks run none of this kind)


class ExpectedKernel:
    """How one ``CoagentUnit`` with a one-step expected actor-critic runs on the kernels."""

    tabular = True
    rule = EXPECTED
    uses = ("expected", "coagent")  # the kernel modules it runs (``kernels.load``): an episode's start is coagent's

    def __init__(self, unit, policy: int):
        # an episode's start is a frozen unit's (this rule keeps no traces to reset); its stream key and
        # constant execution probability are this unit's
        self._begin = UnitKernel(unit, policy, FROZEN)
        self.policy, self.key, self.beta = policy, self._begin.key, self._begin.beta
        r = unit.rule
        self.actor_step, self.critic_step = float(r.actor_step), float(r.critic_step)
        n = unit.output_space.n
        self.costs = np.asarray(r.costs, dtype=np.float64) if r.costs else np.zeros(n)
        self.n_local = unit.encoder.size
        self.probs, self.grads = np.empty((0, n)), np.empty((0, unit.params["W"].shape[2]))

    def act(self, unit, x, active, drivers, shared_value, beta=None):
        B = unit.batch
        if beta is None:
            beta = self.beta if self.beta is not None else unit.execution_beta(x, drivers)
        executes, closing, delta = np.empty(B, dtype=bool), np.empty(B, dtype=bool), np.empty(B)
        if self.probs.shape[0] < B:  # work space for the rows, grown to the largest batch seen
            self.probs = np.empty((B, self.probs.shape[1]))
            self.grads = np.empty((B, self.grads.shape[1]))
        st = unit.rule_state
        n_exec, n_close, interval_ticks, n_active, error, row = act(
            self.policy, x.index, self.n_local, beta, active, self.key, unit.env_ids, unit.env_tick, unit.output,
            unit.stream_reward, unit.stream_discount, unit.executed_this_episode, unit.last_execution_tick,
            unit.episode_tick, unit.params["W"], st["q"], st["q_last"], st["x_last"], st["u_last"], self.costs,
            self.actor_step, self.critic_step, unit.envs_per_trial, executes, closing, delta, self.probs,
            self.grads)
        if error:
            self._raise(unit, error, row, x)
        return self.account(unit, executes, closing, delta, n_exec, n_close, interval_ticks, n_active)

    def observe(self, unit, reward, ended, active):
        B = unit.batch
        ending, delta = np.empty(B, dtype=bool), np.empty(B)
        st = unit.rule_state
        n_episodes, n_close, error, row = observe(
            reward, ended, active, unit.executed_this_episode, unit.stream_reward, unit.stream_discount,
            unit.env_tick, unit.episode_tick, unit.gamma_atomic, st["q"], st["q_last"], st["x_last"],
            st["u_last"], self.critic_step, unit.envs_per_trial, ending, delta)
        self.account_ends(unit, ending, delta, n_episodes, n_close, error, row)

    def begin_episode(self, unit, mask):
        return self._begin.begin_episode(unit, mask)

    # the same counts (this rule is not FROZEN: its updates count); errors through this kernel's _raise
    account, account_ends = UnitKernel.account, UnitKernel.account_ends

    def _raise(self, unit, error, row, x=None):
        if error == ACTOR_UPDATE:
            unit.raise_non_finite("actor update", row)
        self._begin._raise(unit, error, row, x)


def warm_up() -> None:
    """Compile (or load) the kernels for the argument types a run passes them."""
    B, n, K = 2, 3, 2
    ints = lambda: np.zeros(B, dtype=np.int64)  # noqa: E731
    flags = np.ones(B, dtype=bool)
    act(policies.SOFTMAX, ints(), n, np.full(B, 0.5), flags, np.uint64(1), np.arange(B), ints(), ints(), np.zeros(B),
        np.ones(B), flags.copy(), ints(), ints(), np.zeros((B, n, K)), np.zeros((B, n, K)), np.zeros(B), ints(),
        ints(), np.zeros(K), 0.1, 0.1, 1, flags.copy(), flags.copy(), np.zeros(B), np.empty((B, K)),
        np.empty((B, K)))
    observe(np.zeros(B), flags, flags, flags.copy(), np.zeros(B), np.ones(B), ints(), ints(), 0.9,
            np.zeros((B, n, K)), np.zeros(B), ints(), ints(), 0.1, 1, flags.copy(), np.zeros(B))
