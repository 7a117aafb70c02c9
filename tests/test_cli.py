"""The CLI end to end, as a user runs it, with tiny budgets."""
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = str(ROOT / "examples" / "paper_gridworld.toml")


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "distcoagent.cli", *args], capture_output=True, text=True,
                          cwd=cwd or ROOT, timeout=300)


def test_train_writes_a_complete_run_directory(tmp_path):
    out = tmp_path / "run"
    proc = cli("train", EXAMPLE, "--episodes", "5", "--trials", "3", "--seed", "2", "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "mean_return_last" in proc.stdout and "coagent act: ticks" in proc.stdout
    for name in ("config.json", "returns.csv", "curve.csv", "counters.json", "params.msgpack", "summary.json",
                 "learning_curve.png"):
        assert (out / name).stat().st_size > 0, name
    rows = list(csv.DictReader(open(out / "returns.csv")))
    assert len(rows) == 3 * 5 and {r["trial"] for r in rows} == {"0", "1", "2"}
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["episodes"] == 5 and config["train"]["seed"] == 2  # flags override the spec
    counters = json.loads((out / "counters.json").read_text())
    assert set(counters) == {"bit_a", "bit_b", "act"} and counters["act"]["episodes"] == 15
    assert (out / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_same_seed_same_returns_across_invocations(tmp_path):
    for name in ("a", "b"):
        assert cli("train", EXAMPLE, "--episodes", "3", "--trials", "2", "--out", str(tmp_path / name),
                   "--quiet").returncode == 0
    assert (tmp_path / "a" / "returns.csv").read_text() == (tmp_path / "b" / "returns.csv").read_text()


def test_validate_accepts_examples_and_rejects_bad_specs(tmp_path):
    proc = cli("validate", EXAMPLE)
    assert proc.returncode == 0 and "valid" in proc.stdout and "bit_a -> bit_b -> act" in proc.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text(Path(EXAMPLE).read_text().replace('inputs = ["bit_a", "bit_b"]', 'inputs = ["bit_a", "bit_c"]'))
    proc = cli("validate", str(bad))
    assert proc.returncode == 2 and "unknown input 'bit_c'" in proc.stderr and "Traceback" not in proc.stderr
    proc = cli("validate", str(tmp_path / "missing.toml"))
    assert proc.returncode == 2 and "no such file" in proc.stderr
    typo = tmp_path / "typo.toml"
    typo.write_text(Path(EXAMPLE).read_text().replace('"distcoagent/GridWorld-v0"', '"CartPol-v1"'))
    proc = cli("validate", str(typo))
    assert proc.returncode == 2 and "Did you mean" in proc.stderr


def test_validate_json_prints_json_alone_and_python_m_distcoagent_runs_the_command_line():
    proc = cli("validate", EXAMPLE, "--json")
    assert proc.returncode == 0 and "valid" in proc.stderr
    assert json.loads(proc.stdout)["action"] == "act"  # standard output is the JSON, nothing else
    module = subprocess.run([sys.executable, "-m", "distcoagent", "validate", EXAMPLE], capture_output=True,
                            text=True, cwd=ROOT, timeout=120)
    assert module.returncode == 0 and "bit_a -> bit_b -> act" in module.stdout, module.stderr


def test_a_reader_that_stops_early_ends_the_command_quietly():
    """`distcoagent validate SPEC --json | head -c 1`: stdout closed before the command writes."""
    proc = subprocess.Popen([sys.executable, "-m", "distcoagent.cli", "validate", EXAMPLE, "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    proc.stdout.close()  # before the command has imported anything: its first write finds no reader
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 141 and "Broken pipe" not in stderr and "Error" not in stderr, stderr


def test_a_broken_pipe_that_is_not_stdout_is_an_error(monkeypatch, capsys):
    """A pipe to another process that died is not a reader that stopped: one error line, exit 2."""
    import errno

    from distcoagent import cli as command_line

    def broken(spec):
        raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    monkeypatch.setattr(command_line, "check_env", broken)
    assert command_line.main(["validate", EXAMPLE]) == 2
    assert capsys.readouterr().err.strip() == "distcoagent validate: error: Broken pipe"


def test_help_describes_every_option():
    top = cli("--help")
    assert top.returncode == 0 and "train" in top.stdout and "validate" in top.stdout
    train = cli("train", "--help").stdout
    for flag in ("--episodes", "--trials", "--seed", "--out", "--engine", "--address"):
        assert flag in train
    assert "inprocess" in train and "ray" in train


def test_every_example_spec_validates():
    examples = sorted((ROOT / "examples").glob("*.toml"))
    assert len(examples) >= 3
    for path in examples:
        proc = cli("validate", str(path))
        assert proc.returncode == 0, (path, proc.stderr)


def _orphaned_semaphores(shm: Path = Path("/dev/shm")) -> set[str]:
    """Ray's named semaphores (sem.obj<pid>-<n>, sem.hdr<pid>-<n>) whose creating process has exited."""
    from distcoagent.ray_engine.cluster import running

    pids = {p.name: p.name[7:].split("-")[0] for kind in ("obj", "hdr") for p in shm.glob(f"sem.{kind}*-*")}
    return {name for name, pid in pids.items() if pid.isdigit() and not running(int(pid))}


def test_train_on_the_ray_engine_matches_the_in_process_engine(tmp_path):
    common = ("--episodes", "4", "--trials", "3", "--seed", "4", "--quiet")
    orphans = _orphaned_semaphores()
    ray_run = cli("train", EXAMPLE, *common, "--engine", "ray", "--coagents-per-actor", "2", "--out",
                  str(tmp_path / "ray"))
    assert ray_run.returncode == 0, ray_run.stderr
    # the Ray it started and stopped left none of its raylet's semaphores in /dev/shm (Ray 2.60 would)
    leaked = _orphaned_semaphores() - orphans
    assert not leaked, (len(leaked), sorted(leaked)[:4])
    assert "engine" in ray_run.stdout and "ray" in ray_run.stdout
    assert cli("train", EXAMPLE, *common, "--out", str(tmp_path / "local")).returncode == 0
    assert (tmp_path / "ray" / "returns.csv").read_text() == (tmp_path / "local" / "returns.csv").read_text()
    assert json.loads((tmp_path / "ray" / "config.json").read_text())["ray"] == {"coagents_per_actor": 2}


def test_only_the_semaphores_of_an_exited_raylet_are_removed(tmp_path):
    from distcoagent.ray_engine.cluster import remove_semaphores_left_by

    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    exited.wait()
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])  # exited, not yet reaped (as a killed raylet can be)
    stat = Path(f"/proc/{zombie.pid}/stat")
    for _ in range(200):
        if stat.read_text().rpartition(")")[2].split()[0] == "Z":
            break
        time.sleep(0.05)

    def of(pid):
        return [f"sem.{kind}{pid}-{n}" for kind in ("obj", "hdr") for n in (1796, 1797)]

    others = of(os.getpid()) + [f"sem.obj{exited.pid}0-1", "sem.mp-x"]  # a running pid, a longer one, not Ray's
    for name in of(exited.pid) + of(zombie.pid) + others:
        (tmp_path / name).write_bytes(b"\0" * 32)
    assert remove_semaphores_left_by(exited.pid, tmp_path) == 4
    assert remove_semaphores_left_by(zombie.pid, tmp_path) == 4
    zombie.wait()
    assert remove_semaphores_left_by(os.getpid(), tmp_path) == 0  # still running: left alone
    assert remove_semaphores_left_by(None, tmp_path) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(others)


def test_unreachable_address_fails_fast_with_a_clear_error():
    start = time.monotonic()
    proc = cli("train", EXAMPLE, "--engine", "ray", "--address", "127.0.0.1:1", "--quiet")
    assert proc.returncode == 2 and "no Ray cluster answers at 127.0.0.1:1" in proc.stderr
    assert time.monotonic() - start < 30 and "Traceback" not in proc.stderr


def test_evaluate_runs_the_trained_policies_frozen(tmp_path):
    """`distcoagent evaluate RUN`: the run's final policies, learning frozen, on fresh episodes; far better
    than the same network untrained, the parameters untouched, the same numbers from Python."""
    from distcoagent import evaluate, evaluate_run, load_spec, serialize

    out = tmp_path / "run"
    assert cli("train", EXAMPLE, "--trials", "4", "--episodes", "150", "--out", str(out), "--quiet").returncode == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    proc = cli("evaluate", str(out), "--episodes", "20")
    assert proc.returncode == 0, proc.stderr
    result = evaluate_run(out, episodes=20)
    assert f"mean return {result.returns.mean():.4f}" in proc.stdout and "4 trial(s)" in proc.stdout
    saved = serialize.loads((out / "params.msgpack").read_bytes())
    for name in ("bit_a", "bit_b", "act"):
        np.testing.assert_array_equal(result.params[name]["W"], saved[name]["W"])  # frozen
    spec = load_spec(EXAMPLE)
    untrained = evaluate(spec.network, spec.env_id, {n: {"W": np.zeros_like(saved[n]["W"])} for n in saved
                                                     if n != "critic"}, env_kwargs=spec.env_kwargs, episodes=20)
    assert result.returns.mean() > untrained.returns.mean() + 10, (result.returns.mean(), untrained.returns.mean())
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    refused = cli("evaluate", str(tmp_path), "--episodes", "5")
    assert refused.returncode == 2 and "has no config.json" in refused.stderr
