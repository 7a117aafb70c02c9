"""The engine contract: what every engine offers, whatever transport runs its ticks.

An engine runs a batch of ``trials x envs_per_trial`` environments of one network
(``tick`` defines the tick both engines run) and implements ``Engine``:

- ``train(episodes, progress=, observers=, stop=) -> TrainResult``: run until every
  environment has finished ``episodes`` episodes, or until ``stop()`` says so between
  ticks (the result then has ``finished=False`` and the run can go on: call ``train``
  again with the same ``episodes``, here or in a fresh engine after ``restore``);
- ``state() -> dict`` and ``restore(state)``: the whole run as plain arrays (msgpack-able,
  no pickle); a restored run continues bit for bit as if never stopped;
- ``metrics() -> RunMetrics``: per-coagent and per-run figures, cheap to ask for;
- ``close()``.

Observers (``Observer``) see each tick's feedback (only when they ask: on Ray the
feedback then travels to the driver), periodic metrics, and the end of the run.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

STATE_FORMAT = "distcoagent.run/1"


@dataclass
class TrainResult:
    """What a run produced.

    returns: ``[trial, env, episode]`` undiscounted episode returns (NaN for episodes not finished
        when a run stopped early: ``finished`` is then False).
    lengths: ``[trial, env, episode]`` environment steps per episode (an episode of L steps takes
        ``L * ticks_per_step`` atomic ticks).
    counters: per coagent, its ticks, executions, updates and episodes, summed over environments.
    params: per coagent, its parameters with a leading trial axis (``W`` is ``[trial, local
        state, output]``); with a shared critic, its weights under ``"critic"``.
    ticks: atomic ticks the run took (the batch's clock, not summed over environments).
    seconds: wall time of training; engine: the engine's name; extra: what an engine adds (Ray's
        placement and recoveries, free-running clocks).
    """

    returns: np.ndarray
    lengths: np.ndarray
    counters: dict[str, dict[str, int]]
    params: dict[str, dict[str, np.ndarray]]
    ticks: int
    seconds: float
    engine: str = "inprocess"
    extra: dict = field(default_factory=dict)
    finished: bool = True

    def __repr__(self) -> str:  # the arrays can hold millions of numbers
        return (f"TrainResult(engine={self.engine!r}, returns={self.returns.shape}, ticks={self.ticks}, "
                f"seconds={self.seconds:.3g}, finished={self.finished}, coagents={list(self.counters)})")

    @property
    def curve(self) -> np.ndarray:
        """Mean return per episode over trials and environments."""
        return self.returns.reshape(-1, self.returns.shape[-1]).mean(axis=0)


@dataclass
class TickEvent:
    """One tick of micro-batch ``batch``: its feedback, for environments ``rows`` of that micro-batch
    (all of them when ``rows`` is None; fewer once finished trials were dropped)."""

    batch: int
    tick: int
    feedback: object  # tick.Feedback
    rows: np.ndarray | None = None


@dataclass
class CoagentMetrics:
    """One coagent over the whole batch, since the engine was built."""

    executions: int
    ticks: int          # environment-ticks it was active for
    updates: int
    episodes: int
    intervals: int      # closed intervals between two executions in one episode
    interval_ticks: int  # their total length in atomic ticks
    last_update: float | None  # mean |TD error| (or update norm) of the rule's last update
    param_norm: float

    @property
    def execution_rate(self) -> float:
        """Executions per active environment-tick: beta's realised mean."""
        return self.executions / self.ticks if self.ticks else 0.0

    @property
    def mean_ticks_between_executions(self) -> float | None:
        return self.interval_ticks / self.intervals if self.intervals else None

    def to_dict(self) -> dict:
        return {**self.__dict__, "execution_rate": self.execution_rate,
                "mean_ticks_between_executions": self.mean_ticks_between_executions}


@dataclass
class RunMetrics:
    """The run so far: its clock, episodes, learning curve sums and every coagent's figures."""

    tick: int
    seconds: float               # wall time spent in train() so far
    ticks_per_second: float
    environments: int
    episodes_target: int | None
    episodes_done: int           # episodes every environment has finished
    episodes_finished: int       # all environments' finished episodes
    curve_n: np.ndarray          # per episode index: environments that finished it,
    curve_sum: np.ndarray        # the sum of their returns,
    curve_sum_sq: np.ndarray     # and of their squares
    coagents: dict[str, CoagentMetrics]
    critic_last_update: float | None = None
    raster: dict[int, dict] = field(default_factory=dict)  # tick -> {"envs": [...], coagent: [bits]}
    extra: dict = field(default_factory=dict)  # what a mode adds (the free-running clock's counters)

    def curve(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(mean, standard error, n) per episode index over the environments that finished it."""
        n = np.maximum(self.curve_n, 1)
        mean = self.curve_sum / n
        var = np.maximum(self.curve_sum_sq / n - mean ** 2, 0.0) * n / np.maximum(n - 1, 1)
        return mean, np.sqrt(var / n), self.curve_n


def combine_metrics(env_parts: Sequence[dict], coagent_parts: Sequence[dict], *, seconds: float,
                    episodes_target: int | None, order: Sequence[str]) -> RunMetrics:
    """RunMetrics from the sides' ``metrics()`` (one env part per micro-batch, coagent parts that
    together cover every coagent of every micro-batch)."""
    tick = max((p["tick"] for p in env_parts), default=0)
    longest = max((len(p["curve"]["n"]) for p in env_parts if p["curve"] is not None), default=0)
    sums = {k: np.zeros(longest) for k in ("n", "sum", "sum_sq")}
    for p in env_parts:
        if p["curve"] is not None:
            for k in sums:
                sums[k][:len(p["curve"][k])] += p["curve"][k]
    totals: dict[str, dict] = {}
    for part in coagent_parts:
        for name, m in part.items():
            if name is None:
                continue
            t = totals.setdefault(name, {"executions": 0, "ticks": 0, "updates": 0, "episodes": 0, "intervals": 0,
                                         "interval_ticks": 0, "param_norm_sq": 0.0, "last_update": []})
            for k in ("executions", "ticks", "updates", "episodes", "intervals", "interval_ticks", "param_norm_sq"):
                t[k] += m[k]
            if m["last_update"] is not None:
                t["last_update"].append(m["last_update"])
    coagents = {name: CoagentMetrics(
        t["executions"], t["ticks"], t["updates"], t["episodes"], t["intervals"], t["interval_ticks"],
        float(np.mean(t["last_update"])) if t["last_update"] else None, float(np.sqrt(t["param_norm_sq"])))
        for name, t in ((n, totals[n]) for n in order if n in totals)}
    critic = [p["critic_last_update"] for p in env_parts if p.get("critic_last_update") is not None]
    return RunMetrics(tick, seconds, tick / seconds if seconds > 0 else 0.0, sum(p["batch"] for p in env_parts),
                      episodes_target, min((p["episodes_done"] for p in env_parts), default=0),
                      sum(p["episodes_finished"] for p in env_parts), sums["n"].astype(np.int64), sums["sum"],
                      sums["sum_sq"], coagents, float(np.mean(critic)) if critic else None,
                      merge_rasters([part.get(None) or {} for part in coagent_parts]))


def merge_rasters(parts: Sequence[dict[int, dict]]) -> dict[int, dict]:
    """One raster from the parts' (``Raster.snapshot``): per tick, every sampled environment any part
    holds (micro-batches hold different ones, coagent groups the same ones), each with every coagent's bit.

    >>> merge_rasters([{3: {"envs": [0], "a": [True]}}, {3: {"envs": [5], "a": [False]}}, {3: {"envs": [0], "b": [True]}}])
    {3: {'envs': [0, 5], 'a': [True, False], 'b': [True, False]}}
    """
    cells: dict[int, dict[int, dict[str, bool]]] = {}
    for part in parts:
        for tick, row in part.items():
            at_tick = cells.setdefault(tick, {})
            for i, env in enumerate(row["envs"]):
                bits = at_tick.setdefault(env, {})
                bits.update((name, values[i]) for name, values in row.items() if name != "envs")
    merged = {}
    for tick in sorted(cells):
        by_env = cells[tick]
        envs = sorted(by_env)
        names = list(dict.fromkeys(name for env in envs for name in by_env[env]))
        merged[tick] = {"envs": envs, **{name: [by_env[env].get(name, False) for env in envs] for name in names}}
    return merged


class Observer:
    """Hooks an engine calls during ``train``; override what you need.

    ``wants_ticks``: set True to get ``on_tick`` (costs a copy of the feedback per tick on Ray).
    ``metrics_every``: seconds between ``on_metrics`` calls (None: never).
    """

    wants_ticks = False
    metrics_every: float | None = None

    def on_start(self, engine: "Engine", episodes: int) -> None:
        pass

    def on_tick(self, event: TickEvent) -> None:
        pass

    def on_metrics(self, metrics: RunMetrics) -> None:
        pass

    def on_end(self, result: TrainResult) -> None:
        pass


class Engine(abc.ABC):
    """The contract both engines implement; see the module docstring."""

    name: str
    tick_count: int

    @abc.abstractmethod
    def train(self, episodes: int, progress: Callable[[int], None] | None = None,
              observers: Sequence[Observer] = (), stop: Callable[[], bool] | None = None) -> TrainResult:
        """Run (or continue) a run of ``episodes`` episodes per environment."""

    @abc.abstractmethod
    def state(self) -> dict:
        """The whole run: parameters, rule state, critic, episode book, environments, clocks, counters."""

    @abc.abstractmethod
    def restore(self, state: dict) -> None:
        """Put a ``state()`` (of an engine built with the same network, env, trials, seed) back."""

    @abc.abstractmethod
    def metrics(self) -> RunMetrics:
        """Per-coagent and per-run figures now."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release environments and workers."""

    def _state_of(self, batches: list) -> dict:
        """A run state: this engine's run around each micro-batch's ``{"env": ..., "coagents": ...}``."""
        return {"format": STATE_FORMAT, "engine": self.name, "tick": self.tick_count, "episodes": self.episodes,
                "seconds": self.seconds, "trials": self.trials, "envs_per_trial": self.envs_per_trial,
                "seed": self.seed, "slices": [list(s) for s in self.slices], "batches": batches}

    def _restored(self, state: dict) -> None:
        """The run's clock, time and target from a restored ``state``."""
        self.tick_count, self.seconds = int(state["tick"]), float(state["seconds"])
        self.episodes = None if state["episodes"] is None else int(state["episodes"])

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def check_run_arguments(progress, observers, stop) -> list:
    """``train``'s callbacks: ``progress`` and ``stop`` callables or None, ``observers`` a sequence of
    ``Observer``; a SpecError naming the argument otherwise (before any tick).  Returns the observers."""
    from .checks import is_number
    from .network import SpecError

    for name, value in (("progress", progress), ("stop", stop)):
        if value is not None and not callable(value):
            raise SpecError(f"{name}: expected a function (or None), got {type(value).__name__}")
    if observers is None or isinstance(observers, (str, bytes, Observer)) or not hasattr(observers, "__iter__"):
        raise SpecError(f"observers: expected a list of Observer objects (distcoagent.contract.Observer), got "
                        f"{type(observers).__name__}")
    observers = list(observers)
    for i, o in enumerate(observers):
        if not isinstance(o, Observer):
            raise SpecError(f"observers[{i}]: expected an Observer (subclass distcoagent.contract.Observer), got "
                            f"{type(o).__name__}")
        every = o.metrics_every
        if every is not None and (not is_number(every) or not np.isfinite(every) or every < 0):
            raise SpecError(f"observers[{i}].metrics_every: expected seconds >= 0 (or None), got {every!r}")
    return observers


class MetricsClock:
    """Calls observers' ``on_metrics`` when their period has passed (engines share this)."""

    def __init__(self, observers: Sequence[Observer], now: Callable[[], float]):
        self.observers = [o for o in observers if o.metrics_every is not None]
        self.now = now
        self.next = {id(o): now() + o.metrics_every for o in self.observers}

    def tell(self, metrics: Callable[[], "RunMetrics"]) -> None:
        """Give the observers whose period has passed the run's ``metrics()`` (asked for once)."""
        due = self.due()
        if due:
            now = metrics()
            for o in due:
                o.on_metrics(now)

    def due(self) -> list[Observer]:
        if not self.observers:
            return []
        t = self.now()
        due = [o for o in self.observers if t >= self.next[id(o)]]
        for o in due:
            self.next[id(o)] = t + o.metrics_every
        return due
