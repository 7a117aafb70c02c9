"""Four Rooms (Sutton, Precup & Singh 1999; Bacon et al. 2017): a gymnasium env and a native batched twin.

The 13x13 map of the option-critic paper's code: 104 open cells in four rooms joined
by four doorways.  The observation is the open cell's index (row-major over open
cells); actions are 0 up, 1 down, 2 left, 3 right.  A step first picks the direction
(the chosen one with probability 2/3, each other one with 1/9), then moves once that
way; into a wall, the agent stays.  Reaching the goal gives +1 and terminates; every
other step gives 0.  ``max_steps`` steps truncate (0: no limit).  The goal starts in
the east doorway (between the two right-hand rooms); after ``goal_move_episode``
episodes of an environment (0: never) it moves to one cell of the lower-right room,
drawn from the run's seed alone (``moved_goal``).  Every episode starts in a cell
drawn uniformly from the open cells other than the current goal.

>>> len(OPEN_CELLS), EAST_DOORWAY, cell_of(EAST_DOORWAY)
(104, 62, (7, 9))
>>> round(optimal_steps_to_goal(), 3)
15.012
"""
from __future__ import annotations

from functools import lru_cache

import gymnasium as gym
import numpy as np

from ..batched import ENV
from ..checks import INT64_MAX
from ..rng import Stream
from .gridworld import MOVES

FOURROOMS_ID = "distcoagent/FourRooms-v0"
OPTIONS = ("goal_move_episode", "max_steps")

LAYOUT = """\
wwwwwwwwwwwww
w     w     w
w     w     w
w           w
w     w     w
w     w     w
ww wwww     w
w     www www
w     w     w
w     w     w
w           w
w     w     w
wwwwwwwwwwwww"""

WALL = np.array([[ch == "w" for ch in line] for line in LAYOUT.splitlines()])
OPEN_CELLS = np.argwhere(~WALL)  # (row, col) of open cell i, row-major
N_CELLS = len(OPEN_CELLS)
_INDEX = np.full(WALL.shape, -1, dtype=np.int64)
_INDEX[tuple(OPEN_CELLS.T)] = np.arange(N_CELLS)
# direction probabilities given the action: SLIP[action, direction]
SLIP = np.full((4, 4), 1.0 / 9.0) + np.eye(4) * (2.0 / 3.0 - 1.0 / 9.0)
SLIP_SLOT, START_SLOT, RESET_SLOT = 0, 1, 2  # draws of the batch's stream per (env, counter)
GOAL_KEY = 0x4F0A1  # moved_goal's SeedSequence entropy next to the seed


def cell_of(index: int) -> tuple[int, int]:
    """(row, col) of open cell ``index``."""
    row, col = OPEN_CELLS[index]
    return int(row), int(col)


def index_of(row: int, col: int) -> int:
    """Index of the open cell at (row, col)."""
    if WALL[row, col]:
        raise ValueError(f"({row}, {col}) is a wall")
    return int(_INDEX[row, col])


def _next_cells() -> np.ndarray:
    """NEXT[s, d]: the cell reached from s by moving in direction d (a wall: s itself)."""
    out = np.empty((N_CELLS, 4), dtype=np.int64)
    for d, (dr, dc) in enumerate(MOVES):
        target = OPEN_CELLS + (dr, dc)  # the outer wall keeps every target on the map
        blocked = WALL[target[:, 0], target[:, 1]]
        out[:, d] = np.where(blocked, np.arange(N_CELLS), _INDEX[target[:, 0], target[:, 1]])
    return out


def _doorways_and_rooms():
    """Doorways (an open cell between walls on opposite sides) and the rooms (the connected
    regions of the other open cells), as arrays of cell indices."""
    r, c = OPEN_CELLS.T
    door = (WALL[r - 1, c] & WALL[r + 1, c]) | (WALL[r, c - 1] & WALL[r, c + 1])
    room_of = np.full(N_CELLS, -1)
    rooms = []
    for seed_cell in np.flatnonzero(~door):
        if room_of[seed_cell] >= 0:
            continue
        room_of[seed_cell], frontier, members = len(rooms), [seed_cell], [seed_cell]
        while frontier:
            s = frontier.pop()
            for t in NEXT[s]:
                if not door[t] and room_of[t] < 0:
                    room_of[t] = len(rooms)
                    frontier.append(t)
                    members.append(t)
        rooms.append(np.array(sorted(members)))
    return np.flatnonzero(door), rooms


def _room_containing(row: int, col: int) -> np.ndarray:
    return next(room for room in ROOMS if index_of(row, col) in room)


NEXT = _next_cells()
DOORWAYS, ROOMS = _doorways_and_rooms()
UPPER_RIGHT_ROOM = _room_containing(1, 11)
LOWER_RIGHT_ROOM = _room_containing(11, 11)
# the doorway between the two right-hand rooms: the goal at the start of every run
EAST_DOORWAY = int(next(d for d in DOORWAYS
                        if np.isin(NEXT[d], UPPER_RIGHT_ROOM).any() and np.isin(NEXT[d], LOWER_RIGHT_ROOM).any()))


def slip_direction(action, uniform):
    """The direction moved: ``action`` if ``uniform`` < 2/3, else one of the other three (1/9 each)."""
    ninth = np.minimum((np.asarray(uniform) * 9).astype(np.int64), 8)
    return (np.asarray(action) + np.where(ninth < 6, 0, ninth - 5)) % 4


def start_cell(goal, uniform):
    """A start cell, uniform over the open cells other than ``goal``."""
    k = np.minimum((np.asarray(uniform) * (N_CELLS - 1)).astype(np.int64), N_CELLS - 2)
    return k + (k >= np.asarray(goal))


def moved_goal(seed: int) -> int:
    """The goal after the move in a run seeded with ``seed``: a lower-right-room cell, the
    same for every environment of the run."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), GOAL_KEY]))
    return int(LOWER_RIGHT_ROOM[rng.integers(len(LOWER_RIGHT_ROOM))])


def transition_model(goal: int = EAST_DOORWAY):
    """(P[s, a, s'], R[s, a], d0[s], terminal[s]) with the goal at ``goal`` (no time limit)."""
    P = np.zeros((N_CELLS, 4, N_CELLS))
    for d in range(4):
        P[np.arange(N_CELLS)[:, None], np.arange(4)[None, :], NEXT[:, d][:, None]] += SLIP[None, :, d]
    R = P[:, :, goal].copy()  # +1 on entering the goal
    terminal = np.arange(N_CELLS) == goal
    d0 = (~terminal) / (N_CELLS - 1.0)
    return P, R, d0, terminal


@lru_cache(maxsize=32)
def _solve(goal: int):
    """Policy iteration minimising the expected number of steps to ``goal`` (cost 1 per step,
    undiscounted).  Every policy reaches the goal (each direction has probability >= 1/9),
    so each evaluation is one linear solve and the result is exact."""
    P, _, d0, terminal = transition_model(goal)
    live = ~terminal
    policy = np.zeros(N_CELLS, dtype=np.int64)
    while True:
        P_pi = P[np.arange(N_CELLS), policy][np.ix_(live, live)]
        steps = np.zeros(N_CELLS)
        steps[live] = np.linalg.solve(np.eye(live.sum()) - P_pi, np.ones(live.sum()))
        q = 1.0 + P @ steps  # q[s, a]: expected steps after taking a in s, then the policy
        current = q[np.arange(N_CELLS), policy]
        better = q.min(axis=1) < current - 1e-10  # improve only strictly: no cycling on ties
        if not better[live].any():
            return policy, steps, float(d0 @ steps)
        policy = np.where(better & live, q.argmin(axis=1), policy)


def optimal_policy(goal_cell: int | None = None) -> np.ndarray:
    """The action per cell that minimises the expected steps to ``goal_cell`` (default: the east doorway)."""
    return _solve(EAST_DOORWAY if goal_cell is None else int(goal_cell))[0].copy()


def optimal_steps_to_goal(goal_cell: int | None = None) -> float:
    """Expected steps to ``goal_cell`` (default: the east doorway) under the optimal policy,
    from the uniform start distribution (cost 1 per step, no discount)."""
    return _solve(EAST_DOORWAY if goal_cell is None else int(goal_cell))[2]


def _check(goal_move_episode, max_steps):
    for name, value, zero in (("goal_move_episode", goal_move_episode, "the goal never moves"),
                              ("max_steps", max_steps, "no time limit")):
        if value is not None and (not isinstance(value, (int, np.integer)) or isinstance(value, bool)
                                  or not 0 <= value <= INT64_MAX):
            raise ValueError(f"env.{name}: expected an integer in 0..2**63 - 1 (0: {zero}), got {value!r}")


def render_ansi(cell: int | None, goal: int) -> str:
    grid = np.where(WALL, "w", ".")
    grid[cell_of(goal)] = "G"
    if cell is not None:
        grid[cell_of(cell)] = "A"
    return "\n".join("".join(row) for row in grid)


class FourRoomsEnv(gym.Env):
    """One Four Rooms env, gymnasium API.  ``reset(seed=s)`` starts a run: episode count 0, the
    goal in the east doorway, and ``moved_goal(s)`` as the goal after the move (as the batch)."""

    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(self, goal_move_episode: int = 1000, max_steps: int | None = 1000, render_mode: str | None = None):
        _check(goal_move_episode, max_steps)
        self.goal_move_episode, self.max_steps = int(goal_move_episode or 0), max_steps or None
        self.observation_space = gym.spaces.Discrete(N_CELLS)
        self.action_space = gym.spaces.Discrete(4)
        self.render_mode = render_mode
        self.goal, self.moved_goal = EAST_DOORWAY, None
        self._cell, self._steps, self._episodes = None, 0, 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if seed is not None or self.moved_goal is None:
            self.moved_goal = moved_goal(seed) if seed is not None else int(self.np_random.choice(LOWER_RIGHT_ROOM))
            self._episodes = 0
        moved = self.goal_move_episode and self._episodes >= self.goal_move_episode
        self.goal = self.moved_goal if moved else EAST_DOORWAY
        self._cell = int(start_cell(self.goal, self.np_random.random()))
        self._steps = 0
        self._episodes += 1
        return self._cell, {}

    def step(self, action):
        if not self.action_space.contains(action):
            raise ValueError(f"action: expected 0..3, got {action!r}")
        self._cell = int(NEXT[self._cell, slip_direction(int(action), self.np_random.random())])
        self._steps += 1
        terminated = self._cell == self.goal
        truncated = not terminated and self.max_steps is not None and self._steps >= self.max_steps
        return self._cell, float(terminated), terminated, truncated, {}

    def render(self):
        return render_ansi(self._cell, self.goal)

    def transition_model(self):
        """(P[s, a, s'], R[s, a], d0[s], terminal[s]) for the current goal (no time limit)."""
        return transition_model(self.goal)

    def optimal_policy(self) -> np.ndarray:
        return optimal_policy(self.goal)

    def optimal_steps_to_goal(self) -> float:
        return optimal_steps_to_goal(self.goal)


class FourRoomsBatch:
    """B Four Rooms envs stepped together with numpy; same dynamics as FourRoomsEnv, autoreset.

    Draws come from ``Stream.from_seed(seed, "fourrooms")`` keyed by the global environment
    index and that environment's own step counter (slot ``SLIP_SLOT`` for the direction,
    ``START_SLOT`` for the next start, ``RESET_SLOT`` for the start after ``reset``), so
    splitting the batch changes nothing.  ``reset()`` starts the run over (episode
    count, goal and counter back to 0); ``transition_model()`` is the initial goal's.
    """

    FIELDS = {"cells": ENV, "steps": ENV, "episodes": ENV, "counter": ENV, "goals": ENV,
              "env_ids": ENV}  # all its evolving state, and the global index of each row (see batched)
    restorable = True

    def __init__(self, num_envs: int, seed: int = 0, env_offset: int = 0, goal_move_episode: int = 1000,
                 max_steps: int | None = 1000):
        self.single = FourRoomsEnv(goal_move_episode, max_steps)
        self.num_envs = num_envs
        self.observation_space = self.single.observation_space
        self.action_space = self.single.action_space
        self.goal_move_episode, self.max_steps = self.single.goal_move_episode, self.single.max_steps
        self.moved_goal = moved_goal(seed)
        self.stream = Stream.from_seed(seed, "fourrooms")
        self.env_ids = env_offset + np.arange(num_envs, dtype=np.int64)
        self.cells = np.zeros(num_envs, dtype=np.int64)
        self.steps = np.zeros(num_envs, dtype=np.int64)  # in the current episode
        self.episodes = np.zeros(num_envs, dtype=np.int64)  # ended so far
        self.counter = np.zeros(num_envs, dtype=np.int64)  # the env's draw counter
        self.goals = np.full(num_envs, EAST_DOORWAY, dtype=np.int64)
        self.reset()

    def _goals(self, episodes: np.ndarray) -> np.ndarray:
        moved = (episodes >= self.goal_move_episode) if self.goal_move_episode else np.zeros(len(episodes), bool)
        return np.where(moved, self.moved_goal, EAST_DOORWAY)

    def reset(self):
        self.steps[:], self.episodes[:], self.counter[:] = 0, 0, 0
        self.goals[:] = EAST_DOORWAY
        self.cells[:] = start_cell(self.goals, self.stream.uniform(*self._draw_keys(slice(None)), RESET_SLOT))
        return self.cells.copy()

    def _draw_keys(self, rows):
        """(key, counter) of the draws ``rows`` make now: the global environment and its step counter."""
        return self.env_ids[rows], self.counter[rows]

    def step(self, actions):
        actions = np.asarray(actions, dtype=np.int64)
        if actions.size and (actions.min() < 0 or actions.max() > 3):
            raise ValueError(f"actions: expected 0..3, got {actions[(actions < 0) | (actions > 3)][:5]}")
        direction = slip_direction(actions, self.stream.uniform(*self._draw_keys(slice(None)), SLIP_SLOT))
        self.cells = NEXT[self.cells, direction]
        self.steps += 1
        terminated = self.cells == self.goals
        limit = self.max_steps
        truncated = ~terminated & (self.steps >= limit) if limit is not None else np.zeros_like(terminated)
        ended = terminated | truncated
        if ended.any():
            self.episodes += ended
            self.goals = self._goals(self.episodes)
            self.steps[ended] = 0
            u = self.stream.uniform(*self._draw_keys(ended), START_SLOT)
            self.cells[ended] = start_cell(self.goals[ended], u)
        self.counter += 1
        return self.cells.copy(), terminated.astype(np.float64), terminated, truncated

    def render(self, b: int = 0) -> str:
        return render_ansi(int(self.cells[b]), int(self.goals[b]))

    def transition_model(self):
        """The model with the goal every environment starts with (the east doorway)."""
        return transition_model(EAST_DOORWAY)

    def close(self):
        pass


class KeyedFourRoomsBatch(FourRoomsBatch):
    """Four Rooms whose draws are keyed by episode (``tick.EpisodeKeys``): row b's j-th episode draws as
    ``base_ids[b] * (per_env + 1) + j`` at its own steps 0, 1, ..., so two rows with the same base id see
    the same starts and slips for as long as they act alike (common random numbers for the estimators)."""

    FIELDS = {**FourRoomsBatch.FIELDS, "key_base": ENV}

    def __init__(self, num_envs: int, seed: int = 0, env_offset: int = 0, *, episode_keys, **options):
        self.key_base = np.asarray(episode_keys.base_ids, dtype=np.int64).copy()
        self.key_stride = int(episode_keys.per_env) + 1
        super().__init__(num_envs, seed, env_offset, **options)

    def _draw_keys(self, rows):
        return self.key_base[rows] * self.key_stride + self.episodes[rows], self.steps[rows]
