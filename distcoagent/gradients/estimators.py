"""Sampled estimates of dJ/dtheta at frozen parameters, run on the core engine.

- ACPGT (SPEC §3): each coagent's ``sum_j gamma_atomic^t_j G_t_j grad ln pi(u_j | x_j)``
  over its executions only, computed online by ``rules.Reinforce`` from the reward
  stream; ``GradientRecorder`` is that rule with step 0 that keeps each environment's
  finished-episode estimate.  One episode per environment, many environments sharing
  the frozen parameters: the per-episode estimates are i.i.d., so the mean comes with
  a standard error.
- Finite differences on J: for every parameter, the discounted return with
  ``theta + h e_k`` and with ``theta - h e_k`` on common random numbers (both runs see
  the same keyed random streams: same seed, same episode keys, for the coagents and for the
  environment, whose episodes are seeded by their keys: ``envs.make_batch``), differenced per
  environment.  ``(J+ - J-) / 2h`` per episode pair is again i.i.d.

Randomness is keyed by (seed, environment id, tick), so estimates are deterministic
given the seed and do not depend on how environments are chunked.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from ..batched import ENV, TRIAL
from ..contract import Observer, TickEvent
from ..engine import InProcessEngine
from ..network import Network
from ..rules import Reinforce
from ..tick import EpisodeKeys
from .common import Gradient, flatten, freeze, normalize_params, trial_params, unflatten

MAX_BATCH_ENTRIES = 4_000_000  # floats per recorder array per engine run (memory bound)


@dataclass(frozen=True)
class GradientRecorder(Reinforce):
    """Reinforce with step 0 that keeps every finished episode's estimate, per environment.

    Its state's ``"episodes.<param>"`` has shape ``(P, E, episodes_per_env, *param_shape)``;
    an episode in which the coagent never executed keeps its zero estimate.
    """

    step: float = 0.0
    episodes_per_env: int = 1
    discount: bool = True  # False: drop gamma^t (a deliberately wrong estimator, for tests)
    kind = "gradient_recorder"

    def init(self, unit):
        state = super().init(unit)
        for k in unit.policy_param_names:
            shape = state[f"e.{k}"].shape
            state.add(f"episodes.{k}", np.zeros(shape[:2] + (self.episodes_per_env,) + shape[2:]), TRIAL)
        state.add("episode_index", np.full(unit.batch, -1, dtype=np.int64), ENV)
        return state

    def reset(self, unit, state, mask):
        super().reset(unit, state, mask)
        state["episode_index"][mask] += 1

    def open(self, unit, state, x, mask, score, shared_value):
        super().open(unit, state, x, mask, score, shared_value)
        if not self.discount:
            state["start_discount"] = np.where(mask, 1.0, state["start_discount"])

    def finish(self, unit, state, mask):
        st = state
        rows = np.flatnonzero(mask & (st["episode_index"] < self.episodes_per_env))
        E = unit.envs_per_trial
        for k in unit.policy_param_names:
            g = self.episode_gradient(unit, st, k)
            st[f"episodes.{k}"][rows // E, rows % E, st["episode_index"][rows]] = g[rows // E, rows % E]


@dataclass
class Estimate:
    """Mean gradient, its standard error (per entry), the number of episodes, optional samples."""

    mean: Gradient
    stderr: Gradient
    episodes: int
    samples: np.ndarray | None = field(default=None, repr=False)  # (episodes, n_flat)
    seconds: float = 0.0

    @classmethod
    def from_sums(cls, total, total_sq, n, like, samples=None, seconds=0.0):
        mean = total / n
        var = np.maximum(total_sq / n - mean ** 2, 0.0) * (n / (n - 1) if n > 1 else np.inf)
        return cls(unflatten(mean, like), unflatten(np.sqrt(var / n), like), int(n), samples, seconds)


def _probe(network: Network, env_id: str, env_kwargs: dict | None, seed: int):
    """A one-trial engine of the frozen network: parameter shapes and initial values."""
    return InProcessEngine(freeze(network), env_id, env_kwargs, trials=1, envs_per_trial=1, seed=seed)


def initial_params(network: Network, env_id: str, env_kwargs: dict | None = None, seed: int = 0,
                   params: dict | None = None, trial: int | None = None) -> Gradient:
    """Trial 0's initial policy parameters for ``seed``, overridden by ``params`` (``trial``: which of
    their trials, when they have several; see ``common.normalize_params``)."""
    return normalize_params(_probe(network, env_id, env_kwargs, seed).batches[0], params, trial, network)


def _chunks(total: int, size: int):
    for start in range(0, total, size):
        yield start, min(size, total - start)


def episodes_layout(episodes: int) -> tuple[int, int]:
    """(environments, episodes per environment) for ``episodes`` episodes, at least that many.

    Several episodes per environment keep the batch busy (the engine runs until its
    longest environment is done); enough environments keep numpy vectorised.
    """
    if not isinstance(episodes, (int, np.integer)) or episodes < 1:
        raise ValueError(f"episodes: expected a positive integer, got {episodes!r}")
    per_env = int(np.clip(episodes // 1024, 1, 32))
    return -(-episodes // per_env), per_env


def _episode_keys(base_ids: np.ndarray, per_env: int) -> EpisodeKeys:
    """Every episode keyed by (base id, episode number); see ``tick.EpisodeKeys``."""
    return EpisodeKeys(np.asarray(base_ids, dtype=np.int64), per_env)


class DiscountedReturns(Observer):
    """Records each environment's discounted returns sum_t gamma_atomic^t R_t of its first
    ``per_env`` episodes (SPEC §3a): ``returns`` has shape (B, per_env)."""

    wants_ticks = True

    def __init__(self, batch: int, gamma_atomic: float, per_env: int):
        self.gamma_atomic, self.per_env = gamma_atomic, per_env
        self.returns = np.zeros((batch, per_env))
        self.discount, self.running = np.ones(batch), np.zeros(batch)
        self.count = np.zeros(batch, dtype=np.int64)

    def on_tick(self, event: TickEvent) -> None:
        if event.batch != 0:
            raise ValueError("DiscountedReturns observes a single micro-batch")
        rows = slice(None) if event.rows is None else event.rows
        reward, ended, active = event.feedback.reward, event.feedback.ended, event.feedback.active
        count, discount = self.count[rows], self.discount[rows]
        live = active & (count < self.per_env)
        running = self.running[rows] + np.where(live, discount * reward, 0.0)
        finished = np.flatnonzero(ended & live)
        full = np.arange(self.count.size)[rows]
        self.returns[full[finished], count[finished]] = running[finished]
        count = count + (ended & live)
        self.count[rows] = count
        self.running[rows] = np.where(ended, 0.0, running)
        self.discount[rows] = np.where(ended, 1.0, discount * self.gamma_atomic)


def _write_params(nb, trial: int, group: Gradient) -> None:
    for name in group:
        for k, arr in group[name].items():
            nb.units[name].params[k][trial] = arr


def acpgt_samples(network: Network, env_id: str, env_kwargs: dict | None, params: Sequence[Gradient],
                  envs: int, per_env: int = 1, seed: int = 0, env_offset: int = 0,
                  recorder: GradientRecorder | None = None, instrument: Callable | None = None) -> np.ndarray:
    """Per-episode ACPGT estimates, shape (len(params), envs * per_env, n_flat).

    ``params[p]`` is trial p's frozen parameter set.  Trial p's environment e has base id
    ``env_offset + p * envs + e`` (independent trials); see ``tick.EpisodeKeys``.
    """
    recorder = recorder if recorder is not None else GradientRecorder()
    recorder = dataclasses.replace(recorder, episodes_per_env=per_env)
    P = len(params)
    engine = InProcessEngine(freeze(network, recorder), env_id, env_kwargs, trials=P, envs_per_trial=envs,
                             seed=seed, episode_keys=_episode_keys(env_offset + np.arange(P * envs), per_env))
    nb = engine.batches[0]
    for p, group in enumerate(params):
        _write_params(nb, p, group)
    if instrument is not None:
        instrument(engine)
    engine.train(per_env)
    parts = [nb.units[n].rule_state[f"episodes.{k}"].reshape(P, envs * per_env, -1)
             for n in params[0] for k in params[0][n]]
    return np.concatenate(parts, axis=2)


def acpgt_estimate(network: Network, env_id: str, env_kwargs: dict | None = None, params: dict | None = None,
                   episodes: int = 1000, seed: int = 0, keep_samples: bool = False,
                   recorder: GradientRecorder | None = None, instrument: Callable | None = None) -> Estimate:
    """The ACPGT estimate of dJ/dtheta at ``params`` from ``episodes`` episodes (at least), with
    standard errors from the spread of the per-episode estimates."""
    start = time.perf_counter()
    like = initial_params(network, env_id, env_kwargs, seed, params)
    n_flat = flatten(like).size
    envs, per_env = episodes_layout(episodes)
    chunk = max(1, MAX_BATCH_ENTRIES // max(n_flat * per_env, 1))
    return _estimate_from_chunks(
        lambda offset, size: acpgt_samples(network, env_id, env_kwargs, [like], size, per_env, seed, offset,
                                           recorder, instrument)[0],
        _chunks(envs, chunk), n_flat, envs * per_env, like, keep_samples, start)


def _estimate_from_chunks(samples, chunks, n_flat: int, episodes: int, like: Gradient, keep_samples: bool,
                          start: float) -> Estimate:
    """Mean and standard error from per-episode samples drawn chunk by chunk (``samples(offset, size)``)."""
    total, total_sq, kept = np.zeros(n_flat), np.zeros(n_flat), []
    for offset, size in chunks:
        x = samples(offset, size)
        total += x.sum(axis=0)
        total_sq += (x * x).sum(axis=0)
        if keep_samples:
            kept.append(x)
    return Estimate.from_sums(total, total_sq, episodes, like,
                              np.concatenate(kept) if keep_samples else None, time.perf_counter() - start)


def fd_samples(network: Network, env_id: str, env_kwargs: dict | None, params: Gradient, envs: int,
               per_env: int = 1, step: float = 0.05, seed: int = 0, env_offset: int = 0,
               coordinates: np.ndarray | None = None) -> np.ndarray:
    """Per-episode-pair central differences, shape (envs * per_env, n_coordinates).

    Column j is ``(G(theta + h e_k) - G(theta - h e_k)) / 2h`` for k = coordinates[j], G
    the discounted return; the two runs share the seed and episode keys (the coagents' draws and
    the environment's), so every episode pair sees common random numbers.
    """
    frozen = freeze(network)
    theta = flatten(params)
    coordinates = np.arange(theta.size) if coordinates is None else np.asarray(coordinates)
    out = np.zeros((envs * per_env, coordinates.size))
    per_run = max(1, 100_000 // envs)  # coordinates per engine run (2 trials each)
    for start, size in _chunks(coordinates.size, per_run):
        cols = coordinates[start:start + size]
        keys = _episode_keys(np.tile(env_offset + np.arange(envs), 2 * size), per_env)
        engine = InProcessEngine(frozen, env_id, env_kwargs, trials=2 * size, envs_per_trial=envs, seed=seed,
                                 episode_keys=keys)
        nb = engine.batches[0]
        for j, k in enumerate(cols):
            for t, sign in ((2 * j, 1.0), (2 * j + 1, -1.0)):
                shifted = theta.copy()
                shifted[k] += sign * step
                _write_params(nb, t, unflatten(shifted, params))
        observer = DiscountedReturns(2 * size * envs, network.gamma_atomic, per_env)
        engine.train(per_env, observers=[observer])
        returns = observer.returns.reshape(2 * size, envs * per_env)
        out[:, start:start + size] = ((returns[0::2] - returns[1::2]) / (2 * step)).T
    return out


def fd_estimate(network: Network, env_id: str, env_kwargs: dict | None = None, params: dict | None = None,
                episodes: int = 1000, step: float = 0.05, seed: int = 0, keep_samples: bool = False) -> Estimate:
    """Central finite differences of J at ``params``: ``episodes`` (at least) episode pairs per
    coordinate, common random numbers within each pair."""
    if not (isinstance(step, (int, float)) and step > 0):
        raise ValueError(f"step: expected a positive finite-difference step, got {step!r}")
    start = time.perf_counter()
    like = initial_params(network, env_id, env_kwargs, seed, params)
    n_flat = flatten(like).size
    envs, per_env = episodes_layout(episodes)
    return _estimate_from_chunks(
        lambda offset, size: fd_samples(network, env_id, env_kwargs, like, size, per_env, step, seed, offset),
        _chunks(envs, 4096), n_flat, envs * per_env, like, keep_samples, start)


def trained_params(network: Network, env_id: str, env_kwargs: dict | None, episodes: int, trials: int = 1,
                   seed: int = 0) -> list[Gradient]:
    """Each trial's policy parameters after ``episodes`` episodes of the network's own rules."""
    engine = InProcessEngine(network, env_id, env_kwargs, trials=trials, envs_per_trial=1, seed=seed)
    if episodes > 0:
        engine.train(episodes)
    return [trial_params(nb, t) for nb in engine.batches for t in range(nb.units[network.order[0]].trials)]


def j_estimate(network: Network, env_id: str, env_kwargs: dict | None = None, params: dict | None = None,
               episodes: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Monte Carlo J = E[sum_t gamma_atomic^t R_t] at ``params``: (mean, standard error)."""
    like = initial_params(network, env_id, env_kwargs, seed, params)
    envs, per_env = episodes_layout(episodes)
    engine = InProcessEngine(freeze(network), env_id, env_kwargs, trials=1, envs_per_trial=envs, seed=seed,
                             episode_keys=_episode_keys(np.arange(envs), per_env))
    _write_params(engine.batches[0], 0, like)
    observer = DiscountedReturns(envs, network.gamma_atomic, per_env)
    engine.train(per_env, observers=[observer])
    returns = observer.returns.ravel()
    return float(returns.mean()), float(returns.std(ddof=1) / np.sqrt(returns.size))
