"""Learning rules: how a coagent updates itself from the discounted reward stream.

A coagent only ever sees, per environment: its local state and output when it
executes, and between executions the summary ``Rbar_j`` of the rewards and the
elapsed discount ``gamma_atomic ** (t_{j+1} - t_j)`` (SPEC §3a).  A rule has two
hooks, both batched and masked:

- ``close(unit, mask, v_next)``: execution j is followed by a new execution or by
  the episode's end; ``Rbar_j`` and the elapsed discount are complete.
- ``open(unit, x, mask, score)``: the coagent executed; ``score`` is the factor of
  d/dtheta ln pi(u_j | x_j).

As in optax, a rule keeps no state of its own: ``init(unit)`` creates its state (an
``ArrayDict`` whose arrays declare their batch axis, so it serialises, compacts and
checkpoints like everything else) and every hook gets it passed in explicitly.  The
unit keeps it (``unit.rule_state``) but never looks inside.  What a rule learns besides
the policy's parameters (an own critic's weights, a baseline) lives in that state too,
and ``learned(state)`` reports it for results.  Traces carry an environment axis:
``(P, E, ...)`` for parameters ``(P, ...)``; updates sum over a trial's environments in
index order, so runs are deterministic.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .batched import ENV, TRIAL, ArrayDict
from .checks import flag, lam, real, step


def _group_sum(weights: np.ndarray, traces: np.ndarray) -> np.ndarray:
    """sum_e weights[p, e] * traces[p, e, ...] -> (P, ...), added in environment order (as the
    kernels do: ``kernels.traces.apply_group``)."""
    P, E = traces.shape[:2]
    w = weights.reshape((P, E) + (1,) * (traces.ndim - 2))
    total = w[:, 0] * traces[:, 0]
    for e in range(1, E):
        total += w[:, e] * traces[:, e]
    return total


def _scale(trace: np.ndarray, factor: np.ndarray) -> None:
    """trace[p, e, ...] *= factor[b] in place, b = p*E + e."""
    P, E = trace.shape[:2]
    trace *= factor.reshape((P, E) + (1,) * (trace.ndim - 2))


def add_score(trace: np.ndarray, x, g: np.ndarray, mask: np.ndarray, linear: bool) -> None:
    """trace += mask * (outer(x, g) if linear else g)."""
    if linear:
        x.add_outer(trace, g, mask)
    else:
        trace += (mask[:, None] * g).reshape(trace.shape)


def apply_traces(param: np.ndarray, weights: np.ndarray, trace: np.ndarray, mask: np.ndarray,
                 scratch: dict | None = None) -> None:
    """param[p] += sum_e weights[p, e] * trace[p, e] over masked environments, in index order.

    With one environment per trial this is an elementwise update (the common case, and
    most of an engine's time): a gather of the masked rows when they are few, else one
    dense pass through a buffer reused from the caller's ``scratch`` (a unit's workspace;
    nothing module-global).  Otherwise a fixed-order sum over each trial's environments.
    """
    P, E = trace.shape[:2]
    if E > 1:
        param += _group_sum(np.where(mask, weights, 0.0), trace)
        return
    rows = np.flatnonzero(mask)
    if rows.size * 8 < P:
        param[rows] += weights[rows].reshape((-1,) + (1,) * (trace.ndim - 2)) * trace[rows, 0]
        return
    buffer = None if scratch is None else scratch.get(param.shape)
    if buffer is None:
        buffer = np.empty(param.shape)
        if scratch is not None:
            scratch[param.shape] = buffer
    np.multiply(np.where(mask, weights, 0.0).reshape((-1,) + (1,) * (trace.ndim - 2)), trace[:, 0], out=buffer)
    param += buffer


class ScaledTraces:
    """Eligibility traces stored as ``scale[b] * stored[b]``: decaying a trace is O(1) per env.

    Keys in a rule's state: ``z.NAME`` (stored traces, ``(P, E, ...)``) and ``z_scale`` (B,).
    A scale that falls below ``floor`` is folded back into its stored rows.
    """

    floor = 1e-150

    @staticmethod
    def init(state: ArrayDict, batch: int) -> None:
        state.add("z_scale", np.ones(batch), ENV)

    @staticmethod
    def decay(state: dict, factor: np.ndarray, mask: np.ndarray) -> None:
        scale = state["z_scale"]
        np.multiply(scale, np.where(mask, factor, 1.0), out=scale)
        tiny = scale < ScaledTraces.floor
        if tiny.any():
            rows = np.flatnonzero(tiny)
            for k, v in state.items():
                if k.startswith("z."):
                    P, E = v.shape[:2]
                    flat = v.reshape((P * E,) + v.shape[2:])
                    flat[rows] *= scale[rows].reshape((-1,) + (1,) * (flat.ndim - 1))
            scale[rows] = 1.0

    @staticmethod
    def add(state: dict, name: str, x, g: np.ndarray, mask: np.ndarray, linear: bool) -> None:
        add_score(state[name], x, g / state["z_scale"][:, None], mask, linear)

    @staticmethod
    def apply(state: dict, name: str, param: np.ndarray, weights: np.ndarray, mask: np.ndarray,
              scratch: dict | None = None) -> None:
        apply_traces(param, weights * state["z_scale"], state[name], mask, scratch)

    @staticmethod
    def reset(state: dict, mask: np.ndarray) -> None:
        rows = np.flatnonzero(mask)
        for k, v in state.items():
            if k.startswith("z."):
                P, E = v.shape[:2]
                v.reshape((P * E,) + v.shape[2:])[rows] = 0.0
        state["z_scale"][rows] = 1.0


class LearningRule:
    """Base class: a rule that does not learn (frozen parameters).

    ``unit`` gives a hook the coagent's view (its stream, clocks, parameters, encoder);
    ``state`` is the rule's own, from ``init``.
    """

    kind = "frozen"
    uses_shared_critic = False

    def __repr__(self) -> str:  # the frozen rule is every Coagent's default (the rules below are dataclasses)
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"

    def __eq__(self, other) -> bool:  # the same kind with the same settings (a subclass may have some)
        if type(other) is not type(self):
            return False
        try:
            return other is self or bool(vars(self) == vars(other))
        except ValueError:  # settings that do not compare to one bool (arrays)
            return False

    def __hash__(self) -> int:
        return hash(type(self))

    def init(self, unit) -> ArrayDict:
        return ArrayDict()

    def close(self, unit, state, mask, v_next):
        pass

    def open(self, unit, state, x, mask, score, shared_value):
        pass

    def value_next(self, unit, state, x, shared_value):
        return np.zeros(unit.batch)

    def finish(self, unit, state, mask):
        pass

    def reset(self, unit, state, mask):
        pass

    def learned_names(self) -> tuple[str, ...]:
        """The names of the per-trial arrays this rule learns besides the policy (``learned``)."""
        return ()

    def learned(self, state) -> dict[str, np.ndarray]:
        """Per-trial arrays this rule learns besides the policy (reported with the parameters)."""
        return {name: state[name] for name in self.learned_names()}

    def to_config(self) -> dict:
        return {"kind": self.kind}


@dataclass(frozen=True)
class ActorCritic(LearningRule):
    """Actor-critic(lambda) on the SMDP reward stream (SPEC §3a), own or shared critic.

    delta_j = Rbar_j + gamma_atomic**Delta_j V(x_{j+1}) - V(x_j);
    z_j = (gamma_atomic*lambda)**Delta_{j-1} z_{j-1} + grad ln pi(u_j | x_j);
    theta += actor_step * delta_j * z_j, and likewise for an own critic's weights.
    """

    actor_step: float = 0.1
    critic_step: float = 0.1
    lam: float = 0.7
    critic: str = "shared"  # "shared": the network's critic over the environment state; "own": V(x)
    kind = "actor_critic"

    def __post_init__(self):
        step(self.actor_step, "rule.actor_step")
        step(self.critic_step, "rule.critic_step")
        lam(self.lam, "rule.lam")
        if self.critic not in ("shared", "own"):
            raise ValueError(f"rule.critic: expected 'shared' or 'own', got {self.critic!r}")

    @property
    def uses_shared_critic(self):
        return self.critic == "shared"

    def init(self, unit):
        P, E, B = unit.trials, unit.envs_per_trial, unit.batch
        state = ArrayDict()
        for k, v in unit.params.items():
            state.add(f"z.{k}", np.zeros((P, E) + v.shape[1:]), TRIAL)
        if self.critic == "own":
            state.add("critic", np.zeros((P, unit.encoder.size, 1)), TRIAL)  # V(x) = x . critic
            state.add("z.critic_w", np.zeros((P, E, unit.encoder.size, 1)), TRIAL)
        state.add("v_last", np.zeros(B), ENV)
        ScaledTraces.init(state, B)
        return state

    def learned_names(self):
        return ("critic",) if self.critic == "own" else ()

    def _value(self, state, x):
        return x.linear(state["critic"])[:, 0]

    def close(self, unit, state, mask, v_next):
        st = state
        delta = np.where(mask, unit.stream_reward + unit.stream_discount * v_next - st["v_last"], 0.0)
        unit.check_finite(delta, "TD error")
        with np.errstate(over="ignore", invalid="ignore"):  # divergence is reported by check_finite
            for k in unit.policy_param_names:
                ScaledTraces.apply(st, f"z.{k}", unit.params[k], self.actor_step * delta, mask, unit.scratch)
            if self.critic == "own":
                ScaledTraces.apply(st, "z.critic_w", st["critic"], self.critic_step * delta, mask, unit.scratch)
        unit.count_updates(mask, delta)

    def open(self, unit, state, x, mask, score, shared_value):
        st = state
        elapsed = unit.episode_tick - unit.last_execution_tick
        # (gamma_atomic * lambda) ** Delta_{j-1}; a first execution finds its traces reset to 0
        decay = (unit.gamma_atomic * self.lam) ** elapsed
        ScaledTraces.decay(st, decay, mask & unit.executed_this_episode)
        for k in unit.policy_param_names:
            ScaledTraces.add(st, f"z.{k}", x, score[k], mask, k in unit.policy.linear_params)
        if self.critic == "own":
            ScaledTraces.add(st, "z.critic_w", x, np.ones((mask.shape[0], 1)), mask, True)
            v_now = self._value(st, x)
        else:
            v_now = shared_value
        st["v_last"] = np.where(mask, v_now, st["v_last"])

    def value_next(self, unit, state, x, shared_value):
        """V(x_{j+1}) used to close execution j when the coagent executes again."""
        return self._value(state, x) if self.critic == "own" else shared_value

    def reset(self, unit, state, mask):
        ScaledTraces.reset(state, mask)

    def to_config(self):
        return {"kind": self.kind, "actor_step": self.actor_step, "critic_step": self.critic_step,
                "lam": self.lam, "critic": self.critic}


@dataclass(frozen=True)
class Reinforce(LearningRule):
    """Episodic REINFORCE (SPEC §2, Eq. 1): theta += step * sum_j g**t_j (G_{t_j} - b) grad ln pi.

    Computed online from the stream without storing the episode: with
    e_j = sum_{k<=j} grad_k, sum_j g**t_j G_{t_j} grad_j = sum_j g**t_j Rbar_j e_j.
    The optional baseline b is a running mean (rate ``baseline_step``) of the
    discounted return seen from the coagent's first execution; a constant baseline
    keeps the update unbiased.
    """

    step: float = 0.01
    baseline: bool = False
    baseline_step: float = 0.05
    kind = "reinforce"

    def __post_init__(self):
        step(self.step, "rule.step")
        step(self.baseline_step, "rule.baseline_step")
        flag(self.baseline, "rule.baseline")

    def init(self, unit):
        P, E, B = unit.trials, unit.envs_per_trial, unit.batch
        state = ArrayDict()
        for k, v in unit.params.items():
            state.add(f"e.{k}", np.zeros((P, E) + v.shape[1:]), TRIAL)  # sum of scores so far
            state.add(f"f.{k}", np.zeros((P, E) + v.shape[1:]), TRIAL)  # sum of g**t_j scores
            state.add(f"acc.{k}", np.zeros((P, E) + v.shape[1:]), TRIAL)  # sum of g**t_j Rbar_j e_j
        state.add("start_discount", np.zeros(B), ENV)  # g**t_j of the open execution
        state.add("return_from_first", np.zeros(B), ENV)
        state.add("first_discount", np.zeros(B), ENV)
        state.add("baseline", np.zeros((P,)), TRIAL)
        return state

    def learned_names(self):
        return ("baseline",)

    def close(self, unit, state, mask, v_next):
        st = state
        weight = np.where(mask, st["start_discount"] * unit.stream_reward, 0.0)
        unit.check_finite(weight, "discounted reward")
        st["return_from_first"] += np.where(mask, weight / np.where(st["first_discount"] > 0,
                                                                     st["first_discount"], 1.0), 0.0)
        for k in unit.policy_param_names:
            st[f"acc.{k}"] += (weight.reshape(st[f"acc.{k}"].shape[:2] + (1,) * (st[f"acc.{k}"].ndim - 2))
                               * st[f"e.{k}"])

    def open(self, unit, state, x, mask, score, shared_value):
        st = state
        discount_now = unit.gamma_atomic ** unit.episode_tick
        st["start_discount"] = np.where(mask, discount_now, st["start_discount"])
        st["first_discount"] = np.where(mask & ~unit.executed_this_episode, discount_now, st["first_discount"])
        for k in unit.policy_param_names:
            linear = k in unit.policy.linear_params
            add_score(st[f"e.{k}"], x, score[k], mask, linear)
            add_score(st[f"f.{k}"], x, score[k] * discount_now[:, None], mask, linear)

    def episode_gradient(self, unit, state, k: str) -> np.ndarray:
        """Per-environment estimate sum_j g**t_j (G_{t_j} - b) grad_j of the finished episode."""
        st = state
        b = np.repeat(st["baseline"], unit.envs_per_trial) if self.baseline else np.zeros(unit.batch)
        f = st[f"f.{k}"]
        return st[f"acc.{k}"] - b.reshape(f.shape[:2] + (1,) * (f.ndim - 2)) * f

    def finish(self, unit, state, mask):
        """At an episode's end: apply the update and move the baseline."""
        st = state
        if self.step > 0:
            norm = np.zeros(unit.batch)
            for k in unit.policy_param_names:
                gradient = self.episode_gradient(unit, st, k)
                apply_traces(unit.params[k], np.full(unit.batch, self.step), gradient, mask, unit.scratch)
                norm += np.square(gradient.reshape(unit.batch, -1)).sum(axis=1)
            unit.count_updates(mask, self.step * np.sqrt(norm))
        if self.baseline:
            P, E = unit.trials, unit.envs_per_trial
            seen = (mask & (st["first_discount"] > 0)).reshape(P, E)
            for e in range(E):  # environments in index order: deterministic
                st["baseline"] += np.where(
                    seen[:, e], self.baseline_step * (st["return_from_first"].reshape(P, E)[:, e]
                                                      - st["baseline"]), 0.0)

    def reset(self, unit, state, mask):
        st = state
        for k, v in st.items():
            if k.startswith(("e.", "f.", "acc.")):
                _scale(v, ~mask)
        for k in ("return_from_first", "first_discount", "start_discount"):
            st[k] = np.where(mask, 0.0, st[k])

    def to_config(self):
        return {"kind": self.kind, "step": self.step, "baseline": self.baseline,
                "baseline_step": self.baseline_step}


RULES = {"actor_critic": ActorCritic, "reinforce": Reinforce, "frozen": LearningRule}


def _expected_score(policy, stats, probs: np.ndarray, score: dict, weight: np.ndarray) -> tuple[np.ndarray, dict]:
    """(sampled output per row, sum_u weight[:, u] grad ln pi(u | x)) for a discrete policy.

    A hook sees grad ln pi(u | x) of the sampled u only; u is recovered from it: for a softmax
    the score is onehot(u) - pi, for a bernoulli u - p.  Another discrete policy: u is the
    output whose score is nearest (equal, up to rounding) and the sum is taken output by output."""
    from .policies import Bernoulli, Softmax

    if isinstance(policy, Softmax):
        u = np.argmax(score["W"] + probs, axis=1)
        return u, {"W": weight - probs * weight.sum(axis=1, keepdims=True)}
    if isinstance(policy, Bernoulli):
        u = np.rint(score["W"][:, 0] + probs[:, 1]).astype(np.int64)
        return u, {"W": (weight[:, 1] - probs[:, 1] * weight.sum(axis=1))[:, None]}
    rows, n = probs.shape
    every = [policy.score(stats, np.full(rows, k, dtype=np.int64)) for k in range(n)]
    gap = np.stack([sum(np.abs(s[key] - score[key]).reshape(rows, -1).sum(axis=1) for key in score)
                    for s in every], axis=1)
    return gap.argmin(axis=1), {key: sum(weight[:, [k]] * every[k][key] for k in range(n)) for key in score}


def _add_rows(param: np.ndarray, x, g: np.ndarray, rows: np.ndarray, envs_per_trial: int) -> None:
    """param[trial of b] += outer(x_b, g_b) for b in ``rows``, summed in environment order."""
    from .features import TabularState

    trial = rows // envs_per_trial
    if isinstance(x, TabularState):
        np.add.at(param, (trial, x.index[rows]), g)
    else:
        np.add.at(param, trial, x.phi[rows, :, None] * g[:, None, :])


@dataclass(frozen=True)
class ExpectedActorCritic(LearningRule):
    """Expected (all-outputs) actor-critic with the coagent's own action-value critic Q(x, u).

    The critic is linear in the local state, one column per output, and learns by SMDP
    expected SARSA(lambda) on the reward stream (SPEC §3a):
        delta_j = Rbar_j + gamma_atomic**Delta_j V(x_{j+1}) - Q(x_j, u_j),  V(x) = sum_u pi(u|x) Q(x, u);
    with critic traces z_j = (gamma_atomic*lambda)**Delta_{j-1} z_{j-1} + grad_q Q(x_j, u_j).
    At every execution the actor follows the expected policy gradient over all outputs,
        theta += actor_step * sum_u pi(u|x_j) (Q(x_j, u) - cost_u - V~(x_j)) grad ln pi(u|x_j),
    V~ the same mean of Q - cost (a baseline: it changes nothing in expectation).  ``costs``
    (one per output, default none) is paid in the actor only: Bacon et al.'s termination
    regulariser xi is ``costs = (0, xi)`` on a termination coagent (output 1: stop).
    Discrete policies (softmax, bernoulli) only.  With its critic exact, the expected update
    of a coagent is its block of the ACPGT gradient (docs/option-critic.md).
    """

    actor_step: float = 1.0
    critic_step: float = 0.5
    lam: float = 0.0
    costs: tuple[float, ...] = ()
    initial_value: float = 0.0
    kind = "expected_actor_critic"

    def __post_init__(self):
        step(self.actor_step, "rule.actor_step")
        step(self.critic_step, "rule.critic_step")
        lam(self.lam, "rule.lam")
        real(self.initial_value, "rule.initial_value")
        costs = tuple(float(c) for c in np.ravel(self.costs))
        if not all(np.isfinite(costs)):
            raise ValueError(f"rule.costs: expected finite numbers, got {self.costs!r}")
        object.__setattr__(self, "costs", costs)
        if not np.isfinite(self.initial_value):
            raise ValueError(f"rule.initial_value: expected a finite number, got {self.initial_value!r}")

    def init(self, unit):
        space = unit.output_space
        if not space.discrete or any(k not in unit.policy.linear_params for k in unit.policy_param_names):
            raise ValueError(f"coagent {unit.name!r}: rule {self.kind!r} needs a discrete policy "
                             f"(softmax, bernoulli), got {unit.policy.name!r}")
        if self.costs and len(self.costs) != space.n:
            raise ValueError(f"coagent {unit.name!r}: rule.costs has {len(self.costs)} entries, "
                             f"expected one per output ({space.n})")
        P, E, B, n = unit.trials, unit.envs_per_trial, unit.batch, unit.encoder.size
        state = ArrayDict()
        q = np.zeros((P, n, space.n))
        if self.initial_value:  # Q(x, u) = initial_value for every local state (the bias, if features)
            q[:, -1 if not unit.encoder.tabular else slice(None)] = self.initial_value
        state.add("q", q, TRIAL)
        state.add("q_last", np.zeros(B), ENV)
        if self.one_step(unit):
            state.add("x_last", np.zeros(B, dtype=np.int64), ENV)
            state.add("u_last", np.zeros(B, dtype=np.int64), ENV)
        else:
            state.add("z.q", np.zeros((P, E, n, space.n)), TRIAL)
            ScaledTraces.init(state, B)
        return state

    def one_step(self, unit) -> bool:
        """lambda = 0 on a tabular local state: remember (x_j, u_j) and update that one entry
        instead of keeping a dense trace (the same numbers, far fewer operations)."""
        return self.lam == 0 and unit.encoder.tabular

    def learned_names(self):
        return ("q",)

    def values(self, unit, state, x, rows=None) -> tuple[np.ndarray, np.ndarray]:
        """(pi(.|x), Q(x, .)) for environments ``rows`` (default all): shapes (R, n)."""
        probs = unit.policy.probabilities(unit.policy.forward(unit.params, x, rows))
        return probs, x.linear(state["q"], rows)

    def value_next(self, unit, state, x, shared_value):
        """V(x_{j+1}) = sum_u pi(u | x_{j+1}) Q(x_{j+1}, u): the expected-SARSA bootstrap."""
        probs, q = self.values(unit, state, x)
        return (probs * q).sum(axis=1)

    def close(self, unit, state, mask, v_next):
        st = state
        delta = np.where(mask, unit.stream_reward + unit.stream_discount * v_next - st["q_last"], 0.0)
        unit.check_finite(delta, "TD error")
        with np.errstate(over="ignore", invalid="ignore"):
            if "x_last" in st:
                rows = np.flatnonzero(mask)
                np.add.at(st["q"], (rows // unit.envs_per_trial, st["x_last"][rows], st["u_last"][rows]),
                          self.critic_step * delta[rows])
            else:
                ScaledTraces.apply(st, "z.q", st["q"], self.critic_step * delta, mask, unit.scratch)
        unit.count_updates(mask, delta)

    def open(self, unit, state, x, mask, score, shared_value):
        st = state
        rows = np.flatnonzero(mask)
        if rows.size == 0:
            return
        stats = unit.policy.forward(unit.params, x, rows)
        probs = unit.policy.probabilities(stats)
        q = x.linear(st["q"], rows)
        with np.errstate(over="ignore", invalid="ignore"):  # a non-finite update is reported below, by name
            shaped = q - np.asarray(self.costs) if self.costs else q
            advantage = shaped - (probs * shaped).sum(axis=1, keepdims=True)
            u, gradient = _expected_score(unit.policy, stats, probs, {k: g[rows] for k, g in score.items()},
                                          self.actor_step * probs * advantage)
        st["q_last"][rows] = q[np.arange(rows.size), u]
        # critic: decay (a first execution finds its traces reset to 0), add grad_q Q(x_j, u_j)
        if "x_last" in st:
            st["x_last"][rows], st["u_last"][rows] = x.index[rows], u
        else:
            running = mask & unit.executed_this_episode
            if self.lam > 0:
                elapsed = np.where(running, unit.episode_tick - unit.last_execution_tick, 0)
                ScaledTraces.decay(st, (unit.gamma_atomic * self.lam) ** elapsed, running)
            else:
                ScaledTraces.reset(st, running)
            onehot = np.zeros((unit.batch, probs.shape[1]))
            onehot[rows, u] = 1.0
            ScaledTraces.add(st, "z.q", x, onehot, mask, True)
        # actor: the expected policy gradient over all outputs
        for k, g in gradient.items():
            unit.check_finite(g, "actor update", rows)
            _add_rows(unit.params[k], x, g, rows, unit.envs_per_trial)

    def reset(self, unit, state, mask):
        if "z_scale" in state:
            ScaledTraces.reset(state, mask)

    def to_config(self):
        return {"kind": self.kind, "actor_step": self.actor_step, "critic_step": self.critic_step,
                "lam": self.lam, "costs": list(self.costs), "initial_value": self.initial_value}


RULES["expected_actor_critic"] = ExpectedActorCritic
