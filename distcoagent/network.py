"""A coagent network: coagents, the action, the discount, the tick rate, an optional shared critic.

``Network`` validates its structure when built (unknown inputs, same-tick cycles,
duplicate names) and against an environment's spaces in ``input_spaces``.
``NetworkBatch`` runs one batch of it (one micro-batch of trials): the coagent units
in topological order of the same-tick edges, and the shared critic.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from graphlib import CycleError, TopologicalSorter

import gymnasium as gym
import numpy as np

from . import batched, kernels
from .batched import FIELDS_OF, TRIAL, ArrayDict
from .checks import is_number, lam, step
from .coagent import Coagent, parse_input
from .features import Encoder, InputSpace, ObservationFeatures, bounds_problem
from .policies import Gaussian
from .rules import ScaledTraces


class SpecError(ValueError):
    """A network or run description is malformed; the message names the field."""


@dataclass(frozen=True)
class SharedCritic:
    """One critic V(s) over the environment state, TD(lambda) per environment step, read by
    every coagent whose rule says critic = "shared".

    step: critic step size; lam: trace decay; features: for Box observations.
    """

    step: float = 0.1
    lam: float = 0.7
    features: ObservationFeatures | None = None

    def __post_init__(self):
        try:
            step(self.step, "critic.step")
            lam(self.lam, "critic.lam")
        except ValueError as error:
            raise SpecError(str(error)) from None
        if self.features is not None and not isinstance(self.features, ObservationFeatures):
            raise SpecError(f"critic.features: expected None or a features object (features.Fourier(order), "
                            f"features.TileCoding(...), features.Raw()), got {self.features!r}")

    def to_config(self):
        return {"step": self.step, "lam": self.lam,
                "features": None if self.features is None else type(self.features).__name__}


def space_of(space: gym.Space) -> InputSpace:
    if isinstance(space, gym.spaces.Discrete):
        return InputSpace(n=int(space.n))
    if isinstance(space, gym.spaces.Box):
        return InputSpace(dim=int(np.prod(space.shape)), low=space.low.ravel(), high=space.high.ravel())
    raise SpecError(f"env: observation space {space} is not supported; expected Discrete or Box")


MAX_TICKS_PER_STEP = 10**6  # atomic ticks per environment step: more and one step alone outlasts any run


@dataclass(frozen=True)
class Network:
    """coagents: in any order; action: the coagent (or tuple of coagents) whose output is
    the action; gamma: discount per environment step; ticks_per_step: atomic ticks per
    environment step (k); critic: a SharedCritic, needed if a rule uses critic="shared"."""

    coagents: tuple[Coagent, ...]
    action: str | tuple[str, ...]
    gamma: float = 0.99
    ticks_per_step: int = 1
    critic: SharedCritic | None = None
    order: tuple[str, ...] = field(init=False, default=())

    def __post_init__(self):
        if isinstance(self.coagents, (Coagent, str, dict)) or not hasattr(self.coagents, "__iter__"):
            raise SpecError(f"coagents: expected a list of Coagent objects, got {type(self.coagents).__name__}")
        object.__setattr__(self, "coagents", tuple(self.coagents))
        wrong = [type(c).__name__ for c in self.coagents if not isinstance(c, Coagent)]
        if wrong:
            raise SpecError(f"coagents: expected a list of Coagent objects, got a {wrong[0]} among them")
        if isinstance(self.action, list):
            object.__setattr__(self, "action", tuple(self.action))
        if not (isinstance(self.action, str) and self.action) and not (
                isinstance(self.action, tuple) and self.action and all(isinstance(a, str) for a in self.action)):
            raise SpecError(f"action: expected a coagent's name, or a list of names, got {self.action!r}")
        if not is_number(self.gamma):
            raise SpecError(f"gamma: expected a discount in (0, 1], got {self.gamma!r}")
        if isinstance(self.ticks_per_step, np.integer):
            object.__setattr__(self, "ticks_per_step", int(self.ticks_per_step))
        if self.critic is not None and not isinstance(self.critic, SharedCritic):
            raise SpecError(f"critic: expected None or a SharedCritic(step, lam), got {self.critic!r}")
        names = [c.name for c in self.coagents]
        if not names:
            raise SpecError("coagents: expected at least one coagent")
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise SpecError(f"coagents: duplicate name(s) {sorted(dup)}")
        for n in names:
            if not n or n == "obs" or ":" in n:
                raise SpecError(f"coagents.name: {n!r} is not allowed (empty, 'obs', or contains ':')")
        if self.critic is not None and "critic" in names:  # params and params.msgpack keep the critic's there
            raise SpecError("coagents.name: 'critic' is the shared critic's name in a run's parameters "
                            "(params['critic']); expected another name for the coagent")
        if not 0 < self.gamma <= 1:
            raise SpecError(f"gamma: expected a discount in (0, 1], got {self.gamma!r}")
        if isinstance(self.ticks_per_step, bool) or not isinstance(self.ticks_per_step, int) \
                or not 1 <= self.ticks_per_step <= MAX_TICKS_PER_STEP:
            raise SpecError(f"ticks_per_step: expected an integer in 1..{MAX_TICKS_PER_STEP}, got "
                            f"{self.ticks_per_step!r}")
        graph = {}
        for c in self.coagents:
            deps = set()
            twice = sorted({i for i in c.inputs if c.inputs.count(i) > 1})
            if twice:  # it would square a tabular local state for nothing
                raise SpecError(f"coagents.{c.name}.inputs: {twice[0]!r} is listed twice; expected each input once")
            for raw in c.inputs:
                kind, src = parse_input(raw)
                if kind != "obs" and src not in names:
                    raise SpecError(f"coagents.{c.name}.inputs: unknown input {raw!r}; expected 'obs', "
                                    f"a coagent name ({', '.join(names)}) or 'prev:NAME'")
                if kind == "cur":
                    deps.add(src)
            for d in c.execution.drivers:
                if d not in names:
                    raise SpecError(f"coagents.{c.name}.execution.coagent: unknown coagent {d!r}")
                deps.add(d)
                outputs = self.coagent(d).policy.output_space().n
                when = getattr(c.execution, "when", None)
                if when is not None and outputs is not None and when >= outputs:  # it would never execute
                    raise SpecError(f"coagents.{c.name}.execution.when: expected an output of {d!r} "
                                    f"(0..{outputs - 1}), got {when}")
            if c.name in deps:
                raise SpecError(f"coagents.{c.name}.inputs: a coagent cannot read its own output at the "
                                f"same tick; use 'prev:{c.name}'")
            graph[c.name] = deps
            if c.rule.uses_shared_critic and self.critic is None:
                raise SpecError(f"coagents.{c.name}.rule.critic: 'shared' needs a [critic] section")
        try:
            TopologicalSorter(graph).prepare()
        except CycleError as e:
            raise SpecError(f"coagents: same-tick cycle {' -> '.join(e.args[1])}; a cycle must go "
                            "through at least one 'prev:' input") from None
        # keep the declared order where the edges allow it: stable topological order
        position = {n: i for i, n in enumerate(names)}
        order = _stable_topo(graph, position)
        object.__setattr__(self, "order", order)
        for a in self.action_coagents:
            if a not in names:
                raise SpecError(f"action: unknown coagent {a!r}; expected one of {names}")

    @property
    def action_coagents(self) -> tuple[str, ...]:
        return (self.action,) if isinstance(self.action, str) else tuple(self.action)

    def action_of(self, outputs: dict) -> np.ndarray:
        """The environment's action from this tick's outputs: one coagent's, or several stacked
        (discrete parts, for MultiDiscrete) or concatenated (real parts, for a Box)."""
        acts = [outputs[a] for a in self.action_coagents]
        if len(acts) == 1:
            return acts[0]
        return np.stack(acts, axis=1) if acts[0].ndim == 1 else np.concatenate(acts, axis=1)

    @property
    def gamma_atomic(self) -> float:
        return self.gamma ** (1.0 / self.ticks_per_step)

    def coagent(self, name: str) -> Coagent:
        return next(c for c in self.coagents if c.name == name)

    def input_spaces(self, observation_space: gym.Space, action_space: gym.Space | None = None
                     ) -> dict[str, list[InputSpace]]:
        """Each coagent's input spaces; checks cardinalities and the action against the env."""
        obs = space_of(observation_space)
        outputs = {c.name: c.policy.output_space() for c in self.coagents}
        spaces = {}
        for c in self.coagents:
            spaces[c.name] = [obs if k == "obs" else outputs[src] for k, src in map(parse_input, c.inputs)]
            if c.features == "tabular" and not all(s.discrete for s in spaces[c.name]):
                raise SpecError(f"coagents.{c.name}.features: 'tabular' needs discrete inputs; input(s) "
                                f"{[i for i, s in zip(c.inputs, spaces[c.name]) if not s.discrete]} are "
                                "continuous (use fourier, tile or raw features)")
            if any(s is obs for s in spaces[c.name]) and c.features is not None and not isinstance(c.features, str):
                problem = bounds_problem(c.features, obs)
                if problem is not None:
                    raise SpecError(f"coagents.{c.name}.features: {problem}")
            table = getattr(c.execution, "probabilities", None)
            if table is not None:
                cells = int(np.prod([s.n or 0 for s in spaces[c.name]]))
                if not all(s.discrete for s in spaces[c.name]) or len(table) != cells:
                    raise SpecError(f"coagents.{c.name}.execution.probabilities: expected one probability "
                                    f"per tabular local state ({cells} = product of the input cardinalities "
                                    f"{[s.n for s in spaces[c.name]]}), got {len(table)}")
            if isinstance(c.initial, tuple):
                out = outputs[c.name]
                if not out.discrete:
                    raise SpecError(f"coagents.{c.name}.initial: probabilities are for discrete outputs; this "
                                    "coagent's output is continuous (its U_-1 is zeros)")
                if len(c.initial) != out.n or abs(sum(c.initial) - 1) > 1e-9 \
                        or min(c.initial) < 0:
                    raise SpecError(f"coagents.{c.name}.initial: expected {out.n} probabilities summing "
                                    f"to 1, got {list(c.initial)}")
        if self.critic is not None and self.critic.features is not None:
            problem = bounds_problem(self.critic.features, obs)
            if problem is not None:
                raise SpecError(f"critic.features: {problem}")
        if action_space is not None:
            self._check_action(action_space, outputs)
        return spaces

    def _check_action(self, action_space: gym.Space, outputs: dict[str, InputSpace]) -> None:
        acts = self.action_coagents
        if isinstance(action_space, gym.spaces.Discrete):
            out = outputs[acts[0]]
            if len(acts) != 1 or out.n != action_space.n:
                raise SpecError(f"action: the environment's action space is Discrete({action_space.n}); "
                                f"expected one coagent with {action_space.n} outputs, got {acts} with "
                                f"{[outputs[a].n or f'{outputs[a].dim} reals' for a in acts]}")
        elif isinstance(action_space, gym.spaces.MultiDiscrete):
            want = [int(n) for n in action_space.nvec]
            got = [outputs[a].n for a in acts]
            if got != want:
                raise SpecError(f"action: the environment's action space is MultiDiscrete({want}); "
                                f"expected coagents with those output counts, got {got}")
        elif isinstance(action_space, gym.spaces.Box):
            dim = int(np.prod(action_space.shape))
            got = sum(outputs[a].dim or 0 for a in acts)
            if got != dim or any(not isinstance(self.coagent(a).policy, Gaussian) for a in acts):
                given = ", ".join(f"{a} ({type(self.coagent(a).policy).__name__.lower()}, "
                                  f"{outputs[a].dim or outputs[a].n} {'reals' if outputs[a].dim else 'values'})"
                                  for a in acts)
                raise SpecError(f"action: the environment's action space is a Box of {dim} reals; "
                                f"expected gaussian coagent(s) with {dim} outputs in all, got {given}")
        else:
            raise SpecError(f"env: action space {action_space} is not supported")

    def to_config(self) -> dict:
        return {
            "gamma": self.gamma, "ticks_per_step": self.ticks_per_step,
            "action": list(self.action_coagents) if len(self.action_coagents) > 1 else self.action,
            "critic": None if self.critic is None else self.critic.to_config(),
            "coagents": [{
                "name": c.name, "inputs": list(c.inputs), "policy": c.policy.to_config(),
                "execution": c.execution.to_config(), "rule": c.rule.to_config(),
                "features": c.features if isinstance(c.features, (str, type(None))) else
                {"kind": type(c.features).__name__.lower(), **c.features.__dict__},
                "initial": c.initial if isinstance(c.initial, str) else list(c.initial),
                "init_scale": c.init_scale} for c in self.coagents],
        }


def _stable_topo(graph: dict[str, set], position: dict[str, int]) -> tuple[str, ...]:
    done, order = set(), []
    while len(order) < len(graph):
        ready = [n for n in graph if n not in done and graph[n] <= done]
        n = min(ready, key=position.get)
        done.add(n)
        order.append(n)
    return tuple(order)


_NO_INDEX = np.zeros(0, dtype=np.int64)
_NO_PHI = np.zeros((0, 0))


def _kernel_state(x) -> tuple[np.ndarray, np.ndarray]:
    """(index, features) of a local state for the kernels: the one it has and an empty other."""
    return (x.index, _NO_PHI) if x.tabular else (_NO_INDEX, x.phi)


class CriticUnit:
    """The shared critic's running state over a batch: TD(lambda) per environment step."""

    FIELDS = {"params": FIELDS_OF, "rule_state": FIELDS_OF}

    def __init__(self, critic: SharedCritic, obs_space: InputSpace, trials: int, envs_per_trial: int,
                 gamma_step: float):
        self.critic = critic
        self.encoder = Encoder([obs_space], obs_space.discrete, critic.features, [0])
        self.trials, self.envs_per_trial = trials, envs_per_trial
        self.gamma_step = gamma_step
        self.params = ArrayDict()
        self.params.add("w", np.zeros((trials, self.encoder.size, 1)), TRIAL)
        self.rule_state = ArrayDict()
        self.rule_state.add("z.w", np.zeros((trials, envs_per_trial, self.encoder.size, 1)), TRIAL)
        ScaledTraces.init(self.rule_state, trials * envs_per_trial)
        self.scratch: dict = {}
        self.last_delta = None  # (TD errors, mask) of the last update, for metrics
        self.kernel = None  # the compiled TD(lambda) step (kernels.critic), when numba is there
        if kernels.available():
            from .kernels import critic

            self.kernel = critic

    def value(self, obs: np.ndarray) -> np.ndarray:
        x = self.encoder([obs])
        if self.kernel is not None and kernels.enabled():
            out = np.empty(x.batch)
            index, phi = _kernel_state(x)
            if not self.kernel.value(self.params["w"], x.tabular, index, phi, self.envs_per_trial, out):
                self._out_of_range(x)
            return out
        return x.linear(self.params["w"])[:, 0]

    def update(self, obs, reward, next_obs, ended, active):
        """One TD(lambda) step for the transitions obs -> next_obs of active environments."""
        x = self.encoder([obs])
        st = self.rule_state
        if self.kernel is not None and kernels.enabled():
            self._update_compiled(x, self.encoder([next_obs]), reward, ended, active)
            return
        v = x.linear(self.params["w"])[:, 0]
        v_next = np.where(ended, 0.0, self.value(next_obs))
        delta = np.where(active, reward + self.gamma_step * v_next - v, 0.0)
        ScaledTraces.decay(st, np.full(obs.shape[0], self.gamma_step * self.critic.lam), active)
        ScaledTraces.add(st, "z.w", x, np.ones((obs.shape[0], 1)), active, True)
        with np.errstate(over="ignore", invalid="ignore"):  # divergence is reported just below
            ScaledTraces.apply(st, "z.w", self.params["w"], self.critic.step * delta, active, self.scratch)
        ScaledTraces.reset(st, ended & active)
        self.last_delta = (delta, active)
        if not np.isfinite(np.sum(self.params["w"])):  # one pass; where a diverging critic first shows
            self._diverged()

    def _update_compiled(self, x, x_next, reward, ended, active):
        st = self.rule_state
        delta = np.empty(x.batch)
        index, phi = _kernel_state(x)
        next_index, next_phi = _kernel_state(x_next)
        error = self.kernel.update(x.tabular, index, phi, next_index, next_phi, reward, ended, active, self.params["w"],
                              st["z.w"], st["z_scale"], self.gamma_step, self.gamma_step * self.critic.lam,
                              self.critic.step, self.envs_per_trial, delta, *self._kernel_buffers())
        if error == 1:
            self._out_of_range(x, x_next)
        self.last_delta = (delta, active)
        if error == 2:
            self._diverged()

    def _kernel_buffers(self) -> tuple[np.ndarray, np.ndarray]:
        """The kernel's work space (not state): kept in ``scratch``."""
        buffers = self.scratch.get("kernel")
        if buffers is None:
            buffers = self.scratch["kernel"] = (np.empty(1 + self.envs_per_trial), np.empty((self.encoder.size, 1)))
        return buffers

    def _out_of_range(self, *states):
        bad = [int(i) for x in states for i in x.index if not 0 <= i < self.encoder.size]
        raise IndexError(f"the shared critic: observation {bad[0]} is out of range 0..{self.encoder.size - 1}")

    def _diverged(self):
        from .coagent import NonFiniteError

        raise NonFiniteError(f"the shared critic ([critic] step = {self.critic.step:g}, lam = "
                             f"{self.critic.lam:g}): its weights became non-finite after a TD update; "
                             "lower [critic] step")

    def state_dict(self):
        return batched.save(self)

    def load_state_dict(self, state):
        batched.load(self, state, "critic")
