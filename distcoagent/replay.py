"""The record of a free-running run, and its replay through the in-process engine.

A free-running run (``freerun``) writes ``executions.msgpack`` into its run directory:
one record per sealed environment step of each micro-batch, appended as the run goes
(msgpack values one after another, no pickle):

- ``{"k", "tick", "batch", "executed": {coagent: packed bits over the micro-batch's
  environments}, "rows": [sampled global environment indices], "outputs": {coagent:
  [its output there]}, "seen": {coagent: {"tick", "envs", "executed", "inputs": {input:
  [values]}}}}``: who executed at that step, and, for the sampled environments, what
  each executing coagent read and what every coagent's output was;
- ``{"kind": "restore", "k", "tick"}``: the run went back to the snapshot of that tick
  (after a lost actor, or a resume); records of micro-batch k from that tick on that
  were written before it no longer count;
- ``{"kind": "tick clock", "k", "tick"}``: the run was resumed there on the tick clock
  (``train --resume RUN --clock tick``), which records nothing: from that tick on the
  replay draws executions as the tick clock does, and the parameters still agree.

``replay`` runs the in-process engine over the same trials, seed and micro-batches with
those executions forced (``ExecutionSchedule``) and checks that it ends with the same
parameters, bit for bit, and that every recorded output agrees: each coagent learned
from exactly what it saw, and the realised pattern is one the ACPGT covers.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import serialize
from .network import SpecError

FILE = "executions.msgpack"


class ExecutionLog:
    """Appends records to a run directory's ``executions.msgpack`` (flushed after each batch)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.whole = False  # a record cut short at the file's end was dropped (once, before appending)

    def append(self, records) -> None:
        if not records:
            return
        if not self.whole:  # a resumed run must not append after half a record: that would hide the rest
            self.whole = True
            if self.path.exists():
                with open(self.path, "rb+") as f:
                    end = serialize.whole_values_end(f)  # None: damage before the end, kept for replay to name
                    if end is not None and end < f.seek(0, os.SEEK_END):
                        f.truncate(end)
        with open(self.path, "ab") as f:
            for record in records:
                f.write(serialize.dumps(record))

    def mark_restore(self, k: int, tick: int) -> None:
        self.append([{"kind": "restore", "k": int(k), "tick": int(tick)}])

    def mark_tick_clock(self, k: int, tick: int) -> None:
        """Micro-batch k goes on from ``tick`` on the tick clock (a restore there, and nothing recorded after)."""
        self.append([{"kind": "restore", "k": int(k), "tick": int(tick)},
                     {"kind": "tick clock", "k": int(k), "tick": int(tick)}])


def read_records(path: str | Path, restores: list | None = None, tick_clock: dict | None = None) -> list[dict]:
    """The step records that count, in order (restore markers applied; appended to ``restores``; the ticks
    each micro-batch ran on the tick clock put in ``tick_clock``, k -> [[start, end or None], ...]).

    A restore to tick t drops what was written of micro-batch k from t on: its step records, and the
    spans it ran on the tick clock from t on; a tick clock marker at t opens a span there."""
    records: list[dict] = []
    spans: dict[int, list] = {}
    with open(path, "rb") as f:
        for value in serialize.iter_loads(f):
            if not isinstance(value, dict):
                raise ValueError(f"{path}: not an execution record ({type(value).__name__})")
            _check_record(value, path)
            if value.get("kind") == "tick clock":
                spans.setdefault(value["k"], []).append([value["tick"], None])
            elif value.get("kind") == "restore":
                k, tick = value["k"], value["tick"]
                spans[k] = [[a, tick if b is None or b > tick else b] for a, b in spans.get(k, []) if a < tick]
                records = [r for r in records if r["k"] != k or r["tick"] < tick]
                if restores is not None:
                    restores.append(value)
            else:
                records.append(value)
    if tick_clock is not None:
        tick_clock.update({k: v for k, v in spans.items() if v})
    return records


# a step record's fields and their kinds (``freerun.FreeEnvironment`` writes them); a restore marker has k, tick
_STEP = {"k": int, "tick": int, "batch": int, "executed": dict, "rows": list, "outputs": dict}


def _check_record(value: dict, path) -> None:
    """A record's fields are there and of their kinds, else ValueError naming the first that is not."""
    marker = value.get("kind") in ("restore", "tick clock")
    fields = ("k", "tick") if marker else tuple(_STEP)
    for name in fields:
        kind = _STEP[name]
        if isinstance(value.get(name), bool) or not isinstance(value.get(name), kind):
            raise ValueError(f"{path}: a record's {name!r} is missing or not {kind.__name__} "
                             f"({type(value.get(name)).__name__})")
    if not marker:
        packed = (value["batch"] + 7) // 8 if value["batch"] >= 0 else -1
        if not all(isinstance(b, np.ndarray) and b.dtype == np.uint8 and b.size == packed
                   for b in value["executed"].values()):
            raise ValueError(f"{path}: a record's executions are not packed bits of its batch")
        if not all(isinstance(v, list) and len(v) == len(value["rows"]) for v in value["outputs"].values()):
            raise ValueError(f"{path}: a record's outputs do not match its rows")


@dataclass
class ExecutionSchedule:
    """Recorded executions to impose, by micro-batch and tick (see ``InProcessEngine(forced=)``).

    ``seen`` compares what the replay computes with the recorded outputs of the sampled
    environments; the first disagreements are kept in ``mismatches``."""

    slices: list[tuple[int, int]]
    envs_per_trial: int
    steps: dict = field(default_factory=dict)     # (k, tick) -> record
    mismatches: list = field(default_factory=list)
    checked: int = 0
    tick_clock: dict = field(default_factory=dict)  # k -> the [start, end or None] spans k ran on the tick clock

    @classmethod
    def from_records(cls, records, slices, envs_per_trial, tick_clock=None) -> "ExecutionSchedule":
        schedule = cls([tuple(s) for s in slices], envs_per_trial, tick_clock=dict(tick_clock or {}))
        for r in records:
            schedule.steps[(int(r["k"]), int(r["tick"]))] = r
        return schedule

    def drawn(self, k: int, tick: int) -> bool:
        """Micro-batch k ran this tick on the tick clock: its executions are drawn, as that clock draws them."""
        return any(a <= tick and (b is None or tick < b) for a, b in self.tick_clock.get(k, ()))

    def at(self, k: int, tick: int, env_index: np.ndarray) -> dict[str, np.ndarray] | None:
        if self.drawn(k, tick):
            return None
        record = self.steps.get((k, tick))
        if record is None:
            raise SpecError(f"replay: {FILE}: no record of atomic tick {tick} of micro-batch {k}; the record is "
                            "incomplete or damaged (the run stopped without a checkpoint after it, or the file "
                            "was cut or changed)")
        local = env_index - self.slices[k][0] * self.envs_per_trial
        B = record["batch"]
        return {n: np.unpackbits(np.asarray(bits, dtype=np.uint8), count=B).astype(bool)[local]
                for n, bits in record["executed"].items()}

    def seen(self, k: int, tick: int, env_index: np.ndarray, outputs: dict[str, np.ndarray]) -> None:
        if self.drawn(k, tick):
            return
        record = self.steps[(k, tick)]
        if not record["rows"]:
            return
        where = {int(e): i for i, e in enumerate(env_index)}
        for n, values in record["outputs"].items():
            for env, value in zip(record["rows"], values):
                if env not in where:
                    continue
                self.checked += 1
                got = np.asarray(outputs[n])[where[env]]
                if not np.array_equal(got, np.asarray(value)) and len(self.mismatches) < 10:
                    self.mismatches.append({"tick": tick, "coagent": n, "env": env, "recorded": value,
                                            "replayed": got.tolist()})


@dataclass
class ReplayReport:
    """What ``replay`` found: ``identical`` when every parameter and recorded output agrees."""

    steps: int
    outputs_checked: int
    output_mismatches: list
    parameter_differences: dict[str, float]   # "coagent.param" -> max |difference|, when not equal
    executions: dict[str, int]

    @property
    def identical(self) -> bool:
        return not self.output_mismatches and not self.parameter_differences


@dataclass
class FinishedRun:
    """A run directory read back: its network, environment, train table and final parameters."""

    run_dir: Path
    network: object
    env_id: str
    env_kwargs: dict
    train: dict
    params: dict


def read_finished_run(run_dir: str | Path, where: str, network=None, needs: tuple = (),
                      hint: str = "") -> FinishedRun:
    """``run_dir``'s config.json, network and params.msgpack (and the files ``needs`` names, as (file, what)),
    or a SpecError naming the file and what ``where`` (the command) expected.  ``network``: for runs started
    from Python with parts no spec describes."""
    from .spec import parse
    from .training import read_run_config, spec_of_run

    if not isinstance(run_dir, (str, os.PathLike)) or not str(run_dir).strip():
        raise SpecError(f"{where}: expected a run directory, got {run_dir!r}")
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise SpecError(f"{where}: {run_dir} is a file, expected a run directory")
    config_file, params_file = run_dir / "config.json", run_dir / "params.msgpack"
    for name, what in (("config.json", "a run directory"), *needs, ("params.msgpack", "a finished run's parameters")):
        if not (run_dir / name).is_file():
            raise SpecError(f"{where}: {run_dir} has no {name}; expected {what}{hint}")
    config = read_run_config(run_dir, where)
    train = config["train"]
    missing = [k for k in ("trials", "envs_per_trial", "seed", "micro_batches", "episodes") if k not in train]
    if missing:
        raise SpecError(f"{where}: {config_file} is damaged (its train table has no {missing[0]})")
    env = dict(config["env"])
    env_id = env.pop("id", None)
    if not isinstance(env_id, str):
        raise SpecError(f"{where}: {config_file} is damaged (its env table has no id)")
    if network is None:
        raw = spec_of_run(config)
        if raw is None:
            raise SpecError(f"{where}: {run_dir} was started from Python with parts no spec describes (a Python "
                            f"function, a subclass, an option TOML cannot hold); pass network= to {where}()")
        network = parse(raw, str(config_file)).network
    try:
        saved = serialize.loads(params_file.read_bytes())
    except Exception as error:  # msgpack raises several types for truncated or garbled data
        raise SpecError(f"{where}: {params_file} is damaged ({type(error).__name__}: {error})") from None
    if not isinstance(saved, dict):
        raise SpecError(f"{where}: {params_file} is damaged (expected a table of coagents' parameters)")
    return FinishedRun(run_dir, network, env_id, env, train, saved)


def replay(run_dir: str | Path, network=None) -> ReplayReport:
    """Replay a free-running run's record through the in-process engine (see the module docstring).

    ``network``: for runs started from Python without a spec (the run directory's spec is
    used otherwise)."""
    from .engine import InProcessEngine

    run = read_finished_run(run_dir, "replay", network, needs=((FILE, "a free-running run's record"),),
                            hint=" (train with --clock free)")
    run_dir, network, env_id, env, train, saved = (run.run_dir, run.network, run.env_id, run.env_kwargs, run.train,
                                                   run.params)
    record_file = run_dir / FILE
    restores: list = []
    tick_clock: dict = {}
    try:
        records = read_records(record_file, restores, tick_clock)
    except (ValueError, KeyError, TypeError) as error:
        raise SpecError(f"replay: {record_file} is damaged ({type(error).__name__}: {error})") from None
    for r in records:
        unknown = sorted((set(r["executed"]) | set(r["outputs"]) | set(r.get("seen") or {})) - set(network.order))
        if unknown:
            raise SpecError(f"replay: {record_file} is damaged (a record names {unknown[0]!r}, not a coagent of "
                            f"the run's network: {', '.join(network.order)})")
    engine = InProcessEngine(network, env_id, env, trials=train["trials"], envs_per_trial=train["envs_per_trial"],
                             seed=train["seed"], micro_batches=train["micro_batches"], compact=False)
    if restores and not all(getattr(side.env, "restorable", False) for side in engine.env_sides):
        engine.close()
        raise SpecError(f"replay: {run_dir} was resumed or recovered {len(restores)} time(s) on {env_id}, whose "
                        "episodes restart at a restore (a gymnasium environment cannot be saved); a replay from "
                        "the start cannot follow that. Built-in environments, and uninterrupted runs, replay")
    schedule = ExecutionSchedule.from_records(records, engine.slices, engine.envs_per_trial, tick_clock)
    engine.forced = schedule
    try:
        result = engine.train(train["episodes"])
    finally:
        engine.close()
    differences = {}
    for name, params in result.params.items():
        for key, value in params.items():
            theirs = saved.get(name, {}).get(key) if isinstance(saved.get(name), dict) else None
            if theirs is None:
                differences[f"{name}.{key}"] = float("inf")  # not in the saved parameters
                continue
            theirs = np.asarray(theirs)
            if theirs.shape != value.shape:
                differences[f"{name}.{key}"] = float("inf")
            elif not np.array_equal(theirs, value):
                differences[f"{name}.{key}"] = float(np.max(np.abs(theirs - value)))
    return ReplayReport(len(records), schedule.checked, schedule.mismatches, differences,
                        {n: c["executions"] for n, c in result.counters.items()})
