"""Exact J and dJ/dtheta of a tabular coagent network on an environment with a transition model.

The asynchronous network's hidden state -- every coagent's previous output -- and
the tick's phase are folded into the state of a finite Markov chain:

    chain state c = (phase, env state s, previous outputs U_{t-1} of all coagents)

At each chain state the joint outcome of one atomic tick (which coagents execute,
what they emit, in topological order; a coagent that does not execute holds its
previous output) is enumerated with its probability; then, at environment-step
ticks, the environment moves with the action and pays ``R[s, a]`` (SPEC §3a).
Terminal environment states are absorbing with value 0.  With per-tick discount
``gamma_atomic``:

    v = r + gamma_atomic T v,   J = mu0 . v,   d = mu0 (I - gamma_atomic T)^-1,
    dJ/dtheta = sum_c d(c) sum_o p(o | c) score(o) (r(c, o) + gamma_atomic E[v(c') | c, o]),

where ``score(o)`` sums grad ln pi_i(u_i | x_i) over the coagents that executed in
``o`` -- the ACPGT's "only executions count", here exact.  The phase is the episode
tick modulo lcm(ticks_per_step, periods); a separate start phase is added when an
execution function treats the episode's first tick specially (``Driven``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from ..envs import make_batch
from ..execution import AfterStart, Constant, Driven, Function, Periodic, Table
from ..features import FeatureState, TabularState
from ..network import Network
from ..tick import NetworkBatch
from .common import Gradient, freeze, normalize_params


class NotExactError(ValueError):
    """The network or environment cannot be evaluated exactly; the message says why."""


@dataclass
class ExactResult:
    """J, dJ/dtheta per coagent (parameter shapes), and the size of the reachable chain."""

    J: float
    gradient: Gradient | None
    n_states: int


def transition_model(env_id: str, env_kwargs: dict | None = None, env=None):
    """(P[s, a, s'], R[s, a], d0[s], terminal[s]) of an environment, or NotExactError."""
    own = env is None
    env = make_batch(env_id, 1, 0, **dict(env_kwargs or {})) if own else env
    try:
        states, actions = getattr(env.observation_space, "n", None), getattr(env.action_space, "n", None)
        if states is not None and actions is not None:  # the model is dense: states x actions x states
            from ..limits import check_array_bytes

            check_array_bytes(8 * int(states) ** 2 * int(actions), "--exact",
                              f"the dense transition model of {env_id} ({states} states x {actions} actions x "
                              f"{states} states x 8 B)")
        P, R, d0, terminal = env.transition_model()
    except (TypeError, AttributeError, NotImplementedError) as error:
        raise NotExactError(f"env {env_id!r}: no transition model, so J cannot be computed exactly "
                            f"({error}); expose transition_model() -> (P, R, d0, terminal) on the "
                            "environment, or drop --exact") from None
    finally:
        if own:
            env.close()
    return (np.asarray(P, dtype=np.float64), np.asarray(R, dtype=np.float64),
            np.asarray(d0, dtype=np.float64), np.asarray(terminal, dtype=bool)), env


class _Chain:
    """The folded Markov chain of one network on one environment model."""

    def __init__(self, network: Network, env_id: str, env_kwargs: dict | None, seed: int = 0):
        env = make_batch(env_id, 1, 0, **dict(env_kwargs or {}))
        self.network = network
        self.batch = NetworkBatch(freeze(network), env.observation_space, 1, 1, seed,
                                  action_space=env.action_space)
        if len(network.action_coagents) != 1:
            raise NotExactError(f"action: exact evaluation needs one action coagent, got "
                                f"{network.action_coagents}")
        self.order = list(network.order)
        self.K = []
        for name in self.order:
            unit = self.batch.units[name]
            if not unit.output_space.discrete:
                raise NotExactError(f"coagents.{name}: policy {unit.policy.name!r} has continuous outputs; "
                                    "exact evaluation needs discrete outputs (softmax, bernoulli)")
            if not all(s.discrete for s in unit.encoder.spaces):
                raise NotExactError(f"coagents.{name}: continuous inputs; exact evaluation needs every "
                                    "input discrete (a tabular observation and discrete coagent outputs)")
            self.K.append(unit.output_space.n)
            self._check_execution(name, unit.coagent.execution)
        if not hasattr(env.observation_space, "n"):
            raise NotExactError(f"env {env_id!r}: observation space {env.observation_space} is not "
                                "Discrete; exact evaluation needs a tabular state")
        (self.P, self.R, self.d0, self.terminal), _ = transition_model(env_id, env_kwargs, env)
        env.close()
        n_s = int(env.observation_space.n)
        if self.P.shape[0] != n_s or self.P.shape[2] != n_s or self.R.shape != self.P.shape[:2]:
            raise NotExactError(f"env {env_id!r}: transition model shapes P{self.P.shape}, R{self.R.shape} "
                                f"do not match {n_s} states")
        self.n_s = n_s
        periods = [c.execution.period for c in network.coagents if isinstance(c.execution, Periodic)]
        self.m = network.ticks_per_step
        self.L = math.lcm(self.m, *periods) if periods else self.m
        self.has_start = any((isinstance(c.execution, Driven) and c.execution.at_episode_start)
                             or isinstance(c.execution, AfterStart) for c in network.coagents)
        # phase index -> the episode tick an execution function is shown, and its tick mod L
        self.phase_tick = np.array([k if k else self.L for k in range(self.L)] + ([0] if self.has_start else []))
        self.phase_mod = np.array(list(range(self.L)) + ([0] if self.has_start else []))
        self.n_prev = int(np.prod(self.K))
        self.radix = np.array([int(np.prod(self.K[i + 1:])) for i in range(len(self.K))], dtype=np.int64)
        self.n_states = len(self.phase_tick) * n_s * self.n_prev
        self.start_phase = self.L if self.has_start else 0
        self.gamma_atomic = network.gamma_atomic

    @staticmethod
    def _check_execution(name, execution):
        if isinstance(execution, (Constant, Periodic, Table, Driven)):
            return
        if isinstance(execution, Function):
            return  # fn(local state) only: folded by evaluating it on every local state
        raise NotExactError(f"coagents.{name}.execution: {type(execution).__name__} cannot be folded into "
                            "a finite chain; supported: constant, periodic, table, driven, function(x)")

    # ------------------------------------------------------------------ enumeration
    def _decode(self, c):
        prev_code = c % self.n_prev
        s = (c // self.n_prev) % self.n_s
        phase = c // (self.n_prev * self.n_s)
        prev = (prev_code[:, None] // self.radix[None, :]) % np.array(self.K)[None, :]
        return phase, s, prev

    def _inputs(self, name, s, prev, outs):
        idx = {n: i for i, n in enumerate(self.order)}
        values = []
        for raw in self.batch.units[name].coagent.inputs:
            if raw == "obs":
                values.append(s)
            elif raw.startswith("prev:"):
                values.append(prev[:, idx[raw[5:]]])
            else:
                values.append(outs[:, idx[raw]])
        return values

    def outcomes(self, params: Gradient):
        """Every (chain state, joint outcome) with p > 0: rows of c, p, outputs, executed."""
        self.batch_params(params)
        c = np.arange(self.n_states)
        phase, s, prev = self._decode(c)
        p = np.ones(self.n_states)
        outs = np.full(prev.shape, -1, dtype=np.int64)
        execs = np.zeros(prev.shape, dtype=bool)
        for i, name in enumerate(self.order):
            unit = self.batch.units[name]
            x = unit.encoder(self._inputs(name, s, prev, outs))
            drivers = {d: outs[:, self.order.index(d)] for d in unit.coagent.execution.drivers}
            try:
                beta = np.broadcast_to(np.asarray(unit.coagent.execution.beta(
                    x, self.phase_tick[phase], drivers), dtype=np.float64), p.shape)
            except Exception as error:  # a Function that cannot be evaluated on local states
                raise NotExactError(f"coagents.{name}.execution: cannot evaluate it on every local "
                                    f"state ({error})") from None
            probs = unit.policy.probabilities(unit.policy.forward(unit.params, x))
            pieces = [(p * (1.0 - beta), prev[:, i], False)]
            pieces += [(p * beta * probs[:, u], np.full(p.shape, u), True) for u in range(self.K[i])]
            rows = [np.flatnonzero(w > 0) for w, _, _ in pieces]
            take = np.concatenate(rows)
            new_p = np.concatenate([w[r] for (w, _, _), r in zip(pieces, rows)])
            new_out = np.concatenate([o[r] for (_, o, _), r in zip(pieces, rows)])
            new_exec = np.concatenate([np.full(len(r), e) for (_, _, e), r in zip(pieces, rows)])
            c, phase, s, prev, outs, execs = c[take], phase[take], s[take], prev[take], outs[take], execs[take]
            outs[:, i], execs[:, i], p = new_out, new_exec, new_p
        return c, phase, s, prev, p, outs, execs

    def batch_params(self, params: Gradient):
        for name, group in params.items():
            for k, arr in group.items():
                self.batch.units[name].params[k] = np.asarray(arr, dtype=np.float64)[None].copy()

    def evaluate(self, params: Gradient, gradient: bool = True) -> ExactResult:
        c, phase, s, prev, p, outs, execs = self.outcomes(params)
        a = outs[:, self.order.index(self.network.action_coagents[0])]
        stepped = (self.phase_mod[phase] + 1) % self.m == 0
        next_phase = (self.phase_mod[phase] + 1) % self.L
        reward = np.where(stepped, self.R[s, a], 0.0)
        # successor environment states: P[s, a, :] at step ticks, s itself otherwise
        probs_next = np.where(stepped[:, None], self.P[s, a], np.eye(self.n_s)[s])
        row, s_next = np.nonzero(probs_next)
        weight = probs_next[row, s_next]
        keep = ~self.terminal[s_next] | ~stepped[row]
        row, s_next, weight = row[keep], s_next[keep], weight[keep]
        c_next = (next_phase[row] * self.n_s + s_next) * self.n_prev + outs[row] @ self.radix
        N = self.n_states
        T = sp.csr_matrix((p[row] * weight, (c[row], c_next)), shape=(N, N))
        r = np.bincount(c, weights=p * reward, minlength=N)
        mu0 = self._initial()
        reach = self._reachable(T, mu0)
        A = (sp.identity(len(reach), format="csc") - self.gamma_atomic * T[reach][:, reach]).tocsc()
        v = np.zeros(N)
        v[reach] = spla.spsolve(A, r[reach])
        if not np.all(np.isfinite(v)):
            raise NotExactError("the chain does not terminate (singular system): with gamma = 1 every "
                                "policy must reach a terminal state")
        J = float(mu0 @ v)
        if not gradient:
            return ExactResult(J, None, len(reach))
        d = np.zeros(N)
        d[reach] = spla.spsolve(A.T.tocsc(), mu0[reach])
        q = reward + self.gamma_atomic * np.bincount(row, weights=weight * v[c_next], minlength=len(p))
        w = d[c] * p * q
        return ExactResult(J, self.weighted_scores(w, s, prev, outs, execs), len(reach))

    def weighted_scores(self, w, s, prev, outs, execs) -> dict:
        """Per coagent and parameter: the sum over (augmented state, choice) rows where it executes of
        ``w[row] * grad ln pi(its output | its local state)`` (the gradient, for the right weights)."""
        grads = {}
        for i, name in enumerate(self.order):
            unit = self.batch.units[name]
            rows = np.flatnonzero(execs[:, i] & (w != 0))
            x = unit.encoder(self._inputs(name, s[rows], prev[rows], outs[rows]))
            score = unit.policy.score(unit.policy.forward(unit.params, x), outs[rows, i])
            grads[name] = {}
            for k in unit.policy_param_names:
                g = score[k] * w[rows].reshape((-1,) + (1,) * (score[k].ndim - 1))
                total = np.zeros(unit.params[k].shape[1:])
                if k in unit.policy.linear_params and isinstance(x, TabularState):
                    np.add.at(total, x.index, g)
                elif k in unit.policy.linear_params and isinstance(x, FeatureState):
                    total += x.phi.T @ g
                else:
                    total += g.sum(axis=0)
                grads[name][k] = total
        return grads

    def _initial(self):
        """mu0(c): d0 over states, U_{-1} ~ h_i independently, at the start phase."""
        phase, s, prev = self._decode(np.arange(self.n_states))
        mu = np.where((phase == self.start_phase) & ~self.terminal[s], self.d0[s], 0.0)
        for i, name in enumerate(self.order):
            initial = self.batch.units[name].coagent.initial
            if initial == "uniform":
                h = np.full(self.K[i], 1.0 / self.K[i])
            elif isinstance(initial, tuple):
                h = np.asarray(initial, dtype=np.float64)
            else:  # "zeros": output 0
                h = np.eye(self.K[i])[0]
            mu = mu * h[prev[:, i]]
        return mu

    @staticmethod
    def _reachable(T, mu0):
        seen = mu0 > 0
        frontier = seen.copy()
        Tb = (T != 0).T.tocsr().astype(np.int8)
        while frontier.any():
            nxt = (Tb @ frontier.astype(np.int8)) > 0
            frontier = nxt & ~seen
            seen |= nxt
        return np.flatnonzero(seen)


def exact(network: Network, env_id: str, env_kwargs: dict | None = None, params: dict | None = None,
          gradient: bool = True, seed: int = 0) -> ExactResult:
    """Exact J (and dJ/dtheta) at ``params`` (default: the network's initial parameters, trial 0).

    >>> from distcoagent.coagent import Coagent
    >>> from distcoagent.policies import Softmax
    >>> net = Network([Coagent("a", ["obs"], Softmax(4))], action="a", gamma=0.9)
    >>> r = exact(net, "distcoagent/GridWorld-v0", {"size": 2, "max_steps": None})
    >>> round(r.J, 6), r.gradient["a"]["W"].shape
    (-4.968944, (4, 4))
    """
    chain = _Chain(network, env_id, env_kwargs, seed)
    return chain.evaluate(normalize_params(chain.batch, params), gradient)


def exact_central_differences(network: Network, env_id: str, env_kwargs: dict | None = None,
                              params: dict | None = None, step: float = 1e-5, seed: int = 0) -> Gradient:
    """(J(theta + h e_k) - J(theta - h e_k)) / 2h for every policy parameter, J exact.

    At the estimators' step h this is exactly the expectation of the sampled
    finite-difference estimate; at small h it checks the exact gradient.
    """
    chain = _Chain(network, env_id, env_kwargs, seed)
    base = normalize_params(chain.batch, params)
    out = {}
    for name, group in base.items():
        out[name] = {}
        for k, arr in group.items():
            g = np.zeros(arr.shape)
            for j in np.ndindex(arr.shape):
                values = []
                for sign in (1.0, -1.0):
                    shifted = {n: {kk: v.copy() for kk, v in grp.items()} for n, grp in base.items()}
                    shifted[name][k][j] += sign * step
                    values.append(chain.evaluate(shifted, gradient=False).J)
                g[j] = (values[0] - values[1]) / (2 * step)
            out[name][k] = g
    return out
