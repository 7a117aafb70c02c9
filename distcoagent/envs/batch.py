"""A batch of environments behind one small interface, with autoreset on the same step.

``reset() -> obs``; ``step(actions) -> (obs, reward, terminated, truncated)``, where
an ended environment's ``obs`` is already the first observation of its next episode.
Built-in environments are stepped natively with numpy (``registry``); any other
gymnasium id runs in gymnasium's ``SyncVectorEnv``.  Environment ``b`` is seeded from
the run's seed and its global index ``b`` alone, so it does not matter how the batch
is split.

A gymnasium env's internal state (its simulator, its random generator, its wrappers)
cannot be saved in general, so a ``GymBatch`` is not ``restorable``: a run restored
from a checkpoint restarts the episodes that were in progress (see ``tick``).
"""
from __future__ import annotations

import gymnasium as gym
import numpy as np


def env_seed(seed: int, env_index: int) -> int:
    """The seed of global environment ``env_index`` in a run seeded with ``seed``."""
    return int(np.random.SeedSequence([int(seed), int(env_index), 0xE5]).generate_state(1)[0])


class GymBatch:
    """``num_envs`` copies of a gymnasium env in a SyncVectorEnv with same-step autoreset."""

    FIELDS: dict = {}  # nothing that can be saved: see the module docstring
    restorable = False

    def __init__(self, env_id: str, num_envs: int, seed: int, env_offset: int = 0, episode_keys=None, **kwargs):
        probe = gym.make(env_id, **kwargs)  # unknown ids raise gymnasium's error, with its suggestion
        # discrete spaces that do not start at 0 (Discrete(3, start=-1)) are seen from 0, as coagents count
        self.observation_space, self._obs_start = _from_zero(probe.observation_space)
        self.action_space, self._action_start = _from_zero(probe.action_space)
        self.single = probe
        self.num_envs = num_envs
        if episode_keys is None:
            makers = [lambda: gym.make(env_id, **kwargs) for _ in range(num_envs)]
        else:  # each episode seeded by its key (the estimators' common random numbers)
            stride = int(episode_keys.per_env) + 1
            makers = [lambda first=int(base) * stride: KeyedResets(gym.make(env_id, **kwargs), seed, first)
                      for base in episode_keys.base_ids]
        self.vector = gym.vector.SyncVectorEnv(makers, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
        self._seed, self._offset, self._keyed = seed, env_offset, episode_keys is not None
        self._seeds = [env_seed(seed, env_offset + b) for b in range(num_envs)]

    def reset(self, restart: int = 0):
        """Reset every env; ``restart`` > 0 (the n-th restart after a restore) reseeds them afresh."""
        if self._keyed:
            return self._seen(self.vector.reset()[0])  # each env seeds its own episodes
        seeds = self._seeds if not restart else [
            env_seed(self._seed * 1_000_003 + restart, self._offset + b) for b in range(self.num_envs)]
        return self._seen(self.vector.reset(seed=seeds)[0])

    def _seen(self, obs):
        """Observations as the coagents count them (from 0; see the function ``_from_zero``)."""
        return obs if self._obs_start is None else obs - self._obs_start

    def step(self, actions):
        if isinstance(self.action_space, gym.spaces.Box):
            actions = np.clip(actions, self.action_space.low, self.action_space.high)
        if self._action_start is not None:
            actions = np.asarray(actions) + self._action_start
        obs, reward, terminated, truncated, _ = self.vector.step(actions)
        return self._seen(obs), np.asarray(reward, dtype=np.float64), np.asarray(terminated), \
            np.asarray(truncated)

    def transition_model(self):
        model = getattr(self.single.unwrapped, "transition_model", None)
        if model is None:
            raise TypeError("this environment exposes no transition model (needed for exact evaluation)")
        return model()

    def close(self):
        self.vector.close()


def _from_zero(space):
    """A Discrete or MultiDiscrete ``space`` counted from 0, and its start (None if it starts at 0 already)."""
    start = getattr(space, "start", None)
    if isinstance(space, gym.spaces.Discrete) and int(start) != 0:
        return gym.spaces.Discrete(int(space.n)), np.int64(start)
    if isinstance(space, gym.spaces.MultiDiscrete) and np.any(start != 0):
        return gym.spaces.MultiDiscrete(space.nvec), np.asarray(start, dtype=np.int64)
    return space, None


class KeyedResets(gym.Wrapper):
    """Seeds the environment's j-th episode with ``env_seed(seed, first + j)``, whatever the episodes
    before it drew: two copies with the same ``first`` start every episode alike."""

    def __init__(self, env, seed: int, first: int):
        super().__init__(env)
        self._seed, self._next = seed, first

    def reset(self, *, seed=None, options=None):
        seed, self._next = env_seed(self._seed, self._next), self._next + 1
        return self.env.reset(seed=seed, options=options)


def make_batch(env_id: str, num_envs: int, seed: int, env_offset: int = 0, episode_keys=None, **kwargs):
    """The batch for ``env_id``: its native batch if registered (``registry``), else gymnasium's.
    ``episode_keys`` (``tick.EpisodeKeys``, the gradient estimators): each episode's draws keyed by it."""
    from .registry import native

    entry = native(env_id)
    if entry is not None:
        unknown = set(kwargs) - set(entry.options)
        if unknown:
            raise ValueError(f"env: unknown option(s) {sorted(unknown)} for {env_id}; "
                             f"expected {', '.join(entry.options)}")
        if episode_keys is not None and entry.keyed is not None:
            return entry.keyed(num_envs, seed, env_offset, episode_keys=episode_keys, **kwargs)
        return entry.make(num_envs, seed, env_offset, **kwargs)
    return GymBatch(env_id, num_envs, seed, env_offset, episode_keys, **kwargs)
