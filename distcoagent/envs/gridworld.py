"""The paper's gridworld (SPEC §4): a registered gymnasium env and a native batched twin.

Cells are numbered row-major from the top-left; actions are 0 up, 1 down, 2 left,
3 right; a move into a wall stays put; every step costs -1; reaching the goal
terminates; ``max_steps`` environment steps truncate (0 or None: no time limit).

>>> env = GridWorldEnv(size=3)
>>> obs, _ = env.reset(seed=0)
>>> obs, env.step(3)[:3]
(0, (1, -1.0, False))
>>> GridWorldEnv(size=5).optimal_return()
-8.0
"""
from __future__ import annotations

import gymnasium as gym
import numpy as np

from .. import kernels
from ..batched import ENV
from ..checks import INT64_MAX

MOVES = np.array([(-1, 0), (1, 0), (0, -1), (0, 1)])  # (row, col) for up, down, left, right
BUILD_BYTES_PER_CELL = 80  # next_cells: the table (4 x int64) and its temporaries, per cell


def _check(size, start, goal, max_steps) -> int:
    """Check every option's type and range, and that the transition table fits in memory, before
    building anything; returns the goal cell (default: the last cell)."""
    from ..limits import check_array_bytes

    if not _is_int(size) or size < 2:
        raise ValueError(f"env.size: expected an integer >= 2, got {size!r}")
    check_array_bytes(BUILD_BYTES_PER_CELL * size * size, "env.size",
                      f"a {size} x {size} gridworld's transition table (size^2 cells x {BUILD_BYTES_PER_CELL} B "
                      "while it is built)")
    goal = size * size - 1 if goal is None else goal
    for name, cell in (("start", start), ("goal", goal)):
        if not _is_int(cell) or not 0 <= cell < size * size:
            raise ValueError(f"env.{name}: expected a cell in 0..{size * size - 1}, got {cell!r}")
    if start == goal:
        raise ValueError("env.goal: must differ from env.start")
    if max_steps is not None and (not _is_int(max_steps) or not 0 <= max_steps <= INT64_MAX):
        raise ValueError(f"env.max_steps: expected a number of steps (at most 2**63 - 1), or 0 for no time limit, "
                         f"got {max_steps!r}")
    return goal


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def next_cells(size: int) -> np.ndarray:
    """next_cells[s, a]: the cell reached from s by action a."""
    cells = np.arange(size * size)
    row, col = cells // size, cells % size
    out = np.empty((size * size, 4), dtype=np.int64)
    for a, (dr, dc) in enumerate(MOVES):
        r = np.clip(row + dr, 0, size - 1)
        c = np.clip(col + dc, 0, size - 1)
        out[:, a] = r * size + c
    return out


class GridWorldEnv(gym.Env):
    """Single gridworld, gymnasium API. Defaults: 5x5, start top-left, goal bottom-right."""

    metadata = {"render_modes": ["ansi"]}

    def __init__(self, size: int = 5, start: int = 0, goal: int | None = None, max_steps: int | None = 100,
                 render_mode: str | None = None):
        goal = _check(size, start, goal, max_steps)
        max_steps = max_steps or None  # 0: no time limit (TOML has no null)
        self.size, self.start, self.goal, self.max_steps = size, start, goal, max_steps
        self.observation_space = gym.spaces.Discrete(size * size)
        self.action_space = gym.spaces.Discrete(4)
        self.render_mode = render_mode
        self._next = next_cells(size)
        self._cell, self._steps = start, 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._cell, self._steps = self.start, 0
        return self._cell, {}

    def step(self, action):
        if not self.action_space.contains(action):
            raise ValueError(f"action: expected 0..3, got {action!r}")
        self._cell = int(self._next[self._cell, int(action)])
        self._steps += 1
        terminated = self._cell == self.goal
        truncated = not terminated and self.max_steps is not None and self._steps >= self.max_steps
        return self._cell, -1.0, terminated, truncated, {}

    def render(self):
        grid = np.full((self.size, self.size), ".")
        grid.flat[self.goal], grid.flat[self._cell] = "G", "A"
        return "\n".join("".join(r) for r in grid)

    def transition_model(self):
        """(P[s, a, s'], R[s, a], d0[s], terminal[s]) for exact evaluation (no time limit)."""
        n = self.size * self.size
        P = np.zeros((n, 4, n))
        P[np.arange(n)[:, None], np.arange(4)[None, :], self._next] = 1.0
        R = -np.ones((n, 4))
        d0 = np.zeros(n)
        d0[self.start] = 1.0
        terminal = np.arange(n) == self.goal
        return P, R, d0, terminal

    def optimal_return(self) -> float:
        """Undiscounted return of a shortest path (breadth-first search), the optimum."""
        dist = {self.start: 0}
        frontier = [self.start]
        while frontier:
            nxt = []
            for s in frontier:
                for t in self._next[s]:
                    if int(t) not in dist:
                        dist[int(t)] = dist[s] + 1
                        nxt.append(int(t))
            frontier = nxt
        return -float(dist[self.goal])


class GridWorldBatch:
    """B gridworlds stepped together with numpy; same dynamics as GridWorldEnv, autoreset.

    Deterministic, so ``seed`` and ``env_offset`` (see ``registry``) are not used.
    """

    FIELDS = {"cells": ENV, "steps": ENV}  # all its evolving state (see batched)
    CONSTANTS = ("_next",)
    restorable = True

    def __init__(self, num_envs: int, seed: int = 0, env_offset: int = 0, size: int = 5, start: int = 0,
                 goal: int | None = None, max_steps: int | None = 100):
        self.single = GridWorldEnv(size, start, goal, max_steps)
        self.num_envs = num_envs
        self.observation_space = self.single.observation_space
        self.action_space = self.single.action_space
        self._next = self.single._next
        self.cells = np.full(num_envs, self.single.start, dtype=np.int64)
        self.steps = np.zeros(num_envs, dtype=np.int64)
        self._kernel = None  # the compiled step (kernels.gridworld), when numba is there
        if kernels.available():
            from ..kernels import gridworld

            self._kernel = gridworld

    @property
    def kernel_modules(self) -> tuple[str, ...]:
        """The kernel modules its step runs (``kernels.load``)."""
        return ("gridworld",) if self._kernel is not None else ()

    def reset(self, seeds=None):
        self.cells[:] = self.single.start
        self.steps[:] = 0
        return self.cells.copy()

    def step(self, actions):
        actions = np.asarray(actions, dtype=np.int64)
        if self._kernel is not None and kernels.enabled():
            B = self.num_envs
            obs, terminated, truncated = np.empty(B, dtype=np.int64), np.empty(B, dtype=bool), np.empty(B, dtype=bool)
            limit = self.single.max_steps
            bad = self._kernel.step(self._next, self.cells, self.steps, actions, self.single.goal, self.single.start,
                                    -1 if limit is None else limit, obs, terminated, truncated)
            if bad >= 0:
                raise ValueError(f"action: expected 0..3, got {int(actions[bad])} (environment {bad})")
            return obs, -np.ones(B), terminated, truncated
        self.cells = self._next[self.cells, actions]
        self.steps += 1
        terminated = self.cells == self.single.goal
        limit = self.single.max_steps
        truncated = ~terminated & (self.steps >= limit) if limit is not None else np.zeros_like(terminated)
        ended = terminated | truncated
        self.cells[ended] = self.single.start
        self.steps[ended] = 0
        return self.cells.copy(), -np.ones(self.num_envs), terminated, truncated

    def transition_model(self):
        return self.single.transition_model()

    def close(self):
        pass
