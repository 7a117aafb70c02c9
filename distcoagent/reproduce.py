"""The paper's experiments (SPEC §4): Figure 5 (gradient check) and Figure 6 (learning curve).

Figure 5: train the paper's network for 5 episodes (actor-critic(lambda), shared
critic), freeze it, estimate dJ/dtheta with the ACPGT estimator and with finite
differences on J from growing amounts of data, and plot the mean cosine distance
between the two (95% band over trials) against episodes, log scale.  It falls
towards 0 as both estimates converge to the same gradient.

Figure 6: mean episodic return per episode over many trials of 200 episodes, 95%
band, with the optimal return (shortest path, computed) as a reference line.

Trials are spread over worker processes.  Randomness is keyed by trial, environment
and tick, so the numbers do not depend on the number of workers.
"""
from __future__ import annotations

import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from .engine import InProcessEngine, trial_slices
from .envs import GridWorldEnv
from .gradients.common import cosine_distance, flatten
from .gradients.estimators import acpgt_samples, fd_samples, trained_params
from .network import Network
from .plotting import mean_and_band, plot_band

PAPER_SPEC = Path(__file__).resolve().parents[1] / "examples" / "paper_gridworld.toml"
TRAIN_EPISODES = 5  # SPEC §4: the gradient check happens after 5 training episodes


def paper_setup() -> tuple[Network, str, dict]:
    """The paper's network and gridworld: the example spec if present, else the same in Python."""
    if PAPER_SPEC.is_file():
        from .spec import load_spec

        spec = load_spec(PAPER_SPEC)
        return spec.network, spec.env_id, dict(spec.env_kwargs)
    from .examples import paper_network

    return paper_network(), "distcoagent/GridWorld-v0", {"size": 5, "max_steps": 100}


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


def _pool(workers: int):
    return ProcessPoolExecutor(workers, mp_context=get_context("fork" if os.name == "posix" else "spawn"))


# ------------------------------------------------------------------------------ figure 6
def _learning_slice(job) -> np.ndarray:
    """(trials of slice w, episodes) returns: worker w's share of the trials, each the same trial
    it would be in a one-process run."""
    network, env_id, env_kwargs, trials, episodes, seed, workers, w = job
    a, b = trial_slices(trials, workers)[w]
    engine = InProcessEngine(network, env_id, env_kwargs, trials=b - a, seed=seed, first_trial=a)
    return engine.train(episodes).returns[:, 0, :]


def learning_curves(network: Network, env_id: str, env_kwargs: dict, trials: int, episodes: int, seed: int = 0,
                    workers: int | None = None) -> np.ndarray:
    """Undiscounted returns, shape (trials, episodes), trials spread over worker processes."""
    workers = min(workers or default_workers(), trials)
    jobs = [(network, env_id, env_kwargs, trials, episodes, seed, workers, w) for w in range(workers)]
    if workers == 1:
        return _learning_slice(jobs[0])
    with _pool(workers) as pool:
        return np.concatenate(list(pool.map(_learning_slice, jobs)))


def fig6(trials: int = 10_000, episodes: int = 200, seed: int = 0, out: Path | str = "figures",
         workers: int | None = None) -> dict:
    """Figure 6: writes fig6.png and fig6.json under ``out``; returns the JSON summary."""

    network, env_id, env_kwargs = paper_setup()
    start = time.perf_counter()
    returns = learning_curves(network, env_id, env_kwargs, trials, episodes, seed, workers)
    seconds = time.perf_counter() - start
    optimum = GridWorldEnv(**{k: v for k, v in env_kwargs.items() if k in ("size", "start", "goal")}
                           ).optimal_return()
    mean, half = mean_and_band(returns)
    summary = {"figure": "fig6", "trials": trials, "episodes": episodes, "seed": seed, "env_id": env_id,
               "env_kwargs": env_kwargs, "optimal_return": optimum, "seconds": seconds,
               "mean_return": mean.tolist(), "ci95_halfwidth": half.tolist(),
               "final_mean_last10": float(mean[-10:].mean()), "first_episode_mean": float(mean[0])}
    return _save(out, summary, lambda path: _plot_fig6(mean, half, optimum, trials, path))


def _save(out, summary: dict, plot) -> dict:
    """Write OUT/<figure>.png (by ``plot(path)``) and OUT/<figure>.json; returns the summary."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plot(out / f"{summary['figure']}.png")
    (out / f"{summary['figure']}.json").write_text(json.dumps(summary, indent=1))
    return summary


def _plot_fig6(mean, half, optimum, trials, path):
    plot_band(np.arange(1, mean.size + 1), mean, half, path, label=f"mean over {trials} trials",
              xlabel="episode", ylabel="episodic return",
              title="Asynchronous coagent network (beta = 0.5), 5x5 gridworld",
              reference=(optimum, f"optimal return ({optimum:g})"))


# ------------------------------------------------------------------------------ figure 5
def data_grid(max_episodes: int, points: int = 14) -> np.ndarray:
    """Log-spaced episode counts from 1 to ``max_episodes`` (distinct integers)."""
    return np.unique(np.round(np.logspace(0, np.log10(max_episodes), points)).astype(int))


def _cosine_curve_of_trials(job) -> np.ndarray:
    """(trials of the job, len(grid)) cosine distances between ACPGT and FD with n episodes each."""
    network, env_id, env_kwargs, params, first_trial, episodes, grid, step, seed = job
    acpgt = acpgt_samples(network, env_id, env_kwargs, params, episodes, 1, seed + 1,
                          env_offset=first_trial * episodes)
    out = np.zeros((len(params), len(grid)))
    for t, theta in enumerate(params):
        fd = fd_samples(network, env_id, env_kwargs, theta, episodes, 1, step, seed + 2,
                        env_offset=(first_trial + t) * episodes)
        a, f = np.cumsum(acpgt[t], axis=0), np.cumsum(fd, axis=0)
        for i, n in enumerate(grid):
            out[t, i] = cosine_distance({"g": {"g": a[n - 1]}}, {"g": {"g": f[n - 1]}})
    return out


def gradient_check_curves(network: Network, env_id: str, env_kwargs: dict, trials: int, episodes: int,
                          seed: int = 0, step: float = 0.1, workers: int | None = None,
                          train_episodes: int = TRAIN_EPISODES) -> tuple[np.ndarray, np.ndarray]:
    """(grid, cosine distances of shape (trials, len(grid))) following SPEC §4's protocol."""
    params = trained_params(network, env_id, env_kwargs, train_episodes, trials, seed)
    grid = data_grid(episodes)
    workers = min(workers or default_workers(), trials)
    bounds = np.linspace(0, trials, workers + 1).round().astype(int)
    jobs = [(network, env_id, env_kwargs, params[a:b], int(a), episodes, grid, step, seed)
            for a, b in zip(bounds[:-1], bounds[1:])]
    if workers == 1:
        return grid, _cosine_curve_of_trials(jobs[0])
    with _pool(workers) as pool:
        return grid, np.concatenate(list(pool.map(_cosine_curve_of_trials, jobs)))


def fig5(trials: int = 20, episodes: int = 1000, seed: int = 0, out: Path | str = "figures", step: float = 0.1,
         workers: int | None = None) -> dict:
    """Figure 5: writes fig5.png and fig5.json under ``out``; returns the JSON summary."""

    network, env_id, env_kwargs = paper_setup()
    start = time.perf_counter()
    grid, distances = gradient_check_curves(network, env_id, env_kwargs, trials, episodes, seed, step, workers)
    seconds = time.perf_counter() - start
    mean, half = mean_and_band(distances)
    n_params = flatten(trained_params(network, env_id, env_kwargs, 0, 1, seed)[0]).size
    summary = {"figure": "fig5", "trials": trials, "max_episodes": episodes, "seed": seed, "fd_step": step,
               "train_episodes": TRAIN_EPISODES, "env_id": env_id, "env_kwargs": env_kwargs,
               "parameters": n_params, "seconds": seconds, "episodes": grid.tolist(),
               "mean_cosine_distance": mean.tolist(), "ci95_halfwidth": half.tolist(),
               "per_trial": distances.tolist()}
    return _save(out, summary, lambda path: _plot_fig5(grid, mean, half, trials, path))


def _plot_fig5(grid, mean, half, trials, path):
    plot_band(grid, mean, half, path, label=f"mean over {trials} trials", color="C3", marker="o", log_x=True,
              floor=0.0, legend="upper right",
              xlabel="episodes per estimate (ACPGT: episodes; FD: episode pairs per parameter)",
              ylabel="cosine distance, ACPGT vs finite differences",
              title="Gradient check after 5 training episodes, 5x5 gridworld")
