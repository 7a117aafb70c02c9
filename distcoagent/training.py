"""``train``: one call from a network (or spec) to results, with an optional run directory.

The run directory holds ``config.json`` (written first), then ``returns.csv``
(trial, env, episode, return, length), ``curve.csv`` (mean and standard error per
episode), ``counters.json`` (per-coagent ticks, executions, updates, episodes),
``params.msgpack`` (final parameters, no pickle), ``summary.json`` and
``learning_curve.png``; while it runs, ``metrics.jsonl`` (``recording``), which the
dashboard follows.  If the run fails (say a NaN reward), what was learned so far
is written all the same, with ``error.txt``; nothing written earlier is removed.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Callable

import numpy as np

from . import serialize
from .engine import InProcessEngine, TrainResult
from .network import Network, SpecError
from .recording import MetricsLog
from .spec import RunSpec, TrainConfig
from .tick import RasterSpec


RASTER_ENVS = 4  # environments whose executions a run directory's metrics.jsonl records


def make_engine(network: Network, env_id: str, env_kwargs: dict, config: TrainConfig, ray_options: dict | None = None,
                raster: RasterSpec | None = None):
    """The engine named by ``config.engine``, built for the run (``ray_options``: RayEngine placement)."""
    common = dict(trials=config.trials, envs_per_trial=config.envs_per_trial, seed=config.seed,
                  micro_batches=config.micro_batches, raster=raster)
    if config.engine == "ray":
        from .ray_engine import RayEngine

        return RayEngine(network, env_id, env_kwargs, address=config.address, **common, **(ray_options or {}))
    if config.address is not None:
        raise SpecError("address: only the ray engine joins a cluster; add --engine ray")
    return InProcessEngine(network, env_id, env_kwargs, **common)


def train(network: Network | RunSpec, env: str | None = None, *, env_kwargs: dict | None = None,
          episodes: int | None = None, trials: int | None = None, seed: int | None = None,
          envs_per_trial: int | None = None, engine: str | None = None, micro_batches: int | None = None,
          address: str | None = None, out: str | Path | None = None, ray_options: dict | None = None,
          progress: Callable[[int], None] | None = None, metrics_every: float = 2.0) -> TrainResult:
    """Train ``network`` on gymnasium env ``env``; keyword arguments override a spec's [train]
    (``ray_options``, its [ray] table: placement for the Ray engine).  With ``out``, the run
    directory also gets ``metrics.jsonl`` every ``metrics_every`` seconds (``recording``).

    >>> from distcoagent.examples import paper_network
    >>> result = train(paper_network(), "distcoagent/GridWorld-v0", env_kwargs={"size": 3},
    ...                episodes=3, trials=2, seed=1)
    >>> result.returns.shape
    (2, 1, 3)
    """
    overrides = dict(episodes=episodes, trials=trials, seed=seed, envs_per_trial=envs_per_trial,
                     engine=engine, micro_batches=micro_batches, address=address)
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if isinstance(network, RunSpec):
        spec = network
        config = TrainConfig(**{**spec.train.__dict__, **overrides})
        network, env, env_kwargs = spec.network, env or spec.env_id, env_kwargs or spec.env_kwargs
        ray_options = {**spec.ray, **(ray_options or {})}
    else:
        if env is None:
            raise SpecError("env: expected a gymnasium environment id")
        config = TrainConfig(**overrides)
    env_kwargs = dict(env_kwargs or {})
    run_dir, observers, log, raster = None, [], None, None
    if out is not None:
        run_dir = Path(out)
        run_dir.mkdir(parents=True, exist_ok=True)
        _write_json(run_dir / "config.json", {"env": {"id": env, **env_kwargs}, "network": network.to_config(),
                                              "train": config.__dict__, "ray": ray_options or {}})
        raster = RasterSpec(tuple(range(min(RASTER_ENVS, config.trials * config.envs_per_trial))))
        log = MetricsLog(run_dir / "metrics.jsonl", run=run_dir.name, network=network.to_config(),
                         trials=config.trials, envs_per_trial=config.envs_per_trial,
                         raster_envs=list(raster.env_ids), raster_window=raster.window,
                         every=metrics_every)
        observers.append(log)
    runner = make_engine(network, env, env_kwargs, config, ray_options, raster)
    try:
        result = runner.train(config.episodes, progress=progress, observers=observers)
    except BaseException as error:
        partial = getattr(runner, "partial", None)
        if run_dir is not None:
            interrupted = isinstance(error, KeyboardInterrupt)
            if not interrupted:
                (run_dir / "error.txt").write_text(f"{type(error).__name__}: {error}\n")
            if partial is not None:
                write_results(run_dir, partial, env, env_kwargs)
            log.end("interrupted" if interrupted else "failed", None if interrupted else f"{type(error).__name__}: {error}")
        raise
    finally:
        runner.close()
    if run_dir is not None:
        write_results(run_dir, result, env, env_kwargs)
    return result


def _write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=2, default=_plain) + "\n")


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def summarize(result: TrainResult, env_id: str, env_kwargs: dict) -> dict:
    """Numbers worth printing: final mean return (last 10% of episodes), the optimum if known."""
    episodes = result.returns.shape[-1]
    tail = max(1, episodes // 10)
    final = result.returns[..., -tail:]
    summary = {
        "engine": result.engine, "trials": int(result.returns.shape[0]),
        "envs_per_trial": int(result.returns.shape[1]), "episodes": int(episodes),
        "first_episode_mean_return": _finite_mean(result.returns[..., 0]),
        f"mean_return_last_{tail}_episodes": _finite_mean(final),
        "atomic_ticks": int(result.ticks), "seconds": round(result.seconds, 3),
        "env_ticks_per_second": round(result.ticks * result.returns.shape[0] * result.returns.shape[1]
                                      / max(result.seconds, 1e-9)),
    }
    from .envs import GRIDWORLD_ID, GridWorldEnv

    if env_id == GRIDWORLD_ID:
        summary["optimal_return"] = GridWorldEnv(**env_kwargs).optimal_return()
    return summary


def _finite_mean(values: np.ndarray):
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else None


def write_results(run_dir: Path, result: TrainResult, env_id: str, env_kwargs: dict) -> dict:
    """Write returns, curve, counters, parameters, summary and plot into ``run_dir``."""
    trials, envs, episodes = result.returns.shape
    with open(run_dir / "returns.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["trial", "env", "episode", "return", "length"])
        for t in range(trials):
            for e in range(envs):
                for k in range(episodes):
                    r = result.returns[t, e, k]
                    if math.isfinite(r):
                        writer.writerow([t, e, k + 1, repr(float(r)), int(result.lengths[t, e, k])])
    flat = result.returns.reshape(-1, episodes)
    with open(run_dir / "curve.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["episode", "mean_return", "stderr", "n"])
        for k in range(episodes):
            col = flat[:, k][np.isfinite(flat[:, k])]
            if col.size:
                se = col.std(ddof=1) / math.sqrt(col.size) if col.size > 1 else 0.0
                writer.writerow([k + 1, repr(float(col.mean())), repr(float(se)), col.size])
    _write_json(run_dir / "counters.json", result.counters)
    (run_dir / "params.msgpack").write_bytes(serialize.dumps(result.params))
    summary = summarize(result, env_id, env_kwargs)
    _write_json(run_dir / "summary.json", summary)
    from .plotting import plot_curve

    plot_curve(flat, run_dir / "learning_curve.png", title=f"{env_id}: {trials} trial(s) x {envs} env(s)",
               optimum=summary.get("optimal_return"))
    return summary
