"""One atomic tick, defined once: the environment side, the coagent side, and their messages.

Every engine runs a tick of one micro-batch (SPEC §3a) as the same exchange::

    EnvironmentSide.start() --TickStart--> CoagentSide.receive()      last tick's feedback is
                                           CoagentSide.act(names...)  observed first, then the
    EnvironmentSide.finish(outputs) <--outputs--                      coagents act in order

- The *environment side* owns the environment batch, the shared critic, the episode
  book, and the feedback (reward, ended, active) of the last tick that the coagents
  have not received yet.  ``finish`` assembles the action, steps the environment
  every ``ticks_per_step`` ticks, trains the critic and records episodes.
- The *coagent side* owns the units of a group of coagents (all of them in-process;
  those of one actor on Ray).  ``receive`` delivers the feedback (each unit observes
  the reward, and episodes that ended start again), ``act`` runs named coagents in
  topological order and returns their outputs.

The in-process engine calls these directly; the Ray engine passes the same messages
through its compiled graph, the coagent side split over actors by ``act(names)``.  A
run starts with ``RunStart`` (clocks aligned, first episodes begun) and a finished
micro-batch ends with ``Flush`` (its last feedback delivered).  Nothing else in the
code base steps an environment or a coagent.

Every evolving array of both sides declares its batch axis (``batched``): the run's
state saves, restores and compacts without a list to keep up to date.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from . import batched, kernels
from .batched import ENV
from .coagent import CoagentUnit, NonFiniteError, parse_input
from .envs import make_batch
from .network import CriticUnit, Network, space_of


# ---------------------------------------------------------------------- messages
@dataclass
class Feedback:
    """A tick's outcome for the coagents: reward (0 between steps and for inactive environments),
    which episodes ended, and which environments took part."""

    reward: np.ndarray
    ended: np.ndarray
    active: np.ndarray


@dataclass
class RunStart:
    """A run begins at atomic tick ``tick``: align every clock, begin every episode."""

    tick: int


@dataclass
class TickStart:
    """What the coagents need for tick ``tick``: the last tick's feedback (to observe first), this
    tick's active environments, and the observation and shared critic value when they changed
    (``None``: unchanged since the last TickStart, so a transport need not resend them)."""

    tick: int
    active: np.ndarray
    obs: np.ndarray | None
    value: np.ndarray | None
    feedback: Feedback | None


@dataclass
class Flush:
    """The micro-batch has finished its episodes: deliver the last feedback; no more ticks."""

    feedback: Feedback | None


@dataclass
class Status:
    """The environment side after a tick: its clock and how far its episodes are."""

    tick: int
    episodes_done: int       # episodes every environment has finished (the minimum)
    finished: bool           # every episode recorded (a Flush may still be due)
    done: bool               # flushed: nothing more to do
    feedback: Feedback | None = None  # the tick's feedback, when an observer asked for it


def check_reward(reward: np.ndarray, active: np.ndarray, tick: int, network: Network) -> None:
    """Stop the run on a NaN or infinite reward, naming the tick and the coagents it would reach."""
    bad = active & ~np.isfinite(reward)
    if bad.any():
        b = int(np.flatnonzero(bad)[0])
        raise NonFiniteError(f"environment returned reward {reward[b]} at atomic tick {tick} "
                             f"(environment {b}); it would reach coagent(s) {', '.join(network.order)}")


# ---------------------------------------------------------------------- episode book
class EpisodeBook:
    """Per-environment episode bookkeeping: returns, counts, which environments are still active."""

    FIELDS = {"returns": ENV, "lengths": ENV, "count": ENV, "running": ENV, "steps": ENV, "active": ENV}

    def __init__(self, trials: int, envs_per_trial: int, episodes: int):
        self.trials, self.envs_per_trial, self.episodes = trials, envs_per_trial, episodes
        B = trials * envs_per_trial
        self.returns = np.full((B, episodes), np.nan)
        self.lengths = np.zeros((B, episodes), dtype=np.int64)
        self.count = np.zeros(B, dtype=np.int64)
        self.running = np.zeros(B)
        self.steps = np.zeros(B, dtype=np.int64)
        self.active = np.ones(B, dtype=bool)

    def record(self, reward: np.ndarray, stepped: bool, ended: np.ndarray) -> np.ndarray:
        """Add a tick's reward; returns the environments whose recorded episode just ended."""
        self.running += np.where(self.active, reward, 0.0)
        if stepped:
            self.steps += self.active
        done = ended & self.active
        if done.any():
            rows = np.flatnonzero(done)
            self.returns[rows, self.count[rows]] = self.running[rows]
            self.lengths[rows, self.count[rows]] = self.steps[rows]
            self.count[rows] += 1
            self.running[rows] = 0.0
            self.steps[rows] = 0
            self.active &= self.count < self.episodes
        return done

    @property
    def finished(self) -> bool:
        return not self.active.any()

    def curve_sums(self) -> dict[str, np.ndarray]:
        """Per episode index: how many environments finished it, the sum and the sum of squares of
        their returns (to combine over micro-batches into a mean and a standard error)."""
        upto = int(self.count.max(initial=0))
        part = self.returns[:, :upto]
        seen = np.isfinite(part)
        values = np.where(seen, part, 0.0)
        return {"n": seen.sum(axis=0), "sum": values.sum(axis=0), "sum_sq": np.square(values).sum(axis=0)}


# ---------------------------------------------------------------------- environment side
class EnvironmentSide:
    """One micro-batch's environments (trials ``trial_start..trial_stop``), critic, book and feedback."""

    FIELDS = {"obs": ENV, "current_active": ENV, "pending_reward": ENV, "pending_ended": ENV,
              "pending_active": ENV}

    def __init__(self, network: Network, env_id: str, env_kwargs: dict, seed: int, trial_start: int,
                 trial_stop: int, envs_per_trial: int, episode_keys: EpisodeKeys | None = None):
        self.network = network
        self.trial_start, self.trial_stop = trial_start, trial_stop
        self.trials, self.envs_per_trial = trial_stop - trial_start, envs_per_trial
        self.env = make_batch(env_id, self.trials * envs_per_trial, seed, trial_start * envs_per_trial,
                              episode_keys, **env_kwargs)
        network.input_spaces(self.env.observation_space, self.env.action_space)
        self.critic = None if network.critic is None else CriticUnit(
            network.critic, space_of(self.env.observation_space), self.trials, envs_per_trial, network.gamma)
        self.book: EpisodeBook | None = None
        self.phase = "idle"  # idle -> running -> flush (last feedback due) -> done
        self.tick = 0
        self.obs = self.current_active = None
        self.pending_reward = self.pending_ended = self.pending_active = None
        self.obs_changed = False
        self.restarts = 0  # restores of an environment that cannot be saved (see GymBatch)
        self.report_feedback = False  # put each tick's feedback in its Status (observers asked)

    @property
    def batch(self) -> int:
        return self.env.num_envs

    def load_kernels(self) -> float:
        """Load the critic's and the environment's kernels now, not in the first tick (a Ray actor does,
        while the others start); the seconds it took."""
        uses = (("critic",) if self.critic is not None and self.critic.kernel is not None else ()) + tuple(
            getattr(self.env, "kernel_modules", ()))
        return kernels.load(*uses)

    def begin(self, episodes: int, tick: int) -> RunStart:
        """Start a run of ``episodes`` episodes per environment at atomic tick ``tick``."""
        self.book = EpisodeBook(self.trials, self.envs_per_trial, episodes)
        self.tick, self.obs, self.obs_changed, self.phase = tick, self.env.reset(), True, "running"
        self._set_pending(None)
        return RunStart(tick)

    def start(self) -> TickStart | Flush | None:
        """The next message for the coagents: a tick, the final flush, or None when done."""
        if self.phase == "flush":
            self.phase = "done"
            return Flush(self._take_pending())
        if self.phase != "running":
            return None
        self.current_active = self.book.active.copy()
        obs = value = None
        if self.obs_changed:
            obs = self.obs
            value = None if self.critic is None else self.critic.value(self.obs)
            self.obs_changed = False
        return TickStart(self.tick, self.current_active, obs, value, self._take_pending())

    def finish(self, outputs: dict[str, np.ndarray]) -> Status:
        """Complete the tick with the coagents' outputs: act on the environment if it steps now,
        train the critic, record episodes; the feedback waits for the next message."""
        network, active, obs = self.network, self.current_active, self.obs
        stepped = (self.tick + 1) % network.ticks_per_step == 0
        if stepped:
            next_obs, reward, terminated, truncated = self.env.step(network.action_of(outputs))
            check_reward(reward, active, self.tick, network)
            reward = np.where(active, reward, 0.0)
            ended = np.asarray(terminated | truncated)
            if self.critic is not None:
                self.critic.update(obs, reward, next_obs, ended, active)
            self.obs, self.obs_changed = next_obs, True
        else:
            reward, ended = np.zeros(self.batch), np.zeros(self.batch, dtype=bool)
        feedback = Feedback(reward, ended, active)
        self._set_pending(feedback)
        self.book.record(reward, stepped, ended)
        self.tick += 1
        if self.book.finished:
            self.phase = "flush"
        return self.status(feedback if self.report_feedback else None)

    def status(self, feedback: Feedback | None = None) -> Status:
        done_episodes = 0 if self.book is None else _least(self.book.count)
        return Status(self.tick, done_episodes, self.phase in ("flush", "done"), self.phase in ("done", "idle"),
                      feedback)

    def _take_pending(self) -> Feedback | None:
        if self.pending_reward is None:
            return None
        feedback = Feedback(self.pending_reward, self.pending_ended, self.pending_active)
        self._set_pending(None)
        return feedback

    def _set_pending(self, feedback: Feedback | None) -> None:
        self.pending_reward, self.pending_ended, self.pending_active = (
            (None, None, None) if feedback is None else (feedback.reward, feedback.ended, feedback.active))

    # ------------------------------------------------------------------ state and metrics
    def holders(self) -> list:
        """Every object of this side whose arrays have a batch axis (compaction walks them)."""
        return [self, self.env, *([self.critic] if self.critic is not None else []),
                *([self.book] if self.book is not None else [])]

    def state_dict(self) -> dict:
        return {"phase": self.phase, "tick": self.tick, "obs_changed": self.obs_changed,
                "restarts": self.restarts, "side": batched.save(self), "env": batched.save(self.env),
                "critic": None if self.critic is None else self.critic.state_dict(),
                "book": None if self.book is None else {"episodes": self.book.episodes, **batched.save(self.book)}}

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict()``.  An environment batch that cannot be saved (a gymnasium env)
        restarts the episodes in progress: they end here for the coagents, and are not recorded."""
        self.phase, self.tick = state["phase"], int(state["tick"])
        self.obs_changed, self.restarts = bool(state["obs_changed"]), int(state["restarts"])
        if self.critic is not None:
            self.critic.load_state_dict(state["critic"])
        self.book = None
        if state["book"] is not None:
            self.book = EpisodeBook(self.trials, self.envs_per_trial, int(state["book"]["episodes"]))
            batched.load(self.book, state["book"], "run.book")
        # the side's own fields are None or arrays depending on where the run stopped
        for name in self.FIELDS:
            value = state["side"][name]
            setattr(self, name, None if value is None else np.array(value))
        if getattr(self.env, "restorable", False):
            batched.load(self.env, state["env"], "run.env")
        elif self.phase == "running":
            self._restart_episodes()

    def _restart_episodes(self) -> None:
        self.restarts += 1
        self.obs, self.obs_changed = self.env.reset(self.restarts), True
        cut = self.book.active.copy()
        self.book.running[cut], self.book.steps[cut] = 0.0, 0
        if self.critic is not None:
            from .rules import ScaledTraces

            ScaledTraces.reset(self.critic.rule_state, cut)
        reward = self.pending_reward if self.pending_reward is not None else np.zeros(self.batch)
        ended = (self.pending_ended if self.pending_ended is not None else np.zeros(self.batch, bool)) | cut
        active = self.pending_active if self.pending_active is not None else cut
        self._set_pending(Feedback(reward, ended, active | cut))

    def result(self) -> dict:
        """Episode returns and lengths so far, the critic's weights, the clock, whether it finished."""
        book, critic = self.book, self.critic
        return {"returns": book.returns.copy(), "lengths": book.lengths.copy(),
                "critic": None if critic is None else critic.params["w"].copy(), "tick": self.tick,
                "finished": self.phase == "done"}

    def metrics(self) -> dict:
        book = self.book
        return {"tick": self.tick, "batch": self.batch,
                "episodes_done": 0 if book is None else _least(book.count),
                "episodes_finished": 0 if book is None else int(book.count.sum()),
                "curve": None if book is None else book.curve_sums(),
                "critic_last_update": None if self.critic is None or self.critic.last_delta is None
                else float(np.abs(self.critic.last_delta[0][self.critic.last_delta[1]]).mean())
                if self.critic.last_delta[1].any() else None}

    def close(self) -> None:
        self.env.close()


# ---------------------------------------------------------------------- coagent side
@dataclass(frozen=True)
class EpisodeKeys:
    """Key each episode's random draws by (base id, episode number), clocks from 0 in each episode.

    Row b's j-th episode draws as environment ``base_ids[b] * (per_env + 1) + j`` at ticks 0, 1, ...:
    episodes are independent, and two rows with the same base id see common random numbers however
    long their earlier episodes were (what finite differences on J need).
    """

    base_ids: np.ndarray
    per_env: int


@dataclass(frozen=True)
class RasterSpec:
    """Record which coagents executed at each tick for environments ``env_ids`` (global indices),
    keeping the last ``window`` ticks: the realised asynchrony the dashboard draws."""

    env_ids: tuple[int, ...]
    window: int = 256


class Raster:
    """The recorded executions: per tick, the sampled environments present and each coagent's bits."""

    def __init__(self, spec: RasterSpec):
        self.spec = spec
        self.ticks: OrderedDict[int, dict] = OrderedDict()
        self._batch, self._positions, self._present = -1, None, None

    def record(self, tick: int, env_index: np.ndarray, name: str, executed: np.ndarray) -> None:
        if env_index.size != self._batch:  # the batch was cut (finished trials dropped): find them again
            self._batch = env_index.size
            found = np.isin(env_index, self.spec.env_ids)
            self._positions, self._present = np.flatnonzero(found), env_index[found].tolist()
        if not self._present:
            return
        row = self.ticks.get(tick)
        if row is None:
            row = self.ticks[tick] = {"envs": self._present}
            while len(self.ticks) > self.spec.window:
                self.ticks.popitem(last=False)
        row[name] = executed[self._positions].tolist()

    def snapshot(self) -> dict[int, dict]:
        return {t: dict(row) for t, row in self.ticks.items()}


class CoagentSide:
    """The units of the coagents ``names`` (network order) for one micro-batch.

    ``episode_keys``: an ``EpisodeKeys`` for these rows (gradient estimators), else draws are keyed
    by global environment index and the run's atomic tick.  ``raster``: record executions of a few
    environments (``RasterSpec``) for the dashboard.
    """

    FIELDS = {"obs": ENV, "value": ENV, "active": ENV, "key_base": ENV, "key_count": ENV, "env_index": ENV}

    def __init__(self, network: Network, names, observation_space: gym.Space, action_space: gym.Space | None,
                 trials: int, envs_per_trial: int, seed: int, trial_offset: int = 0,
                 episode_keys: EpisodeKeys | None = None, raster: RasterSpec | None = None):
        self.network = network
        spaces = network.input_spaces(observation_space, action_space)
        self.scratch: dict = {}  # one workspace for the units' dense updates (they run one at a time)
        self.units = {name: CoagentUnit(network.coagent(name), spaces[name], trials, envs_per_trial,
                                        network.gamma_atomic, seed, trial_offset, self.scratch)
                      for name in network.order if name in set(names)}
        self.trials, self.envs_per_trial = trials, envs_per_trial
        self.batch = trials * envs_per_trial
        # previous-tick outputs that coagents of this side read from coagents of this side
        self.prev_local = sorted({src for u in self.units.values() for kind, src in map(parse_input, u.coagent.inputs)
                                  if kind == "prev" and src in self.units})
        self.obs = self.value = self.active = None
        self.key_base = self.key_count = None
        self.key_per_env = 0
        if episode_keys is not None:
            self.key_base = np.asarray(episode_keys.base_ids, dtype=np.int64).copy()
            self.key_count = np.zeros(self.batch, dtype=np.int64)
            self.key_per_env = int(episode_keys.per_env)
        self.lookup: dict[str, np.ndarray] = {}  # this tick's inputs: "prev:NAME" and "NAME"
        self.env_index = trial_offset * envs_per_trial + np.arange(self.batch)  # global environment index
        self.current_tick = 0  # the atomic tick of the last TickStart
        self.raster = None
        if raster is not None and np.isin(self.env_index, raster.env_ids).any():
            self.raster = Raster(raster)

    def load_kernels(self) -> float:
        """Load the units' kernels now, not in the first tick (a Ray actor does, while the others start);
        the seconds it took."""
        return kernels.load(*(m for unit in self.units.values() if unit.kernel is not None for m in unit.kernel.uses))

    def begin_episode(self, mask: np.ndarray) -> None:
        """Start new episodes where ``mask``: every unit redraws U_{-1} and resets its stream."""
        if self.key_base is not None:
            ids = self.key_base * (self.key_per_env + 1) + np.minimum(self.key_count, self.key_per_env)
            for unit in self.units.values():
                unit.env_ids = np.where(mask, ids, unit.env_ids)
                unit.env_tick[mask] = 0
            self.key_count[mask] += 1
        for unit in self.units.values():
            unit.begin_episode(mask)

    def observe(self, feedback: Feedback) -> None:
        """Every unit receives the tick's reward; ended episodes begin again."""
        for unit in self.units.values():
            unit.observe(feedback.reward, feedback.ended, feedback.active)
        if feedback.ended.any():
            self.begin_episode(feedback.ended)

    def receive(self, message) -> None:
        """Apply a message of the environment side (``RunStart``, ``TickStart`` or ``Flush``)."""
        if isinstance(message, RunStart):
            for unit in self.units.values():
                unit.set_clock(message.tick)
            self.begin_episode(np.ones(self.batch, dtype=bool))
            self.obs = self.value = None
            return
        if message.feedback is not None:
            self.observe(message.feedback)
        if isinstance(message, TickStart):
            if message.obs is not None:
                self.obs, self.value = message.obs, message.value
            self.active, self.current_tick = message.active, message.tick
            self.capture_previous()

    def capture_previous(self) -> None:
        """Start this tick's inputs with the previous-tick outputs read inside this side."""
        self.lookup = {"prev:" + n: self.units[n].output.copy() for n in self.prev_local}

    def previous(self, names) -> dict[str, np.ndarray]:
        """Previous-tick outputs of ``names`` (for coagents of other sides), after this tick's episode starts."""
        return {"prev:" + n: self.units[n].output.copy() for n in names}

    def act(self, names=None, received: dict[str, np.ndarray] | None = None,
            forced: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """Run ``names`` (default: all of this side's coagents, in order); returns their outputs.
        ``received``: inputs computed elsewhere this tick ("NAME" or "prev:NAME").  ``forced``: per
        coagent, the executions to impose instead of drawing them (bool per environment)."""
        lookup = self.lookup
        if received:
            lookup.update(received)
        out = {}
        for name in (self.units if names is None else names):
            unit = self.units[name]
            inputs = [self.obs if i == "obs" else lookup[i] for i in unit.coagent.inputs]
            drivers = {d: lookup[d] for d in unit.coagent.execution.drivers}
            out[name] = lookup[name] = unit.act(inputs, self.active, drivers, self.value,
                                                forced=None if forced is None else forced.get(name))
            if self.raster is not None:
                self.raster.record(self.current_tick, self.env_index, name, unit.last_executed)
        return out

    # ------------------------------------------------------------------ state and metrics
    def holders(self) -> list:
        return [self, *self.units.values()]

    def state_dict(self) -> dict:
        return {"coagents": {n: u.state_dict() for n, u in self.units.items()}, "side": batched.save(self)}

    @staticmethod
    def merged(parts: list[dict]) -> dict:
        """One micro-batch's coagent state from the ``state_dict()``s of sides holding parts of it."""
        out = {"coagents": {}, "side": parts[0]["side"]}
        for part in parts:
            out["coagents"].update(part["coagents"])
        return out

    def result(self) -> dict:
        """Per coagent: what it learned and its counters."""
        return {n: {"learned": u.learned(), "counters": dict(u.counters)} for n, u in self.units.items()}

    def load_state_dict(self, state: dict) -> None:
        """Restore this side's units (and the side's own fields) from a state that may hold more coagents."""
        missing = set(self.units) - set(state["coagents"])
        if missing:
            raise ValueError(f"run state: no state for coagent(s) {sorted(missing)}")
        for name, unit in self.units.items():
            unit.load_state_dict(state["coagents"][name])
        for name in self.FIELDS:
            value = state["side"][name]
            setattr(self, name, None if value is None else np.array(value))

    def metrics(self) -> dict[str, dict]:
        """Per-coagent figures (and, under the key None, the raster if one is recorded)."""
        out = {n: {**u.counters, "intervals": u.intervals["count"], "interval_ticks": u.intervals["ticks"],
                    "last_update": u.last_update(), "param_norm_sq": u.parameter_norm() ** 2}
                for n, u in self.units.items()}
        if self.raster is not None:
            out[None] = self.raster.snapshot()
        return out


class NetworkBatch(CoagentSide):
    """Every coagent of a network for one batch: the coagent side of the in-process engine.

    ``tick`` and ``observe`` drive it by hand (tests, exact evaluation) with the same calls.
    """

    def __init__(self, network: Network, observation_space: gym.Space, trials: int, envs_per_trial: int,
                 seed: int, trial_offset: int = 0, action_space: gym.Space | None = None,
                 episode_keys: EpisodeKeys | None = None, raster: RasterSpec | None = None):
        super().__init__(network, network.order, observation_space, action_space, trials, envs_per_trial, seed,
                         trial_offset, episode_keys, raster)

    def tick(self, obs: np.ndarray, active: np.ndarray, value: np.ndarray | None = None) -> dict[str, np.ndarray]:
        self.receive(TickStart(0, active, obs, value, None))
        return self.act()

    def observe(self, reward_or_feedback, ended=None, active=None) -> None:
        feedback = reward_or_feedback if isinstance(reward_or_feedback, Feedback) else \
            Feedback(reward_or_feedback, ended, active)
        super().observe(feedback)


def _least(count: np.ndarray) -> int:
    """Episodes every environment has finished (0 for an empty batch)."""
    return int(count.min()) if count.size else 0
