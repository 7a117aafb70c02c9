"""A run's live record: ``metrics.jsonl`` in its run directory, appended every few seconds.

``MetricsLog`` is an engine observer (``contract.Observer``).  It appends one JSON object
per line, flushed as it goes, so the dashboard (``distcoagent dashboard RUN_DIR``)
can follow a run from another process, on either engine, or from a cluster whose
run directory the user can read:

- ``start``: the run's layout, network and the sampled environments of the raster;
- ``resume``: the run goes on after an interruption (``train --resume``), on the same file;
- ``metrics`` (every ``every`` seconds): clock, ticks per second, episodes and the
  estimated time left, and per coagent its counts, execution rate (cumulative and
  since the previous record), executions per second, mean ticks between executions,
  last TD error or update norm, and parameter norm;
- ``curve``: episodes every environment has now finished, with mean, standard
  error and count of their returns;
- ``raster``: for the sampled environments, which coagent executed at which tick
  (the recent window; windows may leave gaps);
- ``end``: finished, failed (with the error) or interrupted.

Records are small (a few hundred bytes per coagent), so a long run's file stays small.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np

from .contract import Observer, RunMetrics, TrainResult


def _number(value):
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else str(value)


class MetricsLog(Observer):
    """Appends a run's metrics to ``path``; see the module docstring."""

    def __init__(self, path: str | Path, *, run: str, network: dict, trials: int, envs_per_trial: int,
                 raster_envs: list[int] | None = None, raster_window: int = 256, every: float = 2.0):
        self.path, self.run, self.network = Path(path), run, network
        self.trials, self.envs_per_trial = trials, envs_per_trial
        self.raster_envs, self.raster_window = list(raster_envs or []), raster_window
        self.metrics_every = every
        self.engine, self.episodes_target = None, None
        self.previous: RunMetrics | None = None
        self.previous_time = None
        self.curve_written = 0  # episodes already written as curve records
        self.raster_written = -1  # last tick written in a raster record
        self.ended = False
        self.fresh = True  # not a resumed run, whose counts began before this process
        self.whole = False  # a record cut short at the end of the file was dropped (``_whole_records``)

    def _write(self, record: dict) -> None:
        if not self.whole:  # before the first record this run appends (an end record, if it fails early)
            self.whole = True
            if self.path.exists():
                self._whole_records()
        with open(self.path, "a") as f:
            f.write(json.dumps(record, allow_nan=False) + "\n")

    def on_start(self, engine, episodes: int) -> None:
        self.engine, self.episodes_target = engine, int(episodes)
        self.whole = True
        if self.path.exists() and self._whole_records():  # a resumed run goes on in the same file
            self._write({"kind": "resume", "time": time.time(), "engine": engine.name, "episodes": int(episodes)})
            self.fresh = False
            return
        self._write({"kind": "start", "time": time.time(), "run": self.run, "engine": engine.name,
                     "episodes": int(episodes), "trials": self.trials, "envs_per_trial": self.envs_per_trial,
                     "network": self.network, "raster": {"envs": self.raster_envs, "window": self.raster_window}})

    def _whole_records(self) -> int:
        """Drops a last record cut short (a full disk, a killed process), which a resumed run would otherwise
        continue on the same line, spoiling its own first record too; returns the bytes left."""
        with open(self.path, "rb+") as f:
            end = whole = f.seek(0, os.SEEK_END)
            while whole > 0:  # back to the last newline, a chunk at a time (the log may be large)
                start = max(0, whole - 65536)
                f.seek(start)
                newline = f.read(whole - start).rfind(b"\n")
                if newline >= 0:
                    whole = start + newline + 1
                    break
                whole = start
            if whole < end:
                f.truncate(whole)
        return whole

    def on_metrics(self, metrics: RunMetrics) -> None:
        now = time.time()
        previous, elapsed = self.previous, None if self.previous_time is None else now - self.previous_time
        coagents = {}
        for name, m in metrics.coagents.items():
            before = previous.coagents.get(name) if previous is not None else None
            recent_rate = per_second = None
            if before is not None:
                ticks = m.ticks - before.ticks
                recent_rate = (m.executions - before.executions) / ticks if ticks > 0 else None
                per_second = (m.executions - before.executions) / elapsed if elapsed else None
            elif self.fresh:  # the run's first record: since its start (a run of a few seconds has one)
                recent_rate = m.execution_rate if m.ticks else None
                per_second = m.executions / metrics.seconds if metrics.seconds > 0 else None
            coagents[name] = {"executions": m.executions, "ticks": m.ticks, "updates": m.updates,
                              "execution_rate": m.execution_rate, "recent_execution_rate": _number(recent_rate),
                              "executions_per_second": _number(per_second),
                              "mean_ticks_between_executions": _number(m.mean_ticks_between_executions),
                              "last_update": _number(m.last_update), "param_norm": _number(m.param_norm)}
        target = metrics.episodes_target or self.episodes_target  # the engine forgets it once train returns
        eta = None
        if target and metrics.episodes_finished and metrics.seconds > 0:
            left = target * metrics.environments - metrics.episodes_finished
            eta = left / (metrics.episodes_finished / metrics.seconds)
        env_ticks = metrics.ticks_per_second * metrics.environments
        self._write({"kind": "metrics", "time": now, "elapsed": metrics.seconds, "tick": metrics.tick,
                     "ticks_per_second": _number(metrics.ticks_per_second), "env_ticks_per_second": _number(env_ticks),
                     "episodes_done": metrics.episodes_done, "episodes_finished": metrics.episodes_finished,
                     "episodes_total": target, "eta_seconds": _number(eta), "coagents": coagents,
                     "critic_last_update": _number(metrics.critic_last_update),
                     **({"clock": metrics.extra} if metrics.extra else {})})
        self._write_curve(metrics)
        self._write_raster(metrics)
        self.previous, self.previous_time = metrics, now

    def _write_curve(self, metrics: RunMetrics) -> None:
        mean, stderr, n = metrics.curve()
        complete = int(np.sum(n[:len(n)] >= metrics.environments)) if len(n) else 0
        complete = min(complete, metrics.episodes_done) if metrics.episodes_done else complete
        if complete <= self.curve_written:
            return
        k = slice(self.curve_written, complete)
        self._write({"kind": "curve", "episodes": list(range(self.curve_written + 1, complete + 1)),
                     "mean": [_number(v) for v in mean[k]], "stderr": [_number(v) for v in stderr[k]],
                     "n": [int(v) for v in n[k]]})
        self.curve_written = complete

    def _write_raster(self, metrics: RunMetrics) -> None:
        ticks = [t for t in metrics.raster if t > self.raster_written]
        if not ticks:
            return
        ticks = ticks[-self.raster_window:]
        start = ticks[0]
        ticks = [t for t in range(start, ticks[-1] + 1)]
        envs = self.raster_envs
        names = list(metrics.coagents)
        executed = {name: [] for name in names}
        for name in names:
            for env in envs:
                bits = []
                for t in ticks:
                    row = metrics.raster.get(t)
                    if row is None or env not in row["envs"] or name not in row:
                        bits.append("0")
                    else:
                        bits.append("1" if row[name][row["envs"].index(env)] else "0")
                executed[name].append("".join(bits))
        self._write({"kind": "raster", "tick_start": start, "ticks": len(ticks), "envs": envs, "executed": executed})
        self.raster_written = ticks[-1]

    def on_end(self, result: TrainResult) -> None:
        if self.engine is not None:
            self.on_metrics(self.engine.metrics())
        if result.finished:
            self.end("finished", None, {"episodes": int(result.returns.shape[-1]), "ticks": int(result.ticks),
                                        "seconds": _number(result.seconds)})

    def end(self, status: str, error: str | None, summary: dict | None = None) -> None:
        """The last record: "finished", "failed" (with ``error``) or "interrupted"."""
        if not self.ended:
            self._write({"kind": "end", "time": time.time(), "status": status, "error": error,
                         "summary": summary or {}})
            self.ended = True
