"""Execution functions beta_i: the probability that a coagent executes at an atomic tick.

At tick t coagent i executes with probability beta_i; otherwise it holds its previous
output (SPEC §3).  ``drivers`` names coagents whose same-tick output the function
reads (option-critic's termination drives the option policy), which makes them
same-tick inputs of the coagent for ordering purposes.

>>> import numpy as np
>>> Constant(0.5).beta(None, np.array([0, 3]), {}).tolist()
[0.5, 0.5]
>>> Driven("termination", when=1).beta(None, np.array([0, 3]), {"termination": np.array([0, 0])}).tolist()
[1.0, 0.0]
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .checks import flag, is_number, whole
from .features import LocalState, TabularState


def _check_probability(value, what: str) -> None:
    given = np.asarray(value, dtype=object).ravel()
    if not given.size or not all(is_number(v) for v in given):
        raise ValueError(f"{what}: expected probabilities in [0, 1] (numbers), got {value!r}")
    arr = np.asarray(value, dtype=np.float64)
    if not np.all(np.isfinite(arr)) or np.any(arr < 0) or np.any(arr > 1):
        raise ValueError(f"{what}: expected probabilities in [0, 1], got {value!r}")


class Execution:
    drivers: tuple[str, ...] = ()

    def beta(self, x: LocalState | None, episode_tick: np.ndarray, outputs: dict) -> np.ndarray:
        raise NotImplementedError

    def to_config(self) -> dict:
        raise NotImplementedError


@dataclass(frozen=True)
class Constant(Execution):
    """Execute with the same probability at every tick (the paper's experiment: 0.5)."""

    probability: float = 1.0

    def __post_init__(self):
        _check_probability(self.probability, "execution.probability")
        object.__setattr__(self, "probability", float(self.probability))

    def beta(self, x, episode_tick, outputs):
        return np.full(episode_tick.shape[0], self.probability)

    def to_config(self):
        return {"kind": "constant", "probability": self.probability}


@dataclass(frozen=True)
class Periodic(Execution):
    """Execute at episode ticks ``offset, offset + period, ...``: a coagent with its own rate."""

    period: int = 1
    offset: int = 0

    def __post_init__(self):
        object.__setattr__(self, "period", whole(self.period, "execution.period", 1))
        object.__setattr__(self, "offset", whole(self.offset, "execution.offset", 0))
        if not 0 <= self.offset < self.period:
            raise ValueError(f"execution.offset: expected an integer in [0, period), got {self.offset!r}")

    def beta(self, x, episode_tick, outputs):
        return ((episode_tick - self.offset) % self.period == 0).astype(np.float64)

    def to_config(self):
        return {"kind": "periodic", "period": self.period, "offset": self.offset}


@dataclass(frozen=True)
class Table(Execution):
    """A probability per tabular local state: beta depends on what the coagent sees."""

    probabilities: tuple[float, ...] = ()

    def __post_init__(self):
        _check_probability(self.probabilities, "execution.probabilities")
        object.__setattr__(self, "probabilities", tuple(float(p) for p in np.ravel(self.probabilities)))

    def beta(self, x, episode_tick, outputs):
        if not isinstance(x, TabularState):
            raise TypeError("execution kind 'table' needs a tabular local state")
        return np.asarray(self.probabilities)[x.index]

    def to_config(self):
        return {"kind": "table", "probabilities": list(self.probabilities)}


@dataclass(frozen=True)
class Driven(Execution):
    """Execute when coagent ``coagent`` output ``when`` this tick (and at each episode's first tick)."""

    coagent: str = ""
    when: int = 1
    at_episode_start: bool = True

    def __post_init__(self):
        if not isinstance(self.coagent, str) or not self.coagent:
            raise ValueError(f"execution.coagent: expected the driving coagent's name, got {self.coagent!r}")
        object.__setattr__(self, "when", whole(self.when, "execution.when", 0))
        object.__setattr__(self, "at_episode_start", flag(self.at_episode_start, "execution.at_episode_start"))

    @property
    def drivers(self):
        return (self.coagent,)

    def beta(self, x, episode_tick, outputs):
        fire = np.asarray(outputs[self.coagent]) == self.when
        if self.at_episode_start:
            fire = fire | (episode_tick == 0)
        return fire.astype(np.float64)

    def to_config(self):
        return {"kind": "driven", "coagent": self.coagent, "when": self.when,
                "at_episode_start": self.at_episode_start}


@dataclass(frozen=True)
class Function(Execution):
    """Any ``fn(local_state) -> probabilities``, for the Python API (not expressible in a spec)."""

    fn: Callable = field(default=lambda x: 1.0)

    def __post_init__(self):
        if not callable(self.fn):
            raise ValueError(f"execution.fn: expected a function of the local state, got {self.fn!r:.80}")

    def beta(self, x, episode_tick, outputs):
        value = self.fn(x)
        try:
            p = np.broadcast_to(np.asarray(value, dtype=np.float64), episode_tick.shape)
        except (TypeError, ValueError):
            raise ValueError(f"execution function output: expected probabilities (a number or one per "
                             f"environment), got {value!r:.80}") from None
        _check_probability(p, "execution function output")
        return p

    def to_config(self):
        return {"kind": "function", "fn": getattr(self.fn, "__qualname__", repr(self.fn))}


@dataclass(frozen=True)
class AfterStart(Constant):
    """Execute with probability ``probability`` at every tick but an episode's first.

    For a coagent whose first output nobody reads: option-critic's termination, which
    Bacon et al. evaluate on entering each state after the first (the option coagent
    executes at every episode start regardless).  Executing at tick 0 would change
    nothing in J; not executing there keeps a term out of the coagent's updates whose
    true value is zero but which a critic over (state, previous option) cannot tell apart.
    A ``Constant`` for every tick after the first (the exact evaluator folds it with the
    start phase of a ``Driven`` coagent, which such a network has).
    """

    def beta(self, x, episode_tick, outputs):
        return np.where(np.asarray(episode_tick) > 0, self.probability, 0.0)

    def to_config(self):
        return {"kind": "after_start", "probability": self.probability}


EXECUTIONS = {"constant": Constant, "periodic": Periodic, "table": Table, "driven": Driven,
              "after_start": AfterStart}
