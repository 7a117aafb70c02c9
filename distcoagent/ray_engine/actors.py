"""The two workers of the distributed engine, as plain classes (made Ray actors in ``engine``).

``EnvironmentWorker`` owns one micro-batch's environments, its shared critic and
its episode book.  ``CoagentWorker`` owns core ``CoagentUnit``s, unchanged, for one
or more coagents and every micro-batch.  One atomic tick of micro-batch k is:

1. ``EnvironmentWorker.start`` -> a *start message*: the last tick's reward, ended
   and active masks (so every coagent observes them and redraws U_{-1} for ended
   episodes, exactly as the in-process engine does at the end of its tick), this
   tick's active mask, and the observation and the shared critic's value when they
   changed (after an environment step; between steps they are not resent).
2. ``CoagentWorker.begin`` (only for workers whose outputs other workers read as
   ``prev:NAME``) -> those previous-tick outputs.
3. ``CoagentWorker.act`` once per same-tick level, in level order -> this tick's outputs.
4. ``EnvironmentWorker.step`` with every act's outputs: the action, the environment
   step, the critic's update, the episode book.

The order of operations on every unit and on the critic is that of
``InProcessEngine._tick``, so results are bit-identical.  Nothing here imports Ray.
"""
from __future__ import annotations

import numpy as np

from ..coagent import CoagentUnit, parse_input
from ..engine import EpisodeBook, check_reward
from ..envs import make_batch
from ..network import CriticUnit, Network, space_of


class EnvironmentWorker:
    """One micro-batch's environments (trials ``trial_start..trial_stop``), critic and episode book."""

    def __init__(self, network: Network, env_id: str, env_kwargs: dict, seed: int, trial_start: int,
                 trial_stop: int, envs_per_trial: int):
        self.network = network
        self.trials, self.envs_per_trial = trial_stop - trial_start, envs_per_trial
        self.env = make_batch(env_id, self.trials * envs_per_trial, seed, trial_start * envs_per_trial,
                              **env_kwargs)
        network.input_spaces(self.env.observation_space, self.env.action_space)
        self.batch = self.trials * envs_per_trial
        self.critic = None if network.critic is None else CriticUnit(
            network.critic, space_of(self.env.observation_space), self.trials, envs_per_trial, network.gamma)
        self.sequence = 0
        self.phase = "idle"  # idle -> running -> flush (final observe pending) -> done
        self.tick = 0
        self.book = None

    def ready(self) -> bool:
        return True

    def start(self, command: tuple) -> dict:
        """The start message of the next execution; ``command``: ("reset", episodes, tick), ("tick",), ("state",)."""
        self.sequence += 1
        message = {"sequence": self.sequence, "mode": command[0]}
        if command[0] == "reset":
            _, episodes, self.tick = command
            self.book = EpisodeBook(self.trials, self.envs_per_trial, episodes)
            self.obs, self.obs_changed, self.pending, self.phase = self.env.reset(), True, None, "running"
            return {**message, "tick": self.tick}
        if command[0] == "state":
            return message
        if self.phase == "flush":
            self.phase = "done"
            return {**message, "mode": "flush", "last": self.pending}
        if self.phase != "running":
            return {**message, "mode": "idle"}
        self.active = self.book.active.copy()
        message.update(last=self.pending, active=self.active, obs=None, value=None)
        if self.obs_changed:
            message["obs"] = self.obs
            message["value"] = None if self.critic is None else self.critic.value(self.obs)
            self.obs_changed = False
        self.pending = None
        return message

    def step(self, start: dict, *outputs: dict):
        """Finish the execution: step the environment (``tick``) or gather the state (``state``)."""
        if start["mode"] == "state":
            return self._state(outputs)
        if start["mode"] == "tick":
            self._tick({k: v for out in outputs if out for k, v in out.items()})
        return {"done": self.phase == "done", "finished": self.phase in ("flush", "done"),
                "episodes": 0 if self.book is None else int(self.book.count.min()), "tick": self.tick}

    def _tick(self, current: dict) -> None:
        # mirrors InProcessEngine._tick after NetworkBatch.tick
        network, active, obs = self.network, self.active, self.obs
        stepped = (self.tick + 1) % network.ticks_per_step == 0
        if stepped:
            action = network.action_of(current)
            next_obs, reward, terminated, truncated = self.env.step(action)
            check_reward(reward, active, self.tick, network)
            reward = np.where(active, reward, 0.0)
            ended = terminated | truncated
            if self.critic is not None:
                self.critic.update(obs, reward, next_obs, ended, active)
            self.obs, self.obs_changed = next_obs, True
        else:
            reward, ended = np.zeros(self.batch), np.zeros(self.batch, dtype=bool)
        self.pending = (reward, np.asarray(ended), active)
        self.book.record(reward, stepped, ended)
        self.tick += 1
        if self.book.finished:
            self.phase = "flush"

    def _state(self, outputs) -> dict:
        coagents = {k: v for out in outputs if out for k, v in out.items()}
        return {"coagents": coagents, "returns": self.book.returns.copy(), "lengths": self.book.lengths.copy(),
                "critic": None if self.critic is None else self.critic.state_dict(), "tick": self.tick}

    def close(self) -> None:
        self.env.close()


class CoagentWorker:
    """Core ``CoagentUnit``s of the coagents ``names`` for every micro-batch ``slices``.

    ``levels[l]``: this worker's coagents at same-tick level l (in network order);
    ``exports``: names whose outputs leave this worker (read by other workers or the
    environment); ``prev_exports``: names other workers read as ``prev:NAME``.
    """

    def __init__(self, network: Network, names: list[str], observation_space, action_space,
                 slices: list[tuple[int, int]], envs_per_trial: int, seed: int, levels: dict[int, list[str]],
                 exports: set[str], prev_exports: set[str]):
        spaces = network.input_spaces(observation_space, action_space)
        self.names = [n for n in network.order if n in names]
        self.units = [{n: CoagentUnit(network.coagent(n), spaces[n], b - a, envs_per_trial,
                                      network.gamma_atomic, seed, a) for n in self.names}
                      for a, b in slices]
        self.levels, self.exports, self.prev_exports = levels, set(exports), set(prev_exports)
        self.first_level = min(levels)
        # previous-tick outputs read inside this worker (by any of its coagents)
        self.prev_local = sorted({src for n in self.names for kind, src in map(parse_input, network.coagent(n).inputs)
                                  if kind == "prev" and src in self.names})
        count = len(slices)
        self.sequence = [0] * count
        self.lookup = [{} for _ in range(count)]
        self.obs, self.value, self.active = [None] * count, [None] * count, [None] * count

    def ready(self) -> bool:
        return True

    def _prepare(self, k: int, start: dict) -> None:
        """Apply the start message once per execution: last tick's rewards, episode starts, inputs."""
        if start["sequence"] == self.sequence[k]:
            return
        self.sequence[k] = start["sequence"]
        units = self.units[k]
        mode = start["mode"]
        if mode == "reset":
            mask = np.ones(next(iter(units.values())).batch, dtype=bool)
            for unit in units.values():
                unit.set_clock(start["tick"])  # as InProcessEngine.train does
                unit.begin_episode(mask)
            self.obs[k] = self.value[k] = None
            return
        last = start.get("last")
        if last is not None:
            reward, ended, active = last
            for unit in units.values():
                unit.observe(reward, ended, active)
            if ended.any():
                for unit in units.values():
                    unit.begin_episode(ended)
        if mode == "tick":
            if start["obs"] is not None:  # copies: channel buffers are reused by later executions
                self.obs[k] = np.array(start["obs"])
                self.value[k] = None if start["value"] is None else np.array(start["value"])
            self.active[k] = np.array(start["active"])
            self.lookup[k] = {"prev:" + n: units[n].output.copy() for n in self.prev_local}

    def begin(self, k: int, start: dict) -> dict | None:
        """Previous-tick outputs that other workers read (after this tick's episode starts)."""
        self._prepare(k, start)
        if start["mode"] != "tick":
            return None
        units = self.units[k]
        return {"prev:" + n: units[n].output.copy() for n in self.prev_exports}

    def act(self, k: int, level: int, start: dict, *received: dict | None) -> dict | None:
        """Run this worker's coagents of ``level`` for micro-batch k; returns the exported outputs."""
        self._prepare(k, start)
        mode = start["mode"]
        if mode == "state":
            return self.state(k) if level == self.first_level else None
        if mode != "tick":
            return None
        lookup, units = self.lookup[k], self.units[k]
        for values in received:  # copies: holding a view of a channel's buffer would block its writer
            if values:
                lookup.update({key: np.array(value) for key, value in values.items()})
        obs, active, value = self.obs[k], self.active[k], self.value[k]
        out = {}
        for name in self.levels[level]:
            unit = units[name]
            inputs = [obs if i == "obs" else lookup[i] for i in unit.coagent.inputs]
            drivers = {d: lookup[d] for d in unit.coagent.execution.drivers}
            lookup[name] = unit.act(inputs, active, drivers, value)
            if name in self.exports:
                out[name] = lookup[name]
        return out

    def state(self, k: int) -> dict:
        return {n: {"params": {p: v.copy() for p, v in u.params.items()}, "counters": dict(u.counters)}
                for n, u in self.units[k].items()}

    def state_dicts(self) -> list[dict]:
        """Every unit's full ``state_dict`` per micro-batch (for checkpoints)."""
        return [{n: u.state_dict() for n, u in units.items()} for units in self.units]
