"""The free-running mode on Ray (``--clock free``): replay equality, a slow coagent, Ctrl-C and resume,
a killed coagent actor, and bad input."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from distcoagent import serialize  # noqa: E402
from distcoagent.cli import main  # noqa: E402
from distcoagent.contract import Observer  # noqa: E402
from distcoagent.replay import FILE, read_records, replay  # noqa: E402
from distcoagent.training import train  # noqa: E402
from ray_networks import GRID, paper, recurrent  # noqa: E402

pytestmark = pytest.mark.usefixtures("local_ray")
ROOT = Path(__file__).resolve().parents[1]


def free_run(tmp_path, network, *, trials=6, episodes=6, env_rate=100, coagents=None, seed=3, env_kwargs=None,
             observers=(), **ray_options):
    out = tmp_path / "run"
    result = train(network, GRID, env_kwargs=env_kwargs or {"size": 4}, episodes=episodes, trials=trials,
                   seed=seed, engine="ray", clock="free", free_options={"env_rate": env_rate, "coagents": coagents},
                   out=out, ray_options=ray_options, observers=observers, checkpoint_every="never")
    return out, result


@pytest.mark.parametrize("make", [paper, recurrent], ids=["paper", "recurrent"])
def test_a_free_run_replays_bit_for_bit_in_process(tmp_path, make):
    out, result = free_run(tmp_path, make())
    assert result.finished and result.engine == "ray-free"
    report = replay(out, network=make())
    assert report.identical, (report.parameter_differences, report.output_mismatches)
    assert report.outputs_checked > 0 and report.steps == len(read_records(out / FILE))
    # started from Python, checked from the command line: the network is rebuilt from config.json
    assert replay(out).identical and main(["replay", str(out)]) == 0
    assert report.executions == {n: c["executions"] for n, c in result.counters.items()}
    assert all(v > 0 for v in report.executions.values()), report.executions
    # the dashboard's raster shows the realised pattern: some coagent executed at some recorded tick
    rasters = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    bits = "".join(b for r in rasters if r["kind"] == "raster" for rows in r["executed"].values() for b in rows)
    assert "1" in bits and "0" in bits
    clock = [r for r in rasters if r["kind"] == "metrics"][-1]["clock"]
    assert clock["clock"] == "free" and clock["env_steps"] == result.ticks * 1


# a 3x3 gridworld's random policy (beta = 0.5, frozen coagents): mean return -27.7 over 4000 trials of 5
# episodes, standard deviation 9.9 of one trial's 5-episode mean (measured in-process, seeds 1 and 2: 10.1 and
# 9.7); the floor below is 3 standard errors of a mean over the test's trials above it (the logical-tick engine
# reaches -8 to -9.3 in the same 25 episodes)
RANDOM_POLICY, RANDOM_TRIAL_SD = -27.7, 9.9


def test_a_slow_coagent_executes_at_its_lower_rate_and_the_run_still_learns(tmp_path):
    """bit_a sleeps 0.1 s each time round its loop, bit_b goes round at most 30 times a second, the
    environment takes 40 steps a second: each realises its own clock, bit_a executes on at most
    beta * (its loops per second) / (steps per second) of the steps, and the gridworld is still learned."""
    delay, limit, beta = 0.1, 30.0, 0.5
    # 16 trials: the environment steps them together, so they cost the run's time no more than 8 would, and
    # every figure below is the surer for them (the run learns less on a loaded machine, where its coagents
    # get fewer steps: the floor is the random policy's, 3 of its standard errors above it)
    trials = 16
    out, result = free_run(tmp_path, paper(), trials=trials, episodes=25, env_rate=40, seed=11,
                           coagents={"bit_a": {"delay": delay}, "bit_b": {"rate": limit}}, env_kwargs={"size": 3})
    loops = {c["names"][0]: c for c in result.extra["loops"]}
    # their own clocks: never faster than configured, not far below it (the machine is shared)
    assert 0.6 / delay <= loops["bit_a"]["loops_per_second"] <= 1.0 / delay, loops
    assert 0.6 * limit <= loops["bit_b"]["loops_per_second"] <= 1.05 * limit, loops
    assert loops["act"]["loops_per_second"] > 2 * loops["bit_a"]["loops_per_second"], loops
    counters = result.counters
    rate = {n: counters[n]["executions"] / counters[n]["ticks"] for n in counters}
    # one chance per row each time round the loop: executions per environment step are at most
    # beta * loops / steps (fewer, when act has already used the output of that step: that publication is
    # late). Each chance is a beta draw, so an execution count E has relative standard deviation about
    # sqrt((1 - beta) / E): the ceilings allow 4 of them.
    steps_per_second = result.extra["steps"] / result.seconds
    for name in ("bit_a", "bit_b"):
        ceiling = beta * loops[name]["loops_per_second"] / steps_per_second
        spread = np.sqrt((1 - beta) / max(counters[name]["executions"], 1))
        assert 0 < rate[name] <= ceiling * (1 + 4 * spread), (name, rate, ceiling, spread)
    # bit_a's clock is a third of bit_b's (10 against 30 loops a second); lateness takes a share of either,
    # so the ratio of their rates is near a third (0.30-0.35 measured), and half is far from it. act, on no
    # clock of its own, goes round its loop whenever a message comes: it executes on more steps than bit_b,
    # which has a chance on at most 30 / 40 of them (rates measured: act 0.445, bit_b 0.326 on an idle
    # machine, 0.300 and 0.236 on a loaded one; their counts' relative standard deviations are under 3%)
    assert rate["bit_a"] < rate["bit_b"] / 2 and rate["act"] > rate["bit_b"], rate
    last = result.returns[..., -5:].mean()
    floor = RANDOM_POLICY + 3 * RANDOM_TRIAL_SD / np.sqrt(trials)
    assert last >= floor, (last, floor, result.returns[..., :5].mean())
    assert replay(out, network=paper()).identical


def test_ctrl_c_writes_a_checkpoint_and_resume_finishes_a_replayable_run(tmp_path, capsys):
    spec = tmp_path / "free.toml"
    spec.write_text((ROOT / "examples" / "paper_gridworld.toml").read_text().replace("size = 5", "size = 4")
                    + "\n[free]\nenv_rate = 60\n")
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "distcoagent.cli", "train", str(spec), "--engine", "ray", "--clock", "free",
               "--trials", "4", "--episodes", "20", "--quiet", "--checkpoint-every", "never"]
    process = subprocess.Popen(command + ["--out", str(out)], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            metrics = out / "metrics.jsonl"
            if metrics.exists() and '"kind": "metrics"' in metrics.read_text():
                break
            time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130, stderr[-2000:]
    assert "--resume" in stderr and (out / "checkpoint.msgpack").is_file()
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["status"] == "interrupted"
    ticked = tmp_path / "ticked"  # the same interrupted run, gone on on the tick clock: it still replays
    shutil.copytree(out, ticked)
    assert main(["train", "--resume", str(ticked), "--clock", "tick", "--engine", "inprocess", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["replay", str(ticked)]) == 0, capsys.readouterr().err
    assert "identical" in capsys.readouterr().out
    # resumed (on the tests' shared local Ray: only the interrupted run needs a process of its own)
    assert main(["train", "--resume", str(out), "--quiet"]) == 0
    assert "ray-free" in capsys.readouterr().out
    records = list(serialize.iter_loads(open(out / FILE, "rb")))
    assert [r["kind"] for r in records if "kind" in r] == ["restore"]  # the resume rewound the record
    assert main(["replay", str(out)]) == 0
    assert "identical" in capsys.readouterr().out


def test_a_killed_coagent_actor_restarts_from_the_last_snapshot(tmp_path):
    killed = []

    class Killer(Observer):
        metrics_every = 0.5

        def on_start(self, engine, episodes):
            self.engine = engine

        def on_metrics(self, metrics):
            if not killed and metrics.tick > 60:
                actor = ray.get_actor("coagent:bit_a", namespace=self.engine.namespace)
                ray.kill(actor)
                killed.append(metrics.tick)

    out, result = free_run(tmp_path, paper(), trials=4, episodes=12, env_rate=80, observers=[Killer()],
                           snapshot_every=1.0)
    assert killed and result.finished
    recoveries = result.extra["recoveries"]
    assert len(recoveries) == 1 and "coagent:bit_a" in recoveries[0]["dead"]
    assert recoveries[0]["restored_tick"] <= recoveries[0]["tick"]
    records = serialize.iter_loads(open(out / FILE, "rb"))
    assert any(r.get("kind") == "restore" for r in records)  # the record forgot what came after the snapshot
    report = replay(out, network=paper())
    assert report.identical, (report.parameter_differences, report.output_mismatches)


@pytest.mark.parametrize("argv, message", [
    (["--clock", "free"], "train.clock: the free-running clock needs the ray engine"),
    (["--engine", "ray", "--clock", "free", "--delay", "nosuch=1"], "free.coagents.nosuch: no such coagent"),
    (["--engine", "ray", "--clock", "free", "--delay", "act=soon"], "--delay: expected NAME=NUMBER"),
    (["--engine", "ray", "--clock", "free", "--env-rate", "-5"], "free.env_rate: expected a number per second"),
    (["--engine", "ray", "--clock", "free", "--coagent-rate", "act=nan"], "free.coagents.act.rate"),
    (["--engine", "ray", "--clock", "free", "--delay", "act=1e9"],
     "free.coagents.act.delay: expected seconds below the Ray engine's timeout (600 s"),
])
def test_bad_free_running_input_gets_one_line(tmp_path, capsys, argv, message):
    code = main(["train", str(ROOT / "examples" / "paper_gridworld.toml"), "--out", str(tmp_path / "r"), *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "r").exists()


def test_replay_of_a_run_without_a_record_says_what_it_needs(tmp_path, capsys):
    out = tmp_path / "tick"
    train(paper(), GRID, env_kwargs={"size": 3}, episodes=1, trials=1, out=out)
    assert main(["replay", str(out)]) == 2
    err = capsys.readouterr().err
    assert "executions.msgpack" in err and "--clock free" in err
