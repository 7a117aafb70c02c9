"""The paper's experiments (SPEC §4): Figure 5 (gradient check) and Figure 6 (learning curve).

Figure 5: train the paper's network for 5 episodes (actor-critic(lambda), shared
critic), freeze it, estimate dJ/dtheta with the ACPGT estimator and with finite
differences on J from growing amounts of data, and plot the mean cosine distance
between the two (95% band over trials) against episodes, log scale.  It falls
towards 0 as both estimates converge to the same gradient.  Beyond the paper, the
exact gradient (of the time-limited episodes both estimators sample, ``gradients.
time_limit``) gives two more lines: each estimator's distance to it.  On the paper's
network the estimators run compiled (``gradients.compiled``; finite differences by
branching off one unperturbed run per episode), with the engine's numbers.

Figure 6: mean episodic return per episode over many trials of 200 episodes, 95%
band, with the optimal return (shortest path, computed) as a reference line.

Trials are spread over worker processes.  Randomness is keyed by trial, environment
and tick, so the numbers do not depend on the number of workers.
"""
from __future__ import annotations

import contextlib
import gc
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from .checks import is_integer, is_number, writable_place
from .engine import InProcessEngine, trial_slices
from .envs import GridWorldEnv
from .kernels import prebuilt
from .network import Network, SpecError
from .plotting import mean_and_band, plot_band

# Figure 5's modules (scipy among them, about 24 MiB) are imported where Figure 5 uses them: Figure
# 6's workers are forked from this process and every page it holds counts in each worker's RSS.

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


def check_workers(workers) -> None:
    """``workers``: None (one per CPU, at most 8) or a positive integer."""
    if workers is not None and (not is_integer(workers) or workers < 1):
        raise SpecError(f"workers: expected a positive integer (or None: one per CPU), got {workers!r}")


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


@contextlib.contextmanager
def _pool(workers: int, warm_up=None):
    """Worker processes for ``workers`` jobs at once.  ``warm_up()`` first loads, in this process, the
    kernels the jobs run: forked workers then share them (with numba: its compiler state and the
    loaded kernels, about 50 MiB a process, and a fraction of a second each) instead of each loading
    its own.  The objects alive at the fork are frozen out of the garbage collector's passes until the
    workers are done, so that a collection in a worker does not copy the pages they sit on
    (``gc.freeze``; left alone if the caller froze objects already).  Spawned workers (not on POSIX) start afresh: the warm-up
    then only fills numba's cache once, before they all look for it."""
    fork = os.name == "posix"
    if warm_up is not None:
        warm_up()
    freeze = fork and gc.get_freeze_count() == 0
    if freeze:
        gc.collect()  # the warm-up's garbage goes first: frozen, it would live on
        gc.freeze()
    try:
        with ProcessPoolExecutor(workers, mp_context=get_context("fork" if fork else "spawn")) as pool:
            yield pool
    finally:
        if freeze:
            gc.unfreeze()


# ------------------------------------------------------------------------------ figure 6
CHUNK_TRIALS = 1000  # trials per job of a learning curve: a worker's arrays, not its share, set its memory


def _learning_slice(job) -> np.ndarray:
    """(trials first..last-1, episodes) returns: one job's trials, each the same trial it would be in a
    one-process run."""
    network, env_id, env_kwargs, first, last, episodes, seed, workers = job
    # one thread per worker process: the workers already use every CPU
    engine = InProcessEngine(network, env_id, env_kwargs, trials=last - first, seed=seed, first_trial=first,
                             threads=1 if workers > 1 else None)
    return engine.train(episodes).returns[:, 0, :]


def learning_jobs(network: Network, env_id: str, env_kwargs: dict, trials: int, episodes: int, seed: int,
                  workers: int) -> list[tuple]:
    """The jobs of a learning curve: at least one per worker, at most ``CHUNK_TRIALS`` trials each.

    A job's engine holds its trials' parameters, traces and books (about 12 KiB a trial, more while
    finished trials are cut out), so a worker running its 5,000 trials of Figure 6 as five jobs of 1,000
    peaks about 40 MiB lower than as one; the jobs also balance the load of the workers, and every
    trial is the same whatever the jobs (randomness is keyed by trial)."""
    jobs = max(workers, -(-trials // CHUNK_TRIALS))
    return [(network, env_id, env_kwargs, a, b, episodes, seed, workers) for a, b in trial_slices(trials, jobs)]


def learning_curves(network: Network, env_id: str, env_kwargs: dict, trials: int, episodes: int, seed: int = 0,
                    workers: int | None = None) -> np.ndarray:
    """Undiscounted returns, shape (trials, episodes), trials spread over worker processes."""
    from .limits import check_array_bytes, check_memory
    from .spec import TrainConfig

    check_array_bytes(trials * episodes * np.dtype(np.float64).itemsize, "trials x episodes",
                      "an array of every trial's returns")
    check_workers(workers)
    workers = min(workers or default_workers(), trials)
    # a job's engine must fit, said before any kernel is built (measuring it runs no kernel)
    check_memory(network, env_id, env_kwargs, TrainConfig(episodes=episodes, trials=min(trials, CHUNK_TRIALS)),
                 names={"train.trials": "trials", "train.episodes": "episodes"})
    one_episode = (network, env_id, env_kwargs, 0, 1, 1, seed, workers)  # trial 0's first episode
    # its kernels compiled ahead of time (once per install): then no process of the study imports numba,
    # and the workers find them loaded (else the pool's warm-up loads numba's before they fork)
    ready = prebuilt.prepare(_learning_slice, one_episode)
    jobs = learning_jobs(network, env_id, env_kwargs, trials, episodes, seed, workers)
    returns = None
    with contextlib.ExitStack() as stack:
        warm_up = None if ready else (lambda: _learning_slice(one_episode))
        parts = (map(_learning_slice, jobs) if workers == 1 else
                 stack.enter_context(_pool(workers, warm_up)).map(_learning_slice, jobs))
        for job, part in zip(jobs, parts):  # in order; each job's part goes in as it comes
            if returns is None:
                returns = np.empty((trials,) + part.shape[1:], dtype=part.dtype)
            returns[job[3]:job[4]] = part
    return returns


def fig6(trials: int = 10_000, episodes: int = 200, seed: int = 0, out: Path | str = "figures",
         workers: int | None = None) -> dict:
    """Figure 6: writes fig6.png and fig6.json under ``out``; returns the JSON summary."""
    check_out(out)
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


def check_out(out) -> Path:
    """A figure's output folder, checked before the study runs (SpecError): a path, not a file, under a
    folder that exists or can be made, and that this process may write in."""
    if not isinstance(out, (str, os.PathLike)) or not str(out).strip():
        raise SpecError(f"out: expected a folder's path, got {out!r}")
    out = Path(out)
    writable_place(out, "out")
    return out


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
LINES = ("acpgt_vs_fd", "acpgt_vs_exact", "fd_vs_exact")
LABELS = {"acpgt_vs_fd": "ACPGT vs finite differences", "acpgt_vs_exact": "ACPGT vs exact",
          "fd_vs_exact": "finite differences vs exact"}
FULL_TRIALS, FULL_EPISODES = 100, 30_000  # the full study: ``distcoagent reproduce fig5`` by default


def data_grid(max_episodes: int, points: int = 14) -> np.ndarray:
    """Log-spaced episode counts from 1 to ``max_episodes`` (distinct integers)."""
    return np.unique(np.round(np.logspace(0, np.log10(max_episodes), points)).astype(int))


def _cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``cosine_distance`` between a[t, g] and b[t, g] (b may have one column g: broadcast)."""
    from .gradients.common import cosine_distance

    b = np.broadcast_to(b, a.shape)
    out = np.empty(a.shape[:2])
    for t, g in np.ndindex(*out.shape):
        out[t, g] = cosine_distance({"g": {"g": a[t, g]}}, {"g": {"g": b[t, g]}})
    return out


def _curves_of_trials(job) -> tuple[dict, dict]:
    """Cosine distances (trials of the job, len(grid)) of every line, and where the time went.

    Trial t's estimates use episodes keyed (trial, episode) whatever the split over workers: ACPGT
    from seed + 1, finite differences (every coordinate, common random numbers) from seed + 2; the
    exact gradient is that of the time-limited episodes both estimators sample."""
    from .gradients.common import flatten
    from .gradients.compiled import Compiled
    from .gradients.estimators import acpgt_samples, fd_samples
    from .gradients.time_limit import exact_time_limited

    network, env_id, env_kwargs, params, first_trial, episodes, grid, step, seed, with_exact = job
    timing = {"acpgt": 0.0, "fd": 0.0, "exact": 0.0, "fd_ticks_unperturbed": 0, "fd_ticks_branches": 0,
              "acpgt_ticks": 0}
    bases = (first_trial + np.arange(len(params))) * episodes
    plan = Compiled.of(network, env_id, env_kwargs)
    start = time.perf_counter()
    if plan is not None:
        acpgt, timing["acpgt_ticks"] = plan.acpgt_sums(params, grid, seed + 1, bases)
        timing["acpgt"] = time.perf_counter() - start
        fd, (timing["fd_ticks_unperturbed"], timing["fd_ticks_branches"]) = plan.fd_sums(
            params, grid, step, seed + 2, bases)
    else:  # the engine: per-episode samples, summed here
        acpgt = np.cumsum(acpgt_samples(network, env_id, env_kwargs, params, episodes, 1, seed + 1,
                                        env_offset=first_trial * episodes), axis=1)[:, grid - 1]
        timing["acpgt"] = time.perf_counter() - start
        fd = np.stack([np.cumsum(fd_samples(network, env_id, env_kwargs, theta, episodes, 1, step, seed + 2,
                                            env_offset=int(b)), axis=0)[grid - 1]
                       for theta, b in zip(params, bases)])
    timing["fd"] = time.perf_counter() - start - timing["acpgt"]
    lines = {"acpgt_vs_fd": _cosine_rows(acpgt, fd)}
    if with_exact:
        start = time.perf_counter()
        truth = np.stack([flatten(exact_time_limited(network, env_id, env_kwargs, theta).gradient)
                          for theta in params])[:, None, :]
        timing["exact"] = time.perf_counter() - start
        lines["acpgt_vs_exact"] = _cosine_rows(acpgt, truth)
        lines["fd_vs_exact"] = _cosine_rows(fd, truth)
    return lines, timing


def fig5_curves(network: Network, env_id: str, env_kwargs: dict, trials: int, episodes: int, seed: int = 0,
                step: float = 0.1, workers: int | None = None, train_episodes: int = TRAIN_EPISODES,
                exact: bool = True) -> tuple[np.ndarray, dict[str, np.ndarray], dict]:
    """SPEC §4's protocol, with the exact gradient: (grid, {line: cosine distances of shape (trials,
    len(grid))}, timing).  Lines: ACPGT vs finite differences, and (``exact``) each vs exact dJ/dtheta."""
    from .gradients.estimators import trained_params

    check_workers(workers)
    params = trained_params(network, env_id, env_kwargs, train_episodes, trials, seed)
    grid = data_grid(episodes)
    workers = min(workers or default_workers(), trials)
    bounds = np.linspace(0, trials, workers + 1).round().astype(int)
    jobs = [(network, env_id, env_kwargs, params[a:b], int(a), episodes, grid, step, seed, exact)
            for a, b in zip(bounds[:-1], bounds[1:])]
    if workers == 1:
        parts = [_curves_of_trials(jobs[0])]
    else:
        with _pool(workers, lambda: _warm_up(network, env_id, env_kwargs, params[0])) as pool:
            parts = list(pool.map(_curves_of_trials, jobs))
    lines = {k: np.concatenate([p[0][k] for p in parts]) for k in parts[0][0]}
    timing = {k: sum(p[1][k] for p in parts) for k in parts[0][1]}
    return grid, lines, timing


def _warm_up(network, env_id, env_kwargs, theta) -> None:
    from .gradients.compiled import Compiled

    plan = Compiled.of(network, env_id, env_kwargs)
    if plan is not None:
        plan.acpgt_sums([theta], [1], 0, [0])
        plan.fd_sums([theta], [1], 0.1, 0, [0])


def gradient_check_curves(network: Network, env_id: str, env_kwargs: dict, trials: int, episodes: int,
                          seed: int = 0, step: float = 0.1, workers: int | None = None,
                          train_episodes: int = TRAIN_EPISODES) -> tuple[np.ndarray, np.ndarray]:
    """(grid, cosine distances between ACPGT and finite differences, shape (trials, len(grid)))."""
    grid, lines, _ = fig5_curves(network, env_id, env_kwargs, trials, episodes, seed, step, workers,
                                 train_episodes, exact=False)
    return grid, lines["acpgt_vs_fd"]


def _slope(grid: np.ndarray, mean: np.ndarray) -> float | None:
    """Least-squares slope of log(mean distance) against log(episodes) over the last decade of the
    grid (-1: the distance falls as 1/n, as it does when only the estimate's variance is left)."""
    last = (grid >= grid[-1] / 10) & (mean > 0)
    if last.sum() < 2 or grid[-1] < 10:
        return None
    return float(np.polyfit(np.log(grid[last]), np.log(mean[last]), 1)[0])


def fig5(trials: int = 20, episodes: int = 1000, seed: int = 0, out: Path | str = "figures", step: float = 0.1,
         workers: int | None = None, exact: bool = True) -> dict:
    """Figure 5: writes fig5.png and fig5.json under ``out``; returns the JSON summary.

    Lines: the cosine distance between ACPGT and finite differences (the paper's), and with
    ``exact`` between each and the exact gradient of the time-limited episodes.  ``lines[name]``
    holds the mean, the 95% half-width over trials, every trial's values and ``end``: the mean and
    half-width at ``episodes``.  (``distcoagent reproduce fig5`` runs 100 trials x 30,000 episodes.)"""
    from .gradients.common import flatten
    from .gradients.compiled import Compiled
    from .gradients.estimators import trained_params

    check_out(out)
    for name, value in (("trials", trials), ("episodes", episodes)):
        if not is_integer(value) or value < 1:
            raise SpecError(f"{name}: expected a positive integer, got {value!r}")
    if not is_number(step) or not np.isfinite(step) or step <= 0:
        raise SpecError(f"step: expected a positive finite-difference step, got {step!r}")
    network, env_id, env_kwargs = paper_setup()
    start = time.perf_counter()
    grid, lines, timing = fig5_curves(network, env_id, env_kwargs, trials, episodes, seed, step, workers,
                                      exact=exact)
    seconds = time.perf_counter() - start
    n_params = flatten(trained_params(network, env_id, env_kwargs, 0, 1, seed)[0]).size
    summary_lines = {}
    for name, distances in lines.items():
        mean, half = mean_and_band(distances)
        median = np.median(distances, axis=0)
        summary_lines[name] = {"label": LABELS[name], "mean": mean.tolist(), "ci95_halfwidth": half.tolist(),
                               "median": median.tolist(),
                               "end": {"episodes": int(grid[-1]), "mean": float(mean[-1]),
                                       "ci95_halfwidth": float(half[-1]), "median": float(median[-1])},
                               "slope_last_decade": _slope(grid, mean),
                               "median_slope_last_decade": _slope(grid, median), "per_trial": distances.tolist()}
    compiled = Compiled.of(network, env_id, env_kwargs) is not None
    timing["fd_ticks_without_branching"] = 2 * n_params * timing["fd_ticks_unperturbed"]
    summary = {"figure": "fig5", "trials": trials, "max_episodes": episodes, "seed": seed, "fd_step": step,
               "train_episodes": TRAIN_EPISODES, "env_id": env_id, "env_kwargs": env_kwargs,
               "parameters": n_params, "seconds": seconds, "workers": min(workers or default_workers(), trials),
               "estimators": "compiled (kernels.estimators)" if compiled else "in-process engine",
               "exact": (f"exact dJ/dtheta of episodes cut at max_steps={env_kwargs.get('max_steps')} "
                         "(gradients.time_limit)") if exact else None,
               "episodes": grid.tolist(), "lines": summary_lines,
               "mean_cosine_distance": summary_lines["acpgt_vs_fd"]["mean"],
               "ci95_halfwidth": summary_lines["acpgt_vs_fd"]["ci95_halfwidth"],
               "cpu_seconds": {k: round(timing[k], 3) for k in ("acpgt", "fd", "exact")},
               "ticks": {k: int(timing[k]) for k in ("acpgt_ticks", "fd_ticks_unperturbed", "fd_ticks_branches",
                                                     "fd_ticks_without_branching")}}
    return _save(out, summary, lambda path: _plot_fig5(grid, summary_lines, trials, step, path))


COLORS = {"acpgt_vs_fd": "C3", "acpgt_vs_exact": "C0", "fd_vs_exact": "C2"}


def _plot_fig5(grid, lines, trials, step, path):
    """Every line's mean with its 95% band over trials, log-log, its end value in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.0, 4.6), dpi=110)
    lows = []
    for name, line in lines.items():
        mean, half, end = np.asarray(line["mean"]), np.asarray(line["ci95_halfwidth"]), line["end"]
        color = COLORS[name]
        ax.plot(grid, mean, color=color, marker="o", ms=3,
                label=f"{line['label']}: {end['mean']:.2g} $\\pm$ {end['ci95_halfwidth']:.2g} at {end['episodes']:,}")
        ax.fill_between(grid, np.maximum(mean - half, 1e-12), mean + half, color=color, alpha=0.2, lw=0)
        lows.append(mean[mean > 0].min() if (mean > 0).any() else 1.0)
    if "acpgt_vs_exact" in lines and grid[-1] >= 10:  # a 1/n guide through the ACPGT vs exact end
        end = lines["acpgt_vs_exact"]["end"]
        x = np.array([grid[-1] / 100, grid[-1]])
        ax.plot(x, end["mean"] * grid[-1] / x, color="0.4", ls=":", lw=1, label=r"$\propto$ 1/episodes")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(bottom=min(lows) / 3, top=2.5)
    ax.set_xlabel("episodes per estimate (ACPGT: episodes; finite differences: episode pairs per parameter)")
    ax.set_ylabel("cosine distance (1 - cos)")
    ax.set_title(f"Gradient check after 5 training episodes, 5x5 gridworld: mean over {trials} trials, "
                 f"95% band\nfinite differences h = {step:g}; exact: dJ/dtheta with the time limit the estimators see",
                 fontsize=9)
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
