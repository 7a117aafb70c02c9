"""A coagent's step over the rows of a batch (``CoagentUnit.act``, ``observe``, ``begin_episode``).

Composed from the policy, trace and draw kernels for the kinds that have them: a softmax or
bernoulli policy, tabular or linear in features, learning by actor-critic(lambda) with the
shared critic or its own, or frozen.  ``UnitKernel.of(unit)`` says whether a unit is such a
kind; its methods take the unit's arrays as they are at each call (trials may have been cut
out of the batch since the last one) and change them in place, as the numpy code does.

The order is the numpy code's: every TD error is computed (and checked) before any parameter
changes, every closed interval is applied before any executing row reads the parameters, and
sums over a trial's environments run in environment order; so the results are those of the
numpy code up to the last bits of exp and pow (libm's, not numpy's).  An error (a non-finite
value) is reported as a code and a row, at the same point as in the numpy code; the caller raises.
"""
from __future__ import annotations

import functools

import numpy as np

from . import policy as policies
from . import traces
from ._jit import inline, kernel
from .draws import uniform

FROZEN, SHARED, OWN = 0, 1, 2  # the rule: frozen, actor-critic with the shared critic, with its own
OK, TD_ERROR, POLICY_OUTPUT, LOCAL_STATE, REWARD = 0, 1, 2, 3, 4  # what went wrong
EXECUTION_SLOT, POLICY_SLOT, INITIAL_OUTPUT_SLOT = 0, 1, 48


@inline
def execution_draw(b, active, key, env_ids, env_tick, beta, executed, executes, closing):
    """Whether row ``b`` executes this tick (its keyed draw below ``beta``: one probability for every row,
    execution kind "constant", or one per row) and so closes its open interval, into ``executes[b]`` and
    ``closing[b]``; returns the first."""
    ex = active[b] and uniform(key, env_ids[b], env_tick[b], EXECUTION_SLOT) < beta[0 if beta.shape[0] == 1 else b]
    executes[b] = ex
    closing[b] = ex and executed[b]
    return ex


@inline
def hold(b, u, output, stream_reward, stream_discount, last_execution_tick, episode_tick, executed):
    """Row ``b`` executed with output ``u``: it holds ``u``, and a new interval (reward stream) opens."""
    output[b] = u
    stream_reward[b] = 0.0
    stream_discount[b] = 1.0
    last_execution_tick[b] = episode_tick[b]
    executed[b] = True


@inline
def _close_trial(p, E, closing, delta, W, zW, z_scale, critic, z_critic, rule, actor_step, critic_step,
                 weights, acc, critic_acc):
    """Apply the closed executions of trial ``p``: W += actor_step * delta * z (own critic likewise)."""
    if E == 1:
        if closing[p]:
            traces.apply_one(W, zW, p, (actor_step * delta[p]) * z_scale[p])
            if rule == OWN:
                traces.apply_one(critic, z_critic, p, (critic_step * delta[p]) * z_scale[p])
        return
    any_closing = False
    for e in range(E):
        any_closing = any_closing or closing[p * E + e]
    if not any_closing:
        return
    for e in range(E):
        b = p * E + e
        weights[e] = (actor_step * delta[b]) * z_scale[b] if closing[b] else 0.0
    traces.apply_group(W, zW, p, weights, acc)
    if rule == OWN:
        for e in range(E):
            b = p * E + e
            weights[e] = (critic_step * delta[b]) * z_scale[b] if closing[b] else 0.0
        traces.apply_group(critic, z_critic, p, weights, critic_acc)


@kernel
def act(tabular, index, phi, beta, active, key, env_ids, env_tick,
        output, stream_reward, stream_discount, executed, last_execution_tick, episode_tick,
        policy, W, rule, zW, z_scale, v_last, critic, z_critic, shared_value,
        actor_step, critic_step, decays, decay_base, E, executes, closing, delta, work, acc, critic_acc,
        table, chosen):
    """One atomic tick: draw who executes, close their last interval (learn), sample, open.

    ``decays[k]`` = decay_base ** k (a table, computed by the same pow); ``work`` (K + E),
    ``acc`` (n, K), ``critic_acc`` (n, 1), ``table`` (>= B, K) and ``chosen`` (>= B): buffers.  Returns (executions, closed intervals, their
    ticks, active rows, error code, error row)."""
    B = env_ids.shape[0]
    n = W.shape[1]
    n_exec = n_close = interval_ticks = n_active = 0
    # 1. who executes and closes, and the TD errors of the closing (nothing changes yet)
    for b in range(B):
        if tabular and not 0 <= index[b] < n:
            return n_exec, n_close, interval_ticks, n_active, LOCAL_STATE, b
        n_active += active[b]
        n_exec += execution_draw(b, active, key, env_ids, env_tick, beta, executed, executes, closing)
        d = 0.0
        if closing[b]:
            n_close += 1
            interval_ticks += episode_tick[b] - last_execution_tick[b]
            if rule != FROZEN:
                if rule == OWN:
                    v_next = policies.linear(critic, b // E, tabular, index, phi, b, 0)
                else:
                    v_next = shared_value[b]
                d = (stream_reward[b] + stream_discount[b] * v_next) - v_last[b]
                if not np.isfinite(d):
                    return n_exec, n_close, interval_ticks, n_active, TD_ERROR, b
        delta[b] = d
    # 2. apply the closed intervals, all before any row reads W (numpy's order)
    K = W.shape[2]
    grad, weights = work[:K], work[K:]
    outputs = K if policy == policies.SOFTMAX else 2
    if rule != FROZEN and n_close:
        for p in range(B // E):
            _close_trial(p, E, closing, delta, W, zW, z_scale, critic, z_critic, rule, actor_step, critic_step,
                         weights, acc, critic_acc)
    # 3. the policy for every executing row: parameters gathered first (cache misses overlap), then
    # probabilities, draws and scores; nothing of the unit changes before all are finite
    for b in range(B):
        if executes[b]:
            policies.logits(policy, W, b // E, tabular, index, phi, b, table[b])
    for b in range(B):
        if executes[b]:
            if not policies.normalize(policy, table[b]):
                return n_exec, n_close, interval_ticks, n_active, POLICY_OUTPUT, b
            chosen[b] = policies.sample(policy, table[b], outputs, uniform(key, env_ids[b], env_tick[b], POLICY_SLOT))
            if rule != FROZEN:
                policies.score(policy, table[b], outputs, chosen[b], table[b])
    # 4. open: decay and add to the traces, remember V(x_j), hold the output
    for b in range(B):
        if not executes[b]:
            continue
        if rule != FROZEN:
            p, e = b // E, b % E
            if executed[b]:  # a first execution finds its traces reset
                elapsed = episode_tick[b] - last_execution_tick[b]
                factor = decays[elapsed] if elapsed < decays.shape[0] else decay_base ** np.float64(elapsed)
                z_scale[b] = z_scale[b] * factor
                if z_scale[b] < traces.FLOOR:
                    traces.scale_row(zW, p, e, z_scale[b])
                    if rule == OWN:
                        traces.scale_row(z_critic, p, e, z_scale[b])
                    z_scale[b] = 1.0
            traces.add_row(zW, p, e, tabular, index, phi, b, table[b], z_scale[b])
            if rule == OWN:
                grad[0] = 1.0
                traces.add_row(z_critic, p, e, tabular, index, phi, b, grad, z_scale[b])
                v_last[b] = policies.linear(critic, p, tabular, index, phi, b, 0)
            else:
                v_last[b] = shared_value[b]
        hold(b, chosen[b], output, stream_reward, stream_discount, last_execution_tick, episode_tick, executed)
    return n_exec, n_close, interval_ticks, n_active, OK, -1


@inline
def stream_and_ends(reward, ended, active, executed, stream_reward, stream_discount, gamma_atomic, learns, v_last,
                    ending, delta):
    """The tick's reward into each row's stream; ``ending``: the rows whose episode ended after an
    execution, ``delta``: their TD errors with V = 0 (if ``learns``).  Returns (episodes ended, intervals
    closed by a learning rule, the first row whose reward is not finite or -1: then nothing changed)."""
    for b in range(reward.shape[0]):
        if not np.isfinite(reward[b]):
            return 0, 0, b
    n_episodes = n_close = 0
    for b in range(reward.shape[0]):
        stream_reward[b] += stream_discount[b] * reward[b]
        stream_discount[b] *= gamma_atomic
        ends = ended[b] and active[b]
        n_episodes += ends
        closes = ends and executed[b]
        ending[b] = closes
        d = 0.0
        if closes and learns:
            n_close += 1
            d = (stream_reward[b] + stream_discount[b] * 0.0) - v_last[b]
        delta[b] = d
    return n_episodes, n_close, -1


@kernel
def observe(reward, ended, active, executed, stream_reward, stream_discount, env_tick, episode_tick,
            gamma_atomic, rule, W, zW, z_scale, v_last, critic, z_critic, actor_step, critic_step, E,
            ending, delta, weights, acc, critic_acc):
    """The tick's reward into the stream; intervals of ended episodes close (v_next = 0); clocks on.

    Returns (episodes ended, intervals closed, error code, error row)."""
    B = reward.shape[0]
    n_episodes, n_close, bad = stream_and_ends(reward, ended, active, executed, stream_reward, stream_discount,
                                               gamma_atomic, rule != FROZEN, v_last, ending, delta)
    if bad >= 0:
        return 0, 0, REWARD, bad
    if n_close:
        for b in range(B):
            if ending[b] and not np.isfinite(delta[b]):
                return n_episodes, n_close, TD_ERROR, b
        for p in range(B // E):
            _close_trial(p, E, ending, delta, W, zW, z_scale, critic, z_critic, rule, actor_step, critic_step,
                         weights, acc, critic_acc)
    for b in range(B):
        env_tick[b] += 1
        episode_tick[b] += 1
    return n_episodes, n_close, OK, -1


@kernel
def begin_episode(mask, key, env_ids, env_tick, initial, output, rule, zW, z_critic, z_scale,
                  stream_reward, stream_discount, executed, episode_tick, E):
    """New episodes where ``mask``: U_{-1} drawn from ``initial``, traces and stream reset."""
    n = initial.shape[0]
    for b in range(mask.shape[0]):
        if not mask[b]:
            continue
        output[b] = policies.sample(policies.SOFTMAX, initial, n,
                                    uniform(key, env_ids[b], env_tick[b], INITIAL_OUTPUT_SLOT))
        if rule != FROZEN:
            p, e = b // E, b % E
            traces.reset_row(zW, p, e)
            if rule == OWN:
                traces.reset_row(z_critic, p, e)
            z_scale[b] = 1.0
        stream_reward[b] = 0.0
        stream_discount[b] = 1.0
        executed[b] = False
        episode_tick[b] = 0


# ---------------------------------------------------------------------- the unit's side
_NO_INDEX = np.zeros(0, dtype=np.int64)
_NO_PHI = np.zeros((0, 0))
_NO_VALUE = np.zeros(0)
_NO_PARAM = np.zeros((1, 1, 1))
_NO_TRACE = np.zeros((1, 1, 1, 1))


class UnitKernel:
    """How one ``CoagentUnit`` runs on the kernels: its policy's and rule's codes, constants, buffers."""

    uses = ("coagent",)  # the kernel modules it runs (``kernels.load``)

    def __init__(self, unit, policy: int, rule: int):
        from ..execution import Constant

        self.policy, self.rule = policy, rule
        self.key = np.uint64(unit.stream.key)
        self.tabular = unit.encoder.tabular
        r = unit.rule
        self.actor_step = float(getattr(r, "actor_step", 0.0))
        self.critic_step = float(getattr(r, "critic_step", 0.0))
        self.decay_base = unit.gamma_atomic * r.lam if rule != FROZEN else 0.0
        n = unit.output_space.n
        initial = unit.coagent.initial
        self.initial = np.full(n, 1.0 / n) if initial == "uniform" else np.asarray(initial, dtype=np.float64)
        K, E, size = unit.params["W"].shape[2], unit.envs_per_trial, unit.encoder.size
        execution = unit.coagent.execution
        self.beta = np.array([execution.probability]) if type(execution) is Constant else None
        self.work = np.empty(K + E)  # a score, and the weights of a trial's environments
        self.acc = np.empty((size, K))
        self.critic_acc = np.empty((size if rule == OWN else 0, 1))
        self.table, self.chosen = np.empty((0, K)), np.empty(0, dtype=np.int64)

    @functools.cached_property
    def decays(self) -> np.ndarray:
        """The decay table, made at first use: a unit built only to be measured (``limits``) runs no kernel."""
        return decay_table(self.decay_base, DECAY_TABLE)

    @classmethod
    def of(cls, unit) -> "UnitKernel | None":
        """The kernel for this unit, or None if its kind has none (the numpy code runs)."""
        from ..policies import Bernoulli, Softmax
        from ..rules import ActorCritic, ExpectedActorCritic, LearningRule

        kinds = {Softmax: policies.SOFTMAX, Bernoulli: policies.BERNOULLI}
        policy = kinds.get(type(unit.policy))
        if policy is None or unit.policy_param_names != ("W",):
            return None
        initial = unit.coagent.initial
        if not (initial == "uniform" or isinstance(initial, tuple)):
            return None
        if type(unit.rule) is LearningRule:
            rule = FROZEN
        elif type(unit.rule) is ActorCritic:
            rule = OWN if unit.rule.critic == "own" else SHARED
        elif type(unit.rule) is ExpectedActorCritic and unit.rule.one_step(unit):
            from .expected import ExpectedKernel

            return ExpectedKernel(unit, policy)
        else:
            return None
        return cls(unit, policy, rule)

    def _rule_arrays(self, unit):
        if self.rule == FROZEN:
            return _NO_TRACE, _NO_VALUE, _NO_VALUE, _NO_PARAM, _NO_TRACE
        st = unit.rule_state
        if self.rule == OWN:
            return st["z.W"], st["z_scale"], st["v_last"], st["critic"], st["z.critic_w"]
        return st["z.W"], st["z_scale"], st["v_last"], _NO_PARAM, _NO_TRACE

    def act(self, unit, x, active, drivers, shared_value, beta=None):
        B = unit.batch
        # the execution probabilities (``beta`` given: a forced pattern); a constant one is passed as a
        # single number (no array per tick)
        if beta is None:
            beta = self.beta if self.beta is not None else unit.execution_beta(x, drivers)
        executes = np.empty(B, dtype=bool)
        closing = np.empty(B, dtype=bool)
        delta = np.empty(B)
        zW, z_scale, v_last, critic, z_critic = self._rule_arrays(unit)
        shared = shared_value if self.rule == SHARED else _NO_VALUE
        index, phi = (x.index, _NO_PHI) if self.tabular else (_NO_INDEX, x.phi)
        if self.table.shape[0] < B:  # work space for the rows, grown to the largest batch seen
            self.table, self.chosen = np.empty((B, self.table.shape[1])), np.empty(B, dtype=np.int64)
        n_exec, n_close, interval_ticks, n_active, error, row = act(
            self.tabular, index, phi, beta, active, self.key, unit.env_ids, unit.env_tick,
            unit.output, unit.stream_reward, unit.stream_discount, unit.executed_this_episode,
            unit.last_execution_tick, unit.episode_tick, self.policy, unit.params["W"], self.rule, zW, z_scale,
            v_last, critic, z_critic, shared, self.actor_step, self.critic_step, self.decays, self.decay_base,
            unit.envs_per_trial, executes, closing, delta, self.work, self.acc, self.critic_acc, self.table,
            self.chosen)
        if error:
            self._raise(unit, error, row, x)
        return self.account(unit, executes, closing, delta, n_exec, n_close, interval_ticks, n_active)

    def account(self, unit, executes, closing, delta, n_exec, n_close, interval_ticks, n_active):
        """A tick's counts into the unit's counters (as its numpy step counts them); its outputs."""
        if n_close:
            unit.intervals["count"] += n_close
            unit.intervals["ticks"] += interval_ticks
            if self.rule != FROZEN:
                unit.count_updates(closing, delta)
        unit.counters["executions"] += n_exec
        unit.counters["ticks"] += n_active
        unit.last_executed = executes
        return unit.output.copy()

    def observe(self, unit, reward, ended, active):
        B = unit.batch
        ending = np.empty(B, dtype=bool)
        delta = np.empty(B)
        zW, z_scale, v_last, critic, z_critic = self._rule_arrays(unit)
        n_episodes, n_close, error, row = observe(
            reward, ended, active, unit.executed_this_episode, unit.stream_reward, unit.stream_discount,
            unit.env_tick, unit.episode_tick, unit.gamma_atomic, self.rule, unit.params["W"], zW, z_scale,
            v_last, critic, z_critic, self.actor_step, self.critic_step, unit.envs_per_trial, ending, delta,
            self.work[-unit.envs_per_trial:], self.acc, self.critic_acc)
        self.account_ends(unit, ending, delta, n_episodes, n_close, error, row)

    def account_ends(self, unit, ending, delta, n_episodes, n_close, error, row):
        """The end of a tick's counts (or its error) into the unit, as its numpy step counts them."""
        if error:
            self._raise(unit, error, row)
        if n_close:
            unit.count_updates(ending, delta)
        unit.counters["episodes"] += n_episodes

    def begin_episode(self, unit, mask):
        zW, z_scale, _, _, z_critic = self._rule_arrays(unit)
        begin_episode(mask, self.key, unit.env_ids, unit.env_tick, self.initial, unit.output, self.rule, zW,
                      z_critic, z_scale, unit.stream_reward, unit.stream_discount, unit.executed_this_episode,
                      unit.episode_tick, unit.envs_per_trial)
        return unit.output.copy()

    def _raise(self, unit, error, row, x=None):
        if error == LOCAL_STATE:
            raise IndexError(f"coagent {unit.name!r}: local state {int(x.index[row])} is out of range "
                             f"0..{unit.encoder.size - 1} (environment {int(unit.env_ids[row])})")
        what = {TD_ERROR: "TD error", POLICY_OUTPUT: "policy output", REWARD: "reward"}[error]
        unit.raise_non_finite(what, row)


DECAY_TABLE = 256  # elapsed ticks up to which trace decays come from a table


@kernel
def _powers(base, out):
    for k in range(out.shape[0]):
        out[k] = base ** np.float64(k)


def decay_table(base: float, size: int) -> np.ndarray:
    """``base ** k`` for k < size, by the kernels' own pow (a table lookup gives the same number)."""
    out = np.empty(size)
    _powers(base, out)
    return out


def warm_up() -> None:
    """Compile (or load) the kernels for the argument types a run passes them."""
    B, E, n, K = 2, 1, 3, 2
    index = np.zeros(B, dtype=np.int64)
    phi = np.ones((B, n))
    flags = np.ones(B, dtype=bool)
    ints = lambda: np.zeros(B, dtype=np.int64)  # noqa: E731
    for tabular, ix, ph in ((True, index, _NO_PHI), (False, _NO_INDEX, phi)):
        act(tabular, ix, ph, np.full(B, 0.5), flags, np.uint64(1), np.arange(B), ints(), ints(), np.zeros(B),
            np.ones(B), flags.copy(), ints(), ints(), policies.SOFTMAX, np.zeros((B, n, K)), OWN,
            np.zeros((B, E, n, K)), np.ones(B), np.zeros(B), np.zeros((B, n, 1)), np.zeros((B, E, n, 1)),
            np.zeros(B), 0.1, 0.1, decay_table(0.5, 4), 0.5, E, flags.copy(), flags.copy(), np.zeros(B),
            np.empty(K + E), np.empty((n, K)), np.empty((n, 1)), np.empty((B, K)), np.empty(B, dtype=np.int64))
    observe(np.zeros(B), flags, flags, flags.copy(), np.zeros(B), np.ones(B), ints(), ints(), 0.9, SHARED,
            np.zeros((B, n, K)), np.zeros((B, E, n, K)), np.ones(B), np.zeros(B), _NO_PARAM, _NO_TRACE, 0.1, 0.1,
            E, flags.copy(), np.zeros(B), np.empty(E), np.empty((n, K)), np.empty((0, 1)))
    begin_episode(flags, np.uint64(1), np.arange(B), ints(), np.full(K, 0.5), ints(), SHARED,
                  np.zeros((B, E, n, K)), _NO_TRACE, np.ones(B), np.zeros(B), np.ones(B), flags.copy(), ints(), E)
