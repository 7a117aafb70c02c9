"""The two workers of the distributed engine, as plain classes (made Ray actors in ``engine``).

They hold the core's two sides of a tick (``tick``) and add nothing but the transport:
``EnvironmentWorker`` holds one micro-batch's ``EnvironmentSide``; ``CoagentWorker``
holds a ``CoagentSide`` per micro-batch for its group of coagents.  One execution of
the tick graph carries a ``Command`` from the driver:

1. ``EnvironmentWorker.start(command)`` -> an ``Envelope`` for the coagent workers: for
   a tick, the environment side's ``TickStart`` (or ``Flush``); for a run's start, its
   ``RunStart``; or a control request (state, result, metrics, restore).
2. ``CoagentWorker.begin`` (only workers whose outputs others read as ``prev:NAME``)
   -> those previous-tick outputs, once the envelope's feedback is applied.
3. ``CoagentWorker.act`` once per same-tick level, in level order -> this tick's outputs.
4. ``EnvironmentWorker.step(envelope, *outputs)`` -> the environment side's ``Status``
   (or the gathered state, result or metrics).

The graph repeats these four steps ``stages`` times (``Envelope.stage``): stage s > 0
starts from stage s - 1's step, inside the environment worker, so one execution runs
``command.ticks`` ticks (at most ``stages``) with one driver round trip; the stages
beyond them, and every stage after the first for a control request, pass (``"pass"``).
The last stage's step answers the driver: the list of the ticks' statuses, or what the
control request gathered.

Arrays that arrive through a compiled graph's channel are read-only views of its buffer,
which a later execution overwrites: whatever a side keeps, or hands to the kernels, is copied
here first (writable, so the kernels run the version the in-process engine runs).  Discrete outputs
and observations of at most 127 values travel as int8 (``narrow``) and become int64 again
in that copy (``widen``): the same numbers, an eighth of the bytes.  Nothing here
imports Ray (``where`` does, lazily, when called inside an actor).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..tick import CoagentSide, EnvironmentSide, Feedback, Flush, RunStart, Status, TickStart


@dataclass
class Command:
    """What the driver asks of one graph execution: "begin" (a run of ``episodes`` at ``tick``),
    "tick" (``ticks`` atomic ticks), "state", "result", "metrics" or "restore" (``state``: a whole
    run's state)."""

    kind: str
    episodes: int = 0
    tick: int = 0
    report_feedback: bool = False
    state: dict | None = None
    ticks: int = 1


@dataclass
class Envelope:
    """The environment worker's message to the coagent workers for one stage of an execution."""

    sequence: int
    kind: str
    message: object = None
    payload: dict = field(default_factory=dict)
    last: bool = True  # the execution's last stage: its step answers the driver
    narrowed: bool = False  # the TickStart's observation travels as int8 (``narrow``)


def where(compiled: bool = False) -> dict:
    """The node this actor runs on (for the run's placement record).

    ``compiled``: the actor will run in a compiled graph; the graph's code is imported now.  Its
    first call into each actor (allocating a channel) would import it there otherwise: ``ray.dag``
    and its channels, about 0.1 s per actor, one actor after another while the driver compiles,
    instead of in parallel while the actors start."""
    import os

    import ray

    if compiled:
        import ray.dag.compiled_dag_node  # noqa: F401

    return {"node_id": ray.get_runtime_context().get_node_id(), "node_ip": ray.util.get_node_ip_address(),
            "pid": os.getpid()}


def narrow(value: np.ndarray) -> np.ndarray:
    """A discrete output or observation as it travels: int8 when its values fit (they are codes
    of a small space), an eighth of the int64 bytes to serialise, copy and read."""
    return value.astype(np.int8) if value.dtype == np.int64 else value


def widen(value: np.ndarray) -> np.ndarray:
    """The receiver's own copy of a value that travelled (``narrow`` undone: int64 again)."""
    return value.astype(np.int64) if value.dtype == np.int8 else np.array(value)


def _small(space) -> bool:
    """Values of ``space`` (a gymnasium or an input space) fit in int8: a discrete space of at most 127."""
    n = getattr(space, "n", None)
    return n is not None and int(n) <= 127 and int(getattr(space, "start", 0)) == 0


def _own_feedback(feedback: Feedback | None) -> Feedback | None:
    """The feedback's arrays as writable copies: the channel's views are read-only, and the kernels would
    then need (compile, or load) a second version of themselves for read-only arguments."""
    if feedback is None:
        return None
    return Feedback(np.array(feedback.reward), np.array(feedback.ended), np.array(feedback.active))


def _own(message, narrowed: bool = False):
    """A copy of a channel message's arrays that a side keeps (active mask, observation, value) or hands
    to the kernels (feedback); ``narrowed``: the observation travelled as int8."""
    if isinstance(message, TickStart):
        return TickStart(message.tick, np.array(message.active),
                         None if message.obs is None else widen(message.obs) if narrowed else np.array(message.obs),
                         None if message.value is None else np.array(message.value), _own_feedback(message.feedback))
    if isinstance(message, Flush):
        return Flush(_own_feedback(message.feedback))
    return message


class EnvironmentWorker:
    """One micro-batch's ``EnvironmentSide`` (trials ``trial_start..trial_stop``)."""

    def __init__(self, index: int, network, env_id: str, env_kwargs: dict, seed: int, trial_start: int,
                 trial_stop: int, envs_per_trial: int, export_run: str | None = None):
        self.index = index
        self.side = EnvironmentSide(network, env_id, env_kwargs, seed, trial_start, trial_stop, envs_per_trial)
        self.side.load_kernels()  # here, while the other actors start, rather than in the first tick
        self.small_obs = _small(self.side.env.observation_space)  # observations travel as int8
        self.sequence = 0
        self.plan, self.answers, self.answer = ("idle", 0, False), [], None  # the execution in progress
        self.exporter = None
        if export_run is not None:  # Ray's metrics (imports Ray, inside the actor only)
            from .exporter import RunExporter

            self.exporter = RunExporter(export_run)

    def ready(self, compiled: bool = False) -> dict:
        return where(compiled)

    def start(self, command: Command | None, stage: int = 0, last: bool = True) -> Envelope:
        """Stage ``stage`` of an execution: ``command`` is the driver's at stage 0 (later stages
        follow the previous stage's step and run the command's next tick, or pass)."""
        self.sequence += 1
        if stage == 0:
            self.plan = (command.kind, command.ticks, command.report_feedback)
            self.answers, self.answer = [], None
        else:
            kind, ticks, report_feedback = self.plan
            if kind != "tick" or stage >= ticks:
                return Envelope(self.sequence, "pass", last=last)
            command = Command("tick", report_feedback=report_feedback)
        return self._start(command, last)

    def _start(self, command: Command, last: bool) -> Envelope:
        kind = command.kind
        if kind == "begin":
            self.side.report_feedback = command.report_feedback
            return Envelope(self.sequence, "run", self.side.begin(command.episodes, command.tick), last=last)
        if kind == "tick":
            self.side.report_feedback = command.report_feedback
            message = self.side.start()
            narrowed = (self.small_obs and isinstance(message, TickStart) and message.obs is not None
                        and message.obs.dtype == np.int64)
            if narrowed:
                message = TickStart(message.tick, message.active, narrow(message.obs), message.value,
                                    message.feedback)
            return Envelope(self.sequence, "idle" if message is None else "tick", message, last=last,
                            narrowed=narrowed)
        if kind == "restore":
            part = command.state["batches"][self.index]
            self.side.load_state_dict(part["env"])
            self.side.report_feedback = command.report_feedback
            return Envelope(self.sequence, "restore", payload=part["coagents"], last=last)
        return Envelope(self.sequence, kind, last=last)

    def step(self, envelope: Envelope, *outputs):
        """Finish a stage; the last one answers the driver: the statuses of the ticks run (a tick
        command), or what a control request gathered."""
        if envelope.kind != "pass":
            answer = self._step(envelope, outputs)
            if self.plan[0] == "tick":
                self.answers.append(answer)
            else:
                self.answer = answer
        if not envelope.last:
            return None
        answer = self.answers if self.plan[0] == "tick" else self.answer
        self.answers, self.answer = [], None
        return answer

    def _step(self, envelope: Envelope, outputs):
        """The tick's status, or what a control request gathers."""
        parts = [out for out in outputs if out]
        kind = envelope.kind
        if kind == "tick" and isinstance(envelope.message, TickStart):
            merged = {}
            for out in parts:
                merged.update({name: widen(value) for name, value in out.items()})
            status = self.side.finish(merged)
            if self.exporter is not None:
                self.exporter.maybe_export(self.side)
            return status
        if kind == "state":
            return {"env": self.side.state_dict(), "coagents": CoagentSide.merged(parts)}
        if kind == "result":
            if self.exporter is not None:
                self.exporter.maybe_export(self.side, force=True)
            coagents = {}
            for out in parts:
                coagents.update(out)
            return {**self.side.result(), "coagents": coagents}
        if kind == "metrics":
            return {"env": self.side.metrics(), "coagents": parts}
        return self.side.status()

    def close(self) -> None:
        self.side.close()


class CoagentWorker:
    """A ``CoagentSide`` of the coagents ``names`` for every micro-batch ``slices``.

    ``levels[l]``: this worker's coagents at same-tick level l (in network order);
    ``exports``: names whose outputs leave this worker (read by other workers or the
    environment); ``prev_exports``: names other workers read as ``prev:NAME``.
    """

    def __init__(self, network, names: list[str], observation_space, action_space,
                 slices: list[tuple[int, int]], envs_per_trial: int, seed: int, levels: dict[int, list[str]],
                 exports: set[str], prev_exports: set[str], raster=None, export_run: str | None = None):
        self.sides = [CoagentSide(network, names, observation_space, action_space, b - a, envs_per_trial, seed, a,
                                  raster=raster) for a, b in slices]
        self.sides[0].load_kernels()  # here, while the other actors start, rather than in the first tick
        self.exporter = None
        if export_run is not None:  # Ray's metrics (imports Ray, inside the actor only)
            from .exporter import CoagentExporter

            self.exporter = CoagentExporter(export_run)
        self.levels, self.exports, self.prev_exports = levels, set(exports), sorted(prev_exports)
        self.first_level = min(levels)
        units = self.sides[0].units
        self.small = {name for name in units if _small(units[name].output_space)}  # outputs travel as int8
        self.sequence = [0] * len(slices)

    def ready(self, compiled: bool = False) -> dict:
        return where(compiled)

    def _prepare(self, k: int, envelope: Envelope) -> None:
        """Apply the envelope once per execution: the environment side's message, or a restore."""
        if envelope.sequence == self.sequence[k]:
            return
        self.sequence[k] = envelope.sequence
        if envelope.kind in ("run", "tick") and envelope.message is not None:
            self.sides[k].receive(_own(envelope.message, envelope.narrowed))
        elif envelope.kind == "restore":
            self.sides[k].load_state_dict(envelope.payload)

    def begin(self, k: int, envelope: Envelope) -> dict | None:
        """Previous-tick outputs that other workers read (after this tick's episode starts)."""
        self._prepare(k, envelope)
        if envelope.kind != "tick" or not isinstance(envelope.message, TickStart):
            return None
        return {key: narrow(value) if key[5:] in self.small else value
                for key, value in self.sides[k].previous(self.prev_exports).items()}

    def act(self, k: int, level: int, envelope: Envelope, *received: dict | None) -> dict | None:
        """Run this worker's coagents of ``level`` for micro-batch k; returns the exported outputs."""
        self._prepare(k, envelope)
        side, kind = self.sides[k], envelope.kind
        if kind in ("state", "result", "metrics"):
            if level != self.first_level:
                return None
            if kind == "state":
                return side.state_dict()
            if kind == "result":
                if self.exporter is not None and k == len(self.sides) - 1:
                    self.exporter.maybe_export(self.sides, force=True)
                return side.result()
            return side.metrics()
        if kind != "tick" or not isinstance(envelope.message, TickStart):
            return None
        inputs = {}
        for values in received:  # copies: holding a view of a channel's buffer would block its writer
            if values:
                inputs.update({key: widen(value) for key, value in values.items()})
        outputs = side.act(self.levels[level], inputs)
        if self.exporter is not None:
            self.exporter.maybe_export(self.sides)
        return {name: narrow(value) if name in self.small else value
                for name, value in outputs.items() if name in self.exports}


__all__ = ["Command", "CoagentWorker", "Envelope", "EnvironmentWorker", "Flush", "RunStart", "Status"]
