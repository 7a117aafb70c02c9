"""ACPGT and finite-difference curves on the compiled estimators (``kernels.estimators``).

For a network whose coagents are all tabular softmax with a constant execution
probability, one action coagent, one tick per step, on the native gridworld with a time
limit (the paper's setting), ``Compiled.of`` builds the plan; otherwise it returns None
and callers use the engine (``estimators.acpgt_samples`` / ``fd_samples``).  The numbers
are the engine's: trial p's episode e is keyed as base id ``bases[p] + e`` (one episode per
environment), as ``acpgt_samples(..., envs=N, env_offset=...)`` and ``fd_samples`` key them,
and the tests compare the two.

Results are running sums at the episode counts of ``grid``: ``(trials, len(grid), n_flat)``,
divided by the count for the mean estimate.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import kernels
from ..coagent import parse_input
from ..engine import InProcessEngine
from ..execution import Constant
from ..network import Network
from ..policies import Softmax
from ..rng import Stream
from .common import Gradient, flatten, freeze


@dataclass
class Compiled:
    """The arrays ``kernels.estimators`` runs on, for one network and gridworld."""

    names: list[str]
    off: np.ndarray
    K: np.ndarray
    beta: np.ndarray
    in_kind: np.ndarray
    in_src: np.ndarray
    in_stride: np.ndarray
    n_in: np.ndarray
    action: int
    initial: np.ndarray
    next_cells: np.ndarray
    start: int
    goal: int
    limit: int
    reward: float
    gamma: float
    n_flat: int

    @classmethod
    def of(cls, network: Network, env_id: str, env_kwargs: dict | None) -> "Compiled | None":
        """The plan, or None if this network or environment is not the kind the kernels run."""
        from ..envs.gridworld import GridWorldBatch

        if not (kernels.available() and kernels.enabled()):
            return None
        if network.ticks_per_step != 1 or len(network.action_coagents) != 1:
            return None
        engine = InProcessEngine(freeze(network), env_id, env_kwargs, trials=1, envs_per_trial=1, seed=0)
        try:
            env = engine.env_sides[0].env
            if not isinstance(env, GridWorldBatch) or env.single.max_steps is None:
                return None
            _, R, _, _ = env.transition_model()
            if not np.all(R == R.flat[0]):
                return None
            nb = engine.batches[0]
            order = list(network.order)
            K, off, beta, kinds, srcs, strides, initial = [], [], [], [], [], [], []
            at = 0
            for name in order:
                unit = nb.units[name]
                c = unit.coagent
                if (type(c.policy) is not Softmax or not unit.encoder.tabular or type(c.execution) is not Constant
                        or unit.policy_param_names != ("W",)
                        or not (c.initial == "uniform" or isinstance(c.initial, tuple))):
                    return None
                n_local, k = unit.params["W"].shape[1:]
                K.append(k)
                off.append(at)
                at += n_local * k
                beta.append(c.execution.probability)
                initial.append(np.full(k, 1.0 / k) if c.initial == "uniform" else np.asarray(c.initial, float))
                kind, src = [], []
                for raw in c.inputs:
                    what, source = parse_input(raw)
                    kind.append({"obs": 0, "cur": 1, "prev": 2}[what])
                    src.append(order.index(source) if source else 0)
                kinds.append(kind)
                srcs.append(src)
                strides.append(list(unit.encoder.radix))
            width = max(1, max(len(k) for k in kinds))
            pad = lambda rows: np.array([r + [0] * (width - len(r)) for r in rows], dtype=np.int64)  # noqa: E731
            init = np.zeros((len(order), max(K)))
            for i, h in enumerate(initial):
                init[i, :h.size] = h
            return cls(order, np.array(off, dtype=np.int64), np.array(K, dtype=np.int64), np.array(beta),
                       pad(kinds), pad(srcs), pad(strides), np.array([len(k) for k in kinds], dtype=np.int64),
                       order.index(network.action_coagents[0]), init, np.ascontiguousarray(env._next, dtype=np.int64),
                       int(env.single.start), int(env.single.goal), int(env.single.max_steps), float(R.flat[0]),
                       float(network.gamma_atomic), at)
        finally:
            engine.close()

    def _keys(self, seed: int) -> np.ndarray:
        return np.array([Stream.from_seed(seed, "coagent:" + n).key for n in self.names], dtype=np.uint64)

    def _buffers(self):
        C, T = len(self.names), self.limit + 1
        return (np.zeros(C, dtype=np.int64), np.zeros(C, dtype=np.int64), np.zeros(int(self.K.max())),
                np.zeros(T, dtype=np.int64), np.zeros(T, dtype=np.int64), np.zeros((T, C), dtype=np.int64),
                np.zeros((T, C), dtype=np.int64), np.zeros(T), np.zeros(T), np.zeros((T, C), dtype=bool),
                np.zeros((T, C), dtype=np.int64), np.zeros((T, C)))

    def _args(self, params, seed):
        theta = np.ascontiguousarray(np.stack([flatten(p) for p in params]), dtype=np.float64)
        if theta.shape[1] != self.n_flat:
            raise ValueError(f"params: {theta.shape[1]} values per trial, expected {self.n_flat}")
        return (theta, self.off, self.K, self.beta, self._keys(seed), self.in_kind, self.in_src, self.in_stride,
                self.n_in, self.action, self.initial, self.next_cells, self.start, self.goal, self.limit,
                self.reward, self.gamma)

    def acpgt_sums(self, params: list[Gradient], grid, seed: int, bases) -> tuple[np.ndarray, int]:
        """(sums of shape (trials, len(grid), n_flat), ticks simulated): per-episode ACPGT estimates."""
        from ..kernels.estimators import acpgt_sums

        grid, bases = _grid(grid), np.asarray(bases, dtype=np.int64)
        out = np.zeros((len(params), grid.size, self.n_flat))
        ticks = acpgt_sums(*self._args(params, seed), bases, grid, out, *self._buffers(), np.zeros(self.limit + 1),
                           np.zeros(self.n_flat), np.zeros(self.n_flat))
        return out, int(ticks)

    def fd_sums(self, params: list[Gradient], grid, step: float, seed: int, bases) -> tuple[np.ndarray, tuple]:
        """(sums of shape (trials, len(grid), n_flat), (unperturbed ticks, branch ticks)): per-episode-pair
        central differences (G(theta + h e_j) - G(theta - h e_j)) / 2h, every coordinate."""
        from ..kernels.estimators import fd_sums

        grid, bases = _grid(grid), np.asarray(bases, dtype=np.int64)
        out = np.zeros((len(params), grid.size, self.n_flat))
        ticks = fd_sums(*self._args(params, seed), float(step), bases, grid, out, *self._buffers(),
                        np.zeros((2, self.n_flat), dtype=bool), np.zeros((2, self.n_flat)), np.zeros(self.n_flat))
        return out, tuple(int(t) for t in ticks)


def _grid(grid) -> np.ndarray:
    grid = np.asarray(grid, dtype=np.int64)
    if grid.ndim != 1 or grid.size == 0 or grid[0] < 1 or np.any(np.diff(grid) <= 0):
        raise ValueError(f"grid: expected increasing positive episode counts, got {grid!r}")
    return grid
