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
- **The sealing rule** keeps what everyone saw consistent.  When a coagent reads
  another's output for the open step, that entry is final for that step; so is
  everything once the environment seals the step.  A publication for a step that is
  sealed, or whose entry somebody already read, is *late*: the board refuses it and
  the coagent takes its step back (its state before the step is restored) and holds
  instead.  Hence, per step, each coagent either executed on exactly the inputs that
  every reader of its output also saw, or held: the realised run is an execution of
  the ACPGT's network with some pattern E_t^i, where timing, independent of the
  parameters, plays the part of the execution function.

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

import threading
import time
from dataclasses import dataclass, field

import numpy as np

from .coagent import initial_outputs
from .network import Network
from .rng import Stream
from .tick import CoagentSide, EnvironmentSide, Flush, RunStart, TickStart


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
    one, if still open and the group has not published for it), else None; ``inputs``: the
    other coagents' outputs it reads ("NAME": this step's, "prev:NAME": the step before's);
    ``done``: the environment has posted its last message."""

    sequence: int
    messages: list
    open_tick: int | None
    inputs: dict[str, np.ndarray]
    done: bool


@dataclass
class FreeCounters:
    """Per coagent: opportunities (newest steps it reached while open), accepted and late publications."""

    opportunities: int = 0
    published: int = 0
    late: int = 0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class FreeEnvironment:
    """One micro-batch's environment side and its board (see the module docstring).

    ``groups``: the coagent groups (one per coagent actor); ``rate``: environment steps per
    second (None: as fast as it can); ``record_envs``: global indices of the environments whose
    inputs and outputs the record keeps.
    """

    def __init__(self, index: int, network: Network, env_id: str, env_kwargs: dict, seed: int, trial_start: int,
                 trial_stop: int, envs_per_trial: int, groups, rate: float | None = None, record_envs=()):
        self.index, self.network = index, network
        self.side = EnvironmentSide(network, env_id, env_kwargs, seed, trial_start, trial_stop, envs_per_trial)
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
        self.read_now: set[str] = set()           # entries read at the open step: final
        self.published: set[int] = set()          # groups that published for the open step
        self.executed: dict[str, np.ndarray] = {}
        self.seen: dict[str, dict] = {}
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

    def _post(self, message) -> None:
        self.sequence += 1
        self.messages[self.sequence] = message
        self.cond.notify_all()

    # ------------------------------------------------------------------ the environment's loop
    def run(self) -> int:
        """Step until the run is finished or stopped; returns the steps taken."""
        period = None if not self.rate else 1.0 / self.rate
        next_time = time.monotonic()
        self.looping = True
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
            self.open_tick, self.read_now, self.published = message.tick, set(), set()
            self.executed, self.seen = {}, {}
            self._post(message)
            return True

    def seal_step(self) -> None:
        """Seal the open step: the outputs are final, the environment acts, the step is recorded."""
        with self.cond:
            tick, outputs = self.open_tick, self.current
            self.open_tick = None
            self.side.finish({a: outputs[a] for a in self.network.action_coagents})
            B, rows = self.side.batch, self.record_rows
            record = {"k": self.index, "tick": tick, "batch": B,
                      "executed": {n: np.packbits(self.executed.get(n, np.zeros(B, bool))) for n in outputs},
                      "rows": self.env_ids[rows].tolist(),
                      "outputs": {n: np.asarray(v)[rows].tolist() for n, v in outputs.items()},
                      "seen": self.seen}
            self.records.append(record)
            self.held = outputs
            self.steps += 1
            self.cond.notify_all()

    # ------------------------------------------------------------------ what the coagents call
    def read(self, group: int, after: int, wait: float = 0.2) -> View:
        """Messages since ``after`` and the newest inputs of ``group``; waits up to ``wait`` s for news.
        Reading another coagent's output for the open step makes that entry final for the step."""
        with self.cond:
            deadline = time.monotonic() + wait
            while self.sequence <= after and not self.finished and not self.stopped:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(left)
            messages = [self.messages[s] for s in range(after + 1, self.sequence + 1)]
            self.consumed[group] = max(self.consumed[group], self.sequence)
            for s in [s for s in self.messages if s <= min(self.consumed)]:
                del self.messages[s]
            last = messages[-1] if messages else None
            chance = (isinstance(last, TickStart) and last.tick == self.open_tick and group not in self.published)
            source = self.current if self.open_tick is not None else self.held
            inputs = {n: np.array(source[n]) for n in self.reads[group]}
            inputs.update({"prev:" + n: np.array(self.held[n]) for n in self.prev_reads[group]})
            if chance:
                self.read_now |= self.reads[group]
                for n in self.groups[group]:
                    self.counters[n].opportunities += 1
            return View(self.sequence, messages, last.tick if chance else None, inputs,
                        self.finished and not self.stopped)

    def publish(self, group: int, tick: int, outputs: dict[str, np.ndarray], executed: dict[str, np.ndarray],
                seen: dict | None = None) -> bool:
        """Outputs of ``group`` for step ``tick``: accepted (True) unless late (see the module docstring)."""
        names = self.groups[group]
        with self.cond:
            late = (tick != self.open_tick or group in self.published or any(n in self.read_now for n in names))
            for n in names:
                if late:
                    self.counters[n].late += 1
                else:
                    self.counters[n].published += 1
                    self.current[n] = np.array(outputs[n])
                    self.executed[n] = np.array(executed[n], dtype=bool)
            if not late:
                self.published.add(group)
                self.seen.update(seen or {})
            return not late

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
            book, critic = self.side.book, self.side.critic
            return {"returns": book.returns.copy(), "lengths": book.lengths.copy(),
                    "critic": None if critic is None else critic.params["w"].copy(), "tick": self.side.tick,
                    "finished": self.side.phase == "done"}

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
                 raster=None, record_envs=()):
        self.network, self.names, self.group = network, tuple(names), group
        self.sides = [CoagentSide(network, names, observation_space, action_space, b - a, envs_per_trial, seed, a,
                                  raster=raster) for a, b in slices]
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
        self.loops = 0

    def ready(self) -> dict:
        from .ray_engine.actors import where

        return where()

    def connect(self, boards) -> None:
        self.boards = list(boards)

    def restore(self, k: int, coagent_state: dict) -> None:
        with self.locks[k]:
            self.sides[k].load_state_dict(coagent_state)
            self.sequence[k], self.done[k] = 0, False

    # ------------------------------------------------------------------ the loop
    def run(self, wait: float = 0.2) -> int:
        """Loop over this group's micro-batches until all are done (or ``stop``); returns the loops."""
        period = None if not self.rate else 1.0 / self.rate
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
        return self.loops

    def iterate(self, k: int, wait: float = 0.2) -> None:
        """Once round the loop for micro-batch k: read, catch up (holds), maybe execute and publish."""
        view = self.boards[k].read(self.group, self.sequence[k], wait)
        with self.locks[k]:
            side = self.sides[k]
            last = len(view.messages) - 1
            for i, message in enumerate(view.messages):
                side.receive(message)
                if not isinstance(message, TickStart):
                    continue
                if i == last and view.open_tick == message.tick:
                    self._try(k, message.tick, view.inputs)
                else:
                    side.act(None, view.inputs, self.holds[k])
            self.sequence[k] = view.sequence
            self.done[k] = view.done and not view.messages or any(isinstance(m, Flush) for m in view.messages)
            self.loops += 1
        with self.progress:
            self.progress.notify_all()

    def _try(self, k: int, tick: int, inputs: dict) -> None:
        """The newest step is open: draw, maybe execute and publish; a late publication is taken back."""
        side = self.sides[k]
        before = {n: u.state_dict() for n, u in side.units.items()}
        outputs = side.act(None, inputs)
        executed = {n: u.last_executed.copy() for n, u in side.units.items()}
        if not any(e.any() for e in executed.values()):
            return  # every environment holds: exactly what the board assumes
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
        if self.boards[k].publish(self.group, tick, outputs, executed, seen):
            return
        for n, u in side.units.items():  # late: this step becomes a hold
            u.load_state_dict(before[n])
        side.capture_previous()
        side.act(None, inputs, self.holds[k])

    def stop(self) -> None:
        self.stopped = True

    # ------------------------------------------------------------------ the driver's requests
    def state(self, k: int, sequence: int, timeout: float = 60.0) -> dict:
        """Micro-batch k's side once it has processed every message up to ``sequence``."""
        deadline = time.monotonic() + timeout
        with self.progress:
            while self.sequence[k] < sequence:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"coagent(s) {', '.join(self.names)} did not catch up with message "
                                       f"{sequence} of micro-batch {k} within {timeout:g} s")
                self.progress.wait(0.05)
        with self.locks[k]:
            return self.sides[k].state_dict()

    def metrics(self) -> list[dict]:
        out = []
        for k, side in enumerate(self.sides):
            with self.locks[k]:
                out.append(side.metrics())
        return out

    def result(self) -> list[dict]:
        out = []
        for k, side in enumerate(self.sides):
            with self.locks[k]:
                out.append({n: {"learned": u.learned(), "counters": dict(u.counters)} for n, u in side.units.items()})
        return out


__all__ = ["FreeCoagent", "FreeCounters", "FreeEnvironment", "RunStart", "View", "previous_reads", "same_tick_reads"]
