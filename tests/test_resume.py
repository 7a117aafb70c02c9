"""Nothing lost: fresh run directories, checkpoints, Ctrl-C / SIGTERM / SIGKILL and --resume, as a user
runs them (the CLI in a subprocess), on both engines; damaged checkpoints get one clear error."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from distcoagent import checkpoint

ROOT = Path(__file__).resolve().parents[1]
SPEC = """
[env]
id = "distcoagent/GridWorld-v0"
size = 5

[network]
gamma = 0.95
action = "act"

[critic]
step = 0.1

[defaults]
execution = { kind = "constant", probability = 0.5 }
rule = { kind = "actor_critic", actor_step = 0.2, critic_step = 0.1, lam = 0.7, critic = "shared" }

[[coagent]]
name = "bit_a"
inputs = ["obs"]
policy = { kind = "softmax", n = 2 }

[[coagent]]
name = "bit_b"
inputs = ["obs"]
policy = { kind = "softmax", n = 2 }

[[coagent]]
name = "act"
inputs = ["bit_a", "bit_b"]
policy = { kind = "softmax", n = 4 }

[train]
episodes = 1500
trials = 1500
seed = 4
micro_batches = 2
"""


def cli(*args, cwd=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "distcoagent.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd or ROOT, timeout=timeout)


def start(*args, cwd=None, nice=False):
    """The command line in a subprocess; ``nice``: at the lowest priority (a run kept training only to hold
    its directory takes no CPU from the rest of the suite)."""
    return subprocess.Popen([sys.executable, "-m", "distcoagent.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=cwd or ROOT,
                            preexec_fn=(lambda: os.nice(19)) if nice else None)


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    path = tmp_path_factory.mktemp("spec") / "study.toml"
    path.write_text(SPEC)
    return path


@pytest.fixture(scope="module")
def reference(spec, tmp_path_factory):
    """The uninterrupted run every interrupted one must end up equal to."""
    out = tmp_path_factory.mktemp("reference") / "run"
    proc = cli("train", spec, "--out", out, "--quiet")
    assert proc.returncode == 0, proc.stderr
    return out


def same_run(a: Path, b: Path) -> None:
    for name in ("returns.csv", "params.msgpack", "counters.json", "curve.csv"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), f"{name} differs"


def wait_for_file(proc, path: Path, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} did not appear within {timeout} s"
        time.sleep(0.05)


def test_without_out_each_run_gets_a_fresh_directory(spec, tmp_path):
    for _ in range(2):
        assert cli("train", spec, "--episodes", "2", "--trials", "2", "--quiet", cwd=tmp_path).returncode == 0
    runs = sorted((tmp_path / "runs" / "study").iterdir())
    assert len(runs) == 2 and all((r / "summary.json").is_file() for r in runs)


def test_an_existing_run_is_never_overwritten_silently(spec, tmp_path):
    out = tmp_path / "run"
    assert cli("train", spec, "--episodes", "2", "--trials", "2", "--out", out, "--quiet").returncode == 0
    before = (out / "returns.csv").read_bytes()
    again = cli("train", spec, "--episodes", "2", "--trials", "3", "--out", out, "--quiet")
    assert again.returncode == 2 and "--resume" in again.stderr and "--overwrite" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1 and (out / "returns.csv").read_bytes() == before
    replaced = cli("train", spec, "--episodes", "2", "--trials", "3", "--out", out, "--quiet", "--overwrite")
    assert replaced.returncode == 0 and (out / "returns.csv").read_bytes() != before
    a_file = tmp_path / "file.txt"
    a_file.write_text("not a run")
    refused = cli("train", spec, "--episodes", "2", "--out", a_file, "--quiet")
    assert refused.returncode == 2 and "is a file" in refused.stderr and a_file.read_text() == "not a run"


def test_a_refused_command_changes_nothing_in_the_run_directory(spec, tmp_path, capsys, monkeypatch):
    """Every check of a run comes before its directory changes: an --overwrite that is then refused keeps
    the old run whole, a refused new run leaves no directory, and a resume refused for a damaged
    config.json or a checkpoint name taken by a folder is refused before any training.  (In this process:
    every case is refused before an engine starts.)"""
    from distcoagent.cli import main

    def run(*args) -> tuple[int, str]:
        capsys.readouterr()
        code = main(list(map(str, args)))
        return code, capsys.readouterr().err

    out = tmp_path / "run"
    assert run("train", spec, "--episodes", "2", "--trials", "2", "--out", out, "--quiet")[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    placement = tmp_path / "placement.toml"
    placement.write_text(SPEC + '\n[ray]\ngroups = [["bit_a", "act"], ["nobody"]]\n')
    refused = {
        "address without ray": ([spec, "--address", "127.0.0.1:6379"], {}, "only the ray engine"),
        "threads": ([spec], {"DISTCOAGENT_THREADS": "abc"}, "DISTCOAGENT_THREADS"),
        "replicas": ([spec, "--engine", "ray", "--replicas", "3"], {}, "ray.replicas"),
        "groups": ([placement, "--engine", "ray"], {}, "ray.groups"),
    }
    for what, (args, env, expected) in refused.items():
        new = tmp_path / f"new-{what.replace(' ', '-')}"
        for target, extra in ((out, ["--overwrite"]), (new, [])):
            with monkeypatch.context() as patch:
                for key, value in env.items():
                    patch.setenv(key, value)
                code, err = run("train", *args, "--episodes", "2", "--trials", "2", "--out", target, "--quiet",
                                *extra)
            assert code == 2 and expected in err and len(err.strip().splitlines()) == 1, (what, err)
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before, what
        assert not new.exists(), what
    config = (out / "config.json").read_text()
    for what, text in {"not JSON": "{not json", "a list": "[1, 2]", "no train table": '{"env": {}}'}.items():
        (out / "config.json").write_text(text)
        code, err = run("train", "--resume", out, "--quiet")
        assert code == 2 and "config.json is damaged" in err and len(err.strip().splitlines()) == 1, (what, err)
    (out / "config.json").write_text(config)
    (out / checkpoint.FILE).unlink()
    (out / checkpoint.FILE).mkdir()
    code, err = run("train", "--resume", out, "--quiet")
    assert code == 2 and f"{checkpoint.FILE} is not a file" in err, err
    assert not any(p.name.startswith(".") for p in out.iterdir())  # no checkpoint's temporary file, no lock file


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_a_signal_writes_a_checkpoint_and_resume_finishes_the_same_run(spec, reference, tmp_path, sig, code):
    out = tmp_path / "run"
    proc = start("train", spec, "--out", out, "--quiet")
    wait_for_file(proc, out / "metrics.jsonl")
    time.sleep(0.1)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr
    assert f"distcoagent train --resume {out}" in stderr and (out / checkpoint.FILE).is_file()
    assert '"status": "interrupted"' in (out / "metrics.jsonl").read_text()
    resumed = cli("train", "--resume", out, "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    same_run(reference, out)


def test_a_run_directory_is_used_by_one_process_at_a_time(spec, tmp_path):
    """While a run trains, a resume or an --overwrite of its directory is refused, naming the process
    (two writers mixed their files, or deleted a live run's); a killed writer's temporary file goes."""
    out = tmp_path / "run"
    proc = start("train", spec, "--out", out, "--episodes", "1000000", "--trials", "2", "--micro-batches", "1", "--quiet",
                 nice=True)
    wait_for_file(proc, out / "metrics.jsonl")
    for args in (["--resume", out], [spec, "--out", out, "--overwrite", "--seed", "9"], [spec, "--out", out]):
        other = cli("train", *args, "--quiet")
        assert other.returncode == 2, other.stderr
        assert f"{out} is in use by process {proc.pid}, which is training in it" in other.stderr \
            or args == [spec, "--out", out] and "already holds a run" in other.stderr, other.stderr
    assert proc.poll() is None, "the run must still be training"
    (out / f".{checkpoint.FILE}.999999999.tmp").write_bytes(b"left by a killed writer")
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    again = cli("train", spec, "--out", out, "--overwrite", "--episodes", "2", "--trials", "2", "--quiet")
    assert again.returncode == 0, again.stderr
    assert not list(out.glob(".*.tmp")) and json.loads((out / "summary.json").read_text())["finished"]


def test_a_metrics_record_cut_short_is_dropped_when_the_run_resumes(spec, reference, tmp_path):
    """A full disk or a killed process can leave metrics.jsonl's last record half written; the resumed run
    must not go on on that line (it spoiled its own first record too, and the dashboard's reading)."""
    out = tmp_path / "run"
    proc = start("train", spec, "--out", out, "--quiet")
    wait_for_file(proc, out / "metrics.jsonl")
    time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=120)
    log = out / "metrics.jsonl"
    whole = log.read_bytes()
    log.write_bytes(whole[:-30])  # the last record (the run's end) cut in the middle
    resumed = cli("train", "--resume", out, "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    records = [json.loads(line) for line in log.read_text().splitlines()]  # every line a whole record
    assert [r["kind"] for r in records].count("start") == 1 and records[-1]["kind"] == "end"
    assert log.read_bytes().startswith(whole[:whole.rfind(b"\n", 0, len(whole) - 1) + 1])  # the rest kept
    same_run(reference, out)


def test_a_second_signal_stops_at_once_says_so_and_loses_only_time(spec, reference, tmp_path):
    out = tmp_path / "run"
    proc = start("train", spec, "--out", out, "--quiet", "--checkpoint-every", "5")
    wait_for_file(proc, out / checkpoint.FILE)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "a second stop signal (SIGTERM): stopping at once" in stderr and f"--resume {out}" in stderr, stderr
    resumed = cli("train", "--resume", out, "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    same_run(reference, out)


def test_flags_that_do_not_apply_are_refused_and_a_finished_run_trains_nothing(spec, tmp_path):
    """--overwrite with --resume, Ray's placement flags without the ray engine: refused in one line, nothing
    changed. Resuming a finished run (even with --engine ray) starts no engine and keeps its summary's."""
    out = tmp_path / "run"
    assert cli("train", spec, "--episodes", "2", "--trials", "2", "--out", out, "--quiet").returncode == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    refused = {("--resume", out, "--overwrite"): "--overwrite: not with --resume",
               ("--resume", out, "--coagents-per-actor", "2"): "--coagents-per-actor: only with the ray engine",
               (spec, "--out", tmp_path / "new", "--placement", "PACK"): "--placement: only with the ray engine"}
    for args, expected in refused.items():
        proc = cli("train", *args, "--quiet")
        assert proc.returncode == 2 and expected in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, args
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before and not (tmp_path / "new").exists()
    again = cli("train", "--resume", out, "--engine", "ray", "--quiet")
    assert again.returncode == 0 and "had finished its 2 episodes; nothing to train" in again.stderr, again.stderr
    assert not (out / "placement.json").exists()  # no Ray actor was made
    assert json.loads((out / "summary.json").read_text())["engine"] == "inprocess"
    assert (out / "returns.csv").read_bytes() == before["returns.csv"]
    (out / checkpoint.FILE).unlink()  # a user freeing space: the finished run's results must not be trained over
    results = {p.name: p.read_bytes() for p in out.iterdir()}
    proc = cli("train", "--resume", out, "--quiet")
    assert proc.returncode == 2 and f"{out} has finished (summary.json) and has no checkpoint.msgpack" in proc.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == results


def test_a_run_started_from_python_resumes_from_the_command_line(spec, reference, tmp_path):
    """Its config.json has no spec file's text, but its network, env and train tables describe it."""
    from distcoagent.spec import load_spec
    from distcoagent.training import train

    out, run = tmp_path / "run", load_spec(spec)
    calls = []
    stopped = train(run.network, run.env_id, env_kwargs=run.env_kwargs, episodes=1500, trials=1500, seed=4,
                    micro_batches=2, out=out, stop=lambda: len(calls.append(1) or calls) > 3)
    assert not stopped.finished and json.loads((out / "config.json").read_text())["spec"] is None
    resumed = cli("train", "--resume", out, "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    same_run(reference, out)


def test_a_python_run_no_spec_describes_exactly_is_left_to_python(tmp_path):
    """A subclass keeps its parent's configuration but may act otherwise; an option TOML cannot hold (None)
    would come back as the default: neither is resumed from the command line as something else. The
    option-critic network (expected actor-critic, driven execution) is described."""
    from distcoagent import Coagent, Network
    from distcoagent.networks import option_critic
    from distcoagent.policies import Softmax
    from distcoagent.spec import TrainConfig
    from distcoagent.training import spec_of_python_run, train

    class Greedy(Softmax):
        pass

    subclass = Network([Coagent("a", ("obs",), Greedy(4))], action="a")
    grid, config = "distcoagent/GridWorld-v0", TrainConfig(episodes=2)
    assert spec_of_python_run(subclass, grid, {"size": 3}, config, {}, {}) is None
    assert spec_of_python_run(Network([Coagent("a", ("obs",), Softmax(4))], action="a"), grid,
                              {"size": 3, "max_steps": None}, config, {}, {}) is None
    assert spec_of_python_run(option_critic(), "distcoagent/FourRooms-v0", {}, config, {}, {}) is not None
    out = tmp_path / "run"
    train(subclass, grid, env_kwargs={"size": 3}, episodes=1, out=out, stop=lambda: True)
    proc = cli("train", "--resume", out, "--quiet")
    assert proc.returncode == 2 and "started from Python with parts no spec describes" in proc.stderr


def test_overwrite_replaces_only_a_run_not_someone_elses_config_json(spec, tmp_path):
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "config.json").write_text('{"my": "app config"}')
    (folder / "returns.csv").write_text("id,value\n")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    proc = cli("train", spec, "--episodes", "2", "--trials", "2", "--out", folder, "--overwrite", "--quiet")
    assert proc.returncode == 2 and "holds a config.json that is not a run's" in proc.stderr, proc.stderr
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    run = tmp_path / "run"  # a run's config.json cut short (a full disk) is still its run's: it may be replaced
    assert cli("train", spec, "--episodes", "2", "--trials", "2", "--out", run, "--quiet").returncode == 0
    (run / "config.json").write_text('{"env": {"id": "distcoag')
    proc = cli("train", spec, "--episodes", "2", "--trials", "2", "--out", run, "--overwrite", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((run / "config.json").read_text())["train"]["episodes"] == 2


def test_sigkill_at_several_points_loses_only_time(spec, reference, tmp_path):
    out = tmp_path / "run"
    proc = start("train", spec, "--out", out, "--quiet", "--checkpoint-every", "5")
    kills = 0
    for _ in range(3):
        wait_for_file(proc, out / checkpoint.FILE)
        time.sleep(0.3)
        if proc.poll() is not None:
            break
        proc.kill()
        proc.wait(timeout=30)
        kills += 1
        proc = start("train", "--resume", out, "--quiet", "--checkpoint-every", "5")
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert kills >= 1
    same_run(reference, out)


def test_damaged_or_foreign_checkpoints_get_one_clear_error_and_the_run_directory_stays(spec, tmp_path):
    out = tmp_path / "run"
    proc = start("train", spec, "--out", out, "--quiet")
    wait_for_file(proc, out / "metrics.jsonl")
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=120)
    good = (out / checkpoint.FILE).read_bytes()
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0x10
    header = bytearray(good)
    header[good.index(b"distcoagent.checkpoint/")] ^= 0x10
    cases = {"truncated": good[: len(good) // 3], "bit-flipped": bytes(flipped), "not msgpack": b"\x00" * 100,
             "format flipped": bytes(header)}
    for what, data in cases.items():
        (out / checkpoint.FILE).write_bytes(data)
        before = {p.name: p.read_bytes() for p in out.iterdir()}
        proc = cli("train", "--resume", out, "--quiet")
        assert proc.returncode == 2 and "damaged" in proc.stderr, (what, proc.stderr)
        assert f"move {checkpoint.FILE} out of the run directory and resume" in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before, what
    (out / checkpoint.FILE).write_bytes(good)
    with pytest.raises(checkpoint.CheckpointError, match="another run"):
        checkpoint.read(out / checkpoint.FILE, "0" * 64)
    resumed = cli("train", "--resume", out, "--episodes", "3", "--quiet")
    assert resumed.returncode == 2 and "--episodes" in resumed.stderr


# SIGINT on a Ray run from the command line also runs by default in test_freerun_ray (the free-running
# engine, the same command-line handler); here with -m slow (20 s)
@pytest.mark.parametrize("sig,code", [pytest.param(signal.SIGINT, 130, marks=pytest.mark.slow), (signal.SIGTERM, 143)],
                         ids=["SIGINT", "SIGTERM"])
def test_ray_engine_stops_on_sigint_without_crashing_and_resumes_in_process(spec, reference, tmp_path, sig, code):
    """SIGTERM too (a preempted node, ``docker stop``): ``ray.init`` puts its own handler, exiting at once, in
    place of the command line's; the run must still finish its tick and write a checkpoint."""
    out = tmp_path / "run"
    env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "")}
    proc = subprocess.Popen([sys.executable, "-m", "distcoagent.cli", "train", str(spec), "--out", str(out), "--quiet",
                             "--engine", "ray", "--trials", "1500"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT, env=env)
    wait_for_file(proc, out / "placement.json", timeout=120)
    time.sleep(2.0)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=180)
    assert proc.returncode == code, stderr[-2000:]
    assert "Segmentation fault" not in stderr and (out / checkpoint.FILE).is_file()
    assert "finishing the tick and writing a checkpoint" in stderr and not (out / "error.txt").exists()
    assert '"status": "interrupted"' in (out / "metrics.jsonl").read_text()
    resumed = cli("train", "--resume", out, "--engine", "inprocess", "--quiet")  # same state, other engine
    assert resumed.returncode == 0, resumed.stderr
    same_run(reference, out)


def test_a_run_recorded_before_the_gaussian_floor_was_resumes_from_python(tmp_path):
    """Earlier versions recorded no Gaussian's min_log_std, so their hash of a run with another floor was
    another: such a run, resumed from Python with its network, is still the same run."""
    from distcoagent import Coagent, Network, train
    from distcoagent.features import Fourier
    from distcoagent.policies import Gaussian
    from distcoagent.rules import ActorCritic
    from distcoagent.spec import TrainConfig
    from distcoagent.training import _hash_before_min_log_std

    network = Network([Coagent("torque", ["obs"], Gaussian(1, min_log_std=-3.0), features=Fourier(1),
                               rule=ActorCritic(0.01, 0.01, 0.5, critic="own"))], action="torque", gamma=0.9)
    options = dict(env_kwargs={"max_episode_steps": 20}, trials=2, episodes=6, seed=0)
    out = tmp_path / "run"
    calls = iter(range(10**6))
    assert not train(network, "Pendulum-v1", out=out, stop=lambda: next(calls) >= 30, **options).finished
    legacy = _hash_before_min_log_std(network, "Pendulum-v1", {"max_episode_steps": 20},
                                      TrainConfig(episodes=6, trials=2, seed=0))
    config = json.loads((out / "config.json").read_text())  # as the earlier version wrote it
    del config["network"]["coagents"][0]["policy"]["min_log_std"]
    config["spec_hash"] = legacy
    (out / "config.json").write_text(json.dumps(config))
    state = checkpoint.read(out / checkpoint.FILE)
    checkpoint.write(out, state, legacy)
    resumed = train(network, "Pendulum-v1", out=out, resume=True, **options)  # (a gymnasium environment
    assert resumed.finished and np.isfinite(resumed.returns).all()  # restarts its episodes: not bit for bit)


def test_a_filesystem_that_cannot_lock_warns_and_trains(tmp_path, monkeypatch):
    """NFS without a lock daemon answers flock with ENOLCK: that is no process holding the run directory."""
    import errno
    import fcntl

    from distcoagent import load_spec, train

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    spec = load_spec(ROOT / "examples" / "paper_gridworld.toml", {"trials": 2, "episodes": 2})
    with pytest.warns(UserWarning, match="the filesystem does not lock"):
        assert train(spec, out=tmp_path / "run").finished
