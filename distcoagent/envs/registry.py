"""Built-in environments with a native batched implementation, looked up by gymnasium id.

A *native batch* steps ``num_envs`` copies of an environment with numpy and follows the
small interface of ``batch.GymBatch``: ``reset() -> obs``, ``step(actions) -> (obs,
reward, terminated, truncated)`` with autoreset on the same step, ``observation_space``,
``action_space``, ``num_envs``, ``close()``.  Its evolving arrays declare their axis in
``FIELDS`` (see ``batched``), so the engine may drop finished trials from it and save
and restore it exactly.  Its constructor is ``make(num_envs, seed, env_offset, **options)``;
randomness, if any, must be keyed by global environment index (``env_offset + b``) so
that a run does not depend on how its environments are split.  A native environment with
randomness may also register ``keyed(num_envs, seed, env_offset, episode_keys=..., **options)``,
a batch whose draws are keyed by episode (``tick.EpisodeKeys``): the gradient estimators then
give the two runs of a finite-difference pair the same starts and dynamics noise (common
random numbers); without it they share only the coagents' draws.

Any id not registered here runs in gymnasium's ``SyncVectorEnv`` (``batch.GymBatch``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import gymnasium as gym


@dataclass(frozen=True)
class NativeEnv:
    """env_id: its gymnasium id; make: the batch constructor; options: the keyword options it takes."""

    env_id: str
    make: Callable
    options: tuple[str, ...]
    keyed: Callable | None = None  # the batch keyed by episode (estimators), if its randomness can be


NATIVE: dict[str, NativeEnv] = {}


def register_native(env_id: str, make: Callable, options: tuple[str, ...], entry_point: str,
                    keyed: Callable | None = None) -> None:
    """Register ``env_id`` with gymnasium (single env at ``entry_point``) and its native batch (and, if
    its randomness can be keyed by episode, that batch: see the module docstring)."""
    if env_id not in gym.registry:
        gym.register(id=env_id, entry_point=entry_point)
    NATIVE[env_id] = NativeEnv(env_id, make, tuple(options), keyed)


def native(env_id: str) -> NativeEnv | None:
    return NATIVE.get(env_id)
