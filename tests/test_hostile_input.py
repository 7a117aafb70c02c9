"""Hostile input: every malformed spec or CLI value gets one line naming the field, exit code 2.

Property-based (hypothesis): a valid tiny spec is broken at one place (a wrong type, a
number out of range, NaN or infinity, an unknown key, a missing key, a huge size, a whole
table replaced by garbage) and must be refused with a ``SpecError`` whose message names
that place.  Through the CLI (``distcoagent.cli.main`` in this process) the same specs
must give exactly one stderr line ``distcoagent validate: error: <field>: ...`` and exit
code 2.  Examples are derandomized and bounded so the module runs in seconds.
"""
from __future__ import annotations

import copy
import json
import math
import os
import re
from pathlib import Path

import gymnasium as gym
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distcoagent.cli import main
from distcoagent.limits import check_memory, estimate_memory, format_bytes
from distcoagent.network import SpecError
from distcoagent.spec import TrainConfig, check_env, parse

FAST = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
CLI = settings(FAST, max_examples=40)

BASE = {
    "env": {"id": "distcoagent/GridWorld-v0", "size": 3, "max_steps": 20},
    "network": {"gamma": 0.9, "ticks_per_step": 1, "action": "act"},
    "critic": {"step": 0.1, "lam": 0.7},
    "defaults": {"execution": {"kind": "constant", "probability": 0.5}},
    "coagent": [
        {"name": "bit", "inputs": ["obs"], "policy": {"kind": "softmax", "n": 2},
         "rule": {"kind": "actor_critic", "actor_step": 0.1, "lam": 0.5, "critic": "shared"}},
        {"name": "act", "inputs": ["bit", "obs"], "policy": {"kind": "softmax", "n": 4},
         "execution": {"kind": "periodic", "period": 2, "offset": 0}, "initial": [0.25, 0.25, 0.25, 0.25],
         "init_scale": 0.0, "rule": {"kind": "reinforce", "step": 0.01, "baseline": True}},
    ],
    "train": {"episodes": 2, "trials": 1, "seed": 0},
    "ray": {"coagents_per_actor": 1, "transport": "actors"},
}
BOX = {  # a Box observation, for the features tables
    "env": {"id": "CartPole-v1"},
    "network": {"gamma": 0.99, "action": "act"},
    "coagent": [{"name": "act", "inputs": ["obs"], "policy": {"kind": "softmax", "n": 2},
                 "features": {"kind": "fourier", "order": 2, "low": [-2.4, -3.0, -0.21, -3.5],
                              "high": [2.4, 3.0, 0.21, 3.5]}}],  # CartPole's velocities are unbounded
    "train": {"episodes": 2, "trials": 1},
}

# ---------------------------------------------------------------------- values that are wrong somewhere
NAN_INF = st.sampled_from([math.nan, math.inf, -math.inf])
TEXT = st.text(max_size=12)
GARBAGE = st.recursive(st.one_of(st.booleans(), st.integers(-10**30, 10**30), st.floats(), TEXT),
                       lambda inner: st.one_of(st.lists(inner, max_size=3),
                                               st.dictionaries(TEXT, inner, max_size=3)), max_leaves=6)
NOT_NUMBER = st.one_of(TEXT, st.booleans(), st.lists(st.integers(), max_size=2),
                       st.dictionaries(TEXT, st.integers(), max_size=2))
NOT_INT = st.one_of(NOT_NUMBER, st.floats(allow_nan=True, allow_infinity=True))
NOT_STRING = st.one_of(st.integers(), st.floats(), st.booleans(), st.lists(TEXT, max_size=2),
                       st.dictionaries(TEXT, st.integers(), max_size=2))


def ints_below(low):
    return st.integers(-10**20, low - 1)


def probability_like():  # wrong for a number in [0, 1]
    return st.one_of(NOT_NUMBER, NAN_INF, st.floats(1.0, 1e300, exclude_min=True), st.floats(-1e300, -1e-9))


def step_like():  # wrong for a finite step size >= 0
    return st.one_of(NOT_NUMBER, NAN_INF, st.floats(-1e300, -1e-9))


# (path in the spec, wrong values, how the message names the field)
C0, C1 = r"coagent\[0\]( \(bit\))?", r"coagent\[1\]( \(act\))?"
FIELDS = [
    (("network", "gamma"), st.one_of(NOT_NUMBER, NAN_INF, st.floats(1.0, 1e300, exclude_min=True),
                                     st.floats(-1e300, 0.0)), r"network\.gamma"),
    (("network", "ticks_per_step"), st.one_of(NOT_INT, ints_below(1)), r"network\.ticks_per_step"),
    (("network", "action"), st.one_of(st.integers(), st.floats(), st.booleans(), st.just([]), st.just(""),
                                      st.just("nobody"), st.lists(st.integers(), min_size=1, max_size=2)),
     r"network\.action|^action"),
    (("critic", "step"), step_like(), r"critic\.step"),
    (("critic", "lam"), probability_like(), r"critic\.lam"),
    (("env", "id"), st.one_of(NOT_STRING, st.just("")), r"env\.id"),
    (("env", "size"), st.one_of(NOT_INT, ints_below(2), st.integers(10**6, 10**40)), r"env\.size"),
    (("env", "max_steps"), st.one_of(NOT_INT, ints_below(0)), r"env\.max_steps"),
    (("env", "start"), st.one_of(NOT_INT, ints_below(0), st.integers(9, 10**20)), r"env\.start"),
    (("train", "episodes"), st.one_of(NOT_INT, ints_below(1), st.integers(10**13, 10**30)), r"train\.episodes"),
    (("train", "trials"), st.one_of(NOT_INT, ints_below(1), st.integers(10**12, 10**30)), r"train\.trials"),
    (("train", "envs_per_trial"), st.one_of(NOT_INT, ints_below(1), st.integers(10**12, 10**30)),
     r"train\.envs_per_trial"),
    (("train", "seed"), st.one_of(NOT_INT, ints_below(0), st.integers(2**63, 10**40)), r"train\.seed"),
    (("train", "engine"), st.one_of(NOT_STRING, st.just("gpu")), r"train\.engine"),
    (("train", "micro_batches"), st.one_of(NOT_INT, ints_below(1), st.integers(2, 10**6)), r"train\.micro_batches"),
    (("train", "address"), st.one_of(st.integers(), st.floats(), st.booleans(), st.just("")), r"train\.address"),
    (("ray", "coagents_per_actor"), st.one_of(NOT_INT, ints_below(1)), r"ray\.coagents_per_actor"),
    (("ray", "ticks_per_execution"), st.one_of(NOT_INT, ints_below(1)), r"ray\.ticks_per_execution"),
    (("ray", "placement"), st.one_of(NOT_STRING, st.just("ANYWHERE")), r"ray\.placement"),
    (("ray", "transport"), st.one_of(NOT_STRING, st.just("pigeon")), r"ray\.transport"),
    (("ray", "cpus_per_actor"), step_like(), r"ray\.cpus_per_actor"),
    (("ray", "timeout"), st.one_of(NOT_NUMBER, NAN_INF, st.floats(-1e300, 0.0)), r"ray\.timeout"),
    (("ray", "groups"), st.one_of(st.integers(), st.just([]), st.just([[]]), st.lists(st.integers(), min_size=1)),
     r"ray\.groups"),
    (("ray", "resources"), st.one_of(st.integers(), st.just({"bit": 5}), st.just({"bit": {"gpu": -1}}),
                                     st.just({"bit": {"gpu": "lots"}})), r"ray\.resources"),
    (("defaults", "execution"), st.one_of(st.integers(), st.just({"kind": "sometimes"}),
                                          st.just({"kind": "constant", "probability": 2.0})),
     r"defaults\.execution"),
    (("coagent", 0, "name"), st.one_of(NOT_STRING, st.just(""), st.just("obs"), st.just("a:b")),
     r"coagent\[0\]\.name"),
    (("coagent", 0, "inputs"), st.one_of(st.integers(), TEXT, st.just([]), st.lists(st.integers(), min_size=1),
                                         st.just(["nobody"]), st.just(["act"])),
     rf"{C0}\.inputs|coagents(\.bit\.inputs)?:"),
    (("coagent", 0, "policy"), st.one_of(st.integers(), st.just({}), st.just({"kind": 3}),
                                         st.just({"kind": "softmax", "n": 1}), st.just({"kind": "softmax", "n": 2.5}),
                                         st.just({"kind": "softmax", "n": True}), st.just({"kind": "sofmax"})),
     rf"{C0}\.policy"),
    (("coagent", 0, "policy", "n"), st.one_of(NOT_INT, ints_below(2), st.integers(10**9, 10**30)),
     rf"{C0}\.policy|{C1}\.inputs"),
    (("coagent", 0, "rule", "actor_step"), step_like(), rf"{C0}\.rule\.actor_step"),
    (("coagent", 0, "rule", "lam"), probability_like(), rf"{C0}\.rule\.lam"),
    (("coagent", 0, "rule", "critic"), st.one_of(NOT_STRING, st.just("theirs")), rf"{C0}\.rule\.critic"),
    (("coagent", 0, "execution"), st.one_of(st.just({"kind": "constant", "probability": math.nan}),
                                            st.just({"kind": "periodic", "period": 0}),
                                            st.just({"kind": "table", "probabilities": [[0.5]]}),
                                            st.just({"kind": "driven", "coagent": 5}),
                                            st.just({"kind": "driven", "coagent": "act", "when": -1})),
     rf"{C0}\.execution"),
    (("coagent", 1, "initial"), st.one_of(st.integers(), st.just("often"), st.just([]), st.just([0.5, "x"]),
                                          st.just([math.nan, 1.0]), st.just([2.0, -1.0, 0.0, 0.0]),
                                          st.just([0.5, 0.5])),
     rf"{C1}\.initial|coagents\.act\.initial"),
    (("coagent", 1, "init_scale"), step_like(), rf"{C1}\.init_scale"),
    (("coagent", 1, "execution", "period"), st.one_of(NOT_INT, ints_below(1)), rf"{C1}\.execution\.period"),
    (("coagent", 1, "rule", "baseline"), st.one_of(st.integers(), TEXT, st.floats()), rf"{C1}\.rule\.baseline"),
]
BOX_FIELDS = [
    (("coagent", 0, "features", "order"), st.one_of(NOT_INT, ints_below(0), st.integers(10**3, 10**9)),
     r"coagent\[0\]( \(act\))?\.features"),
    (("coagent", 0, "features"), st.one_of(st.integers(), st.just({"kind": "tile", "tiles": 0}),
                                           st.just({"kind": "tile", "tilings": -1}),
                                           st.just({"kind": "fourier", "low": [0, "x"]}),
                                           st.just({"kind": "fourier", "low": [math.inf]}),
                                           st.just({"kind": "sparkles"})),
     r"coagent\[0\]( \(act\))?\.features"),
]
# tables that take a fixed set of keys: an unknown key there must be named
TABLES = [(), ("env",), ("network",), ("critic",), ("defaults",), ("train",), ("ray",), ("coagent", 0),
          ("coagent", 1, "policy"), ("coagent", 0, "rule"), ("coagent", 1, "execution")]
REQUIRED = [(("env", "id"), r"env\.id"), (("network", "action"), r"network\.action"),
            (("coagent", 0, "name"), r"coagent\[0\]\.name"), (("coagent", 1, "inputs"), rf"{C1}\.inputs"),
            (("coagent", 1, "policy"), rf"{C1}\.policy"), (("coagent", 0, "policy", "kind"), rf"{C0}\.policy")]
WHOLE = [(("env",), r"env"), (("network",), r"network"), (("critic",), r"critic"), (("coagent",), r"coagent"),
         (("coagent", 0), r"coagent\[0\]"), (("train",), r"train"), (("ray",), r"ray"), (("defaults",), "defaults")]


def _set(raw, path, value):
    target = raw
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value


def _delete(raw, path):
    target = raw
    for key in path[:-1]:
        target = target[key]
    del target[path[-1]]


NONE_IS_VALID = {("env", "max_steps"), ("train", "address"), ("coagent", 0, "features")}  # None: the default


@st.composite
def malformed(draw, with_none: bool = False):
    """(raw spec, regex the message must match): a valid spec broken at one place (``with_none``:
    also by a None, which the Python API can pass and TOML cannot)."""
    kind = draw(st.sampled_from(["field", "field", "field", "box", "unknown", "missing", "whole"]))
    raw = copy.deepcopy(BOX if kind == "box" else BASE)
    if kind in ("field", "box"):
        path, values, named = draw(st.sampled_from(FIELDS if kind == "field" else BOX_FIELDS))
        none = with_none and path not in NONE_IS_VALID and draw(st.integers(0, 4)) == 0
        _set(raw, path, None if none else draw(values))
    elif kind == "unknown":
        path = draw(st.sampled_from(TABLES))
        key = draw(st.from_regex(r"[a-z][a-z_]{0,10}", fullmatch=True).filter(lambda k: k not in _allowed(path)))
        target = raw
        for step in path:
            target = target[step]
        target[key] = draw(GARBAGE)
        named = re.escape(".".join(map(str, path)).replace(".0", "[0]").replace(".1", "[1]")).replace(
            r"\[0\]", r"\[0\]( \([a-z]+\))?").replace(r"\[1\]", r"\[1\]( \([a-z]+\))?") + rf"\.{key}\b"
        if not path:  # a table the document does not have
            named = rf"^{key}: unknown table"
    elif kind == "missing":
        path, named = draw(st.sampled_from(REQUIRED))
        _delete(raw, path)
    else:
        path, named = draw(st.sampled_from(WHOLE))
        value = draw(st.one_of(st.integers(), TEXT, st.lists(st.integers(), max_size=2)) if path != ("coagent",)
                     else st.one_of(st.integers(), st.just([]), st.just({}), st.just(["x"])))
        _set(raw, path, value)
    return raw, named


def _allowed(path) -> set:
    from distcoagent.spec import COAGENT_KEYS, RAY_OPTIONS

    table = {(): {"env", "network", "critic", "defaults", "coagent", "train", "ray"},
             ("env",): {"id", "size", "start", "goal", "max_steps"},
             ("network",): {"gamma", "ticks_per_step", "action"}, ("critic",): {"step", "lam", "features"},
             ("defaults",): {"execution", "rule", "features", "initial"},
             ("train",): set(TrainConfig.__dataclass_fields__), ("ray",): RAY_OPTIONS, ("coagent", 0): COAGENT_KEYS,
             ("coagent", 1, "policy"): {"kind", "n"},
             ("coagent", 0, "rule"): {"kind", "actor_step", "critic_step", "lam", "critic"},
             ("coagent", 1, "execution"): {"kind", "period", "offset"}}
    return table[path]


def _refusal(raw) -> str:
    """The message of the one error that checking ``raw`` raises (the CLI's validate does the same)."""
    try:
        check_env(parse(raw)).close()
    except SpecError as error:
        return str(error)
    except gym.error.Error as error:  # an unknown env id: gymnasium's message (the CLI adds "env.id: ")
        return f"env.id: {error}"
    raise AssertionError(f"accepted: {raw}")


# ---------------------------------------------------------------------- properties
@FAST
@given(malformed(with_none=True))
def test_a_malformed_spec_is_refused_naming_the_field(case):
    raw, named = case
    message = _refusal(raw)
    assert re.search(named, message), (named, message)
    assert "\n" not in message and len(message) < 1200, message


def _toml(value) -> str:
    """A spec as TOML (top-level keys, inline tables): enough for the values generated here."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):  # a TOML basic string: json's escapes, plus DEL, which TOML forbids raw
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return "{" + ", ".join(f"{_toml(str(k))} = {_toml(v)}" for k, v in value.items()) + "}"


def _write_spec(path, raw):
    path.write_text("\n".join(f"{_toml(str(key))} = {_toml(value)}" for key, value in raw.items()) + "\n")
    return str(path)


def _one_error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"distcoagent {command}: error: "), err[-3000:]
    assert "Traceback" not in err
    return lines[0][len(f"distcoagent {command}: error: "):]


@CLI
@given(malformed())
def test_validate_gives_one_line_naming_the_field_and_exit_code_2(tmp_path, capsys, case):
    raw, named = case
    spec = _write_spec(tmp_path / "hostile.toml", raw)
    capsys.readouterr()
    assert main(["validate", spec]) == 2
    assert re.search(named, _one_error_line(capsys, "validate"))


@CLI
@given(st.sampled_from([("--episodes", "train.episodes"), ("--trials", "train.trials"),
                        ("--envs-per-trial", "train.envs_per_trial")]).flatmap(
    lambda flag: st.tuples(st.just(flag), st.one_of(st.integers(-10**20, 0), st.integers(10**13, 10**40))))
    | st.tuples(st.just(("--seed", "train.seed")), st.one_of(st.integers(-10**20, -1), st.integers(2**63, 10**40)))
    | st.tuples(st.just(("--micro-batches", "train.micro_batches")), st.one_of(st.integers(-10**9, 0),
                                                                               st.integers(2, 10**9))))
def test_hostile_train_flags_get_one_line_naming_the_field(tmp_path, capsys, case):
    (flag, field), value = case
    spec = _write_spec(tmp_path / "ok.toml", BASE)
    capsys.readouterr()
    assert main(["train", spec, f"{flag}={value}", "--out", str(tmp_path / "run"), "--quiet"]) == 2
    assert field in _one_error_line(capsys, "train")
    assert not (tmp_path / "run").exists()  # refused before anything was written


@CLI
@given(st.sampled_from(["--episodes", "--fd-episodes"]).flatmap(
    lambda flag: st.tuples(st.just(flag), st.integers(-10**20, 0)))
    | st.tuples(st.just("--train-episodes"), st.one_of(st.integers(-10**20, -1), st.integers(10**13, 10**30)))
    | st.tuples(st.just("--seed"), st.integers(-10**20, -1))
    | st.tuples(st.just("--step"), st.sampled_from(["0", "-1", "nan", "inf", "-inf", "1e400"])))
def test_hostile_gradcheck_flags_get_one_line_naming_the_flag(tmp_path, capsys, case):
    flag, value = case
    spec = _write_spec(tmp_path / "ok.toml", BASE)
    capsys.readouterr()
    budget = ["--episodes", "4"] if flag != "--episodes" else []
    no_fd = [] if flag in ("--fd-episodes", "--step") else ["--no-fd"]  # the value refused, not the pairing
    assert main(["gradcheck", spec, f"{flag}={value}", *no_fd, *budget]) == 2
    line = _one_error_line(capsys, "gradcheck")
    assert line.startswith(flag) and "not with --no-fd" not in line


@pytest.mark.parametrize("argv, expected", [
    (["gradcheck", "SPEC", "--no-fd", "--step", "0.5"], "--step: not with --no-fd"),
    (["gradcheck", "SPEC", "--no-fd", "--fd-episodes", "5"], "--fd-episodes: not with --no-fd"),
    (["reproduce", "fig6", "--step", "0.5"], "--step: only for fig5"),
    (["reproduce", "option-critic", "--no-exact"], "--no-exact: only for fig5"),
    (["reproduce", "fig6", "--seed", str(2**64)], "--seed: expected an integer in 0..2**63 - 1"),
])
def test_flags_that_would_be_ignored_are_refused(tmp_path, capsys, argv, expected):
    spec = _write_spec(tmp_path / "ok.toml", BASE)
    argv = [spec if a == "SPEC" else a for a in argv] + ["--out", str(tmp_path / "out")]
    capsys.readouterr()
    assert main(argv) == 2
    assert expected in capsys.readouterr().err and not (tmp_path / "out").exists()


@FAST
@given(st.one_of(st.none(), GARBAGE))
def test_garbage_instead_of_a_whole_spec_is_refused(raw):
    with pytest.raises(SpecError):
        parse(raw)


# ---------------------------------------------------------------------- what the new user hit
def _spec_file(tmp_path, **changes):
    raw = copy.deepcopy(BASE)
    for path, value in changes.items():
        _set(raw, tuple(int(k) if k.isdigit() else k for k in path.split("__")), value)
    return _write_spec(tmp_path / "spec.toml", raw)


@pytest.mark.parametrize("changes, expected", [
    ({"network__gamma": "high"}, "network.gamma: expected a finite number in (0, 1], got 'high'"),
    ({"env__sizee": 3}, "env.sizee: unknown option for distcoagent/GridWorld-v0"),
    ({"env__size": -3}, "env.size: expected an integer >= 2, got -3"),
    ({"env__size": 100000}, "env.size: a 100000 x 100000 gridworld's transition table"),
    ({"coagent__1__inputs": ["bit", "obs", "bit"]}, "coagents.act.inputs: 'bit' is listed twice"),
    ({"coagent__1__execution": {"kind": "driven", "coagent": "bit", "when": 5}},
     "coagents.act.execution.when: expected an output of 'bit' (0..1), got 5"),
    ({"env__max_steps": 10**20}, "env.max_steps: expected a number of steps (at most 2**63 - 1)"),
    ({"coagent__1__execution": {"kind": "periodic", "period": 10**20, "offset": 0}},
     "coagent[1] (act).execution.period: expected an integer at most 2**63 - 1"),
    ({"env": {"id": "GridWorld-v0"}}, "env.id: Environment `GridWorld` doesn't exist; did you mean "
                                      "'distcoagent/GridWorld-v0' (with its namespace)?"),
    ({"env": {"id": "FrozenLake-v1", "map_name": "9x9"}},
     "env: FrozenLake-v1 could not be made with {'map_name': '9x9'} (KeyError: '9x9')"),
    ({"env": {"id": "no_such_module_here:Corridor-v0"}}, "env.id: No module named 'no_such_module_here'"),
    ({"env": {"id": "CartPole-v1", "render_mode": "human"}}, "env.render_mode: 'human' draws every step"),
    ({"coagent__0__features": {"kind": "fourier", "order": 2}},
     "coagents.bit.features: Fourier maps a continuous (Box) observation; this environment's observation is "
     "discrete (9 values)"),
    ({"coagent__0__name": "critic", "coagent__1__inputs": ["critic", "obs"]},
     "coagents.name: 'critic' is the shared critic's name in a run's parameters"),
])
def test_what_a_new_user_hit_in_a_spec(tmp_path, capsys, changes, expected):
    spec = _spec_file(tmp_path, **changes)
    capsys.readouterr()
    assert main(["validate", spec]) == 2
    assert _one_error_line(capsys, "validate").startswith(expected)


@pytest.mark.parametrize("flags, expected", [
    (["--trials", "1000000000"], r"^train\.trials x train\.envs_per_trial x .*: the run needs about [\d.]+ TiB"),
    (["--episodes", "10000000000000"], r"^train\.trials x train\.envs_per_trial x train\.episodes: the run "
                                       r"needs about [\d.]+ TiB \(episode returns and lengths: 1 x 1 x "
                                       r"10000000000000 x 32 B"),
])
def test_a_run_too_big_for_memory_is_refused_before_it_starts(tmp_path, capsys, flags, expected):
    spec = _spec_file(tmp_path)
    capsys.readouterr()
    assert main(["train", spec, *flags, "--out", str(tmp_path / "run"), "--quiet"]) == 2
    line = _one_error_line(capsys, "train")
    assert re.search(expected, line) and "this machine has" in line, line
    assert not (tmp_path / "run").exists()


def test_validate_refuses_a_spec_whose_arrays_do_not_fit(tmp_path, capsys):
    """A 300 x 300 gridworld read by tabular coagents: fine alone, too big with 10**6 trials."""
    spec = _spec_file(tmp_path, env__size=300, train__trials=10**6)
    capsys.readouterr()
    assert main(["validate", spec]) == 2
    line = _one_error_line(capsys, "validate")
    assert re.match(r"train\.trials x train\.envs_per_trial x coagent\[\d\] \(\w+\)\.inputs: the run needs about "
                    r"[\d.]+ TiB \(coagent '\w+': 1000000 trials x [\d.]+ MiB \(local state \d+ x \d outputs\)", line)


def test_check_memory_names_the_fields_and_the_size_against_a_given_memory():
    """8.6 GiB for one array: refused on an 8 GiB machine, accepted on a 64 GiB one."""
    spec = parse(copy.deepcopy(BASE))
    config = TrainConfig(episodes=9_000_000, trials=128)   # returns: 128 x 9e6 x 8 B = 8.6 GiB
    estimate = estimate_memory(spec.network, spec.env_id, spec.env_kwargs, config)
    assert estimate.largest.label == "episode returns and lengths"
    assert format_bytes(estimate.largest.nbytes // 4) == "8.58 GiB"  # one of the 4 arrays (2 x returns, lengths)
    with pytest.raises(SpecError, match=r"^train\.trials x train\.envs_per_trial x train\.episodes: the run needs "
                                        r"about 34\.\d GiB .*this machine has 8 GiB$"):
        check_memory(spec, config=config, memory=8 * 2**30)
    assert check_memory(spec, config=config, memory=64 * 2**30).total == estimate.total


def test_train_out_naming_a_file_and_gradcheck_out_naming_a_directory(tmp_path, capsys):
    spec = _spec_file(tmp_path)
    (tmp_path / "a_file").write_text("x")
    capsys.readouterr()
    assert main(["train", spec, "--out", str(tmp_path / "a_file"), "--quiet"]) == 2
    assert _one_error_line(capsys, "train").startswith("--out: ")
    assert main(["gradcheck", spec, "--episodes", "4", "--no-fd", "--out", str(tmp_path)]) == 2
    assert _one_error_line(capsys, "gradcheck").startswith(f"--out: {tmp_path} is a directory")
    assert main(["gradcheck", spec, "--episodes", "4", "--no-fd", "--out", str(tmp_path / "a_file" / "r.json")]) == 2
    assert _one_error_line(capsys, "gradcheck").startswith("--out: ")


def test_an_out_folder_the_system_will_not_make_is_named(tmp_path, capsys):
    """Writable by os.access (as root, /proc is), yet mkdir fails: one line naming --out, not a traceback."""
    spec = _spec_file(tmp_path)
    out = Path("/proc") / f"distcoagent-test-{os.getpid()}"
    capsys.readouterr()
    assert main(["train", spec, "--out", str(out), "--quiet"]) == 2
    expected = f"--out: {out} cannot be made (" if os.access("/proc", os.W_OK | os.X_OK) else "--out: /proc is not"
    assert _one_error_line(capsys, "train").startswith(expected)


def test_out_and_resume_paths_that_cannot_be_are_named(tmp_path, capsys):
    spec = _spec_file(tmp_path)
    long = "b" * 300
    capsys.readouterr()
    assert main(["train", spec, "--out", str(tmp_path / long / "run"), "--quiet"]) == 2
    assert _one_error_line(capsys, "train").startswith("--out: a name in the path is 300 bytes long (bbbb")
    assert main(["train", "--resume", str(tmp_path / "never_made"), "--quiet"]) == 2
    assert _one_error_line(capsys, "train") == (f"--resume: {tmp_path / 'never_made'} does not exist; expected "
                                                "the run directory of a run to continue")


def test_a_diverging_shared_critic_is_named(tmp_path, capsys):
    spec = _spec_file(tmp_path, critic__step=1e6, train__episodes=20)
    capsys.readouterr()
    assert main(["train", spec, "--out", str(tmp_path / "run"), "--quiet"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["distcoagent train: stopped: the shared critic ([critic] step = 1e+06, lam = 0.7): its weights "
                   "became non-finite after a TD update; lower [critic] step"], err
    assert "shared critic" in (tmp_path / "run" / "error.txt").read_text()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    kinds = [r["kind"] for r in records]  # the dashboard shows the figures up to the failure
    assert kinds[0] == "start" and "metrics" in kinds and "curve" in kinds and records[-1]["status"] == "failed"
    assert [r for r in records if r["kind"] == "metrics"][-1]["episodes_total"] == 20


@pytest.mark.parametrize("max_steps, note", [(0, False), (20, True)])
def test_gradcheck_warns_about_a_time_limit_only_when_there_is_one(tmp_path, capsys, max_steps, note):
    spec = _spec_file(tmp_path, env__size=2, env__max_steps=max_steps)
    assert main(["gradcheck", spec, "--episodes", "16", "--no-fd", "--exact"]) == 0
    out = capsys.readouterr().out
    assert ("the estimators stop episodes at max_steps=20" in out) is note, out


def test_an_environment_whose_package_is_missing_is_not_sent_to_pythonpath(tmp_path, capsys):
    """A registered environment that imports a package not installed: the package is named, not the
    custom-module advice (which is for ``module:EnvId`` ids whose module is not found)."""
    gym.register("distcoagent_tests/NeedsAPackage-v0", entry_point="no_such_package_xyz.envs:Env")
    try:
        spec = _spec_file(tmp_path, env={"id": "distcoagent_tests/NeedsAPackage-v0"})
        capsys.readouterr()
        assert main(["validate", spec]) == 2
        line = _one_error_line(capsys, "validate")
        assert line.startswith("env.id: distcoagent_tests/NeedsAPackage-v0 needs a package that is not installed")
        assert "no_such_package_xyz" in line and "PYTHONPATH" not in line
    finally:
        gym.registry.pop("distcoagent_tests/NeedsAPackage-v0")
