"""A coagent: its definition (``Coagent``) and its running state over a batch (``CoagentUnit``).

``Coagent`` is a frozen description: name, declared inputs, policy, execution
function, learning rule, features, initial-output distribution.  ``CoagentUnit``
runs one coagent over a batch of ``trials x envs_per_trial`` environments: it owns
the parameters (one copy per trial), the rule's state, the reward stream since its
last execution, its clock and its counters.  Only the coagent side of a tick
(``tick.CoagentSide``) calls ``begin_episode``, ``act`` and ``observe``; both engines
run that same side.  Every evolving array declares its batch axis in ``FIELDS``.

Inputs are named ``"obs"`` (the environment observation), ``"NAME"`` (coagent NAME's
output at this tick; NAME must come earlier) or ``"prev:NAME"`` (NAME's output at
the previous tick, any coagent, itself included).
"""
from __future__ import annotations

import reprlib
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from . import batched, kernels
from .batched import ENV, FIELDS_OF, TRIAL, ArrayDict
from .checks import is_number
from .execution import Constant, Execution
from .features import Encoder, InputSpace, ObservationFeatures
from .policies import Policy
from .rng import Stream, categorical
from .rules import LearningRule

EXECUTION_SLOT = 0
INITIAL_OUTPUT_SLOT = 48


class NonFiniteError(FloatingPointError):
    """A NaN or infinity reached a coagent; names the coagent and the tick."""


MAX_NAME = 64  # a coagent's name: in Ray actor names, metrics labels and every message about it


def check_name(name: str, where: str) -> None:
    """A coagent's name: at most ``MAX_NAME`` printable characters (no newline, zero-width or
    direction-changing character), not 'obs', no ':' (SpecError naming ``where``)."""
    from .network import SpecError

    if len(name) > MAX_NAME or not name.isprintable():
        raise SpecError(f"{where}: expected a name of at most {MAX_NAME} printable characters, got "
                        f"{reprlib.repr(name)}")
    if name == "obs" or ":" in name:
        raise SpecError(f"{where}: {name!r} is not allowed ('obs' or containing ':')")


def parse_input(name: str) -> tuple[str, str]:
    """'obs' -> ('obs', ''); 'prev:a' -> ('prev', 'a'); 'a' -> ('cur', 'a')."""
    if name == "obs":
        return "obs", ""
    if name.startswith("prev:"):
        return "prev", name[5:]
    return "cur", name


@dataclass(frozen=True)
class Coagent:
    """One coagent of a network.

    name: unique name, used by other coagents' inputs.
    inputs: declared inputs, in order ("obs", "NAME", "prev:NAME").
    policy: its stochastic policy (``policies.Softmax(n)``, ``Bernoulli()``, ``Gaussian(d)``).
    execution: its execution function beta (default: execute at every tick).
    rule: its learning rule (default: frozen).
    features: "tabular" (all inputs discrete), or an ObservationFeatures for "obs" with
        one-hot codes of discrete inputs (linear); None picks tabular when it can.
    initial: U_{-1}: "uniform" over discrete outputs, a list of probabilities, or "zeros" (output 0).
    init_scale: parameters start at N(0, init_scale**2) per trial (0: all zeros).
    """

    name: str
    inputs: tuple[str, ...]
    policy: Policy
    execution: Execution = field(default_factory=lambda: Constant(1.0))
    rule: LearningRule = field(default_factory=LearningRule)
    features: str | ObservationFeatures | None = None
    initial: str | tuple[float, ...] = "uniform"
    init_scale: float = 0.0

    def __post_init__(self):
        from .network import SpecError

        where = f"coagents.{self.name}" if isinstance(self.name, str) else "coagent"
        if not isinstance(self.name, str) or not self.name:
            raise SpecError(f"coagent.name: expected a non-empty string, got {self.name!r}")
        check_name(self.name, "coagent.name")
        if isinstance(self.inputs, str) or not isinstance(self.inputs, (list, tuple)) or not self.inputs \
                or not all(isinstance(i, str) and i for i in self.inputs):
            raise SpecError(f"{where}.inputs: expected a non-empty list of input names ('obs', a coagent's name "
                            f"or 'prev:NAME'), got {self.inputs!r}")
        object.__setattr__(self, "inputs", tuple(self.inputs))
        for field_name, kind, example in (("policy", Policy, "policies.Softmax(2)"),
                                          ("execution", Execution, "execution.Constant(0.5)"),
                                          ("rule", LearningRule, "rules.ActorCritic(...)")):
            value = getattr(self, field_name)
            if not isinstance(value, kind):
                raise SpecError(f"{where}.{field_name}: expected a {kind.__name__} object such as {example}, got "
                                f"{value!r}")
        if not (self.features is None or self.features == "tabular" or isinstance(self.features, ObservationFeatures)):
            raise SpecError(f"{where}.features: expected 'tabular', None or a features object (features.Raw(), "
                            f"features.Fourier(order), features.TileCoding(...)), got {self.features!r}")
        initial = self.initial
        if isinstance(initial, (list, tuple, np.ndarray)):
            values = np.asarray(initial, dtype=object).ravel()
            if not values.size or not all(is_number(v) and np.isfinite(v) and v >= 0 for v in values):
                raise SpecError(f"{where}.initial: expected probabilities (finite, >= 0), got {list(values)!r}")
            object.__setattr__(self, "initial", tuple(v.item() if isinstance(v, np.generic) else v for v in values))
        elif initial not in ("uniform", "zeros") or not isinstance(initial, str):
            raise SpecError(f"{where}.initial: expected 'uniform', 'zeros' or a list of probabilities, got "
                            f"{initial!r}")
        scale = self.init_scale
        if not is_number(scale) or not np.isfinite(scale) or scale < 0:
            raise SpecError(f"{where}.init_scale: expected a finite number >= 0, got {scale!r}")

    def sources(self, kind: str) -> list[str]:
        """Names of coagents read with kind 'cur' or 'prev'."""
        return [n for k, n in map(parse_input, self.inputs) if k == kind]


def initial_outputs(coagent: Coagent, stream: Stream, env_ids: np.ndarray, ticks: np.ndarray) -> np.ndarray:
    """U_{-1} drawn from h for environments ``env_ids`` whose episodes begin at atomic ``ticks`` (keyed
    draws: whoever computes them, a coagent or the free-running board that holds for it, gets these)."""
    space = coagent.policy.output_space()
    if not space.discrete:
        return np.zeros((env_ids.size, space.dim))
    n, initial = space.n, coagent.initial
    if initial == "uniform":
        probs = np.full(n, 1.0 / n)
    elif initial == "zeros":  # output 0
        probs = np.eye(n)[0]
    else:
        probs = np.asarray(initial, dtype=np.float64)
    u = stream.uniform(env_ids, ticks, INITIAL_OUTPUT_SLOT)
    return categorical(np.broadcast_to(probs, (env_ids.size, n)), u)


def _unit_kernel(unit):
    """The compiled step for ``unit`` (None: numba missing, or no kernel for its kind: numpy runs)."""
    if not kernels.available():
        return None
    from .kernels.coagent import UnitKernel

    return UnitKernel.of(unit)


class CoagentUnit:
    """The running state of one coagent over a batch; see the module docstring."""

    FIELDS = {"params": FIELDS_OF, "rule_state": FIELDS_OF, "output": ENV, "stream_reward": ENV,
              "stream_discount": ENV, "executed_this_episode": ENV, "last_execution_tick": ENV,
              "episode_tick": ENV, "env_tick": ENV, "env_ids": ENV, "last_executed": ENV}

    def __init__(self, coagent: Coagent, input_spaces: Sequence[InputSpace], trials: int,
                 envs_per_trial: int, gamma_atomic: float, seed: int, trial_offset: int = 0,
                 scratch: dict | None = None):
        self.coagent = coagent
        self.name = coagent.name
        self.policy = coagent.policy
        self.rule = coagent.rule
        self.trials, self.envs_per_trial = trials, envs_per_trial
        self.batch = trials * envs_per_trial
        self.gamma_atomic = gamma_atomic
        self.env_ids = trial_offset * envs_per_trial + np.arange(self.batch)
        self.stream = Stream.from_seed(seed, "coagent:" + coagent.name)
        tabular = coagent.features == "tabular" or (
            coagent.features is None and all(s.discrete for s in input_spaces))
        obs_pos = [k for k, name in enumerate(coagent.inputs) if name == "obs"]
        self.encoder = Encoder(input_spaces, tabular,
                               None if isinstance(coagent.features, str) else coagent.features, obs_pos)
        self.output_space = coagent.policy.output_space()
        self.params = ArrayDict()
        for k, v in coagent.policy.init_params(self.encoder.size, trials).items():
            self.params.add(k, v, TRIAL)
        self.policy_param_names = tuple(self.params)
        if coagent.init_scale > 0:
            for t in range(trials):
                rng = np.random.default_rng([seed, trial_offset + t, len(coagent.name), 7])
                for k in self.policy.linear_params:
                    self.params[k][t] = rng.normal(0.0, coagent.init_scale, self.params[k][t].shape)
        # reusable buffers for the rule's dense updates (not state); a side shares one among its
        # units, so units of the same shape reuse one cache-warm buffer
        self.scratch: dict = {} if scratch is None else scratch
        self.rule_state = coagent.rule.init(self)
        B = self.batch
        shape = (B,) if self.output_space.discrete else (B, self.output_space.dim)
        self.output = np.zeros(shape, dtype=np.int64 if self.output_space.discrete else np.float64)
        self.stream_reward = np.zeros(B)      # Rbar since the last execution
        self.stream_discount = np.ones(B)     # gamma_atomic ** (ticks since the last execution)
        self.executed_this_episode = np.zeros(B, dtype=bool)
        self.last_execution_tick = np.zeros(B, dtype=np.int64)
        self.episode_tick = np.zeros(B, dtype=np.int64)
        self.env_tick = np.zeros(B, dtype=np.int64)  # this unit's atomic clock per environment
        self.last_executed = np.zeros(B, dtype=bool)
        self.counters = {"ticks": 0, "executions": 0, "updates": 0, "episodes": 0}
        # for metrics: closed intervals between executions and their total length in atomic ticks
        self.intervals = {"count": 0, "ticks": 0}
        self._last_update = None  # (per-environment update sizes, mask) of the rule's last update
        self.kernel = _unit_kernel(self)  # the compiled step, if this kind of coagent has one

    # ------------------------------------------------------------------ helpers for rules
    def count_updates(self, mask: np.ndarray, sizes: np.ndarray | None = None) -> None:
        """Count the rule's updates; ``sizes`` (TD errors or update norms per environment) feed metrics."""
        self.counters["updates"] += int(mask.sum())
        if sizes is not None:
            self._last_update = (sizes, mask)

    def last_update(self) -> float | None:
        """Mean |TD error| (or update norm) over the environments of the rule's last update."""
        if self._last_update is None:
            return None
        sizes, mask = self._last_update
        return float(np.abs(sizes[mask]).mean()) if mask.any() else None

    def parameter_norm(self) -> float:
        """Euclidean norm of the policy parameters over all trials."""
        return float(np.sqrt(sum(np.vdot(self.params[k], self.params[k]) for k in self.policy_param_names)))

    def check_finite(self, values: np.ndarray, what: str, rows: np.ndarray | None = None) -> None:
        """Stop with an error naming this coagent and the tick if ``values`` (for ``rows``) are not finite."""
        total = np.sum(values)
        if np.isfinite(total):  # one pass: a NaN or an infinity makes the sum non-finite
            return
        bad = ~np.isfinite(values)
        if bad.any():
            b = int(np.flatnonzero(bad.reshape(bad.shape[0], -1).any(axis=1))[0])
            self.raise_non_finite(what, int(rows[b]) if rows is not None else b)

    def raise_non_finite(self, what: str, b: int) -> None:
        """Stop with the error naming this coagent, ``what`` was non-finite, and environment row ``b``'s tick."""
        raise NonFiniteError(
            f"coagent {self.name!r}: non-finite {what} at atomic tick {int(self.env_tick[b])} "
            f"(environment {int(self.env_ids[b])}, episode tick {int(self.episode_tick[b])})")

    # ------------------------------------------------------------------ engine interface
    def begin_episode(self, mask: np.ndarray) -> np.ndarray:
        """Start new episodes where ``mask``: draw U_{-1} from h, reset stream and traces."""
        if self.kernel is not None and kernels.enabled():
            return self.kernel.begin_episode(self, mask)
        rows = np.flatnonzero(mask)
        self.output[rows] = initial_outputs(self.coagent, self.stream, self.env_ids[rows], self.env_tick[rows])
        self.rule.reset(self, self.rule_state, mask)
        self.stream_reward[mask] = 0.0
        self.stream_discount[mask] = 1.0
        self.executed_this_episode[mask] = False
        self.episode_tick[mask] = 0
        return self.output.copy()

    def set_clock(self, tick: int) -> None:
        """Set every environment's atomic clock (engines align clocks when a run starts, so a
        micro-batch that finished early and stopped ticking draws the same numbers as in one batch)."""
        self.env_tick[:] = tick

    def execution_beta(self, x, drivers) -> np.ndarray:
        """This tick's execution probabilities; an execution (a Python function) that gives none is named."""
        try:
            return self.coagent.execution.beta(x, self.episode_tick, drivers or {})
        except ValueError as error:
            raise ValueError(f"coagent {self.name!r}: {error}") from None

    def act(self, values: Sequence[np.ndarray], active: np.ndarray, drivers: dict | None = None,
            shared_value: np.ndarray | None = None, forced: np.ndarray | None = None) -> np.ndarray:
        """One atomic tick: maybe execute (learning first from the closed interval), else hold.

        ``forced`` (bool per environment) replaces the execution draw: E = forced where active.  The
        free-running mode holds with it, and a replay imposes a recorded execution pattern."""
        x = self.encoder(values)
        beta = None if forced is None else np.asarray(forced, dtype=np.float64)  # u in [0, 1): u < 1, never u < 0
        if self.kernel is not None and kernels.enabled():
            return self.kernel.act(self, x, active, drivers, shared_value, beta)
        if beta is None:
            beta = self.execution_beta(x, drivers)
        executes = (self.stream.uniform(self.env_ids, self.env_tick, EXECUTION_SLOT) < beta) & active
        closing = executes & self.executed_this_episode
        if closing.any():
            self.rule.close(self, self.rule_state, closing, self.rule.value_next(self, self.rule_state, x,
                                                                                 shared_value))
            closed = np.flatnonzero(closing)  # metrics: how long the closed intervals were
            self.intervals["count"] += closed.size
            self.intervals["ticks"] += int((self.episode_tick[closed] - self.last_execution_tick[closed]).sum())
        rows = np.flatnonzero(executes)  # only executing environments compute (draws are keyed: same numbers)
        stats = self.policy.forward(self.params, x, rows)
        self.check_finite(stats[0] if isinstance(stats, tuple) else stats, "policy output", rows)
        sampled = self.policy.sample(stats, self.stream, self.env_ids[rows], self.env_tick[rows])
        if rows.size:
            score = {}
            for k, g in self.policy.score(stats, sampled).items():
                score[k] = np.zeros((self.batch,) + g.shape[1:])
                score[k][rows] = g
            self.rule.open(self, self.rule_state, x, executes, score, shared_value)
        self.output[rows] = sampled
        self.stream_reward[executes] = 0.0
        self.stream_discount[executes] = 1.0
        self.last_execution_tick[executes] = self.episode_tick[executes]
        self.executed_this_episode |= executes
        self.counters["executions"] += rows.size
        self.counters["ticks"] += int(np.count_nonzero(active))
        self.last_executed = executes
        return self.output.copy()

    def observe(self, reward: np.ndarray, ended: np.ndarray, active: np.ndarray) -> None:
        """The tick's reward (0 between environment steps); close intervals of ended episodes."""
        if self.kernel is not None and kernels.enabled():
            return self.kernel.observe(self, reward, ended, active)
        self.check_finite(reward, "reward")
        self.stream_reward += self.stream_discount * reward
        self.stream_discount *= self.gamma_atomic
        ending = ended & active & self.executed_this_episode
        if ending.any():
            self.rule.close(self, self.rule_state, ending, np.zeros(self.batch))
            self.rule.finish(self, self.rule_state, ending)
        self.counters["episodes"] += int(np.count_nonzero(ended & active))
        self.env_tick += 1
        self.episode_tick += 1

    # ------------------------------------------------------------------ state
    def learned(self) -> dict[str, np.ndarray]:
        """Per-trial parameters: the policy's and what the rule learns besides (results, checkpoints)."""
        return {**self.params, **self.rule.learned(self.rule_state)}

    def state_dict(self) -> dict:
        """Everything that evolves, as plain arrays and numbers (msgpack-able via serialize)."""
        return {**batched.save(self), "counters": dict(self.counters), "intervals": dict(self.intervals)}

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict()``; every field is checked against this unit's shapes and dtypes."""
        for k, v in state["params"].items():
            if k not in self.params or self.params[k].shape != np.shape(v):
                raise ValueError(f"coagent {self.name!r}: parameter {k!r} has shape {np.shape(v)}, "
                                 f"expected {self.params[k].shape if k in self.params else 'no such parameter'}")
        batched.load(self, state, f"coagent {self.name!r}")
        self.counters = {k: int(state["counters"][k]) for k in self.counters}
        self.intervals = {k: int(state["intervals"][k]) for k in self.intervals}
        self._last_update = None
