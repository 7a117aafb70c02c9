"""``train``: one call from a network (or spec) to results, with an optional run directory.

The run directory holds ``config.json`` (written first), then ``returns.csv``
(trial, env, episode, return, length), ``curve.csv`` (mean and standard error per
episode), ``counters.json`` (per-coagent ticks, executions, updates, episodes),
``params.msgpack`` (final parameters, no pickle), ``summary.json`` and
``learning_curve.png``; while it runs, ``metrics.jsonl`` (``recording``), which the
dashboard follows.  If the run fails (say a NaN reward), what was learned so far
is written all the same, with ``error.txt``; nothing written earlier is removed.
"""
from __future__ import annotations

import contextlib
import copy
import csv
import glob
import json
import math
import os
import time
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from . import checkpoint, serialize
from .checks import is_number, named, writable_place
from .contract import Observer, check_run_arguments
from .engine import InProcessEngine, TrainResult
from .limits import check_memory
from .network import Network, SpecError
from .recording import MetricsLog
from .replay import FILE as REPLAY_FILE
from .spec import RunSpec, TrainConfig
from .tick import RasterSpec


RASTER_ENVS = 4  # environments whose executions a run directory's metrics.jsonl records


def make_engine(network: Network, env_id: str, env_kwargs: dict, config: TrainConfig, ray_options: dict | None = None,
                raster: RasterSpec | None = None, free_options: dict | None = None, record: Path | None = None,
                threads: int | None = None):
    """The engine named by ``config.engine`` and ``config.clock``, built for the run (``ray_options``:
    RayEngine placement; ``free_options``: the [free] table; ``record``: the free-running record;
    ``threads``: the in-process engine's, default ``DISTCOAGENT_THREADS`` or every CPU)."""
    if threads is not None and (config.engine != "inprocess" or config.clock != "tick"):
        raise SpecError(f"threads: only the in-process engine runs trials on threads; got {threads!r} with the "
                        f"{config.engine} engine" + (" on the free-running clock" if config.clock == "free" else ""))
    common = dict(trials=config.trials, envs_per_trial=config.envs_per_trial, seed=config.seed,
                  micro_batches=config.micro_batches, raster=raster)
    options = dict(ray_options or {})
    layout = options.pop("layout", "coagents")
    if config.clock == "free":
        from .ray_engine.free import FreeRunningEngine

        free = free_options or {}
        return FreeRunningEngine(network, env_id, env_kwargs, address=config.address, env_rate=free.get("env_rate"),
                                 coagents=free.get("coagents"), record=record, **common, **options)
    if config.engine == "ray" and layout == "trials":
        from .ray_engine.sharded import ShardedEngine

        return ShardedEngine(network, env_id, env_kwargs, address=config.address, **common, **options)
    if config.engine == "ray":
        from .ray_engine import RayEngine

        return RayEngine(network, env_id, env_kwargs, address=config.address, **common, **options)
    if config.address is not None:
        hint = named('engine="ray"', "--engine ray")
        raise SpecError(f"address: only the ray engine joins a cluster; add {hint}")
    return InProcessEngine(network, env_id, env_kwargs, threads=threads, **common)


RUN_FILES = ("config.json", "returns.csv", "curve.csv", "counters.json", "params.msgpack", "summary.json",
             "learning_curve.png", "metrics.jsonl", "error.txt", "placement.json", checkpoint.FILE, REPLAY_FILE)


class Checkpointer(Observer):
    """Writes the run's checkpoint every ``every_episodes`` episodes or ``every_seconds`` seconds
    (whichever comes first; None: never), and at the end of ``train``."""

    def __init__(self, run_dir: Path, config_hash: str, every_episodes: int | None = None,
                 every_seconds: float | None = 300.0):
        self.run_dir, self.config_hash = run_dir, config_hash
        self.every_episodes, self.every_seconds = every_episodes, every_seconds
        self.metrics_every = 1.0 if (every_episodes or every_seconds) else None
        self.engine, self.last_time, self.last_episodes, self.written = None, 0.0, 0, 0

    def on_start(self, engine, episodes):
        self.engine, self.last_time = engine, time.monotonic()

    def on_metrics(self, metrics):
        due_time = self.every_seconds is not None and time.monotonic() - self.last_time >= self.every_seconds
        due_episodes = self.every_episodes is not None and \
            metrics.episodes_done - self.last_episodes >= self.every_episodes
        if due_time or due_episodes:
            self.save(metrics.episodes_done)

    def save(self, episodes_done: int | None = None) -> Path:
        path = checkpoint.write(self.run_dir, self.engine.state(), self.config_hash)
        self.last_time, self.written = time.monotonic(), self.written + 1
        if episodes_done is not None:
            self.last_episodes = episodes_done
        return path

    def on_end(self, result):
        self.save()


def _run_config(network: Network, env: str, env_kwargs: dict, config: TrainConfig) -> dict:
    """What determines a run's numbers: its checkpoints carry this config's hash."""
    return {"env": {"id": env, **env_kwargs}, "network": network.to_config(),
            "run": {k: getattr(config, k) for k in ("episodes", "trials", "envs_per_trial", "seed", "micro_batches")}}


def _hash_before_min_log_std(network: Network, env: str, env_kwargs: dict, config: TrainConfig) -> str | None:
    """The hash earlier versions gave this run, which recorded no Gaussian's ``min_log_std`` (None if it has
    no Gaussian with another floor than the default: its hash did not change)."""
    described = _run_config(network, env, env_kwargs, config)
    floors = [c["policy"] for c in described["network"]["coagents"] if "min_log_std" in c["policy"]]
    if not floors:
        return None
    for policy in floors:
        del policy["min_log_std"]
    return checkpoint.spec_hash(described)


def check_run_dir(out: str | Path, *, resume: bool, overwrite: bool) -> Path:
    """The run directory ``out``, checked and left as it is: refused if it is a file, if it holds a run
    (unless resuming or overwriting), if it holds none to resume, or if a run file's name is taken by
    something that is not a file (a checkpoint could not be written there at the end)."""
    run_dir = Path(out)
    flag = named("out", "--resume" if resume else "--out")
    longest = max(run_dir.parts, key=lambda part: len(os.fsencode(part)), default="")
    if len(os.fsencode(longest)) > 255:  # NAME_MAX of every common filesystem; the OS's error named no flag
        raise SpecError(f"{flag}: a name in the path is {len(os.fsencode(longest))} bytes long "
                        f"({longest[:24]}...{longest[-8:]}); expected at most 255 bytes per folder name")
    if run_dir.exists() and not run_dir.is_dir():
        raise SpecError(f"{flag}: {run_dir} is a file, expected a run directory (a new or empty folder)")
    holds_run = (run_dir / "config.json").is_file()
    if holds_run and not resume and overwrite and not _a_runs_config(run_dir / "config.json"):
        raise SpecError(f"{flag}: {run_dir} holds a config.json that is not a run's (train writes env, train and "
                        f"spec tables); {named('overwrite=True', '--overwrite')} replaces only a run: expected a new or "
                        "empty folder, or a run directory")
    if resume and not run_dir.exists():
        raise SpecError(f"{flag}: {run_dir} does not exist; expected the run directory of a run to continue")
    if resume and not holds_run:
        raise SpecError(f"{flag}: {run_dir} is not a run directory (it has no config.json)")
    if resume and not (run_dir / checkpoint.FILE).exists() and _summary(run_dir).get("finished") is True:
        raise SpecError(f"{flag}: {run_dir} has finished (summary.json) and has no {checkpoint.FILE} to go on "
                        "from: there is nothing to resume, and training it again would replace its results; "
                        f"expected a run that stopped before its end (a new run: another "
                        f"{named('out', '--out')})")
    if not resume and holds_run and not overwrite:
        raise SpecError(f"{flag}: {run_dir} already holds a run; pass {named('resume=True', f'--resume {run_dir}')} "
                        f"to continue it, or {named('overwrite=True', '--overwrite')} to replace it")
    taken = [name for name in RUN_FILES if (run_dir / name).exists()] if not holds_run else []
    if taken:  # not a run's directory, but files a run would write over
        raise SpecError(f"{flag}: {run_dir} holds {', '.join(taken[:3])}, not from a run (it has no config.json); "
                        "expected a new or empty folder, or a run directory")
    for name in RUN_FILES:
        path = run_dir / name
        if path.exists() and not path.is_file():
            raise SpecError(f"{flag}: {path} is not a file; the run writes its {name} there (move it away)")
    writable_place(run_dir, flag)
    return run_dir


def prepare_run_dir(out: str | Path, *, resume: bool, overwrite: bool, held=None):
    """``check_run_dir``, then the directory made ready and held by this process (``hold_run_dir``; ``held``:
    the hold already taken): the check again under the hold, an overwritten run's files and the temporary
    files of a killed writer removed, the folder made.  Call it once everything else about the run has been
    checked: it is what cannot be undone.  Returns the hold (close it when the run is over)."""
    run_dir = check_run_dir(out, resume=resume, overwrite=overwrite)
    if not resume:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:  # what os.access cannot foresee: root in /sys or /proc, a read-only mount
            raise SpecError(f"{named('out', '--out')}: {run_dir} cannot be made ({error.strerror or error}); "
                            "expected a folder this process may create") from None
    if held is None:
        held = hold_run_dir(run_dir, named("out", "--resume" if resume else "--out"))
    try:
        check_run_dir(run_dir, resume=resume, overwrite=overwrite)  # another process may have begun a run here
        for name in RUN_FILES:  # a process killed while writing leaves its temporary file (checkpoint.write)
            for stale in run_dir.glob(f".{glob.escape(name)}.*.tmp"):
                stale.unlink(missing_ok=True)
        if not resume and (run_dir / "config.json").is_file():  # overwrite
            for name in RUN_FILES:
                (run_dir / name).unlink(missing_ok=True)
    except BaseException:
        held.close()
        raise
    return held


def hold_run_dir(run_dir: Path, flag: str):
    """This process's hold on ``run_dir``: an advisory ``flock`` on the directory itself (no file is made),
    which ends with the process however it ends, ``kill -9`` too; close it when the run is over.  A SpecError
    names who holds it: two processes training in one run directory (a run and its resume, an
    ``--overwrite`` of a live run) would mix or delete each other's files.  A filesystem that cannot lock
    gets a warning, and the run goes on as before locks were taken."""
    try:
        import fcntl
    except ImportError:  # not a POSIX system
        return _Hold(None)
    try:
        handle = os.open(run_dir, os.O_RDONLY)
    except OSError as error:
        raise SpecError(f"{flag}: {run_dir} cannot be opened ({error.strerror or error})") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _lock_holder(handle)
        os.close(handle)
        raise SpecError(f"{flag}: {run_dir} is in use by {holder}, which is training in it; expected a run "
                        "directory no other process is using: wait for that process to end, or stop it "
                        "(its run can then be resumed)") from None
    except OSError as error:  # ENOLCK, ENOSYS, EOPNOTSUPP...: this filesystem does not lock
        os.close(handle)
        warnings.warn(f"{run_dir}: the filesystem does not lock ({error.strerror or error}); nothing stops "
                      "another process from training in this run directory at the same time", stacklevel=2)
        return _Hold(None)
    return _Hold(handle)


class _Hold:
    """The directory's flock, held while ``fd`` is open (None: nothing held, where the filesystem cannot
    lock, e.g. NFS without a lock daemon, or there is no ``fcntl``)."""

    def __init__(self, fd: int | None):
        self.fd = fd

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _lock_holder(fd: int) -> str:
    """Who holds the flock on ``fd``'s file, from /proc/locks (Linux, same machine), else a vaguer name."""
    stat = os.fstat(fd)
    where = f"{os.major(stat.st_dev):02x}:{os.minor(stat.st_dev):02x}:{stat.st_ino}"
    try:
        with open("/proc/locks") as locks:
            for line in locks:
                fields = line.split()
                if "FLOCK" in fields and "->" not in fields:
                    at = fields.index("FLOCK")
                    if len(fields) > at + 4 and fields[at + 4] == where:
                        return f"process {fields[at + 3]}"
    except OSError:
        pass
    return "another process"


def _summary(run_dir: Path) -> dict:
    """A run directory's summary.json, or {} if there is none to read."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return {}
    return summary if isinstance(summary, dict) else {}


def _a_runs_config(path: Path) -> bool:
    """``path`` is a config.json that train wrote (so --overwrite may replace its run): one it reads, or one
    cut short (not JSON) beside the other files of a run."""
    try:
        read_run_config(path.parent)
    except SpecError:
        try:
            json.loads(path.read_text())
        except (OSError, ValueError):
            return any((path.parent / name).exists() for name in RUN_FILES if name != "config.json")
        return False  # whole JSON, but not a run's
    return True


def _finished_by(run_dir: Path, engine: str) -> str:
    """The engine a finished run's summary names (``engine`` if it has none to read)."""
    finisher = _summary(run_dir).get("engine")
    return finisher if isinstance(finisher, str) and finisher.strip() else engine


def read_run_config(run_dir: str | Path, flag: str | None = None) -> dict:
    """A run directory's config.json, or a SpecError naming the file if it cannot be what train wrote."""
    flag = flag or named("out", "--resume")
    path = Path(run_dir) / "config.json"
    try:
        config = json.loads(path.read_text())
    except UnicodeDecodeError as error:
        raise SpecError(f"{flag}: {path} is damaged (not UTF-8 text: {error.reason})") from None
    except json.JSONDecodeError as error:
        raise SpecError(f"{flag}: {path} is damaged (not JSON: {error.msg} at line {error.lineno})") from None
    shapes = {"train": dict, "env": dict, "spec": (dict, type(None))}
    wrong = [k for k, kind in shapes.items() if not isinstance(config, dict) or not isinstance(config.get(k), kind)]
    if wrong:
        raise SpecError(f"{flag}: {path} is damaged (expected a table with env, train and spec, as train writes "
                        f"it; {wrong[0]!r} is missing or of the wrong kind)")
    return config


def spec_of_run(config: dict) -> dict | None:
    """The raw spec of a run directory's ``config`` (its config.json): the spec file's, or for a run
    started from Python, the one ``train`` found to describe it exactly when it wrote the file
    (``spec_of_python_run``); None if no spec does."""
    return config.get("spec") or config.get("spec_from_python")


def spec_of_python_run(network: Network, env: str, env_kwargs: dict, config: TrainConfig, ray_table: dict,
                       free_options: dict) -> dict | None:
    """A raw spec that gives back exactly this run, built from the tables config.json records; None if
    a part of it has no spec (a Python function, a subclass, an option TOML cannot write)."""
    from .spec import parse

    def tables(value):  # TOML has no null and no empty list: a missing key is the default
        if isinstance(value, dict):
            return {k: tables(v) for k, v in value.items() if v is not None and v != []}
        return [tables(v) for v in value] if isinstance(value, (list, tuple)) else value

    described = tables(network.to_config())
    raw = {"env": tables({"id": env, **env_kwargs}), "train": tables(config.__dict__),
           "network": {k: described[k] for k in ("gamma", "ticks_per_step", "action") if k in described},
           "coagent": described.get("coagents", [])}
    if "critic" in described:
        raw["critic"] = described["critic"]
    for table, value in (("ray", ray_table), ("free", free_options)):
        if value:
            raw[table] = tables(value)
    try:
        raw = json.loads(json.dumps(raw, default=_plain))
        spec = parse(copy.deepcopy(raw), "config.json")
    except (SpecError, ValueError, TypeError, KeyError):
        return None
    same = (spec.env_id == env and spec.env_kwargs == env_kwargs and spec.train == config
            and _same_kinds(spec.network, network)
            and json.dumps(spec.network.to_config(), default=_plain) == json.dumps(network.to_config(), default=_plain))
    return raw if same else None


def _same_kinds(a: Network, b: Network) -> bool:
    """Every part of ``a`` is of the very class of ``b``'s (a subclass may act otherwise under the same
    configuration)."""
    parts = lambda n: [type(n.critic), type(getattr(n.critic, "features", None))] + [  # noqa: E731
        type(getattr(c, field)) for c in n.coagents for field in ("policy", "execution", "rule", "features")]
    return parts(a) == parts(b)


def train(network: Network | RunSpec, env: str | None = None, *, env_kwargs: dict | None = None,
          episodes: int | None = None, trials: int | None = None, seed: int | None = None,
          envs_per_trial: int | None = None, engine: str | None = None, micro_batches: int | None = None,
          address: str | None = None, out: str | Path | None = None, ray_options: dict | None = None,
          progress: Callable[[int], None] | None = None, metrics_every: float = 2.0, resume: bool = False,
          overwrite: bool = False, checkpoint_every: int | float | str | None = "300s",
          stop: Callable[[], bool] | None = None, observers: Sequence[Observer] = (), clock: str | None = None,
          free_options: dict | None = None, threads: int | None = None) -> TrainResult:
    """Train ``network`` on gymnasium env ``env``; keyword arguments override a spec's [train]
    (``ray_options``, its [ray] table: placement for the Ray engine).

    With ``out``, a run directory (refused if it already holds a run, unless ``resume``, which
    continues it from its checkpoint, or ``overwrite``) gets ``metrics.jsonl`` every
    ``metrics_every`` seconds (``recording``) and a checkpoint every ``checkpoint_every``
    (episodes, or "SECONDSs"), at the end, and when ``stop()`` ends the run early; the result
    then has ``finished=False`` and ``resume`` finishes it, with the same numbers as one
    uninterrupted run.  ``observers`` (``contract.Observer``) watch the run besides.
    ``threads``: the in-process engine's threads (the numbers are the same on any number; default
    ``DISTCOAGENT_THREADS``, else every CPU this process may use).
    ``clock="free"`` (with ``engine="ray"``) runs without a tick barrier (``freerun``;
    ``free_options``: its [free] table); the run directory then also gets the execution record
    that ``replay`` checks.

    >>> from distcoagent.examples import paper_network
    >>> result = train(paper_network(), "distcoagent/GridWorld-v0", env_kwargs={"size": 3},
    ...                episodes=3, trials=2, seed=1)
    >>> result.returns.shape
    (2, 1, 3)
    """
    for name, flag in (("resume", resume), ("overwrite", overwrite)):
        if not isinstance(flag, (bool, np.bool_)):
            raise SpecError(f"{name}: expected True or False, got {flag!r}")
    if out is not None and (not isinstance(out, (str, os.PathLike)) or not str(out).strip()):
        raise SpecError(f"out: expected the path of a run directory, got {out!r}")
    if resume and out is None:
        raise SpecError("resume: expected out= too (the run directory to continue)")
    if not is_number(metrics_every) or not np.isfinite(metrics_every) or metrics_every < 0:
        raise SpecError(f"metrics_every: expected seconds >= 0, got {metrics_every!r}")
    observers = check_run_arguments(progress, observers, stop)
    overrides = dict(episodes=episodes, trials=trials, seed=seed, envs_per_trial=envs_per_trial,
                     engine=engine, micro_batches=micro_batches, address=address, clock=clock)
    overrides = {k: v for k, v in overrides.items() if v is not None}
    raw = None
    if isinstance(network, RunSpec):
        spec = network
        config = TrainConfig(**{**spec.train.__dict__, **overrides})
        network, env, env_kwargs = spec.network, env or spec.env_id, env_kwargs or spec.env_kwargs
        ray_options = {**spec.ray, **(ray_options or {})}
        free_options = {**spec.free, **(free_options or {})}
        raw = spec.raw
    else:
        from .engine import check_network

        check_network(network, env, env_kwargs)
        config = TrainConfig(**overrides)
    if ray_options is not None:
        from .spec import check_ray_options

        check_ray_options(ray_options, network, config, "ray" if raw is not None else "ray_options")
    if free_options:
        from .freerun import check_free_options

        if not isinstance(free_options, dict):
            raise SpecError(f"free_options: expected a dict with env_rate and/or coagents, got {free_options!r:.80}")
        unknown = sorted(map(str, set(free_options) - {"env_rate", "coagents"}))
        if unknown:
            raise SpecError(f"free_options.{unknown[0]}: unknown key; expected env_rate or coagents")
        check_free_options(network, free_options.get("env_rate"), free_options.get("coagents"),
                           (ray_options or {}).get("timeout"))
    if env_kwargs is not None and not isinstance(env_kwargs, dict):
        raise SpecError(f"env_kwargs: expected a dict of the environment's options, got {type(env_kwargs).__name__}")
    env_kwargs = dict(env_kwargs or {})
    every_episodes, every_seconds = parse_checkpoint_every(checkpoint_every)
    run_dir, observers, log, raster, saver = None, list(observers), None, None, None
    state = None
    check_memory(network, env, env_kwargs, config)  # a run that cannot fit is refused before it starts
    if config.engine == "ray" and config.address is not None:
        from .ray_engine.cluster import resolve_address

        resolve_address(config.address)  # a refused cluster leaves no run directory behind
    held = None  # this process's hold on the run directory, from before it is read or changed
    try:
        if out is not None:  # everything about the run is checked before its directory changes
            run_dir = check_run_dir(out, resume=resume, overwrite=overwrite)
            if run_dir.is_dir():  # held before its checkpoint is read or its files replaced
                held = hold_run_dir(run_dir, named("out", "--resume" if resume else "--out"))
            config_hash = checkpoint.spec_hash(_run_config(network, env, env_kwargs, config))
            if resume:
                saved = read_run_config(run_dir)
                if saved.get("spec_hash") == _hash_before_min_log_std(network, env, env_kwargs, config):
                    config_hash = saved["spec_hash"]  # a run recorded before the Gaussian floor was: the same run
                if saved.get("spec_hash") not in (None, config_hash):
                    raise SpecError(f"{named('resume', '--resume')}: {run_dir} was started with another spec (network, "
                                    "environment, "
                                    "trials, envs_per_trial, seed, micro_batches or episodes differ)")
                if (run_dir / checkpoint.FILE).is_file():
                    try:
                        state = checkpoint.read(run_dir / checkpoint.FILE, config_hash)
                    except checkpoint.CheckpointError as error:
                        again = " (with the same numbers)" if config.clock == "tick" else ""
                        raise SpecError(f"{error}; to train the run again from its first episode{again}, move "
                                        f"{checkpoint.FILE} out of the run directory and resume") from None
            raster = RasterSpec(tuple(range(min(RASTER_ENVS, config.trials * config.envs_per_trial))))
        ray_table = dict(ray_options or {})  # as the run's config.json records it
        if run_dir is not None and config.engine == "ray":
            ray_options = {"run_name": run_dir.name, **ray_table}
        record = run_dir / REPLAY_FILE if run_dir is not None and config.clock == "free" else None
        finished = state is not None and state.get("episodes") is None  # the run had finished: only its results
        # a finished run starts no engine (no Ray for nothing); its results keep the engine that finished it
        runner = None if finished else make_engine(network, env, env_kwargs, config, ray_options, raster,
                                                   free_options, record, threads)
        try:
            if state is not None and not finished:  # a finished run needs only its results
                try:
                    runner.restore(state)
                except SpecError:
                    raise
                except (KeyError, TypeError, IndexError, ValueError) as error:  # sound checksum, foreign content
                    raise SpecError(f"checkpoint: {run_dir / checkpoint.FILE} does not hold a state of this run "
                                    f"({type(error).__name__}: {error})") from None
            if run_dir is not None:
                held = prepare_run_dir(run_dir, resume=resume, overwrite=overwrite, held=held)
                if not resume:
                    described = None if raw is not None else spec_of_python_run(network, env, env_kwargs, config,
                                                                                ray_table, free_options or {})
                    _write_json(run_dir / "config.json", {"env": {"id": env, **env_kwargs},
                                                          "network": network.to_config(), "train": config.__dict__,
                                                          "ray": ray_table, "free": free_options or {},
                                                          "spec": raw, "spec_from_python": described,
                                                          "spec_hash": config_hash})
                log = MetricsLog(run_dir / "metrics.jsonl", run=run_dir.name, network=network.to_config(),
                                 trials=config.trials, envs_per_trial=config.envs_per_trial,
                                 raster_envs=list(raster.env_ids), raster_window=raster.window, every=metrics_every)
                saver = Checkpointer(run_dir, config_hash, every_episodes, every_seconds)
                observers += [log, saver]
                if resume:  # the run goes on: the last attempt's failure is history
                    (run_dir / "error.txt").unlink(missing_ok=True)
                if resume and not finished and config.clock == "tick" and (run_dir / REPLAY_FILE).exists():
                    from .replay import ExecutionLog  # a free run goes on on the tick clock: replay follows

                    executions = ExecutionLog(run_dir / REPLAY_FILE)  # (from its start if it had no checkpoint)
                    for k in range(len(runner.slices)):
                        executions.mark_tick_clock(k, int(state["batches"][k]["env"]["tick"]) if state else 0)
            if run_dir is not None and getattr(runner, "placement", None):
                _write_json(run_dir / "placement.json", {"actors": runner.placement})
            if finished:
                from .engine import result_from_state

                result = result_from_state(state, network, _finished_by(run_dir, config.engine))
                result.finished = True
                result.extra["trained"] = False  # nothing was left to train
            else:
                result = runner.train(config.episodes, progress=progress, observers=observers, stop=stop)
        except BaseException as error:
            partial = getattr(runner, "partial", None)
            if log is not None:  # the run had started in its directory
                interrupted = isinstance(error, KeyboardInterrupt)
                if not interrupted:
                    (run_dir / "error.txt").write_text(f"{type(error).__name__}: {error}\n")
                if partial is not None:
                    write_results(run_dir, partial, env, env_kwargs)
                if not interrupted and isinstance(runner, InProcessEngine):  # the figures up to the failure, which
                    with contextlib.suppress(Exception):  # Ray's actors may no longer answer; in-process they do
                        log.on_metrics(runner.metrics())
                snapshot = getattr(runner, "_snapshot", None)  # the Ray engine's last snapshot of the run
                if snapshot is not None and not interrupted:
                    checkpoint.write(run_dir, snapshot, config_hash)
                log.end("interrupted" if interrupted else "failed",
                        None if interrupted else f"{type(error).__name__}: {error}")
            raise
        finally:
            if log is not None and getattr(runner, "recoveries", None):  # fresh actors, maybe on other nodes
                _write_json(run_dir / "placement.json", {"actors": runner.placement, "recoveries": runner.recoveries})
            if runner is not None:
                runner.close()
        if run_dir is not None:
            write_results(run_dir, result, env, env_kwargs)
            if not result.finished:
                log.end("interrupted", None)
        return result
    finally:
        if held is not None:
            held.close()


def parse_checkpoint_every(value) -> tuple[int | None, float | None]:
    """``--checkpoint-every``: N (episodes), "Ns" (seconds), or None/"never"."""
    where = named("checkpoint_every", "--checkpoint-every")
    if value is None or value == "never":
        return None, None
    if isinstance(value, str) and value.endswith("s"):
        try:
            seconds = float(value[:-1])
        except ValueError:
            seconds = -1.0
        if not seconds > 0 or seconds != seconds or seconds == float("inf"):
            raise SpecError(f"{where}: expected a number of episodes, SECONDSs or 'never', got {value!r}")
        return None, seconds
    try:
        episodes = int(value)
    except (TypeError, ValueError):
        episodes = 0
    if isinstance(value, bool) or episodes < 1 or str(episodes) != str(value).strip():
        raise SpecError(f"{where}: expected a number of episodes, SECONDSs or 'never', got {value!r}")
    return episodes, None


def _write_json(path: Path, data) -> None:
    """Written whole or not at all (a full disk must not leave a run's config.json cut short)."""
    checkpoint.write_atomically(path, (json.dumps(data, indent=2, default=_plain) + "\n").encode())


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def summarize(result: TrainResult, env_id: str, env_kwargs: dict) -> dict:
    """Numbers worth printing: final mean return (last 10% of episodes), the optimum if known."""
    episodes = result.returns.shape[-1]
    tail = max(1, episodes // 10)
    final = result.returns[..., -tail:]
    summary = {
        "engine": result.engine, "trials": int(result.returns.shape[0]),
        "envs_per_trial": int(result.returns.shape[1]), "episodes": int(episodes),
        "first_episode_mean_return": _finite_mean(result.returns[..., 0]),
        f"mean_return_last_{tail}_episodes": _finite_mean(final),
        "finished": bool(result.finished), "atomic_ticks": int(result.ticks), "seconds": round(result.seconds, 3),
        "env_ticks_per_second": round(result.ticks * result.returns.shape[0] * result.returns.shape[1]
                                      / max(result.seconds, 1e-9)),
    }
    from .envs import GRIDWORLD_ID, GridWorldEnv

    if env_id == GRIDWORLD_ID:
        summary["optimal_return"] = GridWorldEnv(**env_kwargs).optimal_return()
    return summary


def _finite_mean(values: np.ndarray):
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else None


def write_results(run_dir: Path, result: TrainResult, env_id: str, env_kwargs: dict) -> dict:
    """Write returns, curve, counters, parameters, summary and plot into ``run_dir``."""
    trials, envs, episodes = result.returns.shape
    with open(run_dir / "returns.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["trial", "env", "episode", "return", "length"])
        for t in range(trials):
            for e in range(envs):
                for k in range(episodes):
                    r = result.returns[t, e, k]
                    if math.isfinite(r):
                        writer.writerow([t, e, k + 1, repr(float(r)), int(result.lengths[t, e, k])])
    flat = result.returns.reshape(-1, episodes)
    with open(run_dir / "curve.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["episode", "mean_return", "stderr", "n"])
        for k in range(episodes):
            col = flat[:, k][np.isfinite(flat[:, k])]
            if col.size:
                se = col.std(ddof=1) / math.sqrt(col.size) if col.size > 1 else 0.0
                writer.writerow([k + 1, repr(float(col.mean())), repr(float(se)), col.size])
    _write_json(run_dir / "counters.json", result.counters)
    (run_dir / "params.msgpack").write_bytes(serialize.dumps(result.params))
    summary = summarize(result, env_id, env_kwargs)
    _write_json(run_dir / "summary.json", summary)
    from .plotting import plot_curve

    plot_curve(flat, run_dir / "learning_curve.png", title=f"{env_id}: {trials} trial(s) x {envs} env(s)",
               optimum=summary.get("optimal_return"))
    return summary
