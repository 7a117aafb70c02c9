"""The trial-sharded layout of the Ray engine: one actor per micro-batch, running the whole network.

``RayEngine`` gives each coagent (group) an actor of its own and moves every tick's outputs
between them: the coagents run apart, as the paper's asynchronous network would, and pay a
round of hand-overs per tick.  Trials share nothing, though, so a study of many trials can
also be cut the other way: ``ShardedEngine`` gives each micro-batch (a contiguous range of
trials) one actor, ``shard:K``, which runs the in-process engine over its trials, in compiled
blocks of ticks (``blocks``) on its own threads, and sends nothing between ticks.  A study
then runs at the in-process engine's speed on every node of a cluster.

The driver moves the shards in lockstep, a *chunk* of ticks at a time: each is asked to run
up to the same tick (``InProcessEngine.tick_limit``), so that between chunks their states
together are one run's state at that tick, exactly the in-process engine's with the same
micro-batches (randomness is keyed by environment and tick, see ``rng``).  Between chunks it
reports progress, gives observers their metrics (and the ticks the shards collected, for an
observer that wants every tick: the shards then run tick by tick), takes a snapshot every
``snapshot_every`` seconds, and honours ``stop``.  A chunk lasts about ``CHUNK_SECONDS``
(no longer than the shortest ``metrics_every``).  A lost actor is replaced as in
``RayEngine``: every shard starts afresh from the last snapshot, and the run is the same.
"""
from __future__ import annotations

import math
import time
from collections import deque
from typing import Callable, Sequence

import numpy as np

from ..contract import (Observer, RunMetrics, TickEvent, TrainResult, check_run_arguments, combine_metrics)
from ..engine import InProcessEngine, check_counts, check_network, check_state, trial_slices
from ..network import Network, SpecError
from ..tick import Feedback
from .actors import where
from .engine import RAY_TIMEOUT, RayEngine
from .placement import PlacementError

CHUNK_SECONDS = 0.5  # a chunk of ticks lasts about this long (progress, metrics, stops come between chunks)


class _Ticks(Observer):
    """Collects a shard's ticks for the driver's observers that want every tick."""

    wants_ticks = True

    def __init__(self):
        self.events: list[TickEvent] = []

    def on_tick(self, event: TickEvent) -> None:
        f = event.feedback
        self.events.append(TickEvent(event.batch, event.tick, Feedback(np.array(f.reward), np.array(f.ended),
                                                                       np.array(f.active)),
                                     None if event.rows is None else np.array(event.rows)))


class ShardWorker:
    """Trials ``trial_start..trial_stop - 1`` of the run: the in-process engine over them (one micro-batch)."""

    def __init__(self, index: int, network, env_id: str, env_kwargs: dict, seed: int, trial_start: int,
                 trial_stop: int, envs_per_trial: int, threads: int, raster, export_run: str | None = None):
        from .. import blocks

        self.index = index
        self.engine = InProcessEngine(network, env_id, env_kwargs, trials=trial_stop - trial_start,
                                      envs_per_trial=envs_per_trial, seed=seed, first_trial=trial_start,
                                      raster=raster, threads=threads)
        env, side = self.engine.env_sides[0], self.engine.coagent_sides[0]
        env.load_kernels()  # here, while the other actors start, rather than in the first chunk
        side.load_kernels()
        if self.engine._tick_blocks() is not None:
            blocks.warm_up()
        self.exporters = None
        if export_run is not None:  # Ray's metrics (imports Ray, inside the actor only)
            from .exporter import CoagentExporter, RunExporter

            self.exporters = (CoagentExporter(export_run), RunExporter(export_run))

    def ready(self, compiled: bool = False) -> dict:
        return where(compiled)

    def begin(self, episodes: int, tick: int) -> None:
        """A new run of ``episodes`` episodes, every clock aligned to the run's ``tick``."""
        self.engine.tick_count = tick
        self.engine._begin(episodes)

    def run(self, episodes: int, until: int, ticks: bool) -> dict:
        """Run up to atomic tick ``until`` (or to the end of its trials); ``ticks``: collect every tick."""
        engine = self.engine
        collector = _Ticks() if ticks else None
        if engine.episodes is not None and engine.tick_count < until:
            engine.tick_limit = until
            try:
                engine.train(episodes, observers=[collector] if collector else ())
            finally:
                engine.tick_limit = None
        self._export()
        env = engine.env_sides[0]
        return {"tick": engine.tick_count, "finished": env.phase == "done",
                "episodes_done": int(env.book.count.min()) if env.book is not None else 0,
                "events": [] if collector is None else collector.events}

    def state(self) -> dict:
        return self.engine.state()

    def restore(self, state: dict) -> None:
        self.engine.restore(state)

    def metrics(self) -> tuple[dict, dict]:
        """The micro-batch's figures: its environment side's and its coagents'."""
        engine = self.engine
        engine._expand(engine._cuts)
        return engine.env_sides[0].metrics(), engine.coagent_sides[0].metrics()

    def result(self) -> tuple[dict, dict]:
        """The micro-batch's results as the default layout's workers give them (``EnvironmentSide.result``,
        ``CoagentSide.result``), for ``RayEngine._assemble``."""
        engine = self.engine
        engine._expand(engine._cuts)
        self._export(force=True)
        return engine.env_sides[0].result(), engine.coagent_sides[0].result()

    def _export(self, force: bool = False) -> None:
        """Ray's metrics of this shard's coagents and run (at most once a second unless ``force``)."""
        if self.exporters is not None:
            self.exporters[0].maybe_export(self.engine.coagent_sides, force=force)
            self.exporters[1].maybe_export(self.engine.env_sides[0], force=force)


class ShardedEngine(RayEngine):
    """The engine contract on Ray, one actor per micro-batch running the whole network (see the module).

    micro_batches: the shards (actors), each a contiguous range of trials.
    threads_per_actor: threads each shard runs its blocks on (default: its CPUs, at least one).
    cpus_per_actor: CPUs each shard reserves (default: the most whole CPUs with which every shard finds
        a node, so that the shards spread over the cluster; with fewer CPUs than shards, a share).
    placement: None, or a placement-group strategy ("PACK", "SPREAD", ...), a bundle per shard.
    shard_resources: custom resources every shard asks for (to keep the run on some nodes).
    address, connect_timeout, ready_timeout, timeout, raster, max_recoveries, snapshot_every,
    export_metrics, run_name: as ``RayEngine``'s.
    """

    name = "ray-sharded"

    def __init__(self, network: Network, env_id: str, env_kwargs: dict | None = None, *, trials: int = 1,
                 envs_per_trial: int = 1, seed: int = 0, micro_batches: int = 1, address: str | None = None,
                 threads_per_actor: int | None = None, cpus_per_actor: float | None = None,
                 placement: str | None = None, shard_resources: dict[str, float] | None = None,
                 connect_timeout: float = 3.0, ready_timeout: float = 60.0, timeout: float = RAY_TIMEOUT,
                 raster=None, max_recoveries: int = 3, snapshot_every: float = 30.0, export_metrics: bool = True,
                 run_name: str | None = None):
        check_network(network, env_id, env_kwargs)
        check_counts(trials, envs_per_trial)
        from ..spec import _check_ray, as_lists

        given = {"layout": "trials", "threads_per_actor": threads_per_actor, "cpus_per_actor": cpus_per_actor,
                 "placement": placement, "shard_resources": shard_resources, "connect_timeout": connect_timeout,
                 "ready_timeout": ready_timeout, "timeout": timeout, "max_recoveries": max_recoveries,
                 "snapshot_every": snapshot_every}
        try:  # as a spec's [ray] table with layout = "trials"
            _check_ray({k: as_lists(v) for k, v in given.items() if v is not None}, "")
        except SpecError as error:
            raise PlacementError(str(error)) from None
        self.network, self.env_id, self.env_kwargs = network, env_id, dict(env_kwargs or {})
        self.trials, self.envs_per_trial, self.seed = int(trials), int(envs_per_trial), seed
        self.slices = trial_slices(self.trials, micro_batches)
        self.threads = threads_per_actor
        self.timeout, self.ready_timeout, self.raster = timeout, ready_timeout, raster
        InProcessEngine(network, env_id, dict(env_kwargs or {}), trials=1, envs_per_trial=self.envs_per_trial,
                        seed=seed, threads=1).close()  # spec errors here, before any Ray work
        self._start((cpus_per_actor, placement, dict(shard_resources or {})), address, connect_timeout,
                    max_recoveries, snapshot_every, export_metrics, run_name)

    # ------------------------------------------------------------------ construction
    @staticmethod
    def _default_cpus(nodes: list[float], n_actors: int) -> float:
        """CPUs per shard when none are asked (``nodes``: each node's CPUs): the most whole CPUs with which
        every shard still finds a node (so shards spread over the cluster, each on CPUs of its own); with
        fewer CPUs than shards, a share, so that all would fit on the smallest node."""
        whole = max((c for c in range(1, int(max(nodes, default=0.0)) + 1)
                     if sum(math.floor(n / c) for n in nodes) >= n_actors), default=0)
        return float(whole) if whole else math.floor(100 * min(nodes, default=0.0) / n_actors) / 100

    def _build(self, cpus_per_actor, placement, resources):
        import ray

        K = len(self.slices)
        labels = [f"shard actor {k} (trials {a}..{b - 1})" for k, (a, b) in enumerate(self.slices)]
        names = [f"shard:{k}" for k in range(K)]
        options = self._place(labels, [dict(resources) for _ in range(K)], names, cpus_per_actor, placement)
        threads = self.threads if self.threads is not None else max(1, int(self.cpus_per_actor))
        self.actor_threads = threads
        export = (self.run_name or self.run_id) if self.export_metrics else None
        self.actors = [ray.remote(ShardWorker).options(**options(k)).remote(
            k, self.network, self.env_id, self.env_kwargs, self.seed, a, b, self.envs_per_trial, threads,
            self.raster, export) for k, (a, b) in enumerate(self.slices)]
        self._await_ready(self.actors, labels, names)

    def _ready(self, actor):
        return actor.ready.remote()

    def _describe(self, actor_name: str) -> str:
        k = int(actor_name.split(":")[1])
        a, b = self.slices[k]
        return f"{actor_name} (trials {a}..{b - 1}: their coagents, environments, critic and episode book)"

    # ------------------------------------------------------------------ running
    def _call(self, method: str, *args) -> list:
        """Every shard's answer to ``method(*args)``, in shard order."""
        return self._get([getattr(a, method).remote(*args) for a in self.actors])

    def train(self, episodes: int, progress: Callable[[int], None] | None = None,
              observers: Sequence[Observer] = (), stop: Callable[[], bool] | None = None) -> TrainResult:
        """Run until every environment has finished ``episodes`` episodes (or ``stop()`` is true)."""
        observers = check_run_arguments(progress, observers, stop)
        tickers = [o for o in observers if o.wants_ticks]
        clock = self._open(episodes, observers, lambda: self._call("begin", int(episodes), self.tick_count))
        seconds = min([CHUNK_SECONDS] + [o.metrics_every for o in clock.observers])
        run = {"pending": deque(), "finished": False, "ticks": 1}  # nothing is ever in flight between chunks
        with self._accounting():
            self._loop(run, lambda: self._chunk(run, int(episodes), seconds, progress, tickers, clock, stop),
                       lambda: None)
        return self._finish(observers)

    def _chunk(self, run: dict, episodes: int, seconds: float, progress, tickers, clock, stop) -> bool:
        """Every shard runs up to the same tick, ``run["ticks"]`` on: about ``seconds`` of work (from one
        tick, at most fourfold each time).  True to stop."""
        started = time.perf_counter()
        ticks = run["ticks"]
        answers = self._call("run", episodes, self.tick_count + ticks, bool(tickers))
        spent = time.perf_counter() - started
        run["ticks"] = max(1, min(4 * ticks, int(ticks * seconds / max(spent, 1e-9))))
        self.tick_count = max(a["tick"] for a in answers)
        if tickers:
            events = sorted(((e.tick, k, e) for k, a in enumerate(answers) for e in a["events"]),
                            key=lambda item: item[:2])
            for _, k, e in events:
                event = TickEvent(k, e.tick, e.feedback, e.rows)
                for o in tickers:
                    o.on_tick(event)
        run["finished"] = all(a["finished"] for a in answers)
        done = min(a["episodes_done"] for a in answers)
        if progress is not None and done > self._done_reported:
            progress(done - self._done_reported)
        self._done_reported = max(done, self._done_reported)
        clock.tell(self.metrics)
        return stop is not None and stop()

    # ------------------------------------------------------------------ results, state, metrics
    def _result(self) -> TrainResult:
        parts = self._call("result")
        extra = {"layout": "trials", "micro_batches": len(self.slices), "cpus_per_actor": self.cpus_per_actor,
                 "threads": self.actor_threads, "placement": self.placement, "namespace": self.namespace}
        return self._assemble([env for env, _ in parts], [coagents for _, coagents in parts], extra)

    def state(self) -> dict:
        """The whole run: the shards' states (each one micro-batch's), as one engine's."""
        return self._state_of([part for s in self._call("state") for part in s["batches"]])

    def restore(self, state: dict) -> None:
        """Each shard gets its micro-batch of a run's state."""
        check_state(state, self)
        parts = []
        for (a, b), batch in zip(self.slices, state["batches"]):
            parts.append({**state, "trials": b - a, "slices": [[a, b]], "batches": [batch]})
        self._get([actor.restore.remote(part) for actor, part in zip(self.actors, parts)])
        self._restored(state)

    def metrics(self) -> RunMetrics:
        parts = self._call("metrics")
        seconds = self.seconds + (time.perf_counter() - self._started if self._started is not None else 0.0)
        return combine_metrics([env for env, _ in parts], [coagents for _, coagents in parts], seconds=seconds,
                               episodes_target=self.episodes, order=self.network.order)
