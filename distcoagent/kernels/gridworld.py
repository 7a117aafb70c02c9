"""The native gridworld batch's step (``envs.gridworld.GridWorldBatch.step``), autoreset included."""
from __future__ import annotations

import numpy as np

from ._jit import inline, kernel

REWARD = -1.0  # every step costs one


@inline
def step_row(next_cells, cells, steps, b, a, goal, start, limit):
    """Move environment ``b`` by action ``a`` (in range); returns (observation, terminated, truncated),
    the observation being ``start`` again when the episode ended."""
    cell = next_cells[cells[b], a]
    steps[b] += 1
    term = cell == goal
    trunc = not term and limit >= 0 and steps[b] >= limit
    if term or trunc:
        cell = start
        steps[b] = 0
    cells[b] = cell
    return cell, term, trunc


@kernel
def step(next_cells, cells, steps, actions, goal, start, limit, obs, terminated, truncated):
    """Move every environment; an ended one is back at ``start``.  ``limit`` < 0: no time limit.
    Returns the first row with an action outside 0..3, or -1."""
    for b in range(cells.shape[0]):
        a = actions[b]
        if not 0 <= a < next_cells.shape[1]:
            return b
        obs[b], terminated[b], truncated[b] = step_row(next_cells, cells, steps, b, a, goal, start, limit)
    return -1


def warm_up() -> None:
    B = 2
    z = np.zeros(B, dtype=np.int64)
    step(np.zeros((4, 4), dtype=np.int64), z.copy(), z.copy(), z.copy(), 3, 0, 100, z.copy(),
         np.zeros(B, dtype=bool), np.zeros(B, dtype=bool))
