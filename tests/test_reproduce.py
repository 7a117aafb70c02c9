"""The paper's experiments and the gradcheck/reproduce commands, at tiny sizes."""
import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from distcoagent import reproduce


def test_learning_curves_do_not_depend_on_the_number_of_workers():
    network, env_id, env_kwargs = reproduce.paper_setup()
    one = reproduce.learning_curves(network, env_id, env_kwargs, trials=5, episodes=3, seed=4, workers=1)
    two = reproduce.learning_curves(network, env_id, env_kwargs, trials=5, episodes=3, seed=4, workers=2)
    np.testing.assert_array_equal(one, two)
    assert one.shape == (5, 3)


def test_learning_curves_do_not_depend_on_the_jobs(monkeypatch):
    """Trials cut into jobs of at most ``CHUNK_TRIALS`` (several per worker): the same returns."""
    network, env_id, env_kwargs = reproduce.paper_setup()
    whole = reproduce.learning_curves(network, env_id, env_kwargs, trials=7, episodes=3, seed=4, workers=1)
    monkeypatch.setattr(reproduce, "CHUNK_TRIALS", 2)
    assert len(reproduce.learning_jobs(network, env_id, env_kwargs, 7, 3, 4, 2)) == 4
    for workers in (1, 2):
        jobs = reproduce.learning_curves(network, env_id, env_kwargs, trials=7, episodes=3, seed=4, workers=workers)
        np.testing.assert_array_equal(whole, jobs)


SHARED_KERNELS = """
import gc, json, os, sys
from pathlib import Path
from distcoagent import reproduce
from distcoagent.kernels import block

parent, out = os.getpid(), Path(sys.argv[1])
real = reproduce._learning_slice

def recording(job):  # what a worker finds when its job starts
    if os.getpid() != parent:
        (out / f"{os.getpid()}-{job[3]}.json").write_text(json.dumps([len(block.run.overloads), gc.get_freeze_count()]))
    return real(job)

reproduce._learning_slice = recording
loaded = len(block.run.overloads)
network, env_id, env_kwargs = reproduce.paper_setup()
reproduce.learning_curves(network, env_id, env_kwargs, trials=4, episodes=2, seed=0, workers=2)
print(json.dumps({"loaded_before": loaded, "frozen_after": gc.get_freeze_count()}))
"""


def test_forked_workers_share_the_kernels_loaded_before_the_fork(tmp_path):
    """A fresh process: learning curves on 2 workers load the kernels once, in the parent, and the workers
    start with them (and with the parent's objects frozen out of the garbage collector's passes)."""
    env = {**{k: v for k, v in os.environ.items() if k != "DISTCOAGENT_KERNELS"},
           "DISTCOAGENT_PREBUILT": "0"}  # numba in every process (test_prebuilt.py: with no numba at all)
    proc = subprocess.run([sys.executable, "-c", SHARED_KERNELS, str(tmp_path)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    parent = json.loads(proc.stdout.strip().splitlines()[-1])
    assert parent == {"loaded_before": 0, "frozen_after": 0}  # nothing loaded before; unfrozen after
    seen = [json.loads(path.read_text()) for path in sorted(tmp_path.glob("*.json"))]
    assert len(seen) == 2  # two jobs (trials 0-1 and 2-3), each in a worker
    for loaded, frozen in seen:
        assert loaded >= 1 and frozen > 0


def test_the_workers_pool_leaves_a_callers_frozen_objects_alone():
    """Frozen by the caller: still frozen after the pool (its own freeze and unfreeze would have emptied
    the permanent generation; frozen objects that die meanwhile leave it, so the count may drop)."""
    gc.freeze()
    try:
        assert gc.get_freeze_count() > 0
        with reproduce._pool(2) as pool:
            assert list(pool.map(abs, [-1, -2])) == [1, 2]
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_fig5_and_fig6_write_png_and_json(tmp_path):
    s5 = reproduce.fig5(trials=2, episodes=8, out=tmp_path, workers=1)
    s6 = reproduce.fig6(trials=3, episodes=4, out=tmp_path, workers=1)
    for name in ("fig5", "fig6"):
        assert (tmp_path / f"{name}.png").stat().st_size > 1000
        json.loads((tmp_path / f"{name}.json").read_text())
    assert s5["episodes"][0] == 1 and s5["episodes"][-1] == 8
    assert all(0 <= d <= 2 for d in s5["mean_cosine_distance"])
    written = json.loads((tmp_path / "fig5.json").read_text())
    assert set(written["lines"]) == {"acpgt_vs_fd", "acpgt_vs_exact", "fd_vs_exact"}
    for line in written["lines"].values():  # each line: a mean and band per count, and where it ends
        assert len(line["mean"]) == len(line["ci95_halfwidth"]) == len(written["episodes"])
        assert np.array(line["per_trial"]).shape == (2, len(written["episodes"]))
        assert line["end"] == {"episodes": 8, "mean": line["mean"][-1], "ci95_halfwidth": line["ci95_halfwidth"][-1],
                               "median": line["median"][-1]}
    assert s6["optimal_return"] == -8.0 and len(s6["mean_return"]) == 4


SPEC = """
[env]
id = "distcoagent/GridWorld-v0"
size = 3
max_steps = {max_steps}
[network]
gamma = 0.9
action = "act"
[[coagent]]
name = "bit"
inputs = ["obs"]
policy = {{ kind = "softmax", n = 2 }}
execution = {{ kind = "constant", probability = 0.5 }}
[[coagent]]
name = "act"
inputs = ["bit", "prev:act"]
policy = {{ kind = "softmax", n = 4 }}
"""


@pytest.fixture
def cli():
    main = pytest.importorskip("distcoagent.cli").main
    return main


def test_gradcheck_command_writes_json(cli, tmp_path, capsys):
    spec = tmp_path / "net.toml"
    spec.write_text(SPEC.format(max_steps=1000))
    out = tmp_path / "report.json"
    assert cli(["gradcheck", str(spec), "--episodes", "200", "--fd-episodes", "20", "--exact",
                "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert np.asarray(report["gradients"]["exact"]["act"]["W"]).shape == (8, 4)  # (bit, prev:act) x 4 moves
    assert "acpgt_vs_exact" in report["cosine_distance"]
    assert "max_steps=1000" in capsys.readouterr().out  # the time-limit caveat is printed


def test_gradcheck_command_names_what_is_not_exact(cli, tmp_path, capsys):
    spec = tmp_path / "cart.toml"
    spec.write_text("""
[env]
id = "CartPole-v1"
[network]
gamma = 0.99
action = "push"
[[coagent]]
name = "push"
inputs = ["obs"]
policy = { kind = "softmax", n = 2 }
features = { kind = "fourier", order = 1, low = [-2.4, -3, -0.21, -3], high = [2.4, 3, 0.21, 3] }
""")
    assert cli(["gradcheck", str(spec), "--exact", "--episodes", "5"]) == 2
    err = capsys.readouterr().err
    assert "push" in err and "continuous" in err


def test_reproduce_command(cli, tmp_path, capsys):
    assert cli(["reproduce", "fig6", "--trials", "2", "--episodes", "2", "--out", str(tmp_path),
                "--workers", "1"]) == 0
    assert (tmp_path / "fig6.png").exists()
    assert "last 2 " in capsys.readouterr().out  # the episodes there are, not "last 10"


def test_reproduce_fig5_command_prints_where_each_line_ends(cli, tmp_path, capsys):
    assert cli(["reproduce", "fig5", "--trials", "2", "--episodes", "20", "--out", str(tmp_path),
                "--workers", "1"]) == 0
    out = capsys.readouterr().out
    for label in ("ACPGT vs finite differences", "ACPGT vs exact", "finite differences vs exact"):
        assert f"ends: {label}: " in out
    assert len(json.loads((tmp_path / "fig5.json").read_text())["lines"]) == 3
    assert cli(["reproduce", "fig5", "--trials", "2", "--episodes", "5", "--out", str(tmp_path / "no"),
                "--workers", "1", "--no-exact"]) == 0
    assert list(json.loads((tmp_path / "no" / "fig5.json").read_text())["lines"]) == ["acpgt_vs_fd"]
    assert cli(["reproduce", "fig5", "--step", "0", "--out", str(tmp_path)]) == 2
    assert "--step" in capsys.readouterr().err


def test_curve_bands_of_partial_columns_raise_no_warning():
    """A failed run's curve has episodes finished by one trial or none: a band of 0 (and a NaN mean where
    no trial finished), with no numpy warning; full columns are the sample mean and 1.96 standard errors."""
    import warnings

    from distcoagent.plotting import mean_and_band

    values = np.array([[1.0, np.nan, 2.0, 5.0], [np.nan, np.nan, 4.0, 7.0], [np.nan, np.nan, np.nan, 9.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mean, half = mean_and_band(values)
    np.testing.assert_array_equal(mean, [1.0, np.nan, 3.0, 7.0])
    np.testing.assert_allclose(half, [0.0, 0.0, 1.96 * np.sqrt(2) / np.sqrt(2), 1.96 * 2 / np.sqrt(3)])


def test_reproduce_refuses_bad_flags_before_running(cli, tmp_path, capsys):
    """Found before the study: a negative seed, --out naming a file, sizes no machine holds."""
    a_file = tmp_path / "afile"
    a_file.write_text("mine")
    cases = [(["--seed", "-1"], "--seed: expected an integer in 0..2**63 - 1"), (["--out", str(a_file)], "--out:"),
             (["--out", str(a_file / "figs")], f"--out: {a_file} is a file"),
             (["--trials", str(10**12)], "trials x episodes"), (["--episodes", str(10**13)], "trials x episodes")]
    for args, expected in cases:
        capsys.readouterr()
        assert cli(["reproduce", "fig6", "--out", str(tmp_path / "figs"), *args]) == 2, args
        err = capsys.readouterr().err
        assert expected in err and len(err.strip().splitlines()) == 1, (args, err)
    assert a_file.read_text() == "mine" and not (tmp_path / "figs").exists()


def test_a_study_that_cannot_fit_is_refused_before_its_kernels_are_built(monkeypatch):
    """The memory check comes first: a first study on a fresh install would otherwise build its kernels
    ahead of time (about 20 s) only to be refused."""
    from distcoagent.examples import paper_network
    from distcoagent.network import SpecError

    def build(*args):
        raise AssertionError("the kernels were prepared before the study's memory was checked")

    monkeypatch.setattr(reproduce.prebuilt, "prepare", build)
    with pytest.raises(SpecError, match=r"^trials x .*this machine has"):
        reproduce.learning_curves(paper_network(), "distcoagent/GridWorld-v0", {"size": 3000, "max_steps": 5},
                                  trials=1000, episodes=1, workers=1)


def test_reports_and_figures_go_only_where_they_may(cli, tmp_path, capsys, monkeypatch):
    """``gradcheck --out`` replaces an earlier report but no other file (the spec itself was overwritten once);
    a folder that cannot be written is said before the sampling or the study, naming --out."""
    spec = tmp_path / "net.toml"
    spec.write_text(SPEC.format(max_steps=50))
    text = spec.read_text()
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    for target in (spec, notes):
        capsys.readouterr()
        assert cli(["gradcheck", str(spec), "--episodes", "3", "--no-fd", "--out", str(target)]) == 2
        err = capsys.readouterr().err
        assert f"--out: {target} exists and is not a gradcheck report" in err and len(err.strip().splitlines()) == 1
    assert spec.read_text() == text and notes.read_text() == "mine"
    report = tmp_path / "report.json"
    for _ in range(2):  # an earlier report is replaced
        assert cli(["gradcheck", str(spec), "--episodes", "3", "--no-fd", "--out", str(report)]) == 0
    assert json.loads(report.read_text())["episodes"]["acpgt"] == 3

    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != locked and real_access(path, mode))
    sampled = []
    monkeypatch.setattr("distcoagent.gradients.gradcheck", lambda *a, **k: sampled.append(1))
    monkeypatch.setattr(reproduce, "learning_curves", lambda *a, **k: sampled.append(1))
    for command in (["gradcheck", str(spec), "--out", str(locked / "g.json")],
                    ["reproduce", "fig6", "--trials", "2", "--episodes", "2", "--out", str(locked / "figs")]):
        capsys.readouterr()
        assert cli(command) == 2, command
        err = capsys.readouterr().err
        assert f"--out: {locked} is not writable" in err and len(err.strip().splitlines()) == 1, err
    assert not sampled and list(locked.iterdir()) == []


def test_the_window_after_the_goal_move_starts_after_it():
    from distcoagent.reproduce_option_critic import window

    lengths = np.array([[100.0] * 5 + [10.0] * 6, [100.0] * 5 + [20.0] * 6])
    after = window(lengths, 11, start=5)
    assert after["episodes"] == [6, 11] and after["mean"] == 15.0
    assert window(lengths[:1], 11, start=5)["ci95"] is None  # one run: no band, not a band of 0
