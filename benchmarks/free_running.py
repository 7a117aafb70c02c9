"""Free-running against the logical-tick Ray engine, side by side on this machine.

1. Throughput, as the network widens (3, 10, 30 coagents) and with one coagent made slow (its
   policy takes ``--slow`` seconds whenever it executes): environment steps per second and
   coagent executions per second (per environment, summed over the coagents), each mode run for
   ``--seconds`` of training.  Modes: ``tick`` (the logical-tick Ray engine, compiled graph),
   ``free`` (environment as fast as it can) and ``free@R`` (environment at R steps per second).
2. Learning curves of the same modes on the paper's gridworld and on CartPole-v1, by wall-clock
   time and by environment steps (docs/free_running_learning.png).

Prints tables and writes benchmarks/results/free_running.json.

    python benchmarks/free_running.py                 # everything (about 10 minutes on 2 cores)
    python benchmarks/free_running.py --quick         # 3 and 10 coagents, short learning runs
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distcoagent.coagent import Coagent
from distcoagent.contract import Observer
from distcoagent.execution import Constant
from distcoagent.features import Fourier
from distcoagent.network import Network, SharedCritic
from distcoagent.policies import Softmax
from distcoagent.rules import ActorCritic
from distcoagent.ray_engine.cluster import shutdown_ray

ROOT = Path(__file__).resolve().parents[1]
GRID = "distcoagent/GridWorld-v0"
RULE = ActorCritic(actor_step=0.2, critic_step=0.1, lam=0.7, critic="shared")


@dataclass(frozen=True)
class SlowSoftmax(Softmax):
    """A softmax coagent that takes ``delay`` seconds to compute whenever it executes (a slow unit)."""

    delay: float = 0.0

    def forward(self, params, x, rows=None):
        if self.delay and (rows is None or len(rows)):
            time.sleep(self.delay)
        return super().forward(params, x, rows)


def wide_network(n: int, slow: float = 0.0) -> Network:
    """n coagents: n - 1 binary units on the state, and the action unit on the state and the first two
    units' outputs (beta = 0.5 everywhere, one shared critic).  ``slow``: unit u0 computes that long."""
    beta = Constant(0.5)
    units = [Coagent(f"u{i}", ["obs"], SlowSoftmax(2, slow) if (i == 0 and slow) else Softmax(2), beta, RULE)
             for i in range(n - 1)]
    act = Coagent("act", ["obs", "u0", "u1"], Softmax(4), beta, RULE)
    return Network(units + [act], action="act", gamma=0.95, critic=SharedCritic(0.1, 0.7))


def paper() -> Network:
    beta = Constant(0.5)
    return Network([Coagent("bit_a", ["obs"], Softmax(2), beta, RULE), Coagent("bit_b", ["obs"], Softmax(2), beta, RULE),
                    Coagent("act", ["bit_a", "bit_b"], Softmax(4), beta, RULE)],
                   action="act", gamma=0.95, critic=SharedCritic(0.1, 0.7))


def cartpole() -> Network:
    features = Fourier(order=2, low=(-2.4, -3.0, -0.21, -3.5), high=(2.4, 3.0, 0.21, 3.5))
    rule = ActorCritic(actor_step=0.001, critic_step=0.002, lam=0.8, critic="own")  # examples/cartpole_linear.toml
    return Network([Coagent("push", ["obs"], Softmax(2), rule=rule, features=features)], action="push", gamma=0.99)


def make(mode: str, network, env_id, env_kwargs, trials, seed=0):
    from distcoagent.ray_engine import RayEngine
    from distcoagent.ray_engine.free import FreeRunningEngine

    common = dict(trials=trials, seed=seed, export_metrics=False, cpus_per_actor=0.01)
    if mode == "tick":
        return RayEngine(network, env_id, env_kwargs, **common)
    rate = None if mode == "free" else float(mode.split("@")[1])
    return FreeRunningEngine(network, env_id, env_kwargs, env_rate=rate, **common)


def steps_of(result) -> int:
    return int(result.extra.get("steps", result.ticks))


def throughput(mode: str, n: int, slow: float, trials: int, seconds: float) -> dict:
    built = time.perf_counter()
    engine = make(mode, wide_network(n, slow), GRID, {"size": 5}, trials)
    built = time.perf_counter() - built
    try:
        deadline = []
        stop = lambda: time.perf_counter() > deadline[0]  # noqa: E731
        deadline.append(time.perf_counter() + seconds)
        result = engine.train(10_000, stop=stop)
    finally:
        engine.close()
    steps = steps_of(result)
    executions = sum(c["executions"] for c in result.counters.values()) / trials
    per_unit = {name: c["executions"] / max(c["ticks"], 1) for name, c in result.counters.items()}
    return {"mode": mode, "coagents": n, "slow": slow, "trials": trials, "seconds": result.seconds,
            "build_seconds": built, "env_steps": steps, "env_steps_per_second": steps / result.seconds,
            "executions_per_second": executions / result.seconds,
            "execution_fraction_mean": float(np.mean(list(per_unit.values()))),
            "execution_fraction_slow_unit": per_unit.get("u0") if slow else None}


class Samples(Observer):
    """When each episode index was finished by every environment (wall-clock)."""

    metrics_every = 0.25

    def __init__(self):
        self.start, self.done_at = None, {}

    def on_start(self, engine, episodes):
        self.start = time.perf_counter()

    def on_metrics(self, metrics):
        for k in range(len(self.done_at) + 1, metrics.episodes_done + 1):
            self.done_at[k] = time.perf_counter() - self.start

    def on_end(self, result):
        done = int(np.isfinite(result.returns).all(axis=(0, 1)).sum())
        for k in range(len(self.done_at) + 1, done + 1):
            self.done_at[k] = time.perf_counter() - self.start


def learning(mode: str, task: str, trials: int, episodes: int, limit: float) -> dict:
    network, env_id, env_kwargs = (paper(), GRID, {"size": 5}) if task == "gridworld" else \
        (cartpole(), "CartPole-v1", {})
    engine = make(mode, network, env_id, env_kwargs, trials, seed=1)
    samples = Samples()
    try:
        deadline = time.perf_counter() + limit
        result = engine.train(episodes, observers=[samples], stop=lambda: time.perf_counter() > deadline)
    finally:
        engine.close()
    done = min(len(samples.done_at), int(np.isfinite(result.returns).all(axis=(0, 1)).sum()))
    returns = result.returns.reshape(-1, result.returns.shape[-1])[:, :done]
    lengths = result.lengths.reshape(-1, result.lengths.shape[-1])[:, :done]
    return {"mode": mode, "task": task, "trials": trials, "episodes": done, "seconds": result.seconds,
            "mean_return": returns.mean(axis=0).tolist(),
            "env_steps": np.cumsum(lengths.mean(axis=0)).tolist(),
            "wall_seconds": [samples.done_at[k] for k in range(1, done + 1)],
            "final_mean_return": float(returns[:, -max(1, done // 10):].mean()) if done else None}


def plot(curves: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({c["task"] for c in curves})
    if not tasks:  # (--only throughput with no earlier results: no learning curves to draw)
        return
    fig, axes = plt.subplots(len(tasks), 2, figsize=(10, 3.6 * len(tasks)), dpi=100, squeeze=False)
    for row, task in enumerate(tasks):
        for c in (c for c in curves if c["task"] == task):
            if not c["episodes"]:
                continue
            smooth = np.convolve(c["mean_return"], np.ones(5) / 5, mode="valid")
            x = slice(4, None)
            axes[row, 0].plot(np.asarray(c["wall_seconds"])[x], smooth, label=c["mode"])
            axes[row, 1].plot(np.asarray(c["env_steps"])[x], smooth, label=c["mode"])
        for col, xlabel in enumerate(("wall-clock seconds", "environment steps (mean per environment)")):
            axes[row, col].set_xlabel(xlabel)
            axes[row, col].set_ylabel("mean return (5-episode average)")
            axes[row, col].set_title(f"{task}: by {xlabel.split(' (')[0]}")
            axes[row, col].legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    import ray

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seconds", type=float, default=8.0, help="training seconds per throughput run")
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--slow", type=float, default=0.02, help="the slow unit's compute time (s)")
    parser.add_argument("--rate", type=float, default=100.0, help="the paced free mode's env steps per second")
    parser.add_argument("--only", choices=["throughput", "learning"],
                        help="run one part; the other part of an existing JSON is kept")
    parser.add_argument("--tasks", nargs="+", default=["gridworld", "cartpole"], choices=["gridworld", "cartpole"],
                        help="learning tasks to run (the others' curves in an existing JSON are kept)")
    args = parser.parse_args()
    out = ROOT / "benchmarks" / "results" / "free_running.json"
    old = json.loads(out.read_text()) if out.exists() else {"throughput": [], "learning": []}
    modes = ["tick", "free", f"free@{args.rate:g}"]
    widths = (3, 10) if args.quick else (3, 10, 30)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    rows = [] if args.only != "learning" else old["throughput"]
    print(f"{'mode':>10} {'coagents':>8} {'slow s':>6} {'env steps/s':>12} {'executions/s':>13} "
          f"{'exec/step':>9} {'slow unit':>9} {'build s':>8}")
    for n in widths if args.only != "learning" else ():
        for slow in (0.0, args.slow):
            for mode in modes:
                r = throughput(mode, n, slow, args.trials, args.seconds)
                rows.append(r)
                slow_frac = "" if r["execution_fraction_slow_unit"] is None else f"{r['execution_fraction_slow_unit']:.3f}"
                print(f"{mode:>10} {n:>8} {slow:>6g} {r['env_steps_per_second']:>12.1f} "
                      f"{r['executions_per_second']:>13.1f} {r['execution_fraction_mean']:>9.3f} {slow_frac:>9} "
                      f"{r['build_seconds']:>8.1f}", flush=True)
    curves = [c for c in old["learning"] if c["task"] not in args.tasks] if args.only else []
    plan = [("gridworld", 16, 150 if not args.quick else 40, 90 if not args.quick else 30),
            ("cartpole", 8, 150 if not args.quick else 30, 90 if not args.quick else 30)]
    print(f"\n{'task':>10} {'mode':>10} {'episodes':>8} {'seconds':>8} {'env steps':>10} {'final return':>12}")
    for task, trials, episodes, limit in plan:
        if args.only == "throughput" or task not in args.tasks:
            continue
        for mode in modes:
            c = learning(mode, task, trials, episodes, limit)
            curves.append(c)
            steps = c["env_steps"][-1] if c["env_steps"] else 0
            print(f"{task:>10} {mode:>10} {c['episodes']:>8} {c['seconds']:>8.1f} {steps:>10.0f} "
                  f"{c['final_mean_return'] if c['final_mean_return'] is not None else float('nan'):>12.2f}", flush=True)
    shutdown_ray()  # and the semaphores its raylet leaves in /dev/shm
    if args.only == "throughput":
        curves = old["learning"]
    out.write_text(json.dumps({"machine": platform.platform(), "time": time.time(), "args": vars(args),
                               "throughput": rows, "learning": curves}, indent=1) + "\n")
    png = ROOT / "docs" / "free_running_learning.png"
    plot(curves, png)
    print(f"\nwrote {out} and {png}")


if __name__ == "__main__":
    main()
