"""Local states: how a coagent turns its declared inputs into what its policy reads.

A local state is either *tabular* (one index per environment, the declared discrete
inputs in mixed radix, first input most significant, so parameters read
``theta[x_1, ..., x_n, output]``) or a *feature vector* (observation features, one-hot
codes of discrete inputs, raw continuous inputs, and a bias).  Both expose the two
operations every linear-in-parameters policy and critic needs, batched over trials
(parameter groups ``P``) and the environments of each trial (``E``, with ``B = P*E``):

- ``linear(W, rows)``: ``x . W`` for the environments ``rows`` (default all), ``W`` of
  shape ``(P, n, K)`` -> ``(len(rows), K)``;
- ``add_outer(z, g, mask)``: ``z[p, e] += mask * outer(x, g)`` for traces ``(P, E, n, K)``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .checks import whole


@dataclass(frozen=True)
class InputSpace:
    """What one input carries: ``n`` discrete values, or a float vector of ``dim``."""

    n: int | None = None
    dim: int | None = None
    low: np.ndarray | None = field(default=None, compare=False)
    high: np.ndarray | None = field(default=None, compare=False)

    @property
    def discrete(self) -> bool:
        return self.n is not None


class LocalState:
    """Base class; see the module docstring."""

    size: int
    batch: int
    tabular: bool  # an index per environment (True) or a feature vector


class TabularState(LocalState):
    tabular = True

    def __init__(self, index: np.ndarray, size: int):
        self.batch = index.shape[0]
        self.index = index
        self.size = size

    def linear(self, W: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        E = self.index.shape[0] // W.shape[0]
        if rows is None:
            rows = np.arange(self.index.shape[0])
        return W[rows // E, self.index[rows]]

    def add_outer(self, z: np.ndarray, g: np.ndarray, mask: np.ndarray) -> None:
        rows = np.flatnonzero(mask)
        cells = z.reshape(z.shape[0] * z.shape[1] * self.size, -1)  # one row per (env, local state)
        cells[rows * self.size + self.index[rows]] += g[rows]

    def outer(self, g: np.ndarray) -> np.ndarray:
        out = np.zeros((g.shape[0], self.size, g.shape[1]))
        out[np.arange(g.shape[0]), self.index] = g
        return out


class FeatureState(LocalState):
    tabular = False

    def __init__(self, phi: np.ndarray):
        self.batch = phi.shape[0]
        self.phi = phi
        self.size = phi.shape[1]

    def linear(self, W: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        P = W.shape[0]
        if rows is None:
            if P == 1:
                return self.phi @ W[0]
            return np.einsum("pef,pfk->pek", self.phi.reshape(P, -1, self.size), W).reshape(self.phi.shape[0], -1)
        if P == 1:
            return self.phi[rows] @ W[0]
        E = self.phi.shape[0] // P
        return np.einsum("bf,bfk->bk", self.phi[rows], W[rows // E])

    def add_outer(self, z: np.ndarray, g: np.ndarray, mask: np.ndarray) -> None:
        P, E = z.shape[:2]
        flat = z.reshape(P * E, self.size, -1)
        rows = np.flatnonzero(mask)
        flat[rows] += self.phi[rows, :, None] * g[rows, None, :]

    def outer(self, g: np.ndarray) -> np.ndarray:
        return self.phi[:, :, None] * g[:, None, :]


# ----------------------------------------------------------------------------- encoders
class ObservationFeatures:
    """Turns a Box observation batch ``(B, d)`` into features ``(B, F)``."""

    def size(self, space: InputSpace) -> int:
        raise NotImplementedError

    def __call__(self, obs: np.ndarray, space: InputSpace) -> np.ndarray:
        raise NotImplementedError


@dataclass(frozen=True)
class Raw(ObservationFeatures):
    """The observation itself, as the environment gives it (a continuous one; not scaled)."""

    def size(self, space):
        return space.dim

    def __call__(self, obs, space):
        return np.asarray(obs, dtype=np.float64).reshape(obs.shape[0], -1)


def bounds_problem(features, space: InputSpace) -> str | None:
    """Why ``features`` (Fourier, tile coding) cannot map observations of ``space`` onto the unit box,
    or None: a continuous observation (a discrete one is read one-hot, and the features would be silently
    unused), bounds from the features table, else the environment's Box, finite, one per dimension (or
    one for all), high above low.  Checked when a network meets its environment."""
    if not hasattr(features, "low"):
        return None
    if space.discrete:
        return (f"{type(features).__name__} maps a continuous (Box) observation; this environment's observation "
                f"is discrete ({space.n} values), read one-hot: leave features out")
    kind = type(features).__name__
    low, high = _bounds(features, space)
    for name, given, value in (("low", features.low, low), ("high", features.high, high)):
        if given is not None and value.size not in (1, space.dim):
            return (f"{name}: expected {space.dim} bound(s), one per observation dimension, got "
                    f"{value.size}")
    if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))):
        return (f"{kind} needs finite observation bounds; give `low` and `high` in the features table "
                "(the environment's Box space is unbounded)")
    if not np.all(high > low):
        return f"{kind} needs high > low in every dimension, got low {low.tolist()} and high {high.tolist()}"
    return None


def _bounds(features, space: InputSpace) -> tuple[np.ndarray, np.ndarray]:
    """The box ``features`` scale observations by: its own ``low``/``high``, else the space's."""
    low = np.asarray(features.low if features.low is not None else space.low, dtype=np.float64)
    high = np.asarray(features.high if features.high is not None else space.high, dtype=np.float64)
    return low, high


def _unit_box(obs: np.ndarray, space: InputSpace, features) -> np.ndarray:
    """Observations scaled into the unit box (``bounds_problem`` checked the bounds when the network
    met its environment; an encoder built by hand gets this check only)."""
    low, high = _bounds(features, space)
    if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))):
        raise ValueError(f"features: {bounds_problem(features, space)}")
    x = (np.asarray(obs, dtype=np.float64) - low) / (high - low)
    return np.clip(x, 0.0, 1.0)


@dataclass(frozen=True)
class Fourier(ObservationFeatures):
    """Fourier basis of order ``order`` (Konidaris et al. 2011) on the unit box."""

    order: int = 3
    low: tuple[float, ...] | None = None
    high: tuple[float, ...] | None = None

    def __post_init__(self):
        object.__setattr__(self, "order", whole(self.order, "features.order", 0))

    def _coefficients(self, dim: int) -> np.ndarray:
        grids = np.meshgrid(*[np.arange(self.order + 1)] * dim, indexing="ij")
        return np.stack([g.ravel() for g in grids], axis=1).astype(np.float64)

    def size(self, space):
        return (self.order + 1) ** space.dim

    def __call__(self, obs, space):
        return np.cos(np.pi * _unit_box(obs, space, self) @ self._coefficients(space.dim).T)


@dataclass(frozen=True)
class TileCoding(ObservationFeatures):
    """``tilings`` offset grids of ``tiles`` per dimension over the unit box; one active tile each."""

    tilings: int = 8
    tiles: int = 4
    low: tuple[float, ...] | None = None
    high: tuple[float, ...] | None = None

    def __post_init__(self):
        object.__setattr__(self, "tilings", whole(self.tilings, "features.tilings", 1))
        object.__setattr__(self, "tiles", whole(self.tiles, "features.tiles", 1))

    def size(self, space):
        return self.tilings * (self.tiles + 1) ** space.dim

    def __call__(self, obs, space):
        x = _unit_box(obs, space, self)
        B, d = x.shape
        per_tiling = (self.tiles + 1) ** d
        phi = np.zeros((B, self.size(space)))
        radix = (self.tiles + 1) ** np.arange(d)
        for k in range(self.tilings):
            offset = k / (self.tilings * self.tiles)
            cell = np.minimum(np.floor((x + offset) * self.tiles), self.tiles).astype(np.int64)
            phi[np.arange(B), k * per_tiling + cell @ radix] = 1.0
        return phi


FEATURES = {"raw": Raw, "fourier": Fourier, "tile": TileCoding}


class Encoder:
    """Builds a coagent's local state from its inputs' batches, in declared order."""

    def __init__(self, spaces: Sequence[InputSpace], tabular: bool, obs_features: ObservationFeatures | None,
                 obs_positions: Sequence[int] = ()):
        self.spaces = list(spaces)
        self.tabular = tabular
        self.obs_features = obs_features or Raw()
        self.obs_positions = set(obs_positions)
        if tabular:
            self.radix = []
            size = 1
            for space in reversed(self.spaces):
                self.radix.insert(0, size)
                size *= space.n
            self.size = size
        else:
            sizes = []
            for k, space in enumerate(self.spaces):
                if space.discrete:
                    sizes.append(space.n)
                else:
                    sizes.append(self.obs_features.size(space) if k in self.obs_positions else space.dim)
            self.size = int(sum(sizes)) + 1  # + bias

    @property
    def shape(self) -> tuple[int, ...]:
        """The table shape of a tabular local state (one axis per input)."""
        return tuple(s.n for s in self.spaces) if self.tabular else (self.size,)

    def __call__(self, values: Sequence[np.ndarray]) -> LocalState:
        if self.tabular:
            index = np.asarray(values[-1], dtype=np.int64)  # the last input's radix is 1
            if len(values) > 1:
                index = index + np.asarray(values[0], dtype=np.int64) * self.radix[0]
                for value, r in zip(values[1:-1], self.radix[1:-1]):
                    index += np.asarray(value, dtype=np.int64) * r
            return TabularState(index, self.size)
        parts = []
        for k, (value, space) in enumerate(zip(values, self.spaces)):
            value = np.asarray(value)
            if space.discrete:
                parts.append(np.eye(space.n)[value.astype(np.int64)])
            elif k in self.obs_positions:
                parts.append(self.obs_features(value, space))
            else:
                parts.append(value.reshape(value.shape[0], -1).astype(np.float64))
        parts.append(np.ones((parts[0].shape[0] if parts else 0, 1)))
        return FeatureState(np.concatenate(parts, axis=1))
