"""Spec files: one TOML schema for a network, its environment and its run, read by CLI and API.

    [env]                  # id, plus keyword arguments for the environment
    id = "distcoagent/GridWorld-v0"
    size = 5

    [network]
    gamma = 0.95           # discount per environment step
    ticks_per_step = 1     # atomic ticks per environment step (k)
    action = "act"         # a coagent name, or a list of names

    [critic]               # optional shared critic V(s): step, lam, features
    step = 0.1

    [defaults]             # optional: execution / rule / features / initial for every coagent
    execution = { kind = "constant", probability = 0.5 }

    [[coagent]]            # one table per coagent
    name = "act"
    inputs = ["obs", "prev:act"]
    policy = { kind = "softmax", n = 4 }

    [train]                # optional; CLI flags override
    episodes = 200

    [ray]                  # optional; placement for --engine ray (see ray_engine.RayEngine)
    coagents_per_actor = 1

    [free]                 # optional; the free-running clock (train.clock = "free", see freerun)
    env_rate = 100         # environment steps per second (0: as fast as it can)
    coagents = { bit_a = { delay = 0.05 } }   # per coagent: delay (s per loop), rate (loops/s)

Every key is checked: an unknown key, a wrong type, a value out of range, NaN or
infinity raises ``SpecError`` naming the field (``coagent[2].policy.kind``) and what
was expected.  The arguments of a ``kind`` table are checked against the annotations
of the class it names (``policies.Softmax.n: int``), so the classes stay the one
definition.  (pydantic was tried for this: its strict mode refuses TOML's lists where a
class says ``tuple``, its lax mode turns ``"0.5"`` and ``true`` into numbers, and its
messages would need rewriting into these field paths; the hand-written checks below
are shorter than that glue.)
"""
from __future__ import annotations

import copy
import math
import re
import reprlib
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import gymnasium as gym

from .checks import INT64_MAX, is_integer, is_number, named
from .coagent import Coagent, check_name
from .execution import EXECUTIONS
from .features import FEATURES
from .network import Network, SharedCritic, SpecError
from .policies import POLICIES
from .rules import RULES

ENGINES = ("inprocess", "ray")
CLOCKS = ("tick", "free")
RAY_OPTIONS = {"coagents_per_actor", "groups", "resources", "env_resources", "cpus_per_actor", "placement",
               "transport", "max_inflight", "connect_timeout", "ready_timeout", "timeout", "replicas",
               "replica_resources", "max_recoveries", "snapshot_every", "ticks_per_execution", "layout",
               "threads_per_actor", "shard_resources"}
# [ray] layout: "coagents" (RayEngine: an actor per coagent group) or "trials" (ShardedEngine: an actor per
# micro-batch, running the whole network); the options that only one of them takes
LAYOUTS = ("coagents", "trials")
COAGENT_LAYOUT_ONLY = ("coagents_per_actor", "groups", "resources", "env_resources", "transport", "max_inflight",
                       "replicas", "replica_resources", "ticks_per_execution")
TRIAL_LAYOUT_ONLY = ("threads_per_actor", "shard_resources")
MAX_SEED = INT64_MAX
# ranges that the kind classes do not check themselves: (kind, argument) -> lowest value
LOWEST = {("fourier", "order"): 0, ("tile", "tilings"): 1, ("tile", "tiles"): 1, ("driven", "when"): 0}

_short = reprlib.Repr()
_short.maxstring = _short.maxother = 40
_short.maxlist = _short.maxdict = _short.maxtuple = 4
_short.maxlevel = 2


def show(value) -> str:
    """A value as a short one-line repr, for error messages (hostile input may be huge or nested)."""
    return _short.repr(value)


def _bounds(low, high, low_open: bool = False) -> str:
    if low is not None and high is not None:
        return f" in {'(' if low_open else '['}{low:g}, {high:g}]"
    if low is not None:
        return f" {'>' if low_open else '>='} {low:g}"
    return f" <= {high:g}" if high is not None else ""


def integer(value, where: str, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an int (not a bool, not a float) in [low, high], else a SpecError naming ``where``."""
    if not is_integer(value) or (low is not None and value < low) or (high is not None and value > high):
        raise SpecError(f"{where}: expected an integer{_bounds(low, high)}, got {show(value)}")
    return int(value)


def number(value, where: str, low: float | None = None, high: float | None = None, low_open: bool = False) -> float:
    """``value`` as a finite float in [low, high] (or (low, high] with ``low_open``), else a SpecError."""
    ok = is_number(value)
    if ok:
        try:
            value = float(value)
        except OverflowError:  # an integer beyond any float
            ok = False
    if not ok or not math.isfinite(value) or (low is not None and (value <= low if low_open else value < low)) \
            or (high is not None and value > high):
        raise SpecError(f"{where}: expected a finite number{_bounds(low, high, low_open)}, got {show(value)}")
    return value


def string(value, where: str, choices: tuple[str, ...] | None = None) -> str:
    """``value`` as a non-empty string (one of ``choices`` if given), else a SpecError."""
    if not isinstance(value, str) or not value or (choices is not None and value not in choices):
        expected = f"one of {', '.join(choices)}" if choices else "a non-empty string"
        raise SpecError(f"{where}: expected {expected}, got {show(value)}")
    return value


def strings(value, where: str) -> list[str]:
    """A non-empty list of non-empty strings."""
    if not isinstance(value, list) or not value:
        raise SpecError(f"{where}: expected a non-empty list of strings, got {show(value)}")
    return [string(v, f"{where}[{i}]") for i, v in enumerate(value)]


def _typed(value, hint, where: str):
    """Check ``value`` against a dataclass field's annotation (int, float, str, bool, tuple[X, ...],
    X | None); other annotations are left to the class."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [h for h in typing.get_args(hint) if h is not type(None)]
        if value is None and len(options) < len(typing.get_args(hint)):
            return None
        return _typed(value, options[0], where) if len(options) == 1 else value
    if hint is bool:
        if not isinstance(value, bool):
            raise SpecError(f"{where}: expected true or false, got {show(value)}")
        return value
    if hint is int:
        return integer(value, where)
    if hint is float:
        return number(value, where)
    if hint is str:
        return string(value, where)
    if origin is tuple and typing.get_args(hint)[1:] == (Ellipsis,):
        if not isinstance(value, (list, tuple)) or not value:
            raise SpecError(f"{where}: expected a non-empty list, got {show(value)}")
        return tuple(_typed(v, typing.get_args(hint)[0], f"{where}[{i}]") for i, v in enumerate(value))
    return value


@dataclass
class TrainConfig:
    """How to run a spec.

    episodes: episodes per environment.
    trials: independent learners (each with its own parameters), batched together.
    envs_per_trial: environments sharing one trial's parameters.
    seed: the run's seed; it determines everything.
    engine: "inprocess" (default) or "ray".
    micro_batches: split trials into this many micro-batches (pipelined on Ray).
    address: Ray cluster to join ("auto", "HOST:PORT"); none starts a local Ray.
    clock: "tick" (default: one atomic tick at a time, bit-identical on both engines) or
        "free" (Ray only: every coagent and the environment on their own clocks, ``freerun``).
    """

    episodes: int = 200
    trials: int = 1
    envs_per_trial: int = 1
    seed: int = 0
    engine: str = "inprocess"
    micro_batches: int = 1
    address: str | None = None
    clock: str = "tick"

    def __post_init__(self):
        for name in ("episodes", "trials", "envs_per_trial", "micro_batches"):
            value = getattr(self, name)
            if not is_integer(value) or value < 1:
                raise SpecError(f"train.{name}: expected a positive integer, got {show(value)}")
            setattr(self, name, int(value))
        self.seed = integer(self.seed, "train.seed", 0, MAX_SEED)
        string(self.engine, "train.engine", ENGINES)
        string(self.clock, "train.clock", CLOCKS)
        if self.clock == "free" and self.engine != "ray":
            engine, clock = named('engine="ray"', "--engine ray"), named('clock="tick"', "--clock tick")
            raise SpecError("train.clock: the free-running clock needs the ray engine (one actor per coagent); "
                            f"add {engine}, or {clock} for the logical tick (a free run's checkpoint resumes on "
                            "either engine with it)")
        if self.address is not None:
            string(self.address, "train.address")
        if self.micro_batches > self.trials:
            raise SpecError(f"train.micro_batches: expected at most trials ({self.trials}), "
                            f"got {self.micro_batches}")


@dataclass
class RunSpec:
    """A parsed spec: the network, the environment and the run's settings."""

    network: Network
    env_id: str
    env_kwargs: dict
    train: TrainConfig
    raw: dict = field(default_factory=dict)
    ray: dict = field(default_factory=dict)  # RayEngine placement options ([ray] table)
    free: dict = field(default_factory=dict)  # the free-running clock's options ([free] table)

    def __getattr__(self, name):  # episodes, trials, seed, ... straight from train
        if name in TrainConfig.__dataclass_fields__:
            return getattr(self.train, name)
        raise AttributeError(name)


def _check_keys(table: dict, allowed: set, where: str) -> None:
    if not isinstance(table, dict):
        raise SpecError(f"{where}: expected a table, got {show(table)}")
    unknown = sorted(map(str, set(table) - allowed))
    if unknown:
        raise SpecError(f"{where}.{unknown[0]}: unknown key; expected some of {sorted(allowed)}")


def _kind_object(table, registry: dict, where: str, exclude=()):
    if isinstance(table, str):
        table = {"kind": table}
    if not isinstance(table, dict) or "kind" not in table:
        raise SpecError(f"{where}: expected a table with a 'kind' ({', '.join(sorted(registry))}), got {show(table)}")
    kind = table["kind"]
    if not isinstance(kind, str) or kind not in registry:
        raise SpecError(f"{where}.kind: unknown {where.rsplit('.', 1)[-1]} {show(kind)}; "
                        f"expected one of {', '.join(sorted(registry))}")
    cls = registry[kind]
    args = {k: v for k, v in table.items() if k != "kind"}
    fields = getattr(cls, "__dataclass_fields__", {})
    allowed = {name for name, f in fields.items() if f.init} - set(exclude)
    _check_keys(args, allowed, where)
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # an annotation that cannot be resolved: the class checks its own arguments
        hints = {}
    args = {k: _typed(v, hints.get(k), f"{where}.{k}") for k, v in args.items()}
    for k, v in args.items():
        lowest = LOWEST.get((kind, k))
        if lowest is not None:
            integer(v, f"{where}.{k}", lowest)
    try:
        return cls(**args)
    except (TypeError, ValueError) as e:  # the class's own check; "softmax.n: ..." -> "<where>.n: ..."
        head, sep, rest = str(e).partition(": ")
        name = head.rpartition(".")[2]
        raise SpecError(f"{where}.{name}: {rest}" if sep and name in allowed else f"{where}: {e}") from None


def _features(value, where):
    if value is None or value == "tabular":
        return value
    return _kind_object(value, FEATURES, where)


COAGENT_KEYS = {"name", "inputs", "policy", "execution", "rule", "features", "initial", "init_scale"}


def parse(raw: dict, source: str = "spec") -> RunSpec:
    """Build a RunSpec from a parsed TOML document."""
    tables = {"env", "network", "critic", "defaults", "coagent", "train", "ray", "free"}
    if not isinstance(raw, dict):
        raise SpecError(f"{source}: expected a document of tables ({', '.join(sorted(tables))}), got {show(raw)}")
    unknown = sorted(map(str, set(raw) - tables))
    if unknown:
        raise SpecError(f"{unknown[0]}: unknown table in {source}; expected some of {sorted(tables)}")
    raw = copy.deepcopy(raw)
    env = raw.get("env")
    if not isinstance(env, dict) or not isinstance(env.get("id"), str) or not env["id"]:
        raise SpecError("env.id: expected a gymnasium environment id (a string), e.g. "
                        "\"distcoagent/GridWorld-v0\" or \"CartPole-v1\"")
    env_kwargs = {k: v for k, v in env.items() if k != "id"}
    _check_env_options(env["id"], env_kwargs)
    net = raw.get("network", {})
    _check_keys(net, {"gamma", "ticks_per_step", "action"}, "network")
    if "action" not in net:
        raise SpecError("network.action: expected the name of the coagent (or a list of names) "
                        "whose output is the action")
    action = net["action"]
    action = string(action, "network.action") if not isinstance(action, list) else strings(action, "network.action")
    gamma = number(net.get("gamma", 0.99), "network.gamma", 0, 1, low_open=True)
    ticks_per_step = integer(net.get("ticks_per_step", 1), "network.ticks_per_step", 1)
    defaults = raw.get("defaults", {})
    _check_keys(defaults, {"execution", "rule", "features", "initial"}, "defaults")
    for key, registry in (("execution", EXECUTIONS), ("rule", RULES)):  # named as defaults.*, not as a coagent's
        if key in defaults:
            _kind_object(defaults[key], registry, f"defaults.{key}")
    if "features" in defaults:
        _features(defaults["features"], "defaults.features")
    coagent_tables = raw.get("coagent")
    if not isinstance(coagent_tables, list) or not coagent_tables:
        raise SpecError("coagent: expected at least one [[coagent]] table")
    coagents = []
    for i, table in enumerate(coagent_tables):
        where = f"coagent[{i}]"
        _check_keys(table, COAGENT_KEYS, where)
        merged = {**defaults, **table}
        name = string(merged.get("name"), f"{where}.name")
        check_name(name, f"{where}.name")
        where = f"coagent[{i}] ({name})"
        if "inputs" not in merged:
            raise SpecError(f"{where}.inputs: expected a non-empty list of strings "
                            "(\"obs\", a coagent name, or \"prev:NAME\")")
        inputs = strings(merged["inputs"], f"{where}.inputs")
        if "policy" not in merged:
            raise SpecError(f"{where}.policy: expected a table such as {{ kind = \"softmax\", n = 2 }}")
        initial = merged.get("initial", "uniform")
        if isinstance(initial, list) and initial:
            initial = [number(p, f"{where}.initial[{k}]", 0, 1) for k, p in enumerate(initial)]
        elif initial not in ("uniform", "zeros") or not isinstance(initial, str):
            raise SpecError(f"{where}.initial: expected \"uniform\" or a list of probabilities, got {show(initial)}")
        init_scale = number(merged.get("init_scale", 0.0), f"{where}.init_scale", 0)
        coagents.append(Coagent(
            name=name, inputs=tuple(inputs),
            policy=_kind_object(merged["policy"], POLICIES, f"{where}.policy"),
            execution=_kind_object(merged.get("execution", {"kind": "constant", "probability": 1.0}),
                                   EXECUTIONS, f"{where}.execution"),
            rule=_kind_object(merged.get("rule", {"kind": "frozen"}), RULES, f"{where}.rule"),
            features=_features(merged.get("features"), f"{where}.features"),
            initial=initial, init_scale=float(init_scale)))
    critic = None
    if "critic" in raw:
        c = raw["critic"]
        _check_keys(c, {"step", "lam", "features"}, "critic")
        critic = SharedCritic(step=number(c.get("step", 0.1), "critic.step", 0),
                              lam=number(c.get("lam", 0.7), "critic.lam", 0, 1),
                              features=_features(c.get("features"), "critic.features"))
    network = Network(coagents=coagents, action=action, gamma=gamma, ticks_per_step=ticks_per_step, critic=critic)
    train = raw.get("train", {})
    _check_keys(train, set(TrainConfig.__dataclass_fields__), "train")
    ray = raw.get("ray", {})
    _check_ray(ray)
    free = raw.get("free", {})
    if not isinstance(free, dict):
        raise SpecError(f"free: expected a table, got {show(free)}")
    _check_keys(free, {"env_rate", "coagents"}, "free")
    from .freerun import check_free_options

    check_free_options(network, free.get("env_rate"), free.get("coagents"), ray.get("timeout"))
    config = TrainConfig(**train)
    _check_ray_against(ray, network, config)
    return RunSpec(network, env["id"], env_kwargs, config, raw, ray, free)


def _check_ray_against(ray: dict, network: Network, config: TrainConfig) -> None:
    """The [ray] table against the network's coagents and the run's micro-batches (what RayEngine would
    refuse, refused by ``validate`` and before ``train`` touches a run directory)."""
    from .ray_engine.placement import PlacementError, coagent_groups, resource_requests

    try:
        groups = coagent_groups(network, ray.get("coagents_per_actor", 1), ray.get("groups"))
        resource_requests(groups, ray.get("resources"), network)
    except PlacementError as error:
        raise SpecError(f"ray.{error}") from None
    if config.clock == "free" and ray.get("layout") == "trials":
        raise SpecError("ray.layout: \"trials\" runs whole networks in lockstep on the logical tick; the free-running "
                        "clock needs an actor per coagent (layout \"coagents\", the default)")
    replicas = ray.get("replicas", 1)
    batches = min(config.micro_batches, config.trials)  # trial_slices' count, without building them
    if config.engine == "ray" and replicas > batches:
        raise SpecError(f"ray.replicas: {replicas} replicas need at least {replicas} micro-batches (there are "
                        f"{batches}); set train.micro_batches (--micro-batches) >= replicas, at most trials = "
                        f"{config.trials}")


def _check_env_options(env_id: str, options: dict) -> None:
    """Option names of a built-in environment (their values are checked by the environment)."""
    from .envs import native

    entry = native(env_id)
    unknown = sorted(map(str, set(options) - set(entry.options))) if entry is not None else []
    if unknown:
        raise SpecError(f"env.{unknown[0]}: unknown option for {env_id}; expected some of {', '.join(entry.options)}")


def _check_ray(ray: dict, where: str = "ray") -> None:
    """The [ray] table (RayEngine's placement options): names and types; ``where`` names the table in
    messages (``ray_options`` for ``train``'s argument, "" for RayEngine's own keywords)."""
    from .ray_engine.placement import STRATEGIES

    _check_keys(ray, RAY_OPTIONS, where or "RayEngine")
    prefix = f"{where}." if where else ""
    checks = {"coagents_per_actor": lambda v, w: integer(v, w, 1), "max_inflight": lambda v, w: integer(v, w, 1),
              "ticks_per_execution": lambda v, w: integer(v, w, 1),
              "cpus_per_actor": lambda v, w: number(v, w, 0),
              "placement": lambda v, w: string(v, w, STRATEGIES),
              "transport": lambda v, w: string(v, w, ("compiled", "actors")),
              "groups": lambda v, w: [strings(g, f"{w}[{i}]") for i, g in enumerate(v)] if isinstance(v, list) and v
              else strings(v, w),
              "env_resources": lambda v, w: _amounts(v, w),
              "replicas": lambda v, w: integer(v, w, 1), "max_recoveries": lambda v, w: integer(v, w, 0),
              "layout": lambda v, w: string(v, w, LAYOUTS), "threads_per_actor": lambda v, w: integer(v, w, 1),
              "shard_resources": lambda v, w: _amounts(v, w),
              "snapshot_every": lambda v, w: number(v, w, 0),
              "replica_resources": lambda v, w: [_amounts(r, f"{w}[{i}]") for i, r in enumerate(v)]
              if isinstance(v, list) and v else _amounts(v, w)}
    for key in ("connect_timeout", "ready_timeout", "timeout"):
        checks[key] = lambda v, w: number(v, w, 0, low_open=True)
    for key, value in ray.items():
        if key == "resources":
            _check_keys(value, set(value) if isinstance(value, dict) else set(), f"{prefix}resources")
            for name, amounts in value.items():
                _amounts(amounts, f"{prefix}resources.{name}")
        elif key in checks:  # an option without a check here is checked by RayEngine
            checks[key](value, f"{prefix}{key}")
    layout = ray.get("layout", "coagents")
    wrong = [k for k in (COAGENT_LAYOUT_ONLY if layout == "trials" else TRIAL_LAYOUT_ONLY) if k in ray]
    if wrong:
        other = "coagents" if layout == "trials" else "trials"
        raise SpecError(f"{prefix}{wrong[0]}: only with {prefix}layout = \"{other}\" (the layout here is "
                        f"\"{layout}\": " + ("an actor per micro-batch runs the whole network)" if layout == "trials"
                                              else "an actor per coagent group)"))


def _true_or_false(value, where: str) -> None:
    if not isinstance(value, bool):
        raise SpecError(f"{where}: expected true or false, got {show(value)}")


def as_lists(value):
    """Tuples as lists, all the way down (a Python caller may use either; a spec has lists)."""
    if isinstance(value, (list, tuple)):
        return [as_lists(v) for v in value]
    return {k: as_lists(v) for k, v in value.items()} if isinstance(value, dict) else value


def check_ray_options(options, network: Network, config: "TrainConfig", where: str = "ray_options") -> None:
    """Python's ``ray_options`` (a spec's [ray] table) as a spec's are checked, naming ``where``."""
    if not isinstance(options, dict):
        raise SpecError(f"{where}: expected a dict of the Ray engine's placement options (a spec's [ray] "
                        f"table: {', '.join(sorted(RAY_OPTIONS))}), got {show(options)}")
    python_only = {"export_metrics": _true_or_false, "run_name": lambda v, w: string(v, w)}
    for key, check in python_only.items():  # RayEngine's keywords no spec sets
        if key in options:
            check(options[key], f"{where}.{key}")
    options = {k: as_lists(v) for k, v in options.items() if k not in python_only}
    _check_ray(options, where)
    try:
        _check_ray_against(options, network, config)
    except SpecError as error:
        raise SpecError(f"{where}.{str(error).removeprefix('ray.')}") from None


def _amounts(table, where: str) -> None:
    if not isinstance(table, dict):
        raise SpecError(f"{where}: expected a table of resource amounts, got {show(table)}")
    for key, amount in table.items():
        number(amount, f"{where}.{key}", 0)


def load_spec(path: str | Path, overrides: dict | None = None, ray_overrides: dict | None = None,
              free_overrides: dict | None = None) -> RunSpec:
    """Read and validate a TOML spec; ``overrides`` replace keys of [train], ``ray_overrides``
    keys of [ray], ``free_overrides`` keys of [free] (CLI flags; None values are ignored)."""
    if not str(path).strip():
        raise SpecError("spec: expected the path of a TOML spec file, got an empty string")
    path = Path(path)
    if path.is_dir():
        raise SpecError(f"spec: {str(path)!r} is a directory, expected a TOML spec file")
    if not path.is_file():
        raise SpecError(f"spec: no such file {str(path)!r}")
    try:
        raw = tomllib.loads(path.read_text().removeprefix("\ufeff"))  # a byte-order mark some editors save
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise SpecError(f"spec {path}: not valid TOML: {e}") from None
    if overrides:
        raw.setdefault("train", {}).update({k: v for k, v in overrides.items() if v is not None})
    if ray_overrides and any(v is not None for v in ray_overrides.values()):
        raw.setdefault("ray", {}).update({k: v for k, v in ray_overrides.items() if v is not None})
    merge_free(raw, free_overrides)
    return parse(raw, str(path))


def merge_free(raw: dict, free_overrides: dict | None) -> None:
    """Put CLI values of the free-running clock into a raw spec's [free] table (coagents merged by name)."""
    if not free_overrides:
        return
    if free_overrides.get("env_rate") is not None:
        raw.setdefault("free", {})["env_rate"] = free_overrides["env_rate"]
    for name, options in (free_overrides.get("coagents") or {}).items():
        table = raw.setdefault("free", {}).setdefault("coagents", {})
        if isinstance(table, dict):
            table.setdefault(name, {}).update(options)


def check_env(spec: RunSpec) -> gym.Env:
    """Make one environment, check the network against its spaces and the run against this
    machine's memory (``limits.check_memory``); returns the env."""
    from .envs import make_batch
    from .limits import check_memory

    if spec.env_kwargs.get("render_mode") == "human":  # found otherwise at the first reset, after the run began
        raise SpecError("env.render_mode: 'human' draws every step in a window, which a run never shows "
                        "(and needs pygame); remove it, or watch a run with its dashboard")
    try:
        env = make_batch(spec.env_id, 1, spec.train.seed, **spec.env_kwargs)
    except SpecError:
        raise
    except gym.error.UnregisteredEnv as e:  # "GridWorld-v0" for "distcoagent/GridWorld-v0"
        namespaced = sorted(k for k in gym.registry if "/" in k and k.split("/", 1)[1] == spec.env_id)
        if not namespaced:
            raise  # gymnasium's own message and suggestion
        raise SpecError(f"env.id: {str(e).rstrip('.')}; did you mean {namespaced[0]!r} (with its namespace)?") from None
    except ImportError as e:
        own = spec.env_id.partition(":")[0] if ":" in spec.env_id else None
        missing = e.name or next(iter(re.findall(r"No module named '([^']+)'", str(e))), None)  # gymnasium rewraps it
        if own is not None and (missing is None or own == missing or own.startswith(missing + ".")):
            raise SpecError(f"env.id: {str(e).rstrip('.')}; its directory must be on PYTHONPATH "  # "module:EnvId"
                            "(see docs/custom-environments.md)") from None
        raise SpecError(f"env.id: {spec.env_id} needs a package that is not installed "
                        f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    except (TypeError, ValueError, OverflowError) as e:  # the environment's own check of its options
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise SpecError(message if message.startswith("env") else f"env: {message}") from None
    except gym.error.Error:
        raise
    except Exception as e:  # anything else the environment's constructor raised (a KeyError for an option)
        message = str(e).splitlines()[0] if str(e) else ""
        raise SpecError(f"env: {spec.env_id} could not be made with {spec.env_kwargs or 'no options'} "
                        f"({type(e).__name__}: {message})") from None
    try:
        spec.network.input_spaces(env.observation_space, env.action_space)
        check_memory(spec, env=env)
        if spec.train.engine == "inprocess":
            from .blocks import default_threads

            default_threads()  # DISTCOAGENT_THREADS, as the engine reads it
    except BaseException:
        env.close()
        raise
    return env
