"""Scripted environments and recording rules shared by the core tests."""
from __future__ import annotations

from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np

from distcoagent.rules import LearningRule


class ScriptedEnv(gym.Env):
    """Observation = step count mod n_obs; reward = rewards[step]; terminates after len(rewards) steps.

    ``nan_at`` makes the reward of that step (counted over all episodes) NaN (bad-input tests).
    """

    def __init__(self, rewards=(1.0, 2.0, 3.0, 4.0, 5.0), n_obs: int = 3, n_actions: int = 2,
                 nan_at: int | None = None):
        self.rewards = list(rewards)
        self.observation_space = gym.spaces.Discrete(n_obs)
        self.action_space = gym.spaces.Discrete(n_actions)
        self.nan_at = nan_at
        self.step_count = 0
        self.total_steps = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.step_count = 0
        return 0, {}

    def step(self, action):
        reward = float("nan") if self.total_steps == self.nan_at else self.rewards[self.step_count]
        self.step_count += 1
        self.total_steps += 1
        return self.step_count % self.observation_space.n, reward, self.step_count >= len(self.rewards), False, {}


SCRIPTED_ID = "tests/Scripted-v0"
if SCRIPTED_ID not in gym.registry:
    gym.register(id=SCRIPTED_ID, entry_point="core_fakes:ScriptedEnv")


@dataclass(frozen=True)
class RecordingRule(LearningRule):
    """Learns nothing; records what the coagent sees from the stream, per environment.

    ``log`` gets tuples (env, event, episode tick, Rbar, elapsed discount): "open" when the
    coagent executes, "close" when an interval's Rbar is complete (at the next execution,
    before its "open", or at the episode's end, then followed by "finish").
    """

    log: list = field(default_factory=list, compare=False, hash=False)
    kind = "recording"

    def close(self, unit, state, mask, v_next):
        for b in np.flatnonzero(mask):
            self.log.append((int(b), "close", int(unit.episode_tick[b]), float(unit.stream_reward[b]),
                             float(unit.stream_discount[b])))

    def finish(self, unit, state, mask):
        for b in np.flatnonzero(mask):
            self.log.append((int(b), "finish", int(unit.episode_tick[b]), 0.0, 0.0))

    def open(self, unit, state, x, mask, score, shared_value):
        for b in np.flatnonzero(mask):
            self.log.append((int(b), "open", int(unit.episode_tick[b]), 0.0, 1.0))


class TwoPartEnv(gym.Env):
    """A MultiDiscrete([2, 3]) action; the reward is the first part times 10 plus the second."""

    def __init__(self, steps: int = 4):
        self.observation_space = gym.spaces.Discrete(2)
        self.action_space = gym.spaces.MultiDiscrete([2, 3])
        self.steps, self.t = steps, 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return 0, {}

    def step(self, action):
        self.t += 1
        return self.t % 2, float(10 * action[0] + action[1]), self.t >= self.steps, False, {}


TWO_PART_ID = "tests/TwoPart-v0"
if TWO_PART_ID not in gym.registry:
    gym.register(id=TWO_PART_ID, entry_point="core_fakes:TwoPartEnv")
