"""The free-running engine: one Ray actor per coagent (group), each on its own clock; no tick barrier.

``FreeRunningEngine`` places its actors exactly as ``RayEngine`` does (the same groups,
resources, placement groups, replicas and names: ``coagent:NAME[/r]``, ``env:K``), but
runs ``freerun.FreeCoagent`` and ``freerun.FreeEnvironment`` in them instead of a tick
graph.  Each actor runs its own loop in a thread (a threaded actor); a coagent actor
reads its micro-batches' boards and publishes to them by plain actor calls
(``BoardProxy``), which carry the arrays through Ray's object store.

The driver only watches: every ``poll`` seconds it drains the sealed steps' records
from the environment actors (appending them to the run's ``executions.msgpack``),
reports progress and metrics, takes a snapshot every ``snapshot_every`` seconds, and
notices a dead actor.  A snapshot (``state``) is the protocol of ``freerun``: pause
every environment between two steps, let every coagent catch up with the last step
posted, gather both sides' states (an ordinary run state, which the in-process engine
also takes), resume.  A lost actor is replaced: every actor is started afresh from the
last snapshot (the record is told to forget what came after it) and the run goes on.
"""
from __future__ import annotations

import time
from collections import deque
from typing import Callable, Sequence


from ..contract import Observer, RunMetrics, TrainResult, check_run_arguments, combine_metrics
from ..engine import check_state
from ..freerun import FreeCoagent, FreeEnvironment, check_free_options, warm_up
from ..network import SpecError
from ..replay import ExecutionLog
from ..tick import CoagentSide
from .engine import ActorLost, RayEngine, log, owned


class BoardProxy:
    """A micro-batch's board as a coagent actor sees it: calls to the environment actor.  What comes
    back is copied into writable arrays: Ray's are read-only, and the compiled kernels would compile
    again for read-only arguments in the middle of a run."""

    def __init__(self, actor):
        self.actor = actor

    def read(self, group: int, after: int, wait: float):
        import ray

        return owned(ray.get(self.actor.read.remote(group, after, wait)))

    def publish(self, group: int, tick: int, outputs, executed, seen=None, versions=None) -> bool:
        import ray

        return ray.get(self.actor.publish.remote(group, tick, outputs, executed, seen, versions))

    def publish_and_read(self, group: int, tick: int, outputs, executed, seen, versions, after: int, wait: float):
        import ray

        return owned(ray.get(self.actor.publish_and_read.remote(group, tick, outputs, executed, seen, versions,
                                                                after, wait)))


class FreeRunningEngine(RayEngine):
    """The engine contract with no global tick barrier (see the module and ``freerun`` docstrings).

    env_rate: environment steps per second (None: as fast as it can).
    coagents: {coagent: {"delay": seconds added to each time round its loop, "rate": at most
        that many times round per second}} (a slow or rate-limited unit; a group of packed
        coagents takes the largest delay and the smallest rate of its members).
    record: path of the execution record (``replay``), or None.
    record_envs: global indices of the environments whose inputs and outputs the record keeps
        (default: the raster's, else environment 0).
    poll: seconds between the driver's looks at the actors.
    Every other keyword is ``RayEngine``'s (placement, replicas, snapshot_every, max_recoveries...).
    """

    name = "ray-free"

    def __init__(self, network, env_id: str, env_kwargs: dict | None = None, *, env_rate: float | None = None,
                 coagents: dict | None = None, record=None, record_envs=None, poll: float = 0.1, **options):
        self.env_rate, self.coagent_options = check_free_options(network, env_rate, coagents, options.get("timeout"))
        raster = options.get("raster")
        self.record_envs = tuple(record_envs if record_envs is not None else
                                 (raster.env_ids if raster is not None else (0,)))
        self.log = ExecutionLog(record) if record is not None else None
        self.poll = float(poll)
        self._loops: list = []
        self.free_counters: dict = {}
        self.steps = 0
        warm_up()  # compiled here once, every actor loads the kernels from numba's cache
        super().__init__(network, env_id, env_kwargs, **options)

    # ------------------------------------------------------------------ construction (RayEngine's placement)
    def _group_clock(self, names) -> tuple[float, float | None]:
        delays = [self.coagent_options.get(n, {}).get("delay", 0.0) for n in names]
        rates = [r for r in (self.coagent_options.get(n, {}).get("rate") for n in names) if r]
        return max(delays), (min(rates) if rates else None)

    def _coagent_actor(self, options: dict, g: int, names, plan: dict, shard: list):
        import ray

        delay, rate = self._group_clock(names)
        return ray.remote(FreeCoagent).options(max_concurrency=4, **options).remote(
            self.network, list(names), self.observation_space, self.action_space, shard, self.envs_per_trial,
            self.seed, g, None, delay, rate, self.raster, self.record_envs,
            (self.run_name or self.run_id) if self.export_metrics else None)

    def _env_actor(self, options: dict, k: int, trial_start: int, trial_stop: int):
        import ray

        return ray.remote(FreeEnvironment).options(max_concurrency=len(self.groups) + 6, **options).remote(
            k, self.network, self.env_id, self.env_kwargs, self.seed, trial_start, trial_stop, self.envs_per_trial,
            self.groups, self.env_rate, self.record_envs,
            (self.run_name or self.run_id) if self.export_metrics else None)

    def _ready(self, actor):
        return actor.ready.remote()  # no compiled graph

    def _graph(self, level, cur, prev, group_of):
        """No graph: each coagent actor gets its micro-batches' boards."""
        import ray

        self.depth = 1 + max(level.values())
        G, R = len(self.groups), self.replicas
        calls = []
        for r in range(R):
            boards = [BoardProxy(self.env_actors[k]) for k in range(len(self.slices)) if self.replica_of[k] == r]
            calls += [self.actors[r * G + g].connect.remote(boards) for g in range(G)]
        ray.get(calls)

    def _owner(self, k: int):
        """The coagent actors of micro-batch k, and k's index in each."""
        G = len(self.groups)
        r = self.replica_of[k]
        return self.actors[r * G:(r + 1) * G], self.local_index[k]

    # ------------------------------------------------------------------ running
    def train(self, episodes: int, progress: Callable[[int], None] | None = None,
              observers: Sequence[Observer] = (), stop: Callable[[], bool] | None = None) -> TrainResult:
        """Run until every environment has finished ``episodes`` episodes (or ``stop()`` is true)."""
        import ray

        observers = check_run_arguments(progress, observers, stop)
        if any(o.wants_ticks for o in observers):
            raise SpecError("observers: the free-running mode has no ticks to report one by one; use "
                            "metrics (on_metrics) or the execution record")
        clock = self._open(episodes, observers,
                           lambda: ray.get([e.begin.remote(int(episodes), self.tick_count) for e in self.env_actors]))
        done_before = self._done_reported
        with self._accounting():
            if self._snapshot is None or self._snapshot["tick"] != self.tick_count:
                self._snapshot = self._gather()
            self._start_loops()
            last_snapshot = time.monotonic()
            while True:
                try:
                    with self._watch():
                        finished = self._poll()
                        done = self._done_reported
                        if progress is not None and done > done_before:
                            progress(done - done_before)
                            done_before = done
                        if finished:
                            break
                        clock.tell(self.metrics)
                        if stop is not None and stop():
                            self._snapshot = self._gather(resume=False)
                            self._stop_loops()
                            break
                        if time.monotonic() - last_snapshot >= self.snapshot_every:
                            self._snapshot, last_snapshot = self._gather(), time.monotonic()
                    time.sleep(self.poll)
                except ActorLost as lost:
                    self._recover(lost, {"pending": deque()})
                    self._start_loops()
                    last_snapshot = time.monotonic()
        return self._finish(observers)

    def _start_loops(self) -> None:
        self._loops = [a.run.remote() for a in self.env_actors] + [a.run.remote() for a in self.actors]

    def _stop_loops(self) -> None:
        import ray

        ray.get([a.stop.remote() for a in self.env_actors + self.actors])
        ray.get(self._loops, timeout=self.timeout)
        self._loops = []

    def _poll(self) -> bool:
        """Drain the records, look for dead or failed loops; True once every loop has finished."""
        import ray

        ready, _ = ray.wait(self._loops, num_returns=len(self._loops), timeout=0)
        for ref in ready:
            self._get(ref)  # raises what the loop raised (a lost actor, a non-finite reward...)
        self._drain()
        return len(ready) == len(self._loops)

    def _drain(self) -> None:
        import ray

        parts = ray.get([e.drain.remote() for e in self.env_actors], timeout=self.timeout)
        if self.log is not None:
            self.log.append([r for p in parts for r in p["records"]])
        self.tick_count = max(p["tick"] for p in parts)
        self._done_reported = max(self._done_reported, min(p["episodes_done"] for p in parts))
        self.steps = sum(p["steps"] for p in parts)
        totals: dict = {}
        for p in parts:
            for name, c in p["counters"].items():
                t = totals.setdefault(name, {k: 0 for k in c})
                for key, value in c.items():
                    t[key] += value
        self.free_counters = totals

    # ------------------------------------------------------------------ state: the snapshot protocol
    def _gather(self, resume: bool = True) -> dict:
        """Pause every environment between steps, let the coagents catch up, take both sides' states."""
        import ray

        sequences = ray.get([e.pause.remote(self.timeout) for e in self.env_actors], timeout=self.timeout)
        try:
            batches = []
            envs = ray.get([e.state.remote() for e in self.env_actors], timeout=self.timeout)
            for k, env_state in enumerate(envs):
                actors, local = self._owner(k)
                parts = ray.get([a.state.remote(local, sequences[k], self.timeout) for a in actors],
                                timeout=self.timeout)
                batches.append({"env": env_state, "coagents": CoagentSide.merged(parts)})
            self._drain()  # the record holds every step up to the snapshot
        finally:
            if resume:
                ray.get([e.resume.remote() for e in self.env_actors])
        return self._state_of(batches)

    def state(self) -> dict:
        """The whole run at a consistent cut (see the module docstring)."""
        return self._gather()

    def restore(self, state: dict) -> None:
        """Put a run's state back into the actors (the record forgets steps after it)."""
        import ray

        check_state(state, self)
        calls = []
        for k, (part, env) in enumerate(zip(state["batches"], self.env_actors)):
            units = part["coagents"]["coagents"]
            calls.append(env.restore.remote(part["env"], {n: units[n]["output"] for n in self.network.order}))
            actors, local = self._owner(k)
            calls += [a.restore.remote(local, part["coagents"]) for a in actors]
            if self.log is not None:
                self.log.mark_restore(k, int(part["env"]["tick"]))
        ray.get(calls)
        self._restored(state)

    # ------------------------------------------------------------------ results and metrics
    def _result(self) -> TrainResult:
        import ray

        envs = ray.get([e.result.remote() for e in self.env_actors])
        sides = ray.get([a.result.remote() for a in self.actors])
        per_batch = []
        for k in range(len(self.slices)):
            actors, local = self._owner(k)
            merged = {}
            for a in actors:
                merged.update(sides[self.actors.index(a)][local])
            per_batch.append(merged)
        extra = {"clock": "free", "env_rate": self.env_rate, "coagents": self.coagent_options,
                 "groups": [list(g) for g in self.groups], "replicas": self.replicas,
                 "micro_batches": len(self.slices), "placement": self.placement, "namespace": self.namespace,
                 "free_counters": self.free_counters, "steps": self.steps, "recoveries": self.recoveries,
                 "loops": self._clocks()}
        return self._assemble(envs, per_batch, extra)

    def metrics(self) -> RunMetrics:
        """Figures now (the actors answer between their own steps; nothing pauses)."""
        import ray

        envs = ray.get([e.metrics.remote() for e in self.env_actors], timeout=self.timeout)
        coagents = [p for parts in ray.get([a.metrics.remote() for a in self.actors], timeout=self.timeout)
                    for p in parts]
        seconds = self.seconds + (time.perf_counter() - self._started if self._started is not None else 0.0)
        metrics = combine_metrics(envs, coagents, seconds=seconds, episodes_target=self.episodes,
                                  order=self.network.order)
        metrics.extra = {"clock": "free", "env_steps": self.steps, "coagents": self.free_counters,
                         "loops": self._clocks()}
        return metrics

    def _clocks(self) -> list[dict]:
        """Each coagent actor's loop: times round and loops per second."""
        import ray

        return ray.get([a.clock.remote() for a in self.actors], timeout=self.timeout)

    def _recover(self, lost, state) -> None:
        log.warning("free-running: an actor was lost; every actor restarts from the snapshot of atomic tick %d",
                    self._snapshot["tick"])
        super()._recover(lost, state)
