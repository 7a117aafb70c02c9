"""How much memory a run needs, estimated from its spec before anything big is allocated.

A run's large arrays are all declared (``batched``): per-trial parameters and traces
(``TRIAL`` axis), per-environment state (``ENV`` axis), the episode book (returns and
lengths, environments x episodes) and the environment batch.  ``estimate_memory``
builds each holder with *zero* trials, so numpy allocates nothing, reads the size of
one row of every declared array, and multiplies by the run's trials or environments:
exact for the declared arrays whatever the policy, rule or features.  ``check_memory``
refuses a run whose estimate exceeds this machine's memory, naming the fields that
make it large and the estimate, with a ``SpecError``.

>>> from distcoagent.examples import paper_network
>>> from distcoagent.spec import TrainConfig
>>> estimate = estimate_memory(paper_network(), "distcoagent/GridWorld-v0", {"size": 5},
...                            TrainConfig(episodes=200, trials=100))
>>> format_bytes(estimate.total), estimate.largest.label
('975 KiB', 'episode returns and lengths')
>>> check_memory(paper_network(), "distcoagent/GridWorld-v0", {"size": 5},
...              TrainConfig(episodes=10**13, trials=16384), memory=24 * 2**30)
Traceback (most recent call last):
...
distcoagent.network.SpecError: train.trials x train.envs_per_trial x train.episodes: the run needs about 4.55 EiB \
(episode returns and lengths: 16384 x 1 x 10000000000000 x 32 B = 4.55 EiB), this machine has 24 GiB
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from .batched import FIELDS_OF, TRIAL, batch_fields
from .network import CriticUnit, Network, SpecError, space_of

GYM_ENV_BYTES = 8 * 2**10  # a gymnasium env object in a SyncVectorEnv (CartPole-v1 measures 5.5 KiB)
RESULT_COPIES = 2          # returns and lengths live in the episode book and again in the result


@dataclass(frozen=True)
class Part:
    """One group of arrays: what it is, the spec fields it grows with, how its size is computed."""

    label: str
    fields: str
    formula: str
    nbytes: int


@dataclass(frozen=True)
class MemoryEstimate:
    """The run's large arrays, part by part, and the memory of this machine (bytes)."""

    parts: tuple[Part, ...]
    memory: int | None
    local: tuple[str, ...] = ()  # labels of the parts this machine holds (all, unless on a cluster)

    @property
    def total(self) -> int:
        return sum(p.nbytes for p in self.parts if not self.local or p.label in self.local)

    @property
    def largest(self) -> Part:
        return max(self.parts, key=lambda p: p.nbytes)

    def describe(self, top: int = 3) -> str:
        """The largest parts (at most ``top``, each at least 1% of the total), with their formulas."""
        parts = [p for p in sorted(self.parts, key=lambda p: -p.nbytes) if p.nbytes * 100 >= self.total][:top]
        return "; ".join(f"{p.label}: {p.formula} = {format_bytes(p.nbytes)}" for p in parts)


def format_bytes(n: int | float) -> str:
    """'512 B', '1.5 KiB', '74.5 GiB' (binary units, at most 3 significant digits).

    >>> format_bytes(80 * 10**9), format_bytes(24 * 2**30), format_bytes(100)
    ('74.5 GiB', '24 GiB', '100 B')
    """
    units = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB")
    k = 0
    value = float(n)
    while value >= 1024 and k < len(units) - 1:
        value /= 1024
        k += 1
    return f"{value:.3g} {units[k]}" if value < 1000 else f"{value:.0f} {units[k]}"


def machine_memory() -> int | None:
    """Bytes of memory this process may use: the physical memory, or the container's limit if lower."""
    total = None
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        try:
            import psutil

            total = int(psutil.virtual_memory().total)
        except ImportError:
            pass
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = open(path).read().strip()
        except OSError:
            continue
        if text.isdigit() and (total is None or int(text) < total):
            total = int(text)
    return total


def _row_bytes(holder) -> tuple[int, int, int]:
    """(bytes per trial, bytes per environment, constant bytes) of a holder's declared arrays."""
    per_trial = per_env = 0
    for name, kind in batch_fields(holder).items():
        value = getattr(holder, name, None)
        if value is None:
            continue
        arrays = [(value[k], value.axes[k]) for k in value] if kind == FIELDS_OF else [(value, kind)]
        for array, axis in arrays:
            array = np.asarray(array)
            row = math.prod(array.shape[1:]) * array.itemsize
            if axis == TRIAL:
                per_trial += row
            else:
                per_env += row
    constants = sum(np.asarray(getattr(holder, n)).nbytes for n in getattr(type(holder), "CONSTANTS", ()))
    return per_trial, per_env, constants


def _holder_bytes(make, trials: int, envs_per_trial: int) -> tuple[int, int]:
    """(bytes per trial, bytes per environment) of the holder ``make(envs_per_trial)`` builds with zero
    trials: built with 1 and 2 environments per trial, since a trace's row grows with them (P, E, ...)."""
    (one, env_one, _), (two, _, _) = _row_bytes(make(1)), _row_bytes(make(2))
    return one + (two - one) * (envs_per_trial - 1), env_one


def _coagent_part(network: Network, index: int, spaces, trials: int, envs_per_trial: int) -> Part:
    from .coagent import CoagentUnit
    from .features import Encoder

    coagent = network.coagents[index]
    B = trials * envs_per_trial
    output = coagent.policy.output_space()
    outputs = output.n or output.dim
    where = f"coagent[{index}] ({coagent.name})"
    try:  # zero trials: every TRIAL and ENV array is empty, its row size is exact
        def make(E):
            return CoagentUnit(coagent, spaces, 0, E, network.gamma_atomic, 0)

        per_trial, per_env = _holder_bytes(make, trials, envs_per_trial)
        unit = make(1)
        size, tabular = unit.encoder.size, unit.encoder.tabular
        if coagent.rule.kind != "frozen":  # the rule's update buffer, as large as the parameters
            per_trial += sum(math.prod(v.shape[1:]) * v.itemsize for v in unit.params.values())
    except (ValueError, OverflowError, MemoryError):  # a dimension too large for numpy: count the parameters
        tabular = coagent.features == "tabular" or (coagent.features is None and all(s.discrete for s in spaces))
        obs = [k for k, name in enumerate(coagent.inputs) if name == "obs"]
        size = Encoder(spaces, tabular, None if isinstance(coagent.features, str) else coagent.features, obs).size
        per_trial, per_env = size * outputs * 8, 0
    per_env += 8 * ((1 if tabular else size) + outputs)  # this tick's local state and policy output
    nbytes = trials * per_trial + B * per_env
    grows = f"{where}.policy" if outputs > size else f"{where}.inputs" if tabular else f"{where}.features"
    return Part(f"coagent {coagent.name!r}", f"train.trials x train.envs_per_trial x {grows}",
                f"{trials} trials x {format_bytes(per_trial)} (local state {size} x {outputs} outputs) + "
                f"{B} envs x {format_bytes(per_env)}", nbytes)


def estimate_memory(network: Network, env_id: str, env_kwargs: dict | None, config, env=None) -> MemoryEstimate:
    """The run's large arrays (``config``: a ``TrainConfig``); ``env``: a 1-environment batch of
    ``env_id`` if one is at hand (else one is made)."""
    from .envs import make_batch

    own = env is None
    if own:
        env = make_batch(env_id, 1, config.seed, **dict(env_kwargs or {}))
    try:
        P, E, episodes = int(config.trials), int(config.envs_per_trial), int(config.episodes)
        B, K = P * E, int(config.micro_batches)
        spaces = network.input_spaces(env.observation_space, env.action_space)
        parts = [Part("episode returns and lengths", "train.trials x train.envs_per_trial x train.episodes",
                      f"{P} x {E} x {episodes} x {16 * RESULT_COPIES} B", B * episodes * 16 * RESULT_COPIES)]
        parts += [_coagent_part(network, i, spaces[c.name], P, E) for i, c in enumerate(network.coagents)]
        if network.critic is not None:
            obs_space = space_of(env.observation_space)
            per_trial, per_env = _holder_bytes(lambda e: CriticUnit(network.critic, obs_space, 0, e, network.gamma),
                                               P, E)
            parts.append(Part("shared critic", "train.trials x train.envs_per_trial x critic.features",
                              f"{P} trials x {format_bytes(per_trial)} + {B} envs x {format_bytes(per_env)}",
                              P * per_trial + B * per_env))
        _, per_env, constants = _row_bytes(env)
        obs = int(np.asarray(env.observation_space.sample()).nbytes)
        per_env += 3 * obs + 32 + (0 if batch_fields(env) else GYM_ENV_BYTES)
        parts.append(Part("environments", "train.trials x train.envs_per_trial x env",
                          f"{B} envs x {format_bytes(per_env)} + {K} x {format_bytes(constants)} shared",
                          B * per_env + K * constants))
    finally:
        if own:
            env.close()
    local = ()
    if getattr(config, "engine", "inprocess") == "ray" and getattr(config, "address", None) is not None:
        local = ("episode returns and lengths",)  # the rest lives on the cluster's nodes
    return MemoryEstimate(tuple(parts), machine_memory(), local)


def check_memory(network, env_id: str | None = None, env_kwargs: dict | None = None, config=None, *,
                 env=None, memory: int | None = None, names: dict[str, str] | None = None) -> MemoryEstimate:
    """Refuse (``SpecError``) a run whose arrays would not fit in this machine's memory; else
    return the estimate.  ``network`` may be a ``RunSpec`` (then the other arguments default
    to its own); ``memory`` overrides the machine's memory (bytes); ``names`` renames fields in
    the message (``{"train.episodes": "--train-episodes"}``).  Runs on a Ray cluster
    (``engine="ray"`` with an ``address``) are checked for what the driver holds (the results)."""
    from .spec import RunSpec

    if isinstance(network, RunSpec):
        spec = network
        network, env_id = spec.network, env_id or spec.env_id
        env_kwargs = spec.env_kwargs if env_kwargs is None else env_kwargs
        config = config or spec.train
    estimate = estimate_memory(network, env_id, env_kwargs, config, env)
    if memory is not None:
        estimate = MemoryEstimate(estimate.parts, memory, estimate.local)
    if estimate.memory is not None and estimate.total > estimate.memory:
        largest = max((p for p in estimate.parts if not estimate.local or p.label in estimate.local),
                      key=lambda p: p.nbytes)
        fields = largest.fields
        for field, name in (names or {}).items():
            fields = fields.replace(field, name)
        raise SpecError(f"{fields}: the run needs about {format_bytes(estimate.total)} "
                        f"({estimate.describe()}), this machine has {format_bytes(estimate.memory)}")
    return estimate


def check_array_bytes(nbytes: int, field: str, what: str, memory: int | None = None) -> None:
    """Refuse (``SpecError`` naming ``field``) one allocation of ``nbytes`` that exceeds this machine's memory.

    >>> check_array_bytes(80 * 10**9, "env.size", "a big table", 2**30)
    Traceback (most recent call last):
    ...
    distcoagent.network.SpecError: env.size: a big table needs about 74.5 GiB, this machine has 1 GiB
    """
    memory = machine_memory() if memory is None else memory
    if memory is not None and nbytes > memory:
        raise SpecError(f"{field}: {what} needs about {format_bytes(nbytes)}, this machine has {format_bytes(memory)}")
