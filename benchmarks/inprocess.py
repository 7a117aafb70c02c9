"""In-process engine throughput on the paper network, against a plain per-episode Python loop.

Prints a table and writes benchmarks/results/inprocess.json.  Everything is measured in
the same run, so the ratio column is meaningful on a shared, noisy machine.

    python benchmarks/inprocess.py                 # B = 1, 64, 1024, 16384
    python benchmarks/inprocess.py --batches 1 64  # a quicker subset
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import random
import time
import tracemalloc
from pathlib import Path

import numpy as np

from distcoagent import InProcessEngine
from distcoagent.envs import GridWorldEnv
from distcoagent.examples import paper_network

SIZE, MAX_STEPS, GAMMA, LAM, ALPHA, BETA = 5, 100, 0.95, 0.7, 0.2, 0.5


def plain_loop(episodes: int, seed: int = 0) -> tuple[int, float]:
    """The paper network and actor-critic(lambda), written as one would by hand: one trial,
    one tick at a time, small numpy arrays per coagent.  Returns (atomic ticks, seconds)."""
    rng = random.Random(seed)
    env = GridWorldEnv(size=SIZE, max_steps=MAX_STEPS)
    n = SIZE * SIZE
    shapes = {"a": (n, 2), "b": (n, 2), "act": (4, 4)}
    theta = {k: np.zeros(s) for k, s in shapes.items()}
    critic = np.zeros(n)
    ticks, start = 0, time.perf_counter()
    for _ in range(episodes):
        s, _ = env.reset()
        out = {"a": rng.randrange(2), "b": rng.randrange(2), "act": rng.randrange(4)}
        z = {k: np.zeros(v) for k, v in shapes.items()}
        zc = np.zeros(n)
        last = {k: None for k in shapes}  # (state value, Rbar, discount) since last execution
        done = False
        while not done:
            v_s = critic[s]
            for name in ("a", "b", "act"):
                x = s if name != "act" else 2 * out["a"] + out["b"]
                if rng.random() >= BETA:
                    continue
                if last[name] is not None:
                    v_prev, rbar, disc = last[name]
                    theta[name] += ALPHA * (rbar + disc * v_s - v_prev) * z[name]
                logits = theta[name][x]
                p = np.exp(logits - logits.max())
                p /= p.sum()
                u = min(int(np.searchsorted(np.cumsum(p), rng.random() * p.sum(), side="right")), len(p) - 1)
                z[name] *= GAMMA * LAM if last[name] is not None else 0.0
                z[name][x] -= p
                z[name][x, u] += 1.0
                out[name] = u
                last[name] = [v_s, 0.0, 1.0]
            s2, r, term, trunc, _ = env.step(out["act"])
            done = term or trunc
            delta = r + (0.0 if done else GAMMA * critic[s2]) - critic[s]
            zc *= GAMMA * LAM
            zc[s] += 1.0
            critic += ALPHA * delta * zc
            for name in last:
                if last[name] is not None:
                    last[name][1] += last[name][2] * r
                    last[name][2] *= GAMMA
                    if done:
                        theta[name] += ALPHA * (last[name][1] - last[name][0]) * z[name]
            s = s2
            ticks += 1
    return ticks, time.perf_counter() - start


def _engine(batch: int) -> InProcessEngine:
    return InProcessEngine(paper_network(), "distcoagent/GridWorld-v0", {"size": SIZE, "max_steps": MAX_STEPS},
                           trials=batch, seed=0)


def engine_run(batch: int, episodes: int) -> dict:
    """Throughput from a timed run; peak memory from a second, short run under tracemalloc
    (tracing slows every allocation, so it must not share the timed run)."""
    result = _engine(batch).train(episodes)
    env_ticks = int(result.counters["act"]["ticks"])  # atomic ticks of environments still running
    tracemalloc.start()
    _engine(batch).train(1)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"batch": batch, "episodes": episodes, "env_ticks": env_ticks, "seconds": result.seconds,
            "env_ticks_per_s": env_ticks / result.seconds, "peak_mib": peak / 2**20}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64, 1024, 16384])
    parser.add_argument("--plain-episodes", type=int, default=200)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "inprocess.json"))
    args = parser.parse_args(argv)
    ticks = seconds = 0
    for seed in range(1000):  # independent runs until the rate rests on at least 2 seconds
        t, sec = plain_loop(args.plain_episodes, seed)
        ticks, seconds = ticks + t, seconds + sec
        if seconds >= 2.0:
            break
    plain = ticks / seconds
    rows = []
    for b in args.batches:
        episodes = max(10, min(200, 20000 // b))  # enough ticks per size for a stable rate
        row = engine_run(b, episodes)
        row["speedup_vs_plain_loop"] = row["env_ticks_per_s"] / plain
        rows.append(row)
    print(f"plain Python loop: {plain:,.0f} atomic ticks/s ({ticks} ticks in {seconds:.2f} s)")
    print(f"{'B':>7} {'episodes':>8} {'env ticks/s':>14} {'x plain loop':>13} {'peak MiB':>9}")
    for r in rows:
        print(f"{r['batch']:>7} {r['episodes']:>8} {r['env_ticks_per_s']:>14,.0f} "
              f"{r['speedup_vs_plain_loop']:>13.1f} {r['peak_mib']:>9.1f}")
    print("env ticks: atomic ticks of environments running their episodes, summed over the batch")
    goal = max(r["speedup_vs_plain_loop"] for r in rows)
    print(f"goal: >= 100x the plain loop at large B: {'met' if goal >= 100 else 'NOT met'} ({goal:.0f}x)")
    report = {"benchmark": "inprocess", "machine": platform.platform(), "cpus": __import__("os").cpu_count(),
              "plain_loop_ticks_per_s": plain, "rows": rows, "goal_100x_met": goal >= 100}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
