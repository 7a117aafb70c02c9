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

Every key is checked: an unknown key, a wrong type or a value out of range raises
``SpecError`` naming the field (``coagent[2].policy.kind``) and what was expected.
"""
from __future__ import annotations

import copy
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import gymnasium as gym

from .coagent import Coagent
from .execution import EXECUTIONS
from .features import FEATURES
from .network import Network, SharedCritic, SpecError
from .policies import POLICIES
from .rules import RULES

ENGINES = ("inprocess", "ray")
RAY_OPTIONS = {"coagents_per_actor", "groups", "resources", "env_resources", "cpus_per_actor", "placement",
               "transport", "max_inflight", "connect_timeout", "ready_timeout", "timeout"}


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
    """

    episodes: int = 200
    trials: int = 1
    envs_per_trial: int = 1
    seed: int = 0
    engine: str = "inprocess"
    micro_batches: int = 1
    address: str | None = None

    def __post_init__(self):
        for name in ("episodes", "trials", "envs_per_trial", "micro_batches"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SpecError(f"train.{name}: expected a positive integer, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise SpecError(f"train.seed: expected a non-negative integer, got {self.seed!r}")
        if self.engine not in ENGINES:
            raise SpecError(f"train.engine: expected one of {', '.join(ENGINES)}, got {self.engine!r}")
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

    def __getattr__(self, name):  # episodes, trials, seed, ... straight from train
        if name in TrainConfig.__dataclass_fields__:
            return getattr(self.train, name)
        raise AttributeError(name)


def _check_keys(table: dict, allowed: set, where: str) -> None:
    if not isinstance(table, dict):
        raise SpecError(f"{where}: expected a table, got {table!r}")
    unknown = set(table) - allowed
    if unknown:
        raise SpecError(f"{where}: unknown key(s) {sorted(unknown)}; expected some of {sorted(allowed)}")


def _kind_object(table, registry: dict, where: str, exclude=()):
    if isinstance(table, str):
        table = {"kind": table}
    if not isinstance(table, dict) or "kind" not in table:
        raise SpecError(f"{where}: expected a table with a 'kind' ({', '.join(sorted(registry))})")
    kind = table["kind"]
    if kind not in registry:
        raise SpecError(f"{where}.kind: unknown {where.rsplit('.', 1)[-1]} {kind!r}; "
                        f"expected one of {', '.join(sorted(registry))}")
    cls = registry[kind]
    args = {k: v for k, v in table.items() if k != "kind"}
    allowed = set(getattr(cls, "__dataclass_fields__", {})) - set(exclude)
    _check_keys(args, allowed, where)
    try:
        return cls(**args)
    except (TypeError, ValueError) as e:
        raise SpecError(f"{where}: {e}") from None


def _features(value, where):
    if value is None or value == "tabular":
        return value
    return _kind_object(value, FEATURES, where)


COAGENT_KEYS = {"name", "inputs", "policy", "execution", "rule", "features", "initial", "init_scale"}


def parse(raw: dict, source: str = "spec") -> RunSpec:
    """Build a RunSpec from a parsed TOML document."""
    raw = copy.deepcopy(raw)
    _check_keys(raw, {"env", "network", "critic", "defaults", "coagent", "train", "ray"}, source)
    env = raw.get("env")
    if not isinstance(env, dict) or not isinstance(env.get("id"), str):
        raise SpecError("env.id: expected a gymnasium environment id (a string), e.g. "
                        "\"distcoagent/GridWorld-v0\" or \"CartPole-v1\"")
    env_kwargs = {k: v for k, v in env.items() if k != "id"}
    net = raw.get("network", {})
    _check_keys(net, {"gamma", "ticks_per_step", "action"}, "network")
    if "action" not in net:
        raise SpecError("network.action: expected the name of the coagent (or a list of names) "
                        "whose output is the action")
    defaults = raw.get("defaults", {})
    _check_keys(defaults, {"execution", "rule", "features", "initial"}, "defaults")
    coagent_tables = raw.get("coagent")
    if not isinstance(coagent_tables, list) or not coagent_tables:
        raise SpecError("coagent: expected at least one [[coagent]] table")
    coagents = []
    for i, table in enumerate(coagent_tables):
        where = f"coagent[{i}]"
        _check_keys(table, COAGENT_KEYS, where)
        merged = {**defaults, **table}
        name = merged.get("name")
        if not isinstance(name, str):
            raise SpecError(f"{where}.name: expected a string")
        where = f"coagent[{i}] ({name})"
        inputs = merged.get("inputs")
        if not isinstance(inputs, list) or not inputs or not all(isinstance(s, str) for s in inputs):
            raise SpecError(f"{where}.inputs: expected a non-empty list of strings "
                            "(\"obs\", a coagent name, or \"prev:NAME\")")
        if "policy" not in merged:
            raise SpecError(f"{where}.policy: expected a table such as {{ kind = \"softmax\", n = 2 }}")
        initial = merged.get("initial", "uniform")
        if not (initial in ("uniform", "zeros") or isinstance(initial, list)):
            raise SpecError(f"{where}.initial: expected \"uniform\" or a list of probabilities, got {initial!r}")
        init_scale = merged.get("init_scale", 0.0)
        if not isinstance(init_scale, (int, float)) or init_scale < 0:
            raise SpecError(f"{where}.init_scale: expected a number >= 0, got {init_scale!r}")
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
        critic = SharedCritic(step=c.get("step", 0.1), lam=c.get("lam", 0.7),
                              features=_features(c.get("features"), "critic.features"))
    network = Network(coagents=coagents, action=net["action"], gamma=net.get("gamma", 0.99),
                      ticks_per_step=net.get("ticks_per_step", 1), critic=critic)
    train = raw.get("train", {})
    _check_keys(train, set(TrainConfig.__dataclass_fields__), "train")
    ray = raw.get("ray", {})
    _check_keys(ray, RAY_OPTIONS, "ray")
    return RunSpec(network, env["id"], env_kwargs, TrainConfig(**train), raw, ray)


def load_spec(path: str | Path, overrides: dict | None = None, ray_overrides: dict | None = None) -> RunSpec:
    """Read and validate a TOML spec; ``overrides`` replace keys of [train], ``ray_overrides``
    keys of [ray] (CLI flags; None values are ignored)."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"spec: no such file {str(path)!r}")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"spec {path}: not valid TOML: {e}") from None
    if overrides:
        raw.setdefault("train", {}).update({k: v for k, v in overrides.items() if v is not None})
    if ray_overrides and any(v is not None for v in ray_overrides.values()):
        raw.setdefault("ray", {}).update({k: v for k, v in ray_overrides.items() if v is not None})
    return parse(raw, str(path))


def check_env(spec: RunSpec) -> gym.Env:
    """Make one environment and check the network against its spaces; returns the env."""
    from .envs import make_batch

    try:
        env = make_batch(spec.env_id, 1, spec.train.seed, **spec.env_kwargs)
    except TypeError as e:
        raise SpecError(f"env: {e}") from None
    spec.network.input_spaces(env.observation_space, env.action_space)
    return env
