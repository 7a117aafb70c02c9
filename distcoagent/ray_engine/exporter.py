"""Per-coagent metrics out through Ray's own metrics (``ray.util.metrics``), from inside the actors.

Each coagent actor exports the coagents it holds, at most once a second and at the end of a
run, with no extra message: it reads its own units' counters.  The environment actors
export the run's episodes and ticks per second.  Ray's metrics agent on each node then
serves them to Ray's dashboard and to Prometheus (``deploy/prometheus``), where they appear
with Ray's prefix, counters with ``_total``:

=====================================================  =========  ===========================
name (as exported here)                                kind       tags
=====================================================  =========  ===========================
``distcoagent_coagent_executions``                     Counter    coagent, run
``distcoagent_coagent_ticks``                          Counter    coagent, run
``distcoagent_coagent_updates``                        Counter    coagent, run
``distcoagent_coagent_execution_rate``                 Gauge      coagent, run
``distcoagent_coagent_param_norm``                     Gauge      coagent, run
``distcoagent_coagent_last_update``                    Gauge      coagent, run
``distcoagent_coagent_ticks_between_executions``       Histogram  coagent, run
``distcoagent_run_episodes``                           Counter    run
``distcoagent_run_ticks_per_second``                   Gauge      run
=====================================================  =========  ===========================
"""
from __future__ import annotations

import time

from ..contract import combine_metrics

INTERVAL_BOUNDARIES = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128]


class CoagentExporter:
    """Exports the coagents of one actor (summed over its micro-batches)."""

    def __init__(self, run: str, every: float = 1.0):
        from ray.util.metrics import Counter, Gauge, Histogram

        tags = ("coagent", "run")
        self.run, self.every, self.next = run, every, 0.0
        self.counters = {k: Counter(f"distcoagent_coagent_{k}", f"coagent {k} (environment-ticks for ticks)", tags)
                         for k in ("executions", "ticks", "updates")}
        self.rate = Gauge("distcoagent_coagent_execution_rate", "executions per active environment-tick", tags)
        self.norm = Gauge("distcoagent_coagent_param_norm", "Euclidean norm of the policy parameters", tags)
        self.update = Gauge("distcoagent_coagent_last_update", "mean |TD error| of the last update", tags)
        self.between = Histogram("distcoagent_coagent_ticks_between_executions",
                                 "mean atomic ticks between executions, per export", INTERVAL_BOUNDARIES, tags)
        self.sent: dict[str, dict] = {}

    def due(self) -> bool:
        return time.monotonic() >= self.next

    def maybe_export(self, sides, force: bool = False, parts: list[dict] | None = None) -> None:
        """Export the sides' figures if a second has passed (or ``force``).  ``parts``: the sides'
        ``metrics()`` taken earlier, in their stead (the free-running loop passes settled figures:
        a counter sent to Ray cannot go down if a tentative step is taken back)."""
        if not force and not self.due():
            return
        self.next = time.monotonic() + self.every
        # the same sums as the dashboard's (contract.combine_metrics), over this actor's micro-batches
        parts = [side.metrics() for side in sides] if parts is None else parts
        totals = combine_metrics([], parts, seconds=0.0, episodes_target=None, order=list(sides[0].units)).coagents
        for name, m in totals.items():
            t = {"executions": m.executions, "ticks": m.ticks, "updates": m.updates, "intervals": m.intervals,
                 "interval_ticks": m.interval_ticks}
            tags = {"coagent": name, "run": self.run}
            before = self.sent.get(name, {"executions": 0, "ticks": 0, "updates": 0, "intervals": 0,
                                          "interval_ticks": 0})
            for k, counter in self.counters.items():
                if t[k] > before[k]:
                    counter.inc(t[k] - before[k], tags)
            if m.ticks:
                self.rate.set(m.execution_rate, tags)
            self.norm.set(m.param_norm, tags)
            if m.last_update is not None:
                self.update.set(m.last_update, tags)
            closed = t["intervals"] - before["intervals"]
            if closed > 0:
                self.between.observe((t["interval_ticks"] - before["interval_ticks"]) / closed, tags)
            # never lowered: figures that go back (a restored run) are not counted again as they regrow
            self.sent[name] = {k: max(t[k], before[k])
                               for k in ("executions", "ticks", "updates", "intervals", "interval_ticks")}


class RunExporter:
    """Exports a micro-batch's share of the run: episodes finished and ticks per second."""

    def __init__(self, run: str, every: float = 1.0):
        from ray.util.metrics import Counter, Gauge

        self.run, self.every, self.next = run, every, 0.0
        self.episodes = Counter("distcoagent_run_episodes", "episodes finished", ("run",))
        self.ticks_per_second = Gauge("distcoagent_run_ticks_per_second", "atomic ticks per second", ("run",))
        self.sent_episodes, self.last = 0, None

    def maybe_export(self, side, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now < self.next:
            return
        self.next = now + self.every
        tags = {"run": self.run}
        finished = 0 if side.book is None else int(side.book.count.sum())
        if finished < self.sent_episodes:  # a new run began
            self.sent_episodes = 0
        if finished > self.sent_episodes:
            self.episodes.inc(finished - self.sent_episodes, tags)
            self.sent_episodes = finished
        if self.last is not None and now > self.last[0]:
            self.ticks_per_second.set((side.tick - self.last[1]) / (now - self.last[0]), tags)
        self.last = (now, side.tick)
