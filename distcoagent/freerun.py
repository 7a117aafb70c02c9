"""The free-running mode: the environment and every coagent on their own clocks, no tick barrier.

The logical-tick engines run every coagent once per atomic tick, in order.  Here the
environment steps at its own pace and each coagent runs its own loop at its own pace;
nobody waits for anybody.  The two sides of a tick (``tick``) are reused unchanged;
what is new is the *board* through which they meet, one per micro-batch, held by the
environment worker (``FreeEnvironment``):

- **The environment** (``FreeEnvironment.advance``) opens step t: it posts the
  environment side's ``TickStart`` (the observation, and the last step's feedback)
  and, for every coagent, the *held* output (its output at t-1, or a fresh U_-1
  draw where an episode begins: the draws are keyed, so the board draws exactly what
  the coagent draws).  After its period (``rate`` steps per second; None: at once) it
  *seals* step t: each coagent's output for t is the one it published for t, else the
  held one; the environment acts with the action coagents' outputs and step t+1 opens.
- **A coagent** (``FreeCoagent.iterate``), each time round its loop, reads from the
  board every message since its last read and the newest inputs it declares.  Every
  step it missed it processes as a hold (E = 0: its reward stream still receives each
  step's reward, discounted by the steps that actually elapsed, and its episodes
  begin and end as the environment's do).  At the newest step, if still open, it
  draws its execution as usual and, if it executes, publishes its output stamped with
  that step.
- **Consistency** (optimistic, as in a database).  A publication names the versions of
  the same-tick inputs it was computed from.  The board refuses it if the step is sealed
  (*late*: the coagent holds at that step) or if one of those inputs changed since the
  read (the coagent reads again and retries while the step is open).  Taking a
  publication changes the publisher's outputs, so the board *revokes* every publication
  made from their old versions (and, in turn, those made from the revoked ones): a
  revoked coagent takes its step back and acts again on the new inputs if the step is
  still open, else holds.  An upstream unit therefore never loses its step to a faster
  reader; the reader redoes its own.  Whenever a step is taken back, the coagent's state
  from before the step is restored.  Hence at the seal, every standing publication was
  computed from its inputs' final values: per step, each coagent either executed on
  exactly the inputs that every reader of its output also saw, or held.  The realised
  run is an execution of the ACPGT's network with some pattern E_t^i, where timing,
  independent of the parameters, plays the part of the execution function; with an
  environment slow enough for every unit to act in every step, it is the logical-tick
  run.

**The record.**  When it seals a step the board records, for each coagent, on which
environments it executed (all of them, bit-packed) and, for a few sampled
environments, the inputs it read and the output it had.  ``replay`` runs the in-process
engine with these executions forced and gets the same parameters, bit for bit.

**Snapshots.**  ``FreeEnvironment.pause`` stops the environment between two steps (step
t-1 sealed and acted on, step t not opened).  No publication can be accepted then, so
every coagent, reading on, processes every step up to t-1 and is exactly where the
logical-tick engines are between ticks t-1 and t.  The states of both sides then form
an ordinary run state (``contract``), which ``resume`` (or the in-process engine) takes.

Nothing here imports Ray: the classes are driven by threads in tests and made Ray
actors by ``ray_engine.free``.
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from . import kernels
from .coagent import initial_outputs
from .network import Network, SpecError
from .rng import Stream
from .tick import CoagentSide, EnvironmentSide, Flush, RunStart, TickStart


def _rate(value, where: str) -> float | None:
    """A rate in per-second units: None or 0 means as fast as it can."""
    if value is None or (not isinstance(value, bool) and isinstance(value, (int, float)) and value == 0):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise SpecError(f"{where}: expected a number per second > 0 (0 or none: as fast as it can), got {value!r}")
    return float(value)


RAY_TIMEOUT = 600.0  # seconds the Ray engine waits on an actor's call (``RayEngine(timeout=)``, [ray] timeout)


def check_free_options(network, env_rate=None, coagents: dict | None = None,
                       timeout: float | None = None) -> tuple[float | None, dict]:
    """The free-running options: the environment's rate and each coagent's ``delay`` and ``rate``;
    a delay must be shorter than the Ray engine's ``timeout`` (else every snapshot would time out)."""
    env_rate = _rate(env_rate, "free.env_rate")
    if coagents is not None and not isinstance(coagents, dict):
        raise SpecError(f"free.coagents: expected a table of coagent names, each with delay and/or rate, e.g. "
                        f"{{ {network.order[0]} = {{ delay = 0.01 }} }}, got {type(coagents).__name__}")
    out = {}
    for name, options in (coagents or {}).items():
        if name not in network.order:
            raise SpecError(f"free.coagents.{name}: no such coagent; expected one of {', '.join(network.order)}")
        if not isinstance(options, dict):
            raise SpecError(f"free.coagents.{name}: expected a table with delay and/or rate, got {options!r}")
        unknown = sorted(set(options) - {"delay", "rate"})
        if unknown:
            raise SpecError(f"free.coagents.{name}.{unknown[0]}: unknown key; expected delay or rate")
        delay = options.get("delay", 0.0)
        if isinstance(delay, bool) or not isinstance(delay, (int, float)) or not math.isfinite(delay) or delay < 0:
            raise SpecError(f"free.coagents.{name}.delay: expected seconds >= 0, got {delay!r}")
        limit = RAY_TIMEOUT if timeout is None else timeout
        if delay >= limit:  # the actor sleeps through every call the engine makes on it
            raise SpecError(f"free.coagents.{name}.delay: expected seconds below the Ray engine's timeout "
                            f"({limit:g} s, [ray] timeout), got {delay!r}")
        out[name] = {"delay": float(delay), "rate": _rate(options.get("rate"), f"free.coagents.{name}.rate")}
    return env_rate, out


def check_groups(network: Network, groups) -> list[int]:
    """Refuse groups that read each other within a tick (their revocations could chase each other for
    ever); returns them in an order where each comes after those it reads."""
    group_of = {n: g for g, names in enumerate(groups) for n in names}
    needs = {g: {group_of[s] for s in same_tick_reads(network, names)} for g, names in enumerate(groups)}
    order: list[int] = []
    while len(order) < len(groups):
        ready = [g for g in range(len(groups)) if g not in order and needs[g] <= set(order)]
        if not ready:
            stuck = [list(groups[g]) for g in range(len(groups)) if g not in order]
            raise SpecError(f"groups: in the free-running mode a group may not read, within a tick, a group that "
                            f"reads it; these groups read each other: {stuck} (pack coagents in tick order)")
        order.append(ready[0])
    return order


def warm_up() -> None:
    """Compile (or load) every kernel, into numba's on-disk cache: the free-running engine does it once in
    the driver, so its actors, each loading what its units use (``load_kernels``) before its loop,
    find them compiled rather than all compiling them at once."""
    if kernels.available() and kernels.enabled():
        kernels.compile_all()


def same_tick_reads(network: Network, names) -> set[str]:
    """Coagents whose same-tick output the coagents ``names`` read (inputs and execution drivers)."""
    out = set()
    for name in names:
        c = network.coagent(name)
        out |= set(c.sources("cur")) | set(c.execution.drivers)
    return out - set(names)


def previous_reads(network: Network, names) -> set[str]:
    """Coagents (outside ``names``) whose previous-tick output the coagents ``names`` read."""
    return {s for n in names for s in network.coagent(n).sources("prev")} - set(names)


@dataclass
class View:
    """What one read of the board gives a group of coagents.

    ``messages``: the environment side's messages since the group's last read (sequence
    ``after + 1 .. sequence``); ``open_tick``: the step the group may execute at (the newest
    one, if still open and the group may still publish for it), else None; ``inputs``: the
    other coagents' outputs it reads ("NAME": this step's, "prev:NAME": the step before's);
    ``versions``: how many times each "NAME" input was published for the step (the
    publication names them); ``done``: the environment has posted its last message."""

    sequence: int
    messages: list
    open_tick: int | None
    inputs: dict[str, np.ndarray]
    done: bool
    versions: dict[str, int] = field(default_factory=dict)
    resolution: tuple | None = None   # (tick, stood?) of the group's last publication: sealed, or revoked


@dataclass
class FreeCounters:
    """Per coagent: opportunities (reads of an open step it had not published for), taken publications,
    refused ones whose inputs had changed (``retried``), late ones (the step was sealed) and revoked
    ones (an input changed after it was taken)."""

    opportunities: int = 0
    published: int = 0
    retried: int = 0
    late: int = 0
    revoked: int = 0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class FreeEnvironment:
    """One micro-batch's environment side and its board (see the module docstring).

    ``groups``: the coagent groups (one per coagent actor); ``rate``: environment steps per
    second (None: as fast as it can); ``record_envs``: global indices of the environments whose
    inputs and outputs the record keeps.
    """

    def __init__(self, index: int, network: Network, env_id: str, env_kwargs: dict, seed: int, trial_start: int,
                 trial_stop: int, envs_per_trial: int, groups, rate: float | None = None, record_envs=(),
                 export_run: str | None = None):
        self.index, self.network = index, network
        self.exporter = None
        if export_run is not None:
            from .ray_engine.exporter import RunExporter

            self.exporter = RunExporter(export_run)
        self.side = EnvironmentSide(network, env_id, env_kwargs, seed, trial_start, trial_stop, envs_per_trial)
        self.side.load_kernels()  # before the loop: a first step that loads them would fall behind
        self.groups = [tuple(g) for g in groups]
        self.rate = rate
        B = self.side.batch
        self.env_ids = trial_start * envs_per_trial + np.arange(B)
        self.record_rows = np.flatnonzero(np.isin(self.env_ids, np.asarray(record_envs, dtype=np.int64)))
        self.streams = {n: Stream.from_seed(seed, "coagent:" + n) for n in network.order}
        self.reads = [same_tick_reads(network, g) for g in self.groups]
        self.prev_reads = [previous_reads(network, g) for g in self.groups]
        self.cond = threading.Condition()
        self.messages: dict[int, object] = {}  # sequence -> message not yet read by every group
        self.sequence = 0
        self.consumed = [0] * len(self.groups)
        self.held: dict[str, np.ndarray] = {}     # U_{t-1} after this step's episode starts
        self.current: dict[str, np.ndarray] = {}  # this step's outputs so far (held, or published)
        self.open_tick: int | None = None
        self.version: dict[str, int] = {}         # publications per coagent at the open step (0: held)
        self.publications: dict[int, dict] = {}   # per group, its last publication for the open step
        self.unreported: dict[int, tuple] = {}    # per group: (tick, stood?) of its last publication, sealed
        check_groups(network, self.groups)
        self.records: list[dict] = []             # sealed steps, for the driver to drain
        self.counters = {n: FreeCounters() for n in network.order}
        self.pause_wanted = self.paused = self.stopped = self.looping = False
        self.finished = False                    # the last message (a Flush) is posted
        self.steps = 0                           # steps taken by this object (for rates)

    # ------------------------------------------------------------------ start and restore
    def ready(self) -> dict:
        from .ray_engine.actors import where

        return where()

    def begin(self, episodes: int, tick: int) -> None:
        """A new run of ``episodes`` episodes per environment from atomic tick ``tick``."""
        with self.cond:
            message = self.side.begin(episodes, tick)
            ticks = np.full(self.side.batch, tick)
            self.held = {n: initial_outputs(self.network.coagent(n), self.streams[n], self.env_ids, ticks)
                         for n in self.network.order}
            self._post(message)

    def restore(self, env_state: dict, outputs: dict[str, np.ndarray]) -> None:
        """Put a run state's environment side back, with every coagent's output at the boundary."""
        with self.cond:
            self.side.load_state_dict(env_state)
            self.held = {n: np.array(v) for n, v in outputs.items()}
            self.messages, self.sequence = {}, 0
            self.consumed = [0] * len(self.groups)
            self.open_tick, self.finished = None, self.side.phase == "done"
            self.publications, self.unreported = {}, {}

    def _post(self, message) -> None:
        self.sequence += 1
        self.messages[self.sequence] = message
        self.cond.notify_all()

    # ------------------------------------------------------------------ the environment's loop
    def run(self) -> int:
        """Step until the run is finished or stopped; returns the steps taken."""
        period = None if not self.rate else 1.0 / self.rate
        next_time = time.monotonic()
        with self.cond:
            self.looping, self.stopped, self.pause_wanted = True, False, False
        try:
            while self.advance(period, next_time):
                if period is not None:
                    next_time = max(next_time + period, time.monotonic() - period)
        finally:
            with self.cond:
                self.looping = False
                self.cond.notify_all()
        return self.steps

    def advance(self, period: float | None = None, when: float | None = None) -> bool:
        """Open a step, wait ``period`` (until ``when`` + period), seal it and act; False once done."""
        if not self.open_step():
            return False
        if period is not None:
            delay = (when if when is not None else time.monotonic()) + period - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        else:
            time.sleep(0)  # let the coagents' reads in
        self.seal_step()
        return True

    def open_step(self) -> bool:
        """Post the next message; True if it opened a step (False: the run is done, or stopped)."""
        with self.cond:
            while self.pause_wanted and not self.stopped:
                self.paused = True
                self.cond.notify_all()
                self.cond.wait(0.5)
            self.paused = False
            if self.stopped or self.finished:
                return False
            message = self.side.start()
            if message is None:
                self.finished = True
                self.cond.notify_all()
                return False
            if isinstance(message, Flush):
                self.finished = True
                self._post(message)
                return False
            if message.feedback is not None and message.feedback.ended.any():
                rows = np.flatnonzero(message.feedback.ended)  # episodes that begin: U_-1 drawn afresh
                ticks = np.full(rows.size, message.tick)
                for n in self.network.order:
                    held = self.held[n] = self.held[n].copy()
                    held[rows] = initial_outputs(self.network.coagent(n), self.streams[n], self.env_ids[rows], ticks)
            self.current = dict(self.held)
            self.open_tick, self.publications = message.tick, {}
            self.version = {n: 0 for n in self.network.order}
            self._post(message)
            return True

    def seal_step(self) -> None:
        """Seal the open step: the outputs are final, the environment acts, the step is recorded."""
        with self.cond:
            # what stands: every publication left was made from its inputs' final values (changing an
            # output revokes those made from the old one), every other output is the held one
            tick, outputs, executed, seen = self.open_tick, self.current, {}, {}
            self.open_tick = None
            for g, publication in self.publications.items():
                self.unreported[g] = (tick, True)
                executed.update(publication["executed"])
                seen.update(publication["seen"])
            self.side.finish({a: outputs[a] for a in self.network.action_coagents})
            B, rows = self.side.batch, self.record_rows
            record = {"k": self.index, "tick": tick, "batch": B,
                      "executed": {n: np.packbits(executed.get(n, np.zeros(B, bool))) for n in outputs},
                      "rows": self.env_ids[rows].tolist(),
                      "outputs": {n: np.asarray(v)[rows].tolist() for n, v in outputs.items()},
                      "seen": seen}
            self.records.append(record)
            self.held = outputs
            self.steps += 1
            if self.exporter is not None:
                self.exporter.maybe_export(self.side)
            self.cond.notify_all()

    # ------------------------------------------------------------------ what the coagents call
    def _news(self, group: int, after: int) -> bool:
        """Something for ``group`` to act on: a new message, or the fate of its last publication."""
        return self.sequence > after or group in self.unreported

    def _revoke_readers(self, names, tick: int) -> None:
        """Outputs ``names`` changed: revoke every publication made from their old versions (their
        coagents hold again, which changes their outputs in turn)."""
        for g, publication in list(self.publications.items()):
            if g in self.publications and any(self.version[n] != publication["read"].get(n, self.version[n])
                                              for n in names):
                del self.publications[g]
                self.unreported[g] = (tick, False)
                for n in self.groups[g]:
                    self.counters[n].revoked += 1
                    self.current[n] = self.held[n]
                    self.version[n] += 1
                self._revoke_readers(self.groups[g], tick)

    def read(self, group: int, after: int, wait: float = 0.2) -> View:
        """Messages since ``after``, the newest inputs of ``group`` (with their versions), the fate of its
        last publication once its step is sealed; waits up to ``wait`` s for news."""
        with self.cond:
            deadline = time.monotonic() + wait
            while not self._news(group, after) and not self.finished and not self.stopped:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(left)
            messages = [self.messages[s] for s in range(after + 1, self.sequence + 1)]
            self.consumed[group] = max(self.consumed[group], self.sequence)
            for s in [s for s in self.messages if s <= min(self.consumed)]:
                del self.messages[s]
            source = self.current if self.open_tick is not None else self.held
            inputs = {n: np.array(source[n]) for n in self.reads[group]}
            inputs.update({"prev:" + n: np.array(self.held[n]) for n in self.prev_reads[group]})
            versions = {n: self.version[n] for n in self.reads[group]} if self.open_tick is not None else {}
            if self.open_tick is not None and group not in self.publications:
                for n in self.groups[group]:
                    self.counters[n].opportunities += 1
            return View(self.sequence, messages, self.open_tick, inputs, self.finished and not self.stopped,
                        versions, self.unreported.pop(group, None))

    def publish(self, group: int, tick: int, outputs: dict[str, np.ndarray], executed: dict[str, np.ndarray],
                seen: dict | None = None, versions: dict[str, int] | None = None) -> bool:
        """Outputs of ``group`` for step ``tick``, computed from inputs of ``versions``: True if taken (it is
        revoked if one of those inputs is published again before the seal, see the module docstring);
        False if the step is sealed or an input has changed since (the group may read again and retry
        while the step is open)."""
        names = self.groups[group]
        versions = versions or {}
        with self.cond:
            late = tick != self.open_tick
            stale = not late and any(self.version[n] != v for n, v in versions.items())
            for n in names:
                counters = self.counters[n]
                counters.late += late
                counters.retried += stale
            if late or stale:
                return False
            for n in names:
                self.counters[n].published += 1
                self.current[n] = np.array(outputs[n])
                self.version[n] += 1
            self.publications[group] = {"read": dict(versions), "seen": dict(seen or {}),
                                        "executed": {n: np.array(executed[n], dtype=bool) for n in names}}
            self._revoke_readers(names, tick)
            self.cond.notify_all()  # the revoked may act again
            return True

    def publish_and_read(self, group: int, tick: int, outputs, executed, seen, versions, after: int,
                         wait: float = 0.2) -> tuple[bool, View]:
        """``publish``, then ``read`` from ``after`` (at once if refused: the step may be retried); one call
        instead of two for a loop that goes straight round."""
        accepted = self.publish(group, tick, outputs, executed, seen, versions)
        return accepted, self.read(group, after, wait if accepted else 0.0)

    # ------------------------------------------------------------------ the driver's requests
    def pause(self, timeout: float = 30.0) -> int:
        """Stop between two steps; returns the sequence of the last message posted."""
        with self.cond:
            self.pause_wanted = True
            self.cond.notify_all()
            deadline = time.monotonic() + timeout
            while not (self.paused or self.finished or self.stopped or (self.open_tick is None and not self.looping)):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"environment {self.index} did not pause within {timeout:g} s")
                self.cond.wait(0.05)
            return self.sequence

    def resume(self) -> None:
        with self.cond:
            self.pause_wanted = False
            self.cond.notify_all()

    def stop(self) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify_all()

    def drain(self) -> dict:
        """The sealed steps' records since the last drain, and where the environment is."""
        with self.cond:
            records, self.records = self.records, []
            status = self.side.status()
            return {"records": records, "tick": self.side.tick, "episodes_done": status.episodes_done,
                    "finished": self.finished, "steps": self.steps, "sequence": self.sequence,
                    "counters": {n: c.to_dict() for n, c in self.counters.items()}}

    def state(self) -> dict:
        with self.cond:
            return self.side.state_dict()

    def metrics(self) -> dict:
        with self.cond:
            return self.side.metrics()

    def result(self) -> dict:
        with self.cond:
            if self.exporter is not None:
                self.exporter.maybe_export(self.side, force=True)
            return self.side.result()

    def close(self) -> None:
        self.side.close()


class FreeCoagent:
    """The coagents ``names`` (one group) for micro-batches ``slices``, each looping on its own.

    ``boards[k]``: micro-batch k's board (a ``FreeEnvironment``, or a proxy with its ``read``
    and ``publish``); ``group``: this group's index on the boards.  ``delay``: seconds added to
    each time round the loop (a slow unit); ``rate``: at most this many times round per second.
    """

    def __init__(self, network: Network, names, observation_space, action_space, slices, envs_per_trial: int,
                 seed: int, group: int, boards=None, delay: float = 0.0, rate: float | None = None,
                 raster=None, record_envs=(), export_run: str | None = None):
        self.network, self.names, self.group = network, tuple(names), group
        self.exporter = None
        if export_run is not None:  # Ray's metrics, as the logical-tick actors export them
            from .ray_engine.exporter import CoagentExporter

            self.exporter = CoagentExporter(export_run)
        self.sides = [CoagentSide(network, names, observation_space, action_space, b - a, envs_per_trial, seed, a,
                                  raster=raster) for a, b in slices]
        self.sides[0].load_kernels()  # before the loop: a unit loading them in its first step would miss steps
        self.boards = list(boards or [])
        self.delay, self.rate = float(delay), rate
        self.sequence = [0] * len(slices)
        self.done = [False] * len(slices)
        self.locks = [threading.Lock() for _ in slices]
        self.progress = threading.Condition()
        self.stopped = False
        self.record_rows = [np.flatnonzero(np.isin(s.env_index, np.asarray(record_envs, dtype=np.int64)))
                            for s in self.sides]
        self.holds = [{n: np.zeros(s.batch, dtype=bool) for n in self.names} for s in self.sides]
        self.pending: list[int | None] = [None] * len(slices)
        self.taken: list[tuple | None] = [None] * len(slices)
        self.next_view: list[View | None] = [None] * len(slices)
        self.straight = not self.delay and not self.rate and len(slices) == 1  # see _try
        self.wait = [0.2] * len(slices)  # each micro-batch's last read's wait
        self.inputs: list[dict] = [{} for _ in slices]
        # each micro-batch's figures noted since the last export (None: not yet; see _export_settled)
        self.settled: list[dict | None] = [None] * len(slices)
        self.exporting = threading.Lock()  # the notes and the exporter (the loop's thread, the driver's calls)
        self.loops = 0
        self.looping = False
        self.loop_seconds, self.loop_started = 0.0, 0.0  # time spent in ``run`` (for loops per second)

    def ready(self) -> dict:
        from .ray_engine.actors import where

        return where()

    def connect(self, boards) -> None:
        self.boards = list(boards)

    def restore(self, k: int, coagent_state: dict) -> None:
        with self.locks[k]:
            self.sides[k].load_state_dict(coagent_state)
            self.sequence[k], self.done[k], self.pending[k], self.next_view[k] = 0, False, None, None
            self.taken[k] = None
        with self.exporting:  # figures noted before the restore are not this run's any more
            self.settled[k] = None

    # ------------------------------------------------------------------ the loop
    def run(self, wait: float = 0.2) -> int:
        """Loop over this group's micro-batches until all are done (or ``stop``); returns the loops."""
        period = None if not self.rate else 1.0 / self.rate
        self.stopped, self.looping = False, True
        self.loop_started = time.monotonic()
        try:
            while not self.stopped and not all(self.done):
                started = time.monotonic()
                for k in range(len(self.sides)):
                    if not self.done[k]:
                        self.iterate(k, wait / max(1, len(self.sides)))
                if self.delay:
                    time.sleep(self.delay)
                if period is not None:
                    left = started + period - time.monotonic()
                    if left > 0:
                        time.sleep(left)
        finally:
            self.looping = False
            self.loop_seconds += time.monotonic() - self.loop_started
        return self.loops

    def iterate(self, k: int, wait: float = 0.2) -> None:
        """Once round the loop for micro-batch k: read; settle its last publication (revoked: taken back
        and held; an input changed meanwhile: taken back and done again); catch up through the steps it
        missed (holds); at the open step, maybe execute and publish."""
        self.wait[k] = wait
        view, self.next_view[k] = self.next_view[k], None  # read together with the last publication
        if view is None or not (view.messages or view.resolution or view.done):
            # nothing new came with it: read now (a refused publication may be retried at once)
            view = self.boards[k].read(self.group, self.sequence[k], 0.0 if self.pending[k] is not None else wait)
        with self.locks[k]:
            side, holds = self.sides[k], self.holds[k]
            pending = self.pending[k]  # a step received but not acted at yet
            taken = self.taken[k]      # (tick, state before it) of a publication not yet settled
            if taken is not None and view.resolution is not None and view.resolution[0] == taken[0]:
                tick, before = taken
                taken = None
                if not view.resolution[1]:  # revoked (an input changed): take the step back
                    self._take_back(side, before)
                    if view.open_tick == tick and not view.messages:
                        pending = tick  # still open: act again on the new inputs
                    else:
                        side.act(None, self.inputs[k], holds)  # sealed meanwhile: a hold
            if pending is not None and (view.messages or view.open_tick != pending):
                side.act(None, self.inputs[k], holds)  # it cannot execute there any more: a hold
                pending = None
            last = len(view.messages) - 1
            for i, message in enumerate(view.messages):
                side.receive(message)
                if not isinstance(message, TickStart):
                    continue
                if i == last and view.open_tick == message.tick:
                    pending = message.tick
                else:
                    side.act(None, view.inputs, holds)
            if self.exporter is not None and taken is None and self.settled[k] is None and self.exporter.due():
                self._export_settled(k)
            if pending is not None:
                acted, taken = self._try(k, pending, view)
                pending = None if acted else pending
            self.pending[k], self.taken[k], self.inputs[k] = pending, taken, view.inputs
            self.sequence[k] = view.sequence
            flushed = any(isinstance(m, Flush) for m in view.messages)
            self.done[k] = pending is None and taken is None and (
                flushed or (view.done and not view.messages) or self.done[k])
            self.loops += 1
        with self.progress:
            self.progress.notify_all()

    def _export_settled(self, k: int) -> None:
        """Micro-batch k has no publication awaiting the board's word: note its figures, and export
        once every micro-batch still running has noted its own since the last export.  Figures with
        a step that may yet be taken back are never exported (Ray's counters only go up)."""
        with self.exporting:
            self.settled[k] = self.sides[k].metrics()
            if all(m is not None or done for m, done in zip(self.settled, self.done)):
                parts = [side.metrics() if m is None else m for m, side in zip(self.settled, self.sides)]
                self.exporter.maybe_export(self.sides, force=True, parts=parts)
                self.settled = [None] * len(self.sides)

    @staticmethod
    def _take_back(side, before: dict) -> None:
        """Restore the units' states from before a step (the side's inputs of the step are rebuilt)."""
        for n, u in side.units.items():
            u.load_state_dict(before[n])
        side.capture_previous()

    def _try(self, k: int, tick: int, view: View) -> tuple[bool, tuple | None]:
        """The open step: draw, maybe execute and publish.  Returns (acted, taken): acted False means
        the publication was refused and the step is taken back (still to be acted at); taken is the
        (tick, state before) to keep until the board says whether the publication stood."""
        side, inputs = self.sides[k], view.inputs
        before = {n: u.state_dict() for n, u in side.units.items()}
        outputs = side.act(None, inputs)
        executed = {n: u.last_executed.copy() for n, u in side.units.items()}
        if not any(e.any() for e in executed.values()):
            return True, None  # every environment holds: exactly what the board assumes
        rows = self.record_rows[k]
        seen = {}
        if rows.size:
            local = {**side.lookup, **inputs}
            for n, u in side.units.items():
                if executed[n][rows].any():
                    seen[n] = {"tick": tick, "envs": side.env_index[rows].tolist(),
                               "executed": executed[n][rows].tolist(),
                               "inputs": {i: (side.obs if i == "obs" else local[i])[rows].tolist()
                                          for i in u.coagent.inputs}}
        board = self.boards[k]
        if self.straight:  # nothing to wait for between two times round: read in the same call
            accepted, self.next_view[k] = board.publish_and_read(self.group, tick, outputs, executed, seen,
                                                                 view.versions, view.sequence, self.wait[k])
        else:
            accepted = board.publish(self.group, tick, outputs, executed, seen, view.versions)
        if accepted:
            return True, (tick, before)
        self._take_back(side, before)
        return False, None

    def stop(self) -> None:
        self.stopped = True

    # ------------------------------------------------------------------ the driver's requests
    def state(self, k: int, sequence: int, timeout: float = 60.0) -> dict:
        """Micro-batch k's side once it has processed every message up to ``sequence``."""
        deadline = time.monotonic() + timeout
        with self.progress:
            while self.sequence[k] < sequence or self.pending[k] is not None or self.taken[k] is not None:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"coagent(s) {', '.join(self.names)} did not catch up with message "
                                       f"{sequence} of micro-batch {k} within {timeout:g} s")
                if self.looping:
                    self.progress.wait(0.05)
                    continue
                self.progress.release()  # nobody reads for this micro-batch: catch up here
                try:
                    self.iterate(k, 0.0)
                finally:
                    self.progress.acquire()
        with self.locks[k]:
            return self.sides[k].state_dict()

    def clock(self) -> dict:
        """Times round the loop and seconds spent looping (this group's own clock)."""
        seconds = self.loop_seconds + (time.monotonic() - self.loop_started if self.looping else 0.0)
        return {"names": list(self.names), "loops": self.loops, "seconds": seconds,
                "loops_per_second": self.loops / seconds if seconds > 0 else None}

    def metrics(self) -> list[dict]:
        out = []
        for k, side in enumerate(self.sides):
            with self.locks[k]:
                out.append(side.metrics())
        return out

    def result(self) -> list[dict]:
        if self.exporter is not None:
            with self.exporting:  # the run is settled here (finished, or stopped at a consistent cut)
                self.exporter.maybe_export(self.sides, force=True)
                self.settled = [None] * len(self.sides)
        out = []
        for k, side in enumerate(self.sides):
            with self.locks[k]:
                out.append(side.result())
        return out


__all__ = ["FreeCoagent", "FreeCounters", "FreeEnvironment", "RunStart", "View", "previous_reads", "same_tick_reads"]
