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

Arrays that arrive through a compiled graph's channel are views of its buffer, which a
later execution overwrites: whatever a side keeps is copied here first.  Nothing here
imports Ray (``where`` does, lazily, when called inside an actor).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..tick import CoagentSide, EnvironmentSide, Flush, RunStart, Status, TickStart


@dataclass
class Command:
    """What the driver asks of one graph execution: "begin" (a run of ``episodes`` at ``tick``),
    "tick", "state", "result", "metrics" or "restore" (``state``: a whole run's state)."""

    kind: str
    episodes: int = 0
    tick: int = 0
    report_feedback: bool = False
    state: dict | None = None


@dataclass
class Envelope:
    """The environment worker's message to the coagent workers for one execution."""

    sequence: int
    kind: str
    message: object = None
    payload: dict = field(default_factory=dict)


def where() -> dict:
    """The node this actor runs on (for the run's placement record)."""
    import os

    import ray

    return {"node_id": ray.get_runtime_context().get_node_id(), "node_ip": ray.util.get_node_ip_address(),
            "pid": os.getpid()}


def _own(message):
    """A copy of a channel message's arrays that a side keeps (active mask, observation, value)."""
    if isinstance(message, TickStart):
        return TickStart(message.tick, np.array(message.active),
                         None if message.obs is None else np.array(message.obs),
                         None if message.value is None else np.array(message.value), message.feedback)
    return message


class EnvironmentWorker:
    """One micro-batch's ``EnvironmentSide`` (trials ``trial_start..trial_stop``)."""

    def __init__(self, index: int, network, env_id: str, env_kwargs: dict, seed: int, trial_start: int,
                 trial_stop: int, envs_per_trial: int, export_run: str | None = None):
        self.index = index
        self.side = EnvironmentSide(network, env_id, env_kwargs, seed, trial_start, trial_stop, envs_per_trial)
        self.sequence = 0
        self.exporter = None
        if export_run is not None:  # Ray's metrics (imports Ray, inside the actor only)
            from .exporter import RunExporter

            self.exporter = RunExporter(export_run)

    def ready(self) -> dict:
        return where()

    def start(self, command: Command) -> Envelope:
        self.sequence += 1
        kind = command.kind
        if kind == "begin":
            self.side.report_feedback = command.report_feedback
            return Envelope(self.sequence, "run", self.side.begin(command.episodes, command.tick))
        if kind == "tick":
            self.side.report_feedback = command.report_feedback
            message = self.side.start()
            return Envelope(self.sequence, "idle" if message is None else "tick", message)
        if kind == "restore":
            part = command.state["batches"][self.index]
            self.side.load_state_dict(part["env"])
            self.side.report_feedback = command.report_feedback
            return Envelope(self.sequence, "restore", payload=part["coagents"])
        return Envelope(self.sequence, kind)

    def step(self, envelope: Envelope, *outputs):
        """Finish the execution: the tick's status, or what a control request gathered."""
        parts = [out for out in outputs if out]
        kind = envelope.kind
        if kind == "tick" and isinstance(envelope.message, TickStart):
            merged = {}
            for out in parts:
                merged.update(out)
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
        self.exporter = None
        if export_run is not None:  # Ray's metrics (imports Ray, inside the actor only)
            from .exporter import CoagentExporter

            self.exporter = CoagentExporter(export_run)
        self.levels, self.exports, self.prev_exports = levels, set(exports), sorted(prev_exports)
        self.first_level = min(levels)
        self.sequence = [0] * len(slices)

    def ready(self) -> dict:
        return where()

    def _prepare(self, k: int, envelope: Envelope) -> None:
        """Apply the envelope once per execution: the environment side's message, or a restore."""
        if envelope.sequence == self.sequence[k]:
            return
        self.sequence[k] = envelope.sequence
        if envelope.kind in ("run", "tick") and envelope.message is not None:
            self.sides[k].receive(_own(envelope.message))
        elif envelope.kind == "restore":
            self.sides[k].load_state_dict(envelope.payload)

    def begin(self, k: int, envelope: Envelope) -> dict | None:
        """Previous-tick outputs that other workers read (after this tick's episode starts)."""
        self._prepare(k, envelope)
        if envelope.kind != "tick" or not isinstance(envelope.message, TickStart):
            return None
        return self.sides[k].previous(self.prev_exports)

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
                inputs.update({key: np.array(value) for key, value in values.items()})
        outputs = side.act(self.levels[level], inputs)
        if self.exporter is not None:
            self.exporter.maybe_export(self.sides)
        return {name: value for name, value in outputs.items() if name in self.exports}


__all__ = ["Command", "CoagentWorker", "Envelope", "EnvironmentWorker", "Flush", "RunStart", "Status"]
