"""Bad input: one clear error naming the field; non-finite values stop the run, keeping its files."""
import json

import gymnasium as gym
import pytest
from core_fakes import SCRIPTED_ID

from distcoagent import Coagent, Network, NonFiniteError, SpecError, train
from distcoagent.policies import Softmax
from distcoagent.rules import ActorCritic
from distcoagent.spec import check_env, parse

BASE = {
    "env": {"id": "distcoagent/GridWorld-v0", "size": 3},
    "network": {"gamma": 0.9, "action": "act"},
    "coagent": [
        {"name": "bit", "inputs": ["obs"], "policy": {"kind": "softmax", "n": 2}},
        {"name": "act", "inputs": ["bit", "obs"], "policy": {"kind": "softmax", "n": 4}},
    ],
}


def spec_with(**changes):
    import copy

    raw = copy.deepcopy(BASE)
    for path, value in changes.items():
        target = raw
        keys = path.split("__")
        for k in keys[:-1]:
            target = target[int(k)] if k.isdigit() else target[k]
        target[keys[-1]] = value
    return raw


@pytest.mark.parametrize("changes, field, expected", [
    ({"coagent__1__inputs": ["bitt"]}, r"coagent\[1\] \(act\)\.inputs|act\.inputs", "unknown input 'bitt'"),
    ({"coagent__0__inputs": ["act"]}, "coagents", "same-tick cycle"),
    ({"coagent__0__execution": {"kind": "constant", "probability": 1.5}}, r"coagent\[0\] \(bit\)\.execution",
     r"\[0, 1\]"),
    ({"coagent__0__policy": {"kind": "sofmax", "n": 2}}, r"coagent\[0\] \(bit\)\.policy\.kind",
     "expected one of bernoulli, gaussian, softmax"),
    ({"coagent__0__rule": {"kind": "actor_critc"}}, r"\.rule\.kind", "expected one of actor_critic"),
    ({"coagent__0__rule": {"kind": "actor_critic", "lam": 2.0}}, r"\.rule", r"lambda in \[0, 1\]"),
    ({"coagent__0__polcy": 1}, r"coagent\[0\]", "unknown key"),
    ({"network__gamma": 1.5}, "gamma", r"\(0, 1\]"),
    ({"coagent__0__initial": [0.5, 0.25, 0.25]}, r"bit\.initial", "2 probabilities"),
    ({"coagent__0__execution": {"kind": "table", "probabilities": [0.5, 0.5]}},
     r"bit\.execution\.probabilities", "one probability per tabular local state"),
    ({"coagent__1__policy": {"kind": "softmax", "n": 3}}, "action", r"Discrete\(4\)"),
    ({"coagent__0__rule": {"kind": "actor_critic", "critic": "shared"}}, r"bit\.rule\.critic", r"\[critic\]"),
])
def test_malformed_spec_names_the_field(changes, field, expected):
    with pytest.raises(SpecError) as info:
        check_env(parse(spec_with(**changes)))
    message = str(info.value)
    assert __import__("re").search(field, message), message
    assert __import__("re").search(expected, message), message


CARTPOLE = {
    "env": {"id": "CartPole-v1"},
    "network": {"gamma": 0.99, "action": "push"},
    "coagent": [{"name": "push", "inputs": ["obs"], "policy": {"kind": "softmax", "n": 2},
                 "features": {"kind": "fourier", "order": 2, "low": [-2.4, -3.0, -0.21, -3.5],
                              "high": [2.4, 3.0, 0.21, 3.5]}}],
}


def cartpole_with(features=None, critic=None):
    import copy

    raw = copy.deepcopy(CARTPOLE)
    if features is not None:
        raw["coagent"][0]["features"] = features
    if critic is not None:
        raw["critic"] = critic
        raw["coagent"][0]["rule"] = {"kind": "actor_critic", "critic": "shared"}
    return raw


@pytest.mark.parametrize("raw, field, expected", [
    (cartpole_with({"kind": "fourier", "order": 3}), r"coagents\.push\.features",
     "Fourier needs finite observation bounds; give `low` and `high`"),
    (cartpole_with({"kind": "tile", "tilings": 8, "tiles": 4}), r"coagents\.push\.features",
     "TileCoding needs finite observation bounds"),
    (cartpole_with({"kind": "tile", "low": [-1.0, 0.0], "high": [1.0, 1.0]}), r"coagents\.push\.features",
     "low: expected 4 bound", ),
    (cartpole_with({"kind": "fourier", "low": [2.4, -3.0, -0.21, -3.5], "high": [2.4, 3.0, 0.21, 3.5]}),
     r"coagents\.push\.features", "high > low in every dimension"),
    (cartpole_with(critic={"step": 0.01, "features": {"kind": "fourier", "order": 2}}), r"^critic\.features",
     "Fourier needs finite observation bounds"),
])
def test_box_features_without_usable_bounds_are_refused_before_the_run(raw, field, expected):
    """Fourier and tile features map a Box onto the unit box: unbounded (CartPole's velocities), the
    wrong number of bounds or empty ranges are refused when the network meets the environment (``validate``,
    ``train``), not at the first action."""
    with pytest.raises(SpecError) as info:
        check_env(parse(raw))
    message = str(info.value)
    assert __import__("re").search(field, message), message
    assert expected in message, message


def test_box_features_with_bounds_are_accepted():
    check_env(parse(CARTPOLE)).close()
    check_env(parse(cartpole_with(critic={"step": 0.01, "features": CARTPOLE["coagent"][0]["features"]}))).close()


@pytest.mark.parametrize("changes, field, expected", [
    ({"ray": {"groups": [["bit"], ["nobody"]]}}, r"^ray\.groups", r"unknown \['nobody'\], missing \['act'\]"),
    ({"ray": {"resources": {"nobody": {"gpu": 1}}}}, r"^ray\.resources", r"unknown coagent\(s\) \['nobody'\]"),
    ({"ray": {"replicas": 2}, "train": {"engine": "ray", "trials": 4}}, r"^ray\.replicas",
     "2 replicas need at least 2 micro-batches"),
    ({"free": {"coagents": [1]}}, r"^free\.coagents", "expected a table of coagent names"),
    ({"ray": {"layout": "diagonal"}}, r"^ray\.layout", "expected one of coagents, trials"),
    ({"ray": {"layout": "trials", "coagents_per_actor": 2}}, r"^ray\.coagents_per_actor",
     r'only with ray\.layout = "coagents" \(the layout here is "trials": an actor per micro-batch'),
    ({"ray": {"threads_per_actor": 2}}, r"^ray\.threads_per_actor", r'only with ray\.layout = "trials"'),
    ({"ray": {"layout": "trials", "threads_per_actor": 0}}, r"^ray\.threads_per_actor", "expected an integer >= 1"),
    ({"ray": {"layout": "trials"}, "train": {"engine": "ray", "clock": "free"}}, r"^ray\.layout",
     "the free-running clock needs an actor per coagent"),
    ({"coagent__0__name": "b" * 65}, r"coagent\[0\]\.name", "at most 64 printable characters"),
    ({"coagent__0__name": "bit\nnext"}, r"coagent\[0\]\.name", "at most 64 printable characters"),
])
def test_what_train_would_refuse_validate_refuses_too(changes, field, expected):
    """Placement against the network's coagents and the run's micro-batches, the [free] table's shape,
    names fit for one line: refused when the spec is read (``validate``, and ``train`` before it starts)."""
    with pytest.raises(SpecError) as info:
        check_env(parse(spec_with(**changes)))
    message = str(info.value)
    assert __import__("re").search(field, message), message
    assert __import__("re").search(expected, message), message


def test_replicas_are_checked_only_for_the_ray_engine():
    check_env(parse(spec_with(ray={"replicas": 2}))).close()  # in-process: the [ray] table waits for --engine ray


def test_a_bad_thread_count_in_the_environment_is_refused_by_validate(monkeypatch):
    monkeypatch.setenv("DISTCOAGENT_THREADS", "abc")
    with pytest.raises(SpecError, match="DISTCOAGENT_THREADS: expected a positive integer, got 'abc'"):
        check_env(parse(BASE))


def test_well_formed_base_spec_is_accepted():
    check_env(parse(BASE)).close()


def test_unknown_env_id_gets_gymnasiums_error_with_its_suggestion():
    with pytest.raises(gym.error.Error, match="Did you mean"):
        check_env(parse(spec_with(env={"id": "CartPol-v1"})))


def test_nan_reward_stops_the_run_naming_coagent_and_tick_and_keeps_the_run_directory(tmp_path):
    net = Network([Coagent("act", ["obs"], Softmax(2), rule=ActorCritic(critic="own"))], action="act")
    with pytest.raises(NonFiniteError, match=r"reward nan at atomic tick 12 .*coagent\(s\) act"):
        train(net, SCRIPTED_ID, env_kwargs={"rewards": [1.0] * 5, "nan_at": 12}, episodes=4, trials=1,
              out=tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["network"]["action"] == "act"
    assert "NonFiniteError" in (tmp_path / "error.txt").read_text()
    lines = (tmp_path / "returns.csv").read_text().splitlines()
    assert len(lines) == 1 + 2  # the two episodes finished before the NaN are kept


def test_diverging_parameters_stop_the_run_naming_the_coagent():
    net = Network([Coagent("act", ["obs"], Softmax(2), rule=ActorCritic(actor_step=1e306, critic_step=1e306,
                                                                          critic="own"))], action="act")
    with pytest.raises(NonFiniteError, match=r"coagent 'act': non-finite .* at atomic tick \d+"):
        train(net, SCRIPTED_ID, env_kwargs={"rewards": [1e10] * 5}, episodes=20, trials=1)


def test_cli_flags_and_paths_that_cannot_apply_get_one_line(tmp_path, capsys, monkeypatch):
    """Flags of another mode are refused, not silently ignored; paths that are not what is expected are
    named; an unknown word in DISTCOAGENT_KERNELS is refused (it would silently mean 'on')."""
    from pathlib import Path

    from distcoagent.cli import main

    spec = str(Path(__file__).resolve().parents[1] / "examples" / "paper_gridworld.toml")
    run = tmp_path / "run"
    assert main(["train", spec, "--episodes", "2", "--trials", "2", "--out", str(run), "--quiet"]) == 0
    (run / "metrics.jsonl").unlink()
    (run / "metrics.jsonl").mkdir()
    (tmp_path / "adir.toml").mkdir()
    cases = [
        (["train", spec, "--port", "9000", "--out", str(tmp_path / "a")], {}, "--port: only with --dashboard"),
        (["train", spec, "--delay", "act=0.1", "--out", str(tmp_path / "b")], {}, "--delay: only with the free"),
        (["validate", spec], {"DISTCOAGENT_KERNELS": "maybe"}, "DISTCOAGENT_KERNELS: expected 1"),
        (["validate", spec], {"DISTCOAGENT_PREBUILT": "sometimes"}, "DISTCOAGENT_PREBUILT: expected 1"),
        (["validate", str(tmp_path / "adir.toml")], {}, "is a directory, expected a TOML spec file"),
        (["validate", ""], {}, "got an empty string"),
        (["gradcheck", spec, "--out", ""], {}, "--out: expected a file for the JSON report"),
        (["dashboard", str(run), "--port", "0"], {}, "metrics.jsonl is not a file"),
        (["train", spec, "--out", str(run / "returns.csv" / "x")], {}, "returns.csv is a file, so"),
    ]
    for args, env, expected in cases:
        with monkeypatch.context() as patch:
            for key, value in env.items():
                patch.setenv(key, value)
            capsys.readouterr()
            assert main(args) == 2, args
        err = capsys.readouterr().err
        assert expected in err and len(err.strip().splitlines()) == 1, (args, err)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_resuming_a_run_without_a_checkpoint_says_it_starts_again(tmp_path, capsys):
    from pathlib import Path

    from distcoagent.cli import main

    spec = str(Path(__file__).resolve().parents[1] / "examples" / "paper_gridworld.toml")
    run = tmp_path / "run"
    assert main(["train", spec, "--episodes", "2", "--trials", "2", "--out", str(run), "--quiet"]) == 0
    returns = (run / "returns.csv").read_text()
    (run / "checkpoint.msgpack").unlink()  # and no summary: what a run killed before its first checkpoint leaves
    (run / "summary.json").unlink()
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert "has no checkpoint" in capsys.readouterr().err
    assert (run / "returns.csv").read_text() == returns  # the same run again, from its first episode


def _api_cases():
    from distcoagent import execution, features, policies, rules
    from distcoagent.network import SharedCritic

    bit = dict(name="bit", inputs=["obs"], policy=Softmax(2))
    return [
        (lambda: Coagent(**{**bit, "name": 5}), "coagent.name"),
        (lambda: Coagent(**{**bit, "inputs": "obs"}), "coagents.bit.inputs"),
        (lambda: Coagent(**{**bit, "inputs": []}), "coagents.bit.inputs"),
        (lambda: Coagent(**{**bit, "inputs": [5]}), "coagents.bit.inputs"),
        (lambda: Coagent(**{**bit, "policy": "softmax"}), "coagents.bit.policy"),
        (lambda: Coagent(**bit, execution=0.5), "coagents.bit.execution"),
        (lambda: Coagent(**bit, rule="actor_critic"), "coagents.bit.rule"),
        (lambda: Coagent(**bit, features="fourier"), "coagents.bit.features"),
        (lambda: Coagent(**bit, initial="zeroes"), "coagents.bit.initial"),
        (lambda: Coagent(**bit, initial=[float("nan"), 1.0]), "coagents.bit.initial"),
        (lambda: Coagent(**bit, init_scale="0.1"), "coagents.bit.init_scale"),
        (lambda: Coagent(**bit, init_scale=-1.0), "coagents.bit.init_scale"),
        (lambda: Network(Coagent(**bit), action="bit"), "coagents: expected a list"),
        (lambda: Network([Coagent(**bit)], action=None), "action:"),
        (lambda: Network([Coagent(**bit)], action=()), "action:"),
        (lambda: Network([Coagent(**bit)], action="bit", gamma="0.9"), "gamma:"),
        (lambda: Network([Coagent(**bit)], action="bit", ticks_per_step=10**30), "ticks_per_step"),
        (lambda: Network([Coagent(**bit)], action="bit", ticks_per_step=True), "ticks_per_step"),
        (lambda: Network([Coagent(**bit)], action="bit", critic=0.1), "critic:"),
        (lambda: SharedCritic(step="0.1"), "critic.step"),
        (lambda: SharedCritic(lam=None), "critic.lam"),
        (lambda: rules.ActorCritic(lam="0.5"), "rule.lam"),
        (lambda: rules.ActorCritic(actor_step=True), "rule.actor_step"),
        (lambda: rules.Reinforce(baseline="no"), "rule.baseline"),
        (lambda: policies.Gaussian(1, min_log_std="x"), "gaussian.min_log_std"),
        (lambda: features.Fourier(order="3"), "features.order"),
        (lambda: features.Fourier(order=-1), "features.order"),
        (lambda: features.TileCoding(tiles=0), "features.tiles"),
        (lambda: execution.Constant(True), "execution.probability"),
        (lambda: execution.Constant("0.5"), "execution.probability"),
        (lambda: execution.Periodic(True), "execution.period"),
        (lambda: execution.Driven("b", when="1"), "execution.when"),
    ]


@pytest.mark.parametrize("index", range(32))
def test_python_api_objects_refuse_bad_fields_naming_them(index):
    """Wrong types and values for the network's objects: a ValueError (SpecError is one) naming the field,
    at construction, not a TypeError or AttributeError from numpy or the first tick."""
    cases = _api_cases()
    assert len(cases) == 32
    make, named = cases[index]
    with pytest.raises(ValueError) as info:
        make()
    assert named in str(info.value), str(info.value)


def test_python_api_run_arguments_are_checked_before_the_directory_changes(tmp_path):
    from distcoagent import InProcessEngine, reproduce
    from distcoagent.examples import paper_network

    net, grid = paper_network(), "distcoagent/GridWorld-v0"
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "returns.csv").write_text("my own data")
    bad_calls = {
        "foreign files": dict(out=mine),
        "overwrite": dict(out=tmp_path / "a", overwrite="no"),
        "resume": dict(out=tmp_path / "b", resume=1),
        "resume without out": dict(resume=True),
        "empty out": dict(out=""),
        "metrics_every": dict(out=tmp_path / "c", metrics_every="2"),
        "stop": dict(out=tmp_path / "d", stop=True),
        "progress": dict(out=tmp_path / "e", progress="x"),
        "observers": dict(out=tmp_path / "f", observers=[object()]),
    }
    for what, kwargs in bad_calls.items():
        with pytest.raises(SpecError):
            train(net, grid, env_kwargs={"size": 3}, episodes=1, trials=1, **kwargs)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"], what
    assert (mine / "returns.csv").read_text() == "my own data"
    with pytest.raises(SpecError, match="network: expected a distcoagent.Network"):
        InProcessEngine(None, grid)
    engine = InProcessEngine(net, grid, {"size": 3})
    for kwargs, named in ((dict(stop=True), "stop"), (dict(progress=5), "progress"),
                          (dict(observers="abc"), "observers")):
        with pytest.raises(SpecError, match=named):
            engine.train(1, **kwargs)
    with pytest.raises(SpecError, match="out: .* is a file"):
        reproduce.fig6(trials=2, episodes=2, out=mine / "returns.csv")
    for kwargs, named in ((dict(free_options={"bogus": 1}), "free_options.bogus"),
                          (dict(env_kwargs="size=3"), "env_kwargs")):
        with pytest.raises(SpecError, match=named):
            train(net, grid, episodes=1, trials=1, **{"env_kwargs": {"size": 3}, **kwargs})
    for workers in (0, -1, "2", 1.5):
        with pytest.raises(SpecError, match="workers: expected a positive integer"):
            reproduce.learning_curves(net, grid, {"size": 3}, trials=2, episodes=1, workers=workers)
    for kwargs, named in ((dict(first_trial=-1), "first_trial"), (dict(micro_batches=True), "micro_batches")):
        with pytest.raises(SpecError, match=named):
            InProcessEngine(net, grid, {"size": 3}, trials=2, **kwargs)


@pytest.mark.parametrize("kwargs, named", [
    (dict(exact="no"), "exact"), (dict(episodes=True), "episodes"), (dict(train_episodes=-1), "train_episodes"),
    (dict(fd_episodes=0), "fd_episodes"), (dict(params="x"), "params"),
])
def test_gradcheck_arguments_are_checked_before_sampling(kwargs, named):
    from distcoagent.examples import paper_network
    from distcoagent.gradients import gradcheck

    with pytest.raises(ValueError, match=named):
        gradcheck(paper_network(), "distcoagent/GridWorld-v0", {"size": 3}, **{"episodes": 5, **kwargs})
    with pytest.raises(ValueError, match="spec_or_network"):
        gradcheck(None)


def test_a_checkpoint_with_a_sound_checksum_but_foreign_content_is_refused(tmp_path, capsys):
    """Written by hand with a recomputed checksum: its content does not restore; one line naming the
    checkpoint, exit 2, and the run directory as it was."""
    import json as json_
    from pathlib import Path

    from distcoagent import checkpoint
    from distcoagent.cli import main

    spec = str(Path(__file__).resolve().parents[1] / "examples" / "paper_gridworld.toml")
    run = tmp_path / "run"
    assert main(["train", spec, "--episodes", "2", "--trials", "2", "--out", str(run), "--quiet",
                 "--checkpoint-every", "1"]) == 0
    state = checkpoint.read(run / checkpoint.FILE)
    state["episodes"] = 3  # unfinished, so that resuming restores it
    del state["batches"][0]["coagents"]
    checkpoint.write(run, state, json_.loads((run / "config.json").read_text())["spec_hash"])
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "checkpoint.msgpack does not hold a state of this run" in err and len(err.strip().splitlines()) == 1, err
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_the_python_api_checks_what_a_spec_checks():
    """ray_options as a spec's [ray] table, RayEngine's own keywords, coagent names and the kernels switch:
    one SpecError naming the field, before anything runs (no Ray is started)."""
    from distcoagent.examples import paper_network
    from distcoagent.ray_engine import RayEngine

    grid = "distcoagent/GridWorld-v0"
    for options, expected in (("x", "ray_options: expected a dict"), ({"bogus": 1}, "ray_options.bogus: unknown key"),
                              ({"snapshot_every": "x"}, "ray_options.snapshot_every: expected a finite number"),
                              ({"timeout": -1}, "ray_options.timeout: expected a finite number > 0")):
        with pytest.raises(SpecError, match=f"^{expected}"):
            train(paper_network(), grid, episodes=1, engine="ray", ray_options=options)
    for keywords, expected in (({"timeout": -1}, "timeout: expected a finite number > 0"),
                               ({"ready_timeout": 0}, "ready_timeout: expected a finite number > 0")):
        with pytest.raises(SpecError, match=f"^{expected}"):
            RayEngine(paper_network(), grid, **keywords)
    from distcoagent.spec import TrainConfig, check_ray_options

    check_ray_options({"export_metrics": False, "groups": (("bit_a", "bit_b"), ("act",))}, paper_network(),
                      TrainConfig(engine="ray"))  # Python's tuples and keywords no spec sets are fine
    for name in ("a\nb", "a" * 65, "a\u200bb", "a\u202eb"):
        with pytest.raises(SpecError, match="^coagent.name: expected a name of at most 64 printable characters"):
            Coagent(name, ("obs",), Softmax(2))
    import os
    import subprocess
    import sys

    script = ("from distcoagent import train\nfrom distcoagent.examples import paper_network\n"
              "train(paper_network(), 'distcoagent/GridWorld-v0', episodes=1)")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "DISTCOAGENT_KERNELS": "maybe"})  # a fresh process: the switch is read once
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "distcoagent.network.SpecError: DISTCOAGENT_KERNELS: expected 1 (compiled kernels, the default) or 0"), proc.stderr


def test_python_messages_name_python_keywords_and_the_command_line_its_flags(tmp_path, capsys):
    from distcoagent.cli import main
    from distcoagent.examples import paper_network

    out = tmp_path / "run"
    train(paper_network(), "distcoagent/GridWorld-v0", env_kwargs={"size": 3}, episodes=1, out=out)
    with pytest.raises(SpecError, match=r"^out: .* already holds a run; pass resume=True to continue it, or "
                                        r"overwrite=True to replace it$"):
        train(paper_network(), "distcoagent/GridWorld-v0", env_kwargs={"size": 3}, episodes=1, out=out)
    with pytest.raises(SpecError, match="^checkpoint_every: expected a number of episodes"):
        train(paper_network(), "distcoagent/GridWorld-v0", episodes=1, checkpoint_every="often")
    spec = tmp_path / "spec.toml"
    spec.write_text('[env]\nid = "distcoagent/GridWorld-v0"\nsize = 3\n[network]\naction = "a"\n'
                    '[[coagent]]\nname = "a"\ninputs = ["obs"]\npolicy = { kind = "softmax", n = 4 }\n')
    capsys.readouterr()
    assert main(["train", str(spec), "--episodes", "1", "--out", str(out), "--quiet"]) == 2
    assert f"--out: {out} already holds a run; pass --resume {out} to continue it, or --overwrite" in \
        capsys.readouterr().err


def test_a_full_disk_says_how_to_go_on(tmp_path, capsys, monkeypatch):
    import errno

    from distcoagent import cli

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cli, "train", full, raising=False)
    monkeypatch.setattr("distcoagent.training.train", full)
    spec = tmp_path / "spec.toml"
    spec.write_text('[env]\nid = "distcoagent/GridWorld-v0"\nsize = 3\n[network]\naction = "a"\n'
                    '[[coagent]]\nname = "a"\ninputs = ["obs"]\npolicy = { kind = "softmax", n = 4 }\n')
    capsys.readouterr()
    assert cli.main(["train", str(spec), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("distcoagent train: error: No space left on device; free some space") and \
        "distcoagent train --resume RUN_DIR" in err and len(err.splitlines()) == 1


def test_small_slips_get_a_message_that_names_them(tmp_path, capsys):
    """An empty --host (it would bind every interface), replay of '' or of a file, and a spec saved with a
    byte-order mark (which TOML refuses, and some editors write)."""
    from distcoagent.cli import main

    spec = tmp_path / "spec.toml"
    text = ('[env]\nid = "distcoagent/GridWorld-v0"\nsize = 3\n[network]\naction = "a"\n'
            '[[coagent]]\nname = "a"\ninputs = ["obs"]\npolicy = { kind = "softmax", n = 4 }\n')
    spec.write_bytes(b"\xef\xbb\xbf" + text.encode())
    capsys.readouterr()
    assert main(["validate", str(spec)]) == 0
    run = tmp_path / "run"
    assert main(["train", str(spec), "--episodes", "1", "--out", str(run), "--quiet"]) == 0
    for argv, expected in ((["replay", ""], "replay: expected a run directory, got ''"),
                           (["replay", str(spec)], f"replay: {spec} is a file, expected a run directory"),
                           (["dashboard", str(run), "--host", "", "--allow-remote"],
                            "--host: expected a host name or address, got ''")):
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert expected in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("fn, expected", [
    (lambda x: "yes", "coagent 'a': execution function output: expected probabilities (a number or one per "
                      "environment), got 'yes'"),
    (lambda x: 2.0, "coagent 'a': execution function output: expected probabilities in [0, 1]"),
])
def test_an_execution_function_that_gives_no_probability_is_named(fn, expected):
    from distcoagent.execution import Function

    with pytest.raises(ValueError, match="^execution.fn: expected a function of the local state, got 5"):
        Function(5)
    net = Network([Coagent("a", ("obs",), Softmax(4), execution=Function(fn))], action="a")
    with pytest.raises(ValueError) as raised:
        train(net, "distcoagent/GridWorld-v0", env_kwargs={"size": 3}, episodes=1)
    assert str(raised.value).startswith(expected)


def test_joining_ray_keeps_a_sigterm_handler_the_caller_set_or_ignoring_it():
    import signal

    from distcoagent.ray_engine.cluster import _keeping_sigterm_handler

    before = signal.getsignal(signal.SIGTERM)
    try:
        for previous in (signal.SIG_IGN, lambda number, frame: None):
            signal.signal(signal.SIGTERM, previous)
            with _keeping_sigterm_handler():
                signal.signal(signal.SIGTERM, signal.SIG_DFL)  # what ray.init does, in its own way
            assert signal.getsignal(signal.SIGTERM) is previous
    finally:
        signal.signal(signal.SIGTERM, before)


def test_a_box_action_of_the_wrong_size_names_each_coagents_size():
    from distcoagent import Coagent, Network
    from distcoagent.envs import make_batch
    from distcoagent.policies import Gaussian

    network = Network([Coagent("act", ["obs"], Gaussian(2))], action="act")
    batch = make_batch("Pendulum-v1", 1, 0)
    with pytest.raises(SpecError, match=r"a Box of 1 reals; expected gaussian coagent\(s\) with 1 outputs in all, "
                                        r"got act \(gaussian, 2 reals\)$"):
        network.input_spaces(batch.observation_space, batch.action_space)
    batch.close()
