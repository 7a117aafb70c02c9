"""The in-process engine: a batch of trials, vectorised with numpy, in this process.

``train`` runs ``trials`` independent learners (each with its own parameters) times
``envs_per_trial`` environments that share their trial's parameters, until every
environment has finished ``episodes`` episodes.  Trials can be split into
``micro_batches`` that are stepped round-robin; since randomness is keyed by
environment and tick (see ``rng``) and trials never share parameters, the split
changes nothing in the results, only the memory and cache footprint (the Ray
engine pipelines the same micro-batches across its actors).  For the same reason,
once at most half of a micro-batch's trials still run, the finished ones are cut
out of the computation (``compact``, built-in gridworld only; see ``compaction``).

Tick order (SPEC §3a): every coagent, in topological order, maybe executes; then,
if ``(t + 1) % ticks_per_step == 0``, the environment steps with the action and the
shared critic learns from the transition; every coagent then receives the tick's
reward (0 between environment steps).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .coagent import NonFiniteError
from .compaction import env_rows, expand, shrink
from .envs import make_batch
from .network import Network, NetworkBatch, SpecError


def trial_slices(trials: int, micro_batches: int) -> list[tuple[int, int]]:
    """Split trials 0..trials-1 into ``micro_batches`` contiguous, nearly equal ranges."""
    if not isinstance(micro_batches, int) or not 1 <= micro_batches <= trials:
        raise SpecError(f"micro_batches: expected an integer in 1..trials ({trials}), got {micro_batches!r}")
    edges = np.linspace(0, trials, micro_batches + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


def check_reward(reward: np.ndarray, active: np.ndarray, tick: int, network: Network) -> None:
    """Stop the run on a NaN or infinite reward, naming the tick and the coagents it would reach."""
    bad = active & ~np.isfinite(reward)
    if bad.any():
        b = int(np.flatnonzero(bad)[0])
        raise NonFiniteError(f"environment returned reward {reward[b]} at atomic tick {tick} "
                             f"(environment {b}); it would reach coagent(s) {', '.join(network.order)}")


class EpisodeBook:
    """Per-environment episode bookkeeping: returns, counts, which environments are still active."""

    ROWS = ("returns", "lengths", "count", "running", "steps", "active")

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


@dataclass
class TrainResult:
    """What a run produced.  ``returns[trial, env, episode]`` are undiscounted episode returns."""

    returns: np.ndarray
    lengths: np.ndarray
    counters: dict[str, dict[str, int]]
    params: dict[str, dict[str, np.ndarray]]
    ticks: int
    seconds: float
    engine: str = "inprocess"
    extra: dict = field(default_factory=dict)

    @property
    def curve(self) -> np.ndarray:
        """Mean return per episode over trials and environments."""
        return self.returns.reshape(-1, self.returns.shape[-1]).mean(axis=0)


class InProcessEngine:
    """Runs micro-batches of a network against batched environments in this process.

    ``first_trial`` makes this engine run trials ``first_trial ..`` of a larger run
    (its slice in another process): the numbers are those of the whole run.
    """

    name = "inprocess"

    def __init__(self, network: Network, env_id: str, env_kwargs: dict | None = None, *, trials: int = 1,
                 envs_per_trial: int = 1, seed: int = 0, micro_batches: int = 1, compact: bool = True,
                 first_trial: int = 0):
        for field_name, value in (("trials", trials), ("envs_per_trial", envs_per_trial)):
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise SpecError(f"{field_name}: expected a positive integer, got {value!r}")
        self.network, self.env_id, self.env_kwargs = network, env_id, dict(env_kwargs or {})
        self.trials, self.envs_per_trial, self.seed = int(trials), int(envs_per_trial), seed
        # trials first_trial .. first_trial + trials - 1 of the run: a slice run in another process
        # (say) draws exactly what those trials draw in one big batch
        self.slices = [(a + first_trial, b + first_trial) for a, b in trial_slices(self.trials, micro_batches)]
        self.envs, self.batches = [], []
        for a, b in self.slices:
            env = make_batch(env_id, (b - a) * self.envs_per_trial, seed, a * self.envs_per_trial,
                             **self.env_kwargs)
            self.envs.append(env)
            self.batches.append(NetworkBatch(network, env.observation_space, b - a, self.envs_per_trial,
                                             seed, a, env.action_space))
        self.tick_count = 0
        self.compact = compact  # drop finished trials from the computation (no number changes)

    def train(self, episodes: int, progress: Callable[[int], None] | None = None) -> TrainResult:
        """Run until every environment has finished ``episodes`` episodes."""
        if not isinstance(episodes, (int, np.integer)) or episodes < 1:
            raise SpecError(f"episodes: expected a positive integer, got {episodes!r}")
        start = time.perf_counter()
        m = self.network.ticks_per_step
        books, obs = [], []
        for (a, b), env, nb in zip(self.slices, self.envs, self.batches):
            books.append(EpisodeBook(b - a, self.envs_per_trial, episodes))
            obs.append(env.reset())
            for unit in nb.units.values():
                unit.set_clock(self.tick_count)
            nb.begin_episode(np.ones(nb.batch, dtype=bool))
        done_before = 0
        cuts = [[] for _ in self.batches]  # per micro-batch: the compactions to undo at the end
        try:
            while not all(book.finished for book in books):
                stepped = (self.tick_count + 1) % m == 0
                for k, (env, nb, book) in enumerate(zip(self.envs, self.batches, books)):
                    if book.finished:
                        continue
                    obs[k] = self._tick(env, nb, book, obs[k], stepped)
                    if stepped and self.compact:
                        obs[k] = self._drop_finished(k, book, obs[k], cuts[k])
                self.tick_count += 1
                if progress is not None:
                    done = min(int(book.count.min()) for book in books)
                    if done > done_before:
                        progress(done - done_before)
                        done_before = done
        except NonFiniteError as error:
            self._restore(books, cuts)
            self.partial = self._result(books, start)
            raise error
        self._restore(books, cuts)
        return self._result(books, start)

    def _holders(self, k: int, book: EpisodeBook) -> list:
        """Everything of micro-batch k that holds a row per trial or per environment."""
        nb = self.batches[k]
        return [*nb.units.values(), *([nb.critic] if nb.critic is not None else []), nb, book, self.envs[k]]

    def _resize(self, k: int, book: EpisodeBook, trials: int) -> None:
        E = self.envs_per_trial
        for unit in self.batches[k].units.values():
            unit.trials, unit.batch = trials, trials * E
        self.batches[k].batch = self.envs[k].num_envs = trials * E

    def _drop_finished(self, k: int, book: EpisodeBook, obs, cuts: list):
        """Cut micro-batch k down to its running trials once at most half of them still run
        (only for environment batches that support it; see ``compaction``)."""
        env, E = self.envs[k], self.envs_per_trial
        P = book.active.shape[0] // E
        running = np.flatnonzero(book.active.reshape(P, E).any(axis=1))
        if not hasattr(env, "ROWS") or P < 16 or running.size * 2 > P or running.size == 0:
            return obs
        cuts.append((running, P, [shrink(h, h.ROWS, running, P, E) for h in self._holders(k, book)]))
        self._resize(k, book, running.size)
        return obs[env_rows(running, E)]

    def _restore(self, books: list, cuts: list) -> None:
        """Undo every compaction, innermost first: full-size arrays for results and later runs."""
        for k, stack in enumerate(cuts):
            while stack:
                running, P, saved = stack.pop()
                for holder, originals in zip(self._holders(k, books[k]), saved):
                    expand(holder, originals, running, P, self.envs_per_trial)
                self._resize(k, books[k], P)

    def _tick(self, env, nb: NetworkBatch, book: EpisodeBook, obs, stepped: bool):
        active = book.active
        current = nb.tick(obs, active)
        if stepped:
            next_obs, reward, terminated, truncated = env.step(nb.action(current))
            check_reward(reward, active, self.tick_count, self.network)
            reward = np.where(active, reward, 0.0)
            ended = terminated | truncated
            if nb.critic is not None:
                nb.critic.update(obs, reward, next_obs, ended, active)
        else:
            next_obs, reward, ended = obs, np.zeros(nb.batch), np.zeros(nb.batch, dtype=bool)
        nb.observe(reward, ended, active)
        book.record(reward, stepped, ended)
        if ended.any():
            nb.begin_episode(ended)
        return next_obs

    def _result(self, books, start) -> TrainResult:
        E = self.envs_per_trial
        returns = np.concatenate([bk.returns for bk in books]).reshape(self.trials, E, -1)
        lengths = np.concatenate([bk.lengths for bk in books]).reshape(self.trials, E, -1)
        counters, params = {}, {}
        for name in self.network.order:
            units = [nb.units[name] for nb in self.batches]
            counters[name] = {k: sum(u.counters[k] for u in units) for k in units[0].counters}
            params[name] = {k: np.concatenate([u.params[k] for u in units]) for k in units[0].params}
        if self.batches[0].critic is not None:
            params["critic"] = {"w": np.concatenate([nb.critic.params["w"] for nb in self.batches])}
        return TrainResult(returns, lengths, counters, params, self.tick_count,
                           time.perf_counter() - start, self.name)

    def close(self):
        for env in self.envs:
            env.close()
