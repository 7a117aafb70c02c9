"""Time `distcoagent reproduce fig6` at full scale (10,000 trials x 200 episodes) and say where
the time goes.  Writes benchmarks/results/fig6_speed.json (and the figure into --out).

    PYTHONPATH=. python3 benchmarks/fig6_speed.py                 # full scale, all cores
    PYTHONPATH=. python3 benchmarks/fig6_speed.py --profile-trials 2000 --profile-episodes 30
"""
from __future__ import annotations

import argparse
import cProfile
import json
import os
import platform
import pstats
import time
from pathlib import Path

from distcoagent import reproduce
from distcoagent.engine import InProcessEngine


def profile(trials: int, episodes: int) -> dict:
    """One process, cProfile: the engine's hot spots by own time."""
    network, env_id, env_kwargs = reproduce.paper_setup()
    engine = InProcessEngine(network, env_id, env_kwargs, trials=trials, seed=0)
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    result = engine.train(episodes)
    profiler.disable()
    seconds = time.perf_counter() - start
    stats = pstats.Stats(profiler)
    rows = sorted(((v[2], v[3], f"{Path(k[0]).name}:{k[1]}({k[2]})") for k, v in stats.stats.items()),
                  reverse=True)[:15]
    return {"trials": trials, "episodes": episodes, "ticks": result.ticks, "seconds": seconds,
            "ms_per_tick": 1000 * seconds / result.ticks,
            "us_per_trial_tick": 1e6 * seconds / (result.ticks * trials),
            "top_own_time": [{"function": f, "own_s": round(own, 3), "cumulative_s": round(cum, 3),
                              "share": round(own / seconds, 3)} for own, cum, f in rows]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=10_000)
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--workers", type=int, nargs="+", default=[os.cpu_count() or 1])
    parser.add_argument("--out", default="benchmarks/fig6")
    parser.add_argument("--profile-trials", type=int, default=0, help="also profile one process at this size")
    parser.add_argument("--profile-episodes", type=int, default=30)
    parser.add_argument("--json", default="benchmarks/results/fig6_speed.json")
    args = parser.parse_args()
    report = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "processor": platform.processor() or platform.machine()},
              "runs": []}
    for workers in args.workers:
        start = time.perf_counter()
        summary = reproduce.fig6(args.trials, args.episodes, seed=0, out=args.out, workers=workers)
        wall = time.perf_counter() - start
        run = {"trials": args.trials, "episodes": args.episodes, "workers": workers, "wall_seconds": wall,
               "train_seconds": summary["seconds"], "final_mean_last10": summary["final_mean_last10"],
               "optimal_return": summary["optimal_return"], "under_2_minutes": wall < 120}
        report["runs"].append(run)
        print(json.dumps(run))
    if args.profile_trials:
        report["profile"] = profile(args.profile_trials, args.profile_episodes)
        print(json.dumps(report["profile"], indent=1))
    Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
