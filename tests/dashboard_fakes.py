"""A fake training run that writes RUN_DIR/metrics.jsonl exactly as the training writer's contract says.

``FakeRun`` simulates a coagent network's counters (each coagent executes with its own
probability), a rising learning curve and execution rasters, and appends start / metrics /
curve / raster / end records one step at a time, keeping every record it wrote in ``records``
so tests can compare what the dashboard shows with what the file says.
"""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np


def coagent(name, inputs, probability=0.5, *, policy=None, execution=None):
    return {"name": name, "inputs": list(inputs), "policy": policy or {"kind": "softmax", "n": 2},
            "execution": execution or {"kind": "constant", "probability": probability},
            "rule": {"kind": "actor_critic", "actor_step": 0.2, "critic_step": 0.1, "lam": 0.7, "critic": "shared"},
            "features": None, "initial": "uniform", "init_scale": 0.0}


def small_network() -> dict:
    """Four coagents showing every kind of edge: obs, same tick, prev:, driven, and the action."""
    return {"gamma": 0.95, "ticks_per_step": 1, "action": "act", "critic": {"step": 0.1, "lam": 0.7, "features": None},
            "coagents": [
                coagent("bit_a", ["obs"], 0.5),
                coagent("bit_b", ["obs", "prev:bit_b"], 0.25),
                coagent("term", ["obs", "prev:act"], policy={"kind": "bernoulli"},
                        execution={"kind": "periodic", "period": 4, "offset": 0}),
                coagent("act", ["bit_a", "bit_b"], policy={"kind": "softmax", "n": 4},
                        execution={"kind": "driven", "coagent": "term", "when": 1, "at_episode_start": True}),
            ]}


def large_network(n_coagents: int = 100) -> dict:
    """Two hidden layers and an action coagent: ``n_coagents`` coagents in all."""
    first = [coagent(f"unit_{i:02d}", ["obs"] + ([f"prev:unit_{i:02d}"] if i % 7 == 0 else []), 0.2 + 0.6 * (i % 5) / 4)
             for i in range(int(0.6 * (n_coagents - 1)))]
    second = [coagent(f"mix_{j:02d}", [first[j % len(first)]["name"], first[(j + 1) % len(first)]["name"]], 0.5)
              for j in range(n_coagents - 1 - len(first))]
    act = coagent("act", [c["name"] for c in second[:4]], 0.9, policy={"kind": "softmax", "n": 4})
    return {"gamma": 0.99, "ticks_per_step": 2, "action": "act", "critic": None, "coagents": first + second + [act]}


def execution_probability(config: dict) -> float:
    execution = config["execution"]
    return {"constant": lambda: execution["probability"], "periodic": lambda: 1 / execution["period"]}.get(
        execution["kind"], lambda: 0.3)()


class FakeRun:
    """Writes a run directory: ``config.json`` now, then records through start(), step(), end()."""

    def __init__(self, run_dir, network: dict | None = None, *, episodes=200, trials=10, envs_per_trial=2,
                 raster_envs=None, window=200, ticks_per_step_record=50, episode_ticks=20,
                 episodes_per_curve_record=None, seconds_per_step=2.0, seed=0):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.network = network or small_network()
        self.names = [c["name"] for c in self.network["coagents"]]
        self.probability = {c["name"]: execution_probability(c) for c in self.network["coagents"]}
        self.episodes, self.trials, self.envs_per_trial = episodes, trials, envs_per_trial
        self.n_envs = trials * envs_per_trial
        self.raster_envs = list(raster_envs if raster_envs is not None else range(min(4, self.n_envs)))
        self.window, self.ticks_per_record, self.episode_ticks = window, ticks_per_step_record, episode_ticks
        self.episodes_per_curve_record = episodes_per_curve_record
        self.rng = np.random.default_rng(seed)
        self.path = self.run_dir / "metrics.jsonl"
        self.records: list[dict] = []
        self.tick, self.curve_done, self.started, self.elapsed = 0, 0, time.time(), 0.0
        self.seconds_per_step = seconds_per_step  # simulated: the writer records every few seconds
        self.counts = {n: {"executions": 0, "ticks": 0, "updates": 0} for n in self.names}
        (self.run_dir / "config.json").write_text(json.dumps(
            {"network": self.network, "env": {"id": "distcoagent/GridWorld-v0", "size": 5},
             "train": {"episodes": episodes, "trials": trials, "envs_per_trial": envs_per_trial, "seed": seed}}))

    def append(self, record: dict) -> dict:
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        self.records.append(record)
        return record

    def append_partial(self, record: dict, keep: float = 0.5) -> str:
        """Write the first part of a record's line without its newline; returns the rest to write later."""
        line = json.dumps(record) + "\n"
        cut = max(1, int(len(line) * keep))
        with open(self.path, "a") as handle:
            handle.write(line[:cut])
        return line[cut:]

    def finish_partial(self, rest: str) -> None:
        with open(self.path, "a") as handle:
            handle.write(rest)

    def of_kind(self, kind: str) -> list[dict]:
        return [r for r in list(self.records) if r["kind"] == kind]

    def start(self) -> dict:
        return self.append({"kind": "start", "time": self.started, "run": self.run_dir.name, "engine": "inprocess",
                            "episodes": self.episodes, "trials": self.trials, "envs_per_trial": self.envs_per_trial,
                            "network": self.network, "raster": {"envs": self.raster_envs, "window": self.window}})

    def step(self, *, raster: bool = True, curve: bool = True) -> None:
        """One writer interval: the network runs ``ticks_per_step_record`` ticks; then a raster, curve and
        metrics record."""
        ticks, t0 = self.ticks_per_record, self.tick
        bits = {n: self.rng.random((len(self.raster_envs), ticks)) < self.probability[n] for n in self.names}
        if raster:
            self.append({"kind": "raster", "tick_start": t0, "ticks": ticks, "envs": self.raster_envs,
                         "executed": {n: [(row + 48).astype(np.uint8).tobytes().decode() for row in bits[n]]
                                      for n in self.names}})
        self.tick += ticks
        done = min(self.episodes, self.tick // self.episode_ticks)
        if curve and done > self.curve_done:
            step = self.episodes_per_curve_record or done - self.curve_done
            while self.curve_done < done:
                k = np.arange(self.curve_done + 1, min(done, self.curve_done + step) + 1)
                mean = -60 + 49 * (1 - np.exp(-k / (self.episodes / 5))) + self.rng.normal(0, 1.5, k.size)
                self.append({"kind": "curve", "episodes": k.tolist(), "mean": mean.round(3).tolist(),
                             "stderr": (1 + 7 * np.exp(-k / (self.episodes / 3))).round(3).tolist(),
                             "n": [self.trials] * k.size})
                self.curve_done = int(k[-1])
        seconds = self.seconds_per_step * float(self.rng.uniform(0.9, 1.1))
        self.elapsed += seconds
        elapsed = self.elapsed
        coagents = {}
        for n in self.names:
            new_ticks = ticks * self.n_envs
            new_executions = int(self.rng.binomial(new_ticks, self.probability[n]))
            c = self.counts[n]
            c["executions"] += new_executions
            c["ticks"] += new_ticks
            c["updates"] += new_executions
            coagents[n] = {"executions": c["executions"], "ticks": c["ticks"], "updates": c["updates"],
                           "execution_rate": c["executions"] / c["ticks"],
                           "recent_execution_rate": new_executions / new_ticks,
                           "executions_per_second": new_executions / seconds,
                           "mean_ticks_between_executions": c["ticks"] / max(1, c["executions"]),
                           "last_update": float(self.rng.normal(0, 0.3)),
                           "param_norm": float(np.sqrt(c["updates"]) * 0.01)}
        self.append({"kind": "metrics", "time": self.started + elapsed, "elapsed": elapsed, "tick": self.tick,
                     "ticks_per_second": self.tick / elapsed, "env_ticks_per_second": self.tick * self.n_envs / elapsed,
                     "episodes_done": done, "episodes_finished": done * self.n_envs, "episodes_total": self.episodes,
                     "eta_seconds": (self.episodes - done) * elapsed / done if done else None,
                     "coagents": coagents, "some_future_field": {"ignored": True}})

    def end(self, status: str = "finished", error: str | None = None) -> dict:
        summary = {"episodes": self.episodes, "mean_return_last_20": -11.2, "seconds": round(self.elapsed, 2)}
        if status == "finished":
            (self.run_dir / "summary.json").write_text(json.dumps(summary))
            (self.run_dir / "counters.json").write_text(json.dumps(
                {n: {**c, "episodes": self.episodes * self.n_envs} for n, c in self.counts.items()}))
        return self.append({"kind": "end", "time": self.started + self.elapsed, "status": status, "error": error,
                            "summary": summary})

    def run_in_background(self, interval: float = 0.25, max_steps: int = 400) -> "Appender":
        return Appender(self, interval, max_steps)


class Appender:
    """Calls ``run.step()`` every ``interval`` seconds from a thread, at most ``max_steps`` times, until stop()."""

    def __init__(self, run: FakeRun, interval: float, max_steps: int):
        self.run, self.interval, self.max_steps = run, interval, max_steps
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="fake-run-writer", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        for _ in range(self.max_steps):
            if self.stopped.wait(self.interval):
                return
            self.run.step()

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(10)
