"""The distributed engine: coagent actors and environment actors on Ray, a compiled graph of ticks.

Ray stays at the edge: the actors are the plain ``actors.CoagentWorker`` and
``actors.EnvironmentWorker``, which hold the core's two sides of a tick (``tick``)
unchanged, made remote here and named after what they hold (``coagent:NAME``,
``env:K``; ``ray list actors`` shows them).  One stage of the tick graph runs one
atomic tick of every micro-batch, and the graph chains ``ticks_per_execution`` stages,
so one execution runs up to that many ticks (``RayEngine``, "Ticks per execution")::

    command -> env_k.start -> [coagent.begin] -> coagent.act level 0 -> ... -> level L -> env_k.step
            -> env_k.start (next stage) -> ... -> env_k.step (last stage) -> the driver

The same graph carries the contract's control requests (``contract``): the whole
run's state is gathered (``state``) and put back (``restore``) through it, and so are
``metrics``, so no storage is shared between the driver and the actors.

Every message carries a whole micro-batch (numpy arrays over its environments).
The default transport is a Ray Compiled Graph (``ray.dag``, ``experimental_compile``):
shared-memory channels instead of task submissions, about 0.1-0.2 ms per round trip
against about 1 ms for an actor call here.  ``transport="actors"`` submits the same
graph as ordinary actor calls (task events off, no ``ray.put``); it is the fallback
where compiled graphs are unavailable.  The graph is compiled once per engine and
torn down only in ``close`` (Ray 2.60's plain teardown can hang on multi-actor graphs,
so ``close`` kills the actors).  Waiting compiled-graph readers spin (``sched_yield``),
so on a machine with fewer cores than actors, packing coagents (``coagents_per_actor``)
is often faster.

Environments are built inside the environment actors: an environment registered at
run time in the driver must be importable there (gymnasium's "module:EnvId" form).

Pipelining and update order.  Micro-batch k has its own environment actor; each
coagent actor handles micro-batches in a fixed order per execution (level, then k),
and up to ``max_inflight`` executions are in flight, so while one actor works on
micro-batch 0 the next level's actor works on micro-batch 1, and environment k can
start tick t+1 while the others still finish tick t.  This cannot change results:
randomness is keyed by (coagent, global environment, tick) (``rng``), micro-batches
hold disjoint trials, and trials never share parameters.  All the environments of a
trial (``envs_per_trial``) are always in the same micro-batch, so the updates of
parameters they share are applied by one unit, within one ``act``/``observe`` call,
summed over the trial's environments in index order (``rules._group_sum``): the same
order as the in-process engine with any ``micro_batches``.  Hence same spec and seed
give bit-identical parameters and returns on both engines.

Actor CPUs.  By default each actor asks for ``min(1, CPUs of the smallest node / actors)``
CPUs (``cpus_per_actor`` overrides, 0 allowed): all the actors fit even on one node, so
a 2-core machine hosts the 4 actors of the paper's network (3 coagents, 1 environment)
at 0.5 CPU each, and custom resources that pin several actors to one node cannot leave
them waiting for CPUs that never free up.  The reservation only steers Ray's scheduler;
an actor uses whatever CPU time it needs.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
import uuid
from collections import deque
from typing import Callable, Sequence

import numpy as np

from ..coagent import NonFiniteError
from ..contract import (Engine, MetricsClock, Observer, RunMetrics, TickEvent, TrainResult, check_run_arguments,
                        combine_metrics)
from ..engine import check_counts, check_episodes, check_network, check_state, result_from_state, trial_slices
from ..envs import make_batch
from ..freerun import RAY_TIMEOUT
from ..network import Network, SpecError
from .actors import Command, CoagentWorker, EnvironmentWorker
from .cluster import module_runtime_env, shutdown_ray
from .placement import (STRATEGIES, PlacementError, _fmt, check_resources, coagent_groups, connect, levels,
                        resource_requests, used_sources)

TRANSPORTS = ("compiled", "actors")
EXECUTION_SECONDS = 0.25  # the driver sizes an execution (ticks) to take at most about this long
NAP_SECONDS = 0.02  # the driver sleeps through executions expected to take longer (shorter: a late wake-up costs more)


log = logging.getLogger("distcoagent")


class StallError(RuntimeError):
    """A tick took longer than the engine's timeout; the message names ``[ray] timeout`` and the actors."""


class RecoveryError(RuntimeError):
    """The run kept losing actors; the message says which and how often."""


class ActorLost(Exception):
    """An actor of the tick graph died (internal: ``train`` recovers from it)."""

    def __init__(self, error):
        super().__init__(str(error))
        self.error = error


def owned(value):
    """``value`` with every array copied (results of a compiled graph are views of its buffers)."""
    if isinstance(value, np.ndarray):
        return np.array(value)
    if isinstance(value, dict):
        return {k: owned(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(owned(v) for v in value)
    if hasattr(value, "__dataclass_fields__"):
        return type(value)(**{k: owned(getattr(value, k)) for k in value.__dataclass_fields__})
    return value


class RayEngine(Engine):
    """The engine contract (``contract.Engine``) on Ray, bit-identical to ``InProcessEngine``.

    address: None starts Ray in this process (or uses the one already initialised);
        "auto" or "HOST:PORT" joins a running cluster, failing within seconds if none answers.
    coagents_per_actor: pack runs of that many coagents (network order) into one actor.
    groups: explicit packing, a list of lists of coagent names (overrides coagents_per_actor).
    resources: {coagent: {resource: amount}} custom resources, e.g. {"a": {"node_a": 1}}.
    env_resources: custom resources for every environment actor.
    cpus_per_actor: CPUs each actor reserves (default: min(1, cluster CPUs / actors)).
    placement: None, or a placement-group strategy ("PACK", "SPREAD", "STRICT_PACK",
        "STRICT_SPREAD") with one bundle per actor.
    transport: "compiled" (Ray Compiled Graph) or "actors" (ordinary actor calls).
    max_inflight: graph executions in flight (default 2).
    ticks_per_execution: at most this many atomic ticks per graph execution (compiled transport; the
        graph holds that many copies of the tick, see below).
    connect_timeout: seconds to wait for a cluster at ``address`` to answer.
    ready_timeout: seconds to wait for the actors to start before failing with what is missing.
    timeout: seconds one tick may take before the run fails.
    raster: record which coagents executed when, for a few environments (``tick.RasterSpec``).
    max_recoveries: how many times a run may lose an actor (or a node) and go on; see below.
    snapshot_every: seconds between the in-memory snapshots of the run that recovery restores.
    export_metrics: the actors export per-coagent metrics through ``ray.util.metrics`` (tags
        ``coagent`` and ``run``), for Ray's dashboard, Prometheus and Grafana (``exporter``).
    run_name: the ``run`` tag of those metrics (default: a random ``run_id``).
    replicas: R copies of the coagent actors, each serving its own contiguous shard of the
        micro-batches (so of the trials): an independent-trials study grows with the cluster
        instead of being capped at one core per coagent.  Needs micro_batches >= R; results
        stay bit-identical for any R (shards share nothing).  Actors are named
        ``coagent:NAME/r`` and ``env:K`` then.
    replica_resources: custom resources per replica (a list of R dicts), asked by all of that
        replica's actors (coagents and environments): e.g. ``[{"node_a": 0.1}, {"node_b": 0.1}]``
        puts each replica on its own node.

    Fault recovery.  When an actor dies (killed, its process or node gone), the engine logs
    which coagents it held and at which tick, tears the graph down, starts fresh actors
    (wherever the cluster can place them), restores them from the last snapshot (taken at
    the start of the run and every ``snapshot_every`` seconds, through the graph) and goes
    on.  Replay is deterministic, so the finished run is bit-identical to one with no
    failure; only time is lost (observers' ``on_tick`` sees the replayed ticks again).
    A tick that takes longer than ``timeout`` fails the run naming ``[ray] timeout``.

    Ticks per execution.  The compiled graph holds ``ticks_per_execution`` copies of the tick
    (stages), each starting from the last one's step inside the environment actor, so one
    execution runs several ticks with one driver round trip, and no driver hop sits between two
    ticks.  The driver asks for as many ticks as take about ``EXECUTION_SECONDS`` (from 1,
    doubling; no longer than the shortest ``metrics_every`` of the observers, so metrics come as
    often as asked), so a slow tick still answers within ``timeout``; the stages it does not use
    pass (each costs a round of hops, about 1 ms on 2 cores, hence the default of 4).  It sleeps
    through most of an execution instead of spinning in ``ray.get`` (a waiting compiled-graph
    reader spins, taking a core from the actors).  Stops, metrics and snapshots come between
    executions.
    """

    name = "ray"

    def __init__(self, network: Network, env_id: str, env_kwargs: dict | None = None, *, trials: int = 1,
                 envs_per_trial: int = 1, seed: int = 0, micro_batches: int = 1, address: str | None = None,
                 coagents_per_actor: int = 1, groups: list[list[str]] | None = None,
                 resources: dict[str, dict[str, float]] | None = None,
                 env_resources: dict[str, float] | None = None, cpus_per_actor: float | None = None,
                 placement: str | None = None, transport: str = "compiled", max_inflight: int = 2,
                 connect_timeout: float = 3.0, ready_timeout: float = 60.0, timeout: float = RAY_TIMEOUT,
                 raster=None, max_recoveries: int = 3, snapshot_every: float = 30.0, export_metrics: bool = True,
                 run_name: str | None = None, replicas: int = 1,
                 replica_resources: list[dict[str, float]] | None = None, ticks_per_execution: int = 4):
        check_network(network, env_id, env_kwargs)
        check_counts(trials, envs_per_trial)
        from ..spec import RAY_OPTIONS, _check_ray, as_lists

        given = locals()
        try:  # as a spec's [ray] table (tuples as its lists)
            _check_ray({k: as_lists(given[k]) for k in RAY_OPTIONS if given.get(k) is not None}, "")
        except SpecError as error:
            raise PlacementError(str(error)) from None
        if transport not in TRANSPORTS:
            raise SpecError(f"transport: expected one of {TRANSPORTS}, got {transport!r}")
        if placement is not None and placement not in STRATEGIES:
            raise PlacementError(f"placement: expected None or one of {STRATEGIES}, got {placement!r}")
        if not isinstance(max_inflight, int) or max_inflight < 1:
            raise SpecError(f"max_inflight: expected a positive integer, got {max_inflight!r}")
        if isinstance(ticks_per_execution, bool) or not isinstance(ticks_per_execution, int) or ticks_per_execution < 1:
            raise SpecError(f"ticks_per_execution: expected a positive integer, got {ticks_per_execution!r}")
        self.ticks_per_execution = ticks_per_execution
        if cpus_per_actor is not None and not (isinstance(cpus_per_actor, (int, float)) and cpus_per_actor >= 0):
            raise PlacementError(f"cpus_per_actor: expected a number >= 0, got {cpus_per_actor!r}")
        self.network, self.env_id, self.env_kwargs = network, env_id, dict(env_kwargs or {})
        self.trials, self.envs_per_trial, self.seed = int(trials), int(envs_per_trial), seed
        self.slices = trial_slices(self.trials, micro_batches)
        if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
            raise SpecError(f"replicas: expected a positive integer, got {replicas!r}")
        if replicas > len(self.slices):
            raise SpecError(f"replicas: {replicas} replicas need at least {replicas} micro-batches (micro_batches is "
                            f"{len(self.slices)}); set micro_batches >= replicas (at most trials = {self.trials})")
        if replica_resources is not None and (not isinstance(replica_resources, (list, tuple))
                                              or len(replica_resources) != replicas
                                              or not all(isinstance(r, dict) for r in replica_resources)):
            raise PlacementError(f"replica_resources: expected a list of {replicas} dicts (one per replica), "
                                 f"got {replica_resources!r}")
        self.replicas = replicas
        self.replica_resources = [dict(r) for r in replica_resources] if replica_resources else [{}] * replicas
        K = len(self.slices)
        self.replica_of = [k * replicas // K for k in range(K)]  # contiguous shards of micro-batches
        self.transport, self.max_inflight, self.timeout = transport, max_inflight, timeout
        self.ready_timeout, self.raster = ready_timeout, raster
        probe = make_batch(env_id, 1, seed, 0, **self.env_kwargs)  # spec errors before any Ray work
        self.observation_space, self.action_space = probe.observation_space, probe.action_space
        probe.close()
        network.input_spaces(self.observation_space, self.action_space)
        self.groups = coagent_groups(network, coagents_per_actor, groups)
        custom = resource_requests(self.groups, resources, network)
        self._start((custom, dict(env_resources or {}), cpus_per_actor, placement), address, connect_timeout,
                    max_recoveries, snapshot_every, export_metrics, run_name)

    def _start(self, build_args: tuple, address, connect_timeout, max_recoveries, snapshot_every, export_metrics,
               run_name) -> None:
        """The engine's run clock, its recovery record and its actors: Ray joined (or started here, see
        ``connect``) and ``_build(*build_args)``, everything released again if that fails."""
        if isinstance(max_recoveries, bool) or not isinstance(max_recoveries, int) or max_recoveries < 0:
            raise SpecError(f"max_recoveries: expected an integer >= 0, got {max_recoveries!r}")
        self.tick_count = 0
        self.episodes: int | None = None  # the run in progress (None: none)
        self.seconds = 0.0
        self._started: float | None = None
        self._done_reported = 0
        self.run_id = uuid.uuid4().hex[:8]
        self.namespace = f"distcoagent-{self.run_id}"
        self.placement: dict[str, dict] = {}  # actor name -> node it runs on
        self.actors, self.env_actors, self.dag, self.placement_group = [], [], None, None
        self.actor_names: list[str] = []
        self._broken = None
        self.max_recoveries, self.snapshot_every = max_recoveries, float(snapshot_every)
        self.export_metrics = bool(export_metrics)
        self.run_name = run_name
        self.recoveries: list[dict] = []  # what happened: dead actors, their coagents, the tick
        self._snapshot: dict | None = None  # the run's state at its last snapshot (recovery restores it)
        self.partial: TrainResult | None = None  # what a failed run had at its last snapshot
        self._build_args = build_args
        self._started_ray = connect(address, connect_timeout, runtime_env=module_runtime_env(self.env_id))
        try:
            self._build(*self._build_args)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ construction
    def _build(self, custom, env_resources, cpus_per_actor, placement):
        R, G, K = self.replicas, len(self.groups), len(self.slices)
        suffix = [f"/{r}" if R > 1 else "" for r in range(R)]
        labels = [f"coagent actor {'+'.join(g)!r}{suffix[r]}" for r in range(R) for g in self.groups] + \
                 [f"environment actor {k}" for k in range(K)]
        extras = [{**custom[g], **self.replica_resources[r]} for r in range(R) for g in range(G)] + \
                 [{**env_resources, **self.replica_resources[self.replica_of[k]]} for k in range(K)]
        actor_names = [f"coagent:{'+'.join(g)}{suffix[r]}" for r in range(R) for g in self.groups] + \
                      [f"env:{k}" for k in range(K)]
        options = self._place(labels, extras, actor_names, cpus_per_actor, placement)

        net = self.network
        level = levels(net)
        cur, prev = used_sources(net)
        group_of = {n: g for g, names in enumerate(self.groups) for n in names}
        self.plans = []
        for g, names in enumerate(self.groups):
            outside = [m for m in net.order if group_of[m] != g]
            exports = {n for n in names if n in net.action_coagents or any(n in cur[m] for m in outside)}
            prev_exports = {n for n in names if any(n in prev[m] for m in outside)}
            by_level = {}
            for n in names:
                by_level.setdefault(level[n], []).append(n)
            self.plans.append({"levels": by_level, "exports": exports, "prev_exports": prev_exports})
        shards = [[self.slices[k] for k in range(K) if self.replica_of[k] == r] for r in range(R)]
        self.local_index = [self.replica_of[:k].count(self.replica_of[k]) for k in range(K)]
        self.actors = [self._coagent_actor(options(r * G + g), g, names, plan, shards[r])
                       for r in range(R) for g, (names, plan) in enumerate(zip(self.groups, self.plans))]
        self.env_actors = [self._env_actor(options(R * G + k), k, a, b) for k, (a, b) in enumerate(self.slices)]
        self._await_ready(self.actors + self.env_actors, labels, actor_names)
        self._graph(level, cur, prev, group_of)

    def _place(self, labels: list[str], extras: list[dict], actor_names: list[str], cpus_per_actor, placement):
        """Resources for the actors (``labels``: what each holds, for messages; ``extras``: each one's custom
        resources), checked against the cluster before any actor starts, and a placement group if asked.
        Sets ``cpus_per_actor`` (default: what lets all the actors fit even on the smallest node) and the
        actors' ``requests``; returns ``options(i)``, the i-th actor's Ray options."""
        import ray
        from ray.util.placement_group import placement_group, remove_placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        n_actors = len(labels)
        totals = ray.cluster_resources()
        nodes = [node["Resources"] for node in ray.nodes() if node["Alive"]]
        if not nodes:  # e.g. the head stopped during a run: say so, not that no node has room
            raise ConnectionError("the Ray cluster has no node alive (was its head stopped?); a run directory "
                                  "keeps its last checkpoint: start the cluster again and resume")
        if cpus_per_actor is None:
            cpus_per_actor = self._default_cpus([n.get("CPU", 0.0) for n in nodes if n.get("CPU", 0.0) > 0], n_actors)
        self.cpus_per_actor = float(cpus_per_actor)
        requests = [{**({"CPU": self.cpus_per_actor} if self.cpus_per_actor > 0 else {}), **extra}
                    for extra in extras]
        self.requests = requests
        check_resources(list(zip(labels, requests)), totals, nodes)
        strategies = [None] * n_actors
        if placement is not None:
            if any(not r for r in requests):
                raise PlacementError("placement: a placement group needs every actor to ask for some resource; "
                                     "set cpus_per_actor > 0")
            if placement == "STRICT_SPREAD" and n_actors > len(nodes):
                raise PlacementError(f"placement STRICT_SPREAD: {n_actors} actors need {n_actors} nodes, the "
                                     f"cluster has {len(nodes)}")
            self.placement_group = placement_group(requests, strategy=placement)
            try:
                ray.get(self.placement_group.ready(), timeout=30)
            except ray.exceptions.GetTimeoutError:
                remove_placement_group(self.placement_group)
                self.placement_group = None
                raise PlacementError(f"placement {placement}: the cluster could not place bundles {requests} "
                                     "within 30 s") from None
            strategies = [PlacementGroupSchedulingStrategy(self.placement_group, placement_group_bundle_index=i)
                          for i in range(n_actors)]

        # a fresh namespace after each recovery: the names of killed actors may not be free yet
        namespace = self.namespace if not self.recoveries else f"{self.namespace}-r{len(self.recoveries)}"

        def options(i):
            request = dict(requests[i])
            opts = {"num_cpus": request.pop("CPU", 0.0), "resources": request, "max_restarts": 0,
                    "name": actor_names[i], "namespace": namespace}
            if strategies[i] is not None:
                opts["scheduling_strategy"] = strategies[i]
            return opts

        return options

    @staticmethod
    def _default_cpus(nodes: list[float], n_actors: int) -> float:
        """CPUs per actor when none are asked (``nodes``: each node's CPUs): at most one, so that all the
        actors would fit on the smallest node."""
        return min(1.0, math.floor(100 * min(nodes, default=0.0) / n_actors) / 100)

    def _await_ready(self, actors: list, labels: list[str], actor_names: list[str]) -> None:
        """Wait for the actors to start (``ready_timeout``), naming those that could not; records where
        each runs (``placement``), or raises an actor's construction error."""
        import ray

        refs = [self._ready(a) for a in actors]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=self.ready_timeout)
        if len(ready) < len(refs):
            waiting = [f"{labels[i]} ({_fmt(self.requests[i])})" for i, r in enumerate(refs) if r not in ready]
            raise PlacementError(f"{len(waiting)} actor(s) could not start within {self.ready_timeout:g} s: "
                                 f"{'; '.join(waiting)}. Each fits on some node, but not all together: the "
                                 "nodes with those resources are full (lower cpus_per_actor or spread the "
                                 "custom resources)")
        self.actor_names = actor_names
        self.placement = dict(zip(actor_names, ray.get(refs)))  # raises an actor's construction error

    def _ready(self, actor):
        """The actor's answer to where it runs, once started; told whether it will run in a compiled graph."""
        return actor.ready.remote(self.transport == "compiled")

    def _coagent_actor(self, options: dict, g: int, names, plan: dict, shard: list):
        """Start the actor of coagent group ``g`` for micro-batches ``shard`` (a subclass may run others)."""
        import ray

        return ray.remote(CoagentWorker).options(**options).remote(
            self.network, list(names), self.observation_space, self.action_space, shard, self.envs_per_trial,
            self.seed, plan["levels"], plan["exports"], plan["prev_exports"], self.raster,
            (self.run_name or self.run_id) if self.export_metrics else None)

    def _env_actor(self, options: dict, k: int, trial_start: int, trial_stop: int):
        """Start micro-batch k's environment actor."""
        import ray

        return ray.remote(EnvironmentWorker).options(**options).remote(
            k, self.network, self.env_id, self.env_kwargs, self.seed, trial_start, trial_stop, self.envs_per_trial,
            (self.run_name or self.run_id) if self.export_metrics else None)

    def _graph(self, level, cur, prev, group_of):
        """The tick graph as a list of (key, actor, method, args); args name other keys or the input."""
        net, nodes = self.network, []
        K = range(len(self.slices))
        G = len(self.groups)

        def actor(g, k):  # group g's actor of micro-batch k's replica, and k's index there
            return self.actors[self.replica_of[k] * G + g], self.local_index[k]

        stages = self.ticks_per_execution if self.transport == "compiled" else 1
        for s in range(stages):  # the tick, repeated: stage s starts from stage s - 1's step
            last = s == stages - 1
            for k in K:
                source = ("input",) if s == 0 else ("node", ("step", s - 1, k))
                nodes.append((("start", s, k), self.env_actors[k], "start", [source, s, last]))
            for g, plan in enumerate(self.plans):
                if plan["prev_exports"]:
                    for k in K:
                        worker, local = actor(g, k)
                        nodes.append((("begin", s, g, k), worker, "begin", [local, ("node", ("start", s, k))]))
            acts = {k: [] for k in K}
            for lv in sorted({level[n] for n in net.order}):
                for k in K:
                    for g, plan in enumerate(self.plans):
                        if lv not in plan["levels"]:
                            continue
                        deps = []
                        for n in plan["levels"][lv]:
                            deps += [("act", s, group_of[src], level[src], k) for src in sorted(cur[n])
                                     if group_of[src] != g]
                            deps += [("begin", s, group_of[src], k) for src in sorted(prev[n]) if group_of[src] != g]
                        deps = list(dict.fromkeys(deps))
                        worker, local = actor(g, k)
                        nodes.append((("act", s, g, lv, k), worker, "act",
                                      [local, lv, ("node", ("start", s, k))] + [("node", d) for d in deps]))
                        acts[k].append(("node", ("act", s, g, lv, k)))
            for k in K:
                nodes.append((("step", s, k), self.env_actors[k], "step", [("node", ("start", s, k))] + acts[k]))
        self.stages = stages
        self.nodes, self.outputs = nodes, [("step", stages - 1, k) for k in K]
        self.depth = 1 + max(level.values())  # coagent levels per tick
        if self.transport == "compiled":
            from ray.dag import InputNode, MultiOutputNode

            with InputNode() as command:
                bound = {}
                for key, actor, method, args in nodes:
                    values = [command if a == ("input",) else bound[a[1]] if isinstance(a, tuple) and a[0] == "node"
                              else a for a in args]
                    bound[key] = getattr(actor, method).bind(*values)
                dag = MultiOutputNode([bound[key] for key in self.outputs])
            self.dag = dag.experimental_compile(_submit_timeout=self.timeout,
                                                _max_inflight_executions=self.max_inflight + 1)

    # ------------------------------------------------------------------ running
    def _execute(self, command):
        """Submit one execution of the tick graph; ``ray.get`` of the result gives each micro-batch's output."""
        if self.dag is not None:
            return self.dag.execute(command)
        refs = {}
        for key, actor, method, args in self.nodes:
            values = [command if a == ("input",) else refs[a[1]] if isinstance(a, tuple) and a[0] == "node"
                      else a for a in args]
            refs[key] = getattr(actor, method).options(enable_task_events=False).remote(*values)
        return [refs[key] for key in self.outputs]

    def _get(self, pending):
        import ray

        try:
            return ray.get(pending, timeout=self.timeout)
        except (ray.exceptions.GetTimeoutError, ray.exceptions.RayChannelTimeoutError):
            self._broken = "a tick timed out"
            raise StallError(f"[ray] timeout: a tick took longer than {self.timeout:g} s; "
                             f"{self._stalled_actors()}. Raise [ray] timeout if ticks are expected to take "
                             "that long") from None
        except ray.exceptions.RayTaskError as error:
            self._broken = error
            cause = getattr(error, "cause", None)
            if isinstance(cause, (NonFiniteError, ValueError, TypeError)):
                raise cause from None
            raise

    def _tick_done(self, answers: list, tickers: list) -> list:
        """Take a tick execution's answers (per micro-batch, the statuses of its ticks); the last statuses."""
        statuses = []
        for j in range(len(answers[0])):
            statuses = [a[j] for a in answers]
            self.tick_count = max(self.tick_count, max(s.tick for s in statuses))
            for k, s in enumerate(statuses):
                if s.feedback is not None:
                    feedback, s.feedback = owned(s.feedback), None
                    for o in tickers:
                        o.on_tick(TickEvent(k, s.tick - 1, feedback))
        return statuses

    def _run(self, command: Command) -> list:
        """One execution outside the tick loop (nothing else in flight): each micro-batch's answer,
        copied out of the channels' buffers (a view kept by the caller would block later ticks)."""
        return owned(self._get(self._execute(command)))

    def train(self, episodes: int, progress: Callable[[int], None] | None = None,
              observers: Sequence[Observer] = (), stop: Callable[[], bool] | None = None) -> TrainResult:
        """Run until every environment has finished ``episodes`` episodes (or ``stop()`` is true)."""
        observers = check_run_arguments(progress, observers, stop)
        tickers = [o for o in observers if o.wants_ticks]
        clock = self._open(episodes, observers,
                           lambda: self._run(Command("begin", int(episodes), self.tick_count, bool(tickers))))
        # an execution lasts at most about EXECUTION_SECONDS, and no longer than an observer's metrics period
        seconds = min([EXECUTION_SECONDS] + [o.metrics_every for o in clock.observers])
        state = {"pending": deque(), "finished": False, "done_before": self._done_reported, "seconds": seconds}
        with self._accounting():
            self._loop(state, lambda: self._advance(state, progress, tickers, clock, stop),
                       lambda: self._drain(state, tickers))
        return self._finish(observers)

    def _loop(self, state: dict, advance: Callable[[], bool], drain: Callable[[], None]) -> None:
        """``advance()`` until ``state["finished"]`` or it returns True (stop), with a snapshot every
        ``snapshot_every`` seconds (after ``drain()``: nothing in flight) and recovery from a lost actor."""
        if self._snapshot is None or self._snapshot["tick"] != self.tick_count:
            self._snapshot = self.state()
        last_snapshot = time.monotonic()
        while not state["finished"]:
            try:
                with self._watch():
                    stopping = advance()
                    if not state["finished"] and time.monotonic() - last_snapshot >= self.snapshot_every:
                        drain()
                        self._snapshot, last_snapshot = self.state(), time.monotonic()
                if stopping:
                    break
            except ActorLost as lost:
                self._recover(lost, state)
                last_snapshot = time.monotonic()
        with self._watch():
            drain()

    def _open(self, episodes: int, observers, begin: Callable[[], object]) -> MetricsClock:
        """The start of a ``train`` call: a new run (``begin`` starts it in the actors) or the one in
        progress; the clock starts and the observers hear of it."""
        check_episodes(episodes)
        if self._broken is not None:
            raise RuntimeError(f"this engine failed earlier ({self._broken}); build a new one")
        if self.episodes is None:
            self.episodes, self.seconds, self._done_reported = int(episodes), 0.0, 0
            begin()
        elif self.episodes != episodes:
            raise SpecError(f"episodes: this engine holds an unfinished run of {self.episodes} episodes "
                            f"(stopped or restored); call train({self.episodes}) to finish it")
        self._started = time.perf_counter()
        clock = MetricsClock(observers, time.perf_counter)
        for o in observers:
            o.on_start(self, int(episodes))
        return clock

    @contextlib.contextmanager
    def _accounting(self):
        """Around a ``train`` call: what a failed run had at its last snapshot, and the time spent."""
        try:
            yield
        except BaseException:
            if self._snapshot is not None:  # what the run had when last saved
                self.partial = result_from_state(self._snapshot, self.network, self.name)
            raise
        finally:
            if self._started is not None:
                self.seconds += time.perf_counter() - self._started
                self._started = None

    def _finish(self, observers) -> TrainResult:
        """The result of a ``train`` call, told to the observers; a finished run is forgotten."""
        result = self._result()
        if result.finished:
            self.episodes, self._snapshot = None, None
        for o in observers:
            o.on_end(result)
        return result

    def _advance(self, state, progress, tickers, clock, stop) -> bool:
        """Keep ``max_inflight`` executions in flight and take the oldest one's statuses; True to stop."""
        pending = state["pending"]
        while len(pending) < self.max_inflight:
            ticks = self._ticks_next(state)
            pending.append((self._execute(Command("tick", report_feedback=bool(tickers), ticks=ticks)), ticks,
                            time.perf_counter()))
        ref, ticks, submitted = pending.popleft()
        began = max(submitted, state.get("done", submitted))  # when the actors could start on it
        per_tick = state.get("per_tick")
        if per_tick is not None and ticks * per_tick > NAP_SECONDS:  # sleep through most of a long one:
            nap = began + 0.85 * ticks * per_tick - time.perf_counter()  # a waiting ray.get spins on a core
            if nap > 0:
                time.sleep(nap)
        asked = time.perf_counter()
        answers = self._get(ref)
        state["done"] = done_at = time.perf_counter()
        if not state.get("warm"):  # the first execution (actors warming up) says little
            state["warm"] = True
        elif done_at - asked > 1e-3 or per_tick is None:  # it was still running: its time is known
            spent = (done_at - began) / ticks
            state["per_tick"] = spent if per_tick is None or spent < per_tick else 0.7 * per_tick + 0.3 * spent
        else:  # done before the nap ended: faster than estimated, by how much is unknown
            state["per_tick"] = 0.5 * min(per_tick, (asked - began) / ticks)
        statuses = self._tick_done(answers, tickers)
        state["finished"] = all(s.done for s in statuses)
        done = min(s.episodes_done for s in statuses)
        if progress is not None and done > state["done_before"]:
            progress(done - state["done_before"])
        state["done_before"] = self._done_reported = max(done, state["done_before"])
        due = clock.due()
        stopping = stop is not None and stop()
        if due or stopping:
            self._drain(state, tickers)
            if due:
                metrics = self.metrics()
                for o in due:
                    o.on_metrics(metrics)
        return stopping

    def _ticks_next(self, state) -> int:
        """Ticks for the next execution: doubling from 1, up to about ``state["seconds"]`` of them."""
        per_tick, last = state.get("per_tick"), state.get("ticks", 0)
        if per_tick is None:
            ticks = 1
        else:
            ticks = max(1, min(self.stages, 2 * max(last, 1), int(state["seconds"] / max(per_tick, 1e-9))))
        state["ticks"] = ticks
        return ticks

    def _drain(self, state, tickers) -> None:
        """Take every execution in flight: the graph is then idle between ticks."""
        while state["pending"]:
            self._tick_done(self._get(state["pending"].popleft()[0]), tickers)
        state.pop("done", None)

    @contextlib.contextmanager
    def _watch(self):
        """Turn the loss of an actor, wherever Ray reports it, into ``ActorLost`` (``train`` recovers)."""
        import ray

        lost = (ray.exceptions.RayActorError, ray.exceptions.RayChannelError)
        try:
            yield
        except lost as error:
            raise ActorLost(error) from None
        except ray.exceptions.RayTaskError as error:
            if isinstance(getattr(error, "cause", None), lost):
                raise ActorLost(error) from None
            raise

    def _dead_actors(self) -> list[str]:
        """Names of this engine's actors that the cluster reports dead (or cannot find)."""
        import ray

        table = ray._private.state.actors()
        alive_nodes = {node["NodeID"] for node in ray.nodes() if node["Alive"]}
        dead = []
        for name, actor in zip(self.actor_names, self.actors + self.env_actors):
            info = table.get(actor._actor_id.hex())
            node = self.placement.get(name, {}).get("node_id")
            if info is None or info.get("State") == "DEAD" or (node is not None and node not in alive_nodes):
                dead.append(name)  # or on a node the cluster lost, which it may not have marked yet
        return dead

    def _stalled_actors(self) -> str:
        """What is known about actors that did not answer (stopped processes on this node)."""
        stopped = []
        for name, where_ in self.placement.items():
            try:
                with open(f"/proc/{where_['pid']}/stat") as f:
                    if f.read().split(") ", 1)[1][0] == "T":
                        stopped.append(name)
            except (OSError, KeyError, IndexError):
                continue
        if stopped:
            return f"stopped actor(s): {', '.join(self._describe(n) for n in stopped)}"
        return f"no actor answered in time (actors: {', '.join(self._describe(n) for n in self.placement)})"

    def _describe(self, actor_name: str) -> str:
        if actor_name.startswith("coagent:"):
            names, _, replica = actor_name[8:].partition("/")
            where_ = f" of replica {replica}" if replica else ""
            return f"{actor_name} (coagent(s) {names.replace('+', ', ')}{where_})"
        k = int(actor_name.split(":")[1])
        a, b = self.slices[k]
        return f"{actor_name} (the environments, critic and episode book of trials {a}..{b - 1})"

    def _recover(self, lost: "ActorLost", state: dict) -> None:
        """An actor died: start fresh actors, restore the last snapshot, go on (or give up)."""
        dead, deadline = self._dead_actors(), time.monotonic() + 5.0
        while not dead and time.monotonic() < deadline:  # the cluster may take a moment to notice
            time.sleep(0.2)
            dead = self._dead_actors()
        tick = self.tick_count
        record = {"tick": tick, "dead": dead, "error": str(lost.error).splitlines()[0][:300],
                  "restored_tick": self._snapshot["tick"]}
        self.recoveries.append(record)
        who = ", ".join(self._describe(n) for n in dead) or "an actor (which one, the cluster no longer says)"
        # the graph goes before the executions still pending: a pending result dropped while its graph is up
        # tries to release the graph's closed channels (Ray prints "Exception ignored in CompiledDAGRef.__del__")
        self._teardown()
        state["pending"].clear()
        if len(self.recoveries) > self.max_recoveries:
            self._broken = lost.error
            raise RecoveryError(f"the run lost actors {len(self.recoveries)} times, more than max_recoveries = "
                                f"{self.max_recoveries}; the last time {who} died at atomic tick {tick}") from None
        log.warning("actor lost at atomic tick %d: %s; starting fresh actors and restoring the state of tick %d "
                    "(recovery %d of at most %d)", tick, who, self._snapshot["tick"], len(self.recoveries),
                    self.max_recoveries)
        self._build(*self._build_args)
        self._broken = None
        self.restore(self._snapshot)
        state["finished"] = False
        log.warning("recovered: %d actor(s) running again from atomic tick %d", len(self.placement), self.tick_count)

    def _result(self) -> TrainResult:
        parts = self._run(Command("result"))
        extra = {"transport": self.transport, "groups": [list(g) for g in self.groups], "replicas": self.replicas,
                 "micro_batches": len(self.slices), "cpus_per_actor": self.cpus_per_actor,
                 "depth": self.depth, "placement": self.placement, "namespace": self.namespace}
        return self._assemble(parts, [part["coagents"] for part in parts], extra)

    def _assemble(self, envs: list[dict], units: list[dict], extra: dict) -> TrainResult:
        """The result from each micro-batch's environment side (``EnvironmentSide.result``) and its
        coagents' ``CoagentSide.result`` parts, merged."""
        E = self.envs_per_trial
        returns = np.concatenate([s["returns"] for s in envs]).reshape(self.trials, E, -1)
        lengths = np.concatenate([s["lengths"] for s in envs]).reshape(self.trials, E, -1)
        self.tick_count = max(s["tick"] for s in envs)
        counters, params = {}, {}
        for name in self.network.order:
            parts = [batch[name] for batch in units]
            counters[name] = {k: sum(u["counters"][k] for u in parts) for k in parts[0]["counters"]}
            params[name] = {k: np.concatenate([u["learned"][k] for u in parts]) for k in parts[0]["learned"]}
        if envs[0]["critic"] is not None:
            params["critic"] = {"w": np.concatenate([s["critic"] for s in envs])}
        return TrainResult(returns, lengths, counters, params, self.tick_count, self.seconds, self.name, extra,
                           finished=all(s["finished"] for s in envs))

    def state(self) -> dict:
        """The whole run, gathered from the actors through the graph (see ``contract``)."""
        return self._state_of(self._run(Command("state")))

    def restore(self, state: dict) -> None:
        """Put a run's state back into the actors, through the graph."""
        check_state(state, self)
        self._run(Command("restore", state=state))
        self._restored(state)

    def _restored(self, state: dict) -> None:
        books = [part["env"]["book"] for part in state["batches"]]
        self._done_reported = min((int(np.min(b["count"])) for b in books if b is not None), default=0)
        super()._restored(state)

    def metrics(self) -> RunMetrics:
        """Figures now, gathered through the graph (call it between ticks, as ``train`` does)."""
        parts = self._run(Command("metrics"))
        seconds = self.seconds + (time.perf_counter() - self._started if self._started is not None else 0.0)
        coagent_parts = [p for part in parts for p in part["coagents"]]
        return combine_metrics([p["env"] for p in parts], coagent_parts, seconds=seconds,
                               episodes_target=self.episodes, order=self.network.order)

    def close(self):
        """Stop the actors (and the placement group, and Ray if this engine started it)."""
        import ray

        if not ray.is_initialized():
            return
        self._teardown()
        if self._started_ray:
            shutdown_ray()  # and the semaphores Ray 2.60's local raylet leaves in /dev/shm
            self._started_ray = False

    def _teardown(self) -> None:
        """Tear the graph down and kill every actor (the graph cannot outlive one of its actors)."""
        import ray

        if self.dag is not None:
            # a plain teardown can hang on multi-actor graphs (Ray 2.60); killing the actors
            # ends their loops, and the errors Ray logs about it are expected
            quiet = logging.getLogger("ray.dag.compiled_dag_node")
            level, quiet.level = quiet.level, logging.CRITICAL
            try:
                self.dag.teardown(kill_actors=True)
            except Exception:
                pass
            finally:
                quiet.setLevel(level)
            self.dag = None
        for actor in self.actors + self.env_actors:
            try:
                ray.kill(actor)
            except Exception:
                pass
        self.actors, self.env_actors = [], []
        if self.placement_group is not None:
            from ray.util.placement_group import remove_placement_group

            remove_placement_group(self.placement_group)
            self.placement_group = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
