"""In-process engine throughput on the paper network, against a plain per-episode Python loop.

Prints a table and writes benchmarks/results/inprocess.json.  Everything is measured in the
same run, interleaved, best of ``--rounds``: the plain loop, the engine on its compiled kernels
and the engine on numpy alone (``DISTCOAGENT_KERNELS=0``, the code the kernels replaced), so the
ratio columns are meaningful on a shared, noisy machine.  The engine runs its blocks on every CPU
(``threads``, its default) and on one; the plain loop and numpy use one.  Also: the kernels' compile time (cold,
in a fresh cache, and loaded from the cache) and the peak traced memory of each engine.

    python benchmarks/inprocess.py                 # B = 1, 64, 1024, 16384
    python benchmarks/inprocess.py --batches 1 64  # a quicker subset
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time
import tracemalloc
from pathlib import Path

import numpy as np

from distcoagent import InProcessEngine, kernels
from distcoagent.blocks import default_threads
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


THREADS = default_threads()  # every CPU this process may use (DISTCOAGENT_THREADS to change)
MODES = ("threads", "one_thread", "numpy")  # kernels on every CPU, kernels on one, numpy (on one)


def _engine(batch: int, threads: int | None = None) -> InProcessEngine:
    return InProcessEngine(paper_network(), "distcoagent/GridWorld-v0", {"size": SIZE, "max_steps": MAX_STEPS},
                           trials=batch, seed=0, threads=threads)


def engine_run(batch: int, episodes: int, mode: str) -> dict:
    """One timed run in ``mode`` (``MODES``); returns its env ticks, seconds and the sum of returns."""
    compiled = mode != "numpy"
    with (kernels.disabled() if not compiled else _nothing()):
        engine = _engine(batch, THREADS if mode == "threads" else 1)
        start = time.perf_counter()
        result = engine.train(episodes)
        seconds = time.perf_counter() - start
    env_ticks = int(result.counters["act"]["ticks"])  # atomic ticks of environments still running
    return {"env_ticks": env_ticks, "seconds": seconds, "env_ticks_per_s": env_ticks / seconds,
            "sum_returns": float(result.returns.sum())}


def peak_mib(batch: int, compiled: bool) -> float:
    """Peak traced memory of a short run (one episode); tracing slows allocations, so it is not timed.
    The kernels allocate nothing themselves: every array they touch is a numpy array, traced."""
    with (kernels.disabled() if not compiled else _nothing()):
        tracemalloc.start()
        _engine(batch).train(1)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak / 2**20


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def plain_rate(episodes: int, seed: int, at_least: float = 1.0) -> float:
    ticks = seconds = 0
    for k in range(1000):  # independent runs until the rate rests on at least ``at_least`` seconds
        t, sec = plain_loop(episodes, seed * 1000 + k)
        ticks, seconds = ticks + t, seconds + sec
        if seconds >= at_least:
            break
    return ticks / seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64, 1024, 16384])
    parser.add_argument("--plain-episodes", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the best of each is kept")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "inprocess.json"))
    args = parser.parse_args(argv)
    compiled_in = kernels.compile_times()
    kernels.compile_all()  # this process: loaded from the cache, before anything is timed
    episodes = {b: max(10, min(200, 20000 // b)) for b in args.batches}  # enough ticks per size
    plain, best = 0.0, {}
    for r in range(args.rounds):
        plain = max(plain, plain_rate(args.plain_episodes, r))
        for b in args.batches:
            for mode in MODES:
                run = engine_run(b, episodes[b], mode)
                key = (b, mode)
                if key not in best or run["seconds"] < best[key]["seconds"]:
                    best[key] = run
    rows = []
    for b in args.batches:
        k, one, n = (best[(b, mode)] for mode in MODES)
        assert k["sum_returns"] == one["sum_returns"] == n["sum_returns"], "the engines ran different episodes"
        rows.append({"batch": b, "episodes": episodes[b], "env_ticks": k["env_ticks"],
                     "kernels": {**k, "threads": THREADS, "speedup_vs_plain_loop": k["env_ticks_per_s"] / plain,
                                 "peak_mib": peak_mib(b, True)},
                     "kernels_one_thread": {**one, "threads": 1,
                                            "speedup_vs_plain_loop": one["env_ticks_per_s"] / plain},
                     "numpy": {**n, "speedup_vs_plain_loop": n["env_ticks_per_s"] / plain,
                               "peak_mib": peak_mib(b, False)},
                     "kernels_over_numpy": k["env_ticks_per_s"] / n["env_ticks_per_s"]})
    print(f"plain Python loop: {plain:,.0f} atomic ticks/s (best of {args.rounds} interleaved rounds)")
    print(f"kernels: compile {compiled_in['compile_cold_s']:.1f} s into an empty cache (once per install), "
          f"{compiled_in['compile_cached_s']:.2f} s to load from it (once per process)")
    print(f"{'B':>7} {'episodes':>8} | {f'kernels, {THREADS} threads':>19} {'x plain':>8} {'MiB':>6} | "
          f"{'kernels, 1 thread':>17} {'x plain':>8} | {'numpy ticks/s':>13} {'x plain':>8} {'MiB':>6} | "
          f"{'kernels/numpy':>13}")
    for r in rows:
        k, one, n = r["kernels"], r["kernels_one_thread"], r["numpy"]
        print(f"{r['batch']:>7} {r['episodes']:>8} | {k['env_ticks_per_s']:>19,.0f} {k['speedup_vs_plain_loop']:>8.2f} "
              f"{k['peak_mib']:>6.1f} | {one['env_ticks_per_s']:>17,.0f} {one['speedup_vs_plain_loop']:>8.2f} | "
              f"{n['env_ticks_per_s']:>13,.0f} {n['speedup_vs_plain_loop']:>8.2f} "
              f"{n['peak_mib']:>6.1f} | {r['kernels_over_numpy']:>13.1f}")
    print("env ticks/s: atomic ticks of environments running their episodes, summed over the batch, per second; "
          "MiB: peak traced memory; the plain loop and numpy run on one CPU")
    large = max(rows, key=lambda r: r["batch"])["kernels"]["speedup_vs_plain_loop"]
    small = min(rows, key=lambda r: r["batch"])["kernels"]["speedup_vs_plain_loop"]
    large_one = max(rows, key=lambda r: r["batch"])["kernels_one_thread"]["speedup_vs_plain_loop"]
    goal_large, goal_small = large >= 150, small >= 1
    print(f"goal: >= 150x the plain loop at the largest B: {'met' if goal_large else 'NOT met'} ({large:.0f}x on "
          f"{THREADS} threads; {large_one:.0f}x on one); >= 1x at the smallest B: "
          f"{'met' if goal_small else 'NOT met'} ({small:.2f}x)")
    report = {"benchmark": "inprocess", "machine": platform.platform(), "cpus": os.cpu_count(), "threads": THREADS,
              "rounds": args.rounds, "plain_loop_ticks_per_s": plain, **compiled_in, "rows": rows,
              "goal_150x_met": goal_large, "goal_1x_at_smallest_met": goal_small}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
