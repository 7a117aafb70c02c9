"""Coagent policies pi_i(u | x, theta_i), linear in their parameters, batched over trials.

Each policy keeps its parameters in a dict of arrays with a leading trial axis ``P``.
Parameters named in ``linear_params`` have shape ``(P, n, K)`` and act on the local
state ``x`` (tabular index or features); their score (d/dtheta ln pi) is
``outer(x, g)`` with the ``g`` that ``score`` returns.  Other parameters have shape
``(P, K)`` and their score is ``g`` itself.

>>> import numpy as np
>>> from distcoagent.features import TabularState
>>> p = Softmax(3)
>>> params = p.init_params(n_local=2, trials=1)
>>> stats = p.forward(params, TabularState(np.array([0, 1]), 2))
>>> stats.shape, stats.sum(axis=1).round(12).tolist()
((2, 3), [1.0, 1.0])
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .checks import is_number, whole
from .features import InputSpace, LocalState
from .rng import Stream, categorical

POLICY_SLOT = 1  # first random slot a policy draws from (slot 0: execution)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax by log-sum-exp: finite for any finite logits."""
    with np.errstate(over="ignore"):  # -huge - huge -> -inf, whose exp is an exact 0
        shifted = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


def sigmoid(z: np.ndarray) -> np.ndarray:
    """Logistic function without overflow for large |z|."""
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


class Policy:
    """A stochastic policy over a coagent's output; see the module docstring."""

    name: str = ""
    linear_params: tuple[str, ...] = ("W",)

    def output_space(self) -> InputSpace:
        raise NotImplementedError

    def init_params(self, n_local: int, trials: int) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def forward(self, params: dict, x: LocalState, rows: np.ndarray | None = None):
        """Distribution statistics for environments ``rows`` (default all): probabilities, or mean and std."""
        raise NotImplementedError

    def sample(self, stats, stream: Stream, env: np.ndarray, tick: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def score(self, stats, u: np.ndarray) -> dict[str, np.ndarray]:
        """The per-environment factor g of d/dtheta ln pi(u | x) for each parameter."""
        raise NotImplementedError

    def probabilities(self, stats) -> np.ndarray:
        """(B, n) probabilities of every output, for discrete policies (exact evaluation)."""
        raise TypeError(f"policy {self.name!r} has no finite output set")

    def to_config(self) -> dict:
        raise NotImplementedError


@dataclass(frozen=True)
class Softmax(Policy):
    """Categorical over ``n`` outputs, logits linear in the local state (tabular or features)."""

    n: int
    name = "softmax"

    def __post_init__(self):
        object.__setattr__(self, "n", whole(self.n, "softmax.n", 2))

    def output_space(self):
        return InputSpace(n=self.n)

    def init_params(self, n_local, trials):
        return {"W": np.zeros((trials, n_local, self.n))}

    def forward(self, params, x, rows=None):
        return softmax(x.linear(params["W"], rows))

    def sample(self, stats, stream, env, tick):
        return categorical(stats, stream.uniform(env, tick, POLICY_SLOT))

    def score(self, stats, u):
        g = -stats.copy()
        g[np.arange(u.shape[0]), u] += 1.0
        return {"W": g}

    def probabilities(self, stats):
        return stats

    def to_config(self):
        return {"kind": "softmax", "n": self.n}


@dataclass(frozen=True)
class Bernoulli(Policy):
    """Binary output (0 or 1) with P(1) = sigmoid(x . w)."""

    name = "bernoulli"

    def output_space(self):
        return InputSpace(n=2)

    def init_params(self, n_local, trials):
        return {"W": np.zeros((trials, n_local, 1))}

    def forward(self, params, x, rows=None):
        return sigmoid(x.linear(params["W"], rows)[:, 0])

    def sample(self, stats, stream, env, tick):
        return (stream.uniform(env, tick, POLICY_SLOT) < stats).astype(np.int64)

    def score(self, stats, u):
        return {"W": (u - stats)[:, None]}

    def probabilities(self, stats):
        return np.stack([1.0 - stats, stats], axis=1)

    def to_config(self):
        return {"kind": "bernoulli"}


@dataclass(frozen=True)
class Gaussian(Policy):
    """Diagonal Gaussian over ``dim`` reals: mean linear in the local state, learned log std."""

    dim: int = 1
    init_log_std: float = 0.0
    min_log_std: float = -5.0
    name = "gaussian"
    linear_params = ("W",)

    def __post_init__(self):
        object.__setattr__(self, "dim", whole(self.dim, "gaussian.dim", 1))
        for name in ("init_log_std", "min_log_std"):
            if not is_number(getattr(self, name)):
                raise ValueError(f"gaussian.{name}: expected a number, got {getattr(self, name)!r}")

    def output_space(self):
        return InputSpace(dim=self.dim)

    def init_params(self, n_local, trials):
        return {"W": np.zeros((trials, n_local, self.dim)),
                "log_std": np.full((trials, self.dim), float(self.init_log_std))}

    def forward(self, params, x, rows=None):
        mean = x.linear(params["W"], rows)
        log_std = params["log_std"]
        group = (np.arange(x.batch) if rows is None else rows) // (x.batch // log_std.shape[0])
        return mean, np.exp(np.maximum(log_std[group], self.min_log_std))

    def sample(self, stats, stream, env, tick):
        mean, std = stats
        return mean + std * stream.normal(env, tick, POLICY_SLOT, self.dim)

    def score(self, stats, u):
        mean, std = stats
        z = (u - mean) / std
        # at the floor the std does not move with log_std; the score stays z^2 - 1 there all the same, so that
        # a log_std that reached the floor can climb back over it (a zero would hold it there for good)
        return {"W": z / std, "log_std": z * z - 1.0}

    def to_config(self):
        floor = {} if self.min_log_std == Gaussian.min_log_std else {"min_log_std": self.min_log_std}
        return {"kind": "gaussian", "dim": self.dim, "init_log_std": self.init_log_std, **floor}  # (runs' hashes
        # from before min_log_std was recorded stay the same)


POLICIES = {"softmax": Softmax, "bernoulli": Bernoulli, "gaussian": Gaussian}
