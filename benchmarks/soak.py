"""Soak: a long Ray run, with each actor's memory (resident set size) sampled over time.

Runs the paper network on the Ray engine for ``--minutes`` (default 10), one run of
``--episodes`` after another in the same engine (and actors), sampling every ``--every`` seconds the RSS of the driver and of
every actor (by the pids the engine records), and the run's metrics.  Prints a table and writes
benchmarks/results/soak.json; the README states the bound the actors stayed under.

    python benchmarks/soak.py                 # 10 minutes
    python benchmarks/soak.py --minutes 1     # a quick look
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from distcoagent.contract import Observer
from distcoagent.examples import paper_network
from distcoagent.ray_engine import RayEngine

ROOT = Path(__file__).resolve().parents[1]


def rss_mib(pid: int) -> float | None:
    """Resident set size of a process on this machine, from /proc (None if it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class MemorySampler(Observer):
    def __init__(self, every: float, deadline: float, engine: RayEngine):
        self.metrics_every, self.deadline, self.engine = every, deadline, engine
        self.samples, self.start = [], time.monotonic()

    def on_metrics(self, metrics):
        sample = {"seconds": round(time.monotonic() - self.start, 1), "tick": metrics.tick,
                  "episodes_finished": metrics.episodes_finished,
                  "driver_mib": rss_mib(os.getpid()), "actors_mib": {}}
        for name, where in self.engine.placement.items():
            sample["actors_mib"][name] = rss_mib(where["pid"])
        self.samples.append(sample)

    def stop(self) -> bool:
        return time.monotonic() >= self.deadline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--every", type=float, default=15.0)
    parser.add_argument("--trials", type=int, default=256)
    parser.add_argument("--episodes", type=int, default=500, help="episodes per run; runs follow each other")
    args = parser.parse_args()
    engine = RayEngine(paper_network(), "distcoagent/GridWorld-v0", {"size": 5}, trials=args.trials, seed=0)
    deadline = time.monotonic() + 60 * args.minutes
    sampler = MemorySampler(args.every, deadline, engine)
    runs = 0
    try:
        while time.monotonic() < deadline:
            engine.train(args.episodes, observers=[sampler], stop=sampler.stop)
            runs += 1
        sampler.on_metrics(engine.metrics())
    finally:
        engine.close()
    names = sorted(sampler.samples[0]["actors_mib"])
    print(f"{args.minutes:g} min on the Ray engine, {args.trials} trials; RSS in MiB")
    print(f"{'seconds':>8} {'tick':>9} {'driver':>8} " + " ".join(f"{n:>14}" for n in names))
    for s in sampler.samples:
        print(f"{s['seconds']:>8} {s['tick']:>9} {s['driver_mib']:>8.1f} "
              + " ".join(f"{(s['actors_mib'][n] or float('nan')):>14.1f}" for n in names))
    first, last = sampler.samples[0], sampler.samples[-1]
    peak = max(v for s in sampler.samples for v in s["actors_mib"].values() if v is not None)
    growth = {n: (last["actors_mib"][n] or 0) - (first["actors_mib"][n] or 0) for n in names}
    print(f"peak actor RSS {peak:.1f} MiB; growth first->last sample: "
          + ", ".join(f"{n} {g:+.1f}" for n, g in growth.items()))
    out = ROOT / "benchmarks" / "results" / "soak.json"
    out.write_text(json.dumps({"minutes": args.minutes, "trials": args.trials, "samples": sampler.samples,
                               "peak_actor_mib": peak, "growth_mib": growth, "machine": platform.platform(),
                               "when": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
