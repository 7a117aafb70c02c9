"""Kernels compiled ahead of time (``kernels.prebuilt``): a study's processes run them without importing
numba, with the numbers numba's kernels give; a call of other types, a damaged manifest or a failed build
falls back to numba."""
import importlib.machinery
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("numba")

from distcoagent.kernels import _jit, prebuilt  # noqa: E402

STUDY = """
import json, os, sys
from pathlib import Path
from distcoagent import reproduce
from distcoagent.kernels import _jit

parent, out = os.getpid(), Path(sys.argv[1])

class Recording(reproduce.InProcessEngine):  # what a worker holds once its job has run
    def train(self, *args, **kwargs):
        result = super().train(*args, **kwargs)
        if os.getpid() != parent:
            (out / f"worker-{os.getpid()}-{id(self)}.json").write_text(json.dumps(
                ["numba" in sys.modules, _jit.materialized()]))
        return result

reproduce.InProcessEngine = Recording
network, env_id, env_kwargs = reproduce.paper_setup()
returns = reproduce.learning_curves(network, env_id, env_kwargs, trials=6, episodes=4, seed=3, workers=2)
print(json.dumps({"returns": returns.tolist(), "numba": ["numba" in sys.modules, _jit.materialized()]}))
"""


def _study(tmp_path, name: str, **env):
    out = tmp_path / name
    out.mkdir()
    proc = subprocess.run([sys.executable, "-c", STUDY, str(out)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "DISTCOAGENT_KERNELS": "1", **env}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    workers = [json.loads(path.read_text()) for path in sorted(out.glob("worker-*.json"))]
    return np.array(result["returns"]), result["numba"], workers, proc.stderr


def test_a_study_runs_without_numba_on_kernels_compiled_once(tmp_path):
    """First study: the module is built (one line says so) and neither the main process nor its two forked
    workers run numba (the main process imported it to see that it works: nothing was built yet); the
    returns are numba's to every bit.  A second study finds the module, builds nothing, passes over a
    damaged manifest beside it, and no process of it imports numba at all."""
    cache = tmp_path / "prebuilt"
    on = {"DISTCOAGENT_PREBUILT": "1", "DISTCOAGENT_PREBUILT_DIR": "prebuilt"}  # relative to the study's folder
    reference, numba_main, workers, _ = _study(tmp_path, "numba", DISTCOAGENT_PREBUILT="0")
    assert numba_main == [True, True] and workers == [[True, True]] * 2  # numba everywhere (the test can fail)

    returns, numba_main, workers, err = _study(tmp_path, "first", **on)
    assert "compiling the study's kernels ahead of time" in err
    np.testing.assert_array_equal(returns, reference)
    assert numba_main == [True, False] and workers == [[True, False]] * 2
    (stamp,) = cache.iterdir()
    files = sorted(stamp.iterdir(), key=lambda p: p.suffix)
    assert [p.suffix for p in files] == [".json", Path(importlib.machinery.EXTENSION_SUFFIXES[0]).suffix]
    manifest = json.loads(next(stamp.glob("*.json")).read_text())
    assert "distcoagent.kernels.block.run" in manifest["kernels"]

    (stamp / "zz-damaged.json").write_text("{not json")
    returns, numba_main, workers, err = _study(tmp_path, "second", **on)
    assert "compiling" not in err and err.strip() == ""
    np.testing.assert_array_equal(returns, reference)
    assert numba_main == [False, False] and workers == [[False, False]] * 2
    assert len(list(stamp.iterdir())) == 3  # nothing built again


def test_a_failed_build_says_why_once_and_the_study_runs_on_numba(tmp_path):
    """No C compiler (``CC`` names none): one line says the kernels were not compiled ahead of time and why,
    the study runs on numba with the same numbers, and the next study does not try again."""
    cache = tmp_path / "prebuilt"
    env = {"DISTCOAGENT_PREBUILT": "1", "DISTCOAGENT_PREBUILT_DIR": str(cache), "CC": str(tmp_path / "no-cc")}
    reference, _, _, _ = _study(tmp_path, "numba", DISTCOAGENT_PREBUILT="0")
    returns, numba_main, workers, err = _study(tmp_path, "failed", **env)
    np.testing.assert_array_equal(returns, reference)
    assert numba_main == [True, True] and workers == [[True, True]] * 2
    (line,) = [line for line in err.splitlines() if "not compiled ahead of time" in line]
    assert "no-cc" in line and "failed.txt" in line
    returns, _, _, err = _study(tmp_path, "again", **env)
    np.testing.assert_array_equal(returns, reference)
    assert "compiling" not in err and "not compiled ahead of time" not in err


def _unaligned() -> np.ndarray:
    raw = np.zeros(8 * 4 + 1, dtype=np.uint8)
    a = raw[1:].view(np.float64)
    assert not a.flags.aligned
    return a


def _readonly() -> np.ndarray:
    a = np.zeros(3)
    a.flags.writeable = False
    return a


@pytest.mark.parametrize("value", [
    np.zeros(3), np.zeros((2, 3), dtype=np.int64), np.zeros((3, 2))[:, 0], np.zeros((3, 2)).T, np.zeros(()),
    np.zeros(0), np.zeros((1, 1)), np.zeros(4, dtype=bool), np.zeros(2, dtype=np.uint64), np.zeros(3, dtype=np.int8),
    np.zeros((2, 2, 2)), _unaligned(), _readonly(),
    1, 2 ** 63, 0.5, True, np.bool_(False), np.uint64(7), np.int64(-1), np.float64(1.5), np.float32(1.5),
    (np.zeros(2), np.zeros(2)), (np.zeros(2), np.zeros((2, 2)), 3), ((np.zeros(1), 1.0), True), (),
])
def test_argument_keys_are_numbas_types(value):
    """A prebuilt version is chosen by ``key_of`` of the arguments; it must be the key of the numba type
    the version was compiled for, or a kernel would read arrays as what they are not."""
    import numba

    assert prebuilt.key_of(value) == prebuilt.key_of_type(numba.typeof(value))


def test_arguments_no_version_can_take_get_keys_of_their_own():
    """Structured arrays (two records of one size would share ``dtype.str``) and objects numba does not
    type are keyed so that no version matches them."""
    a = np.zeros(2, dtype=[("x", "<f8"), ("y", "<f8")])
    b = np.zeros(2, dtype=[("x", "<i8"), ("y", "<i8")])
    assert prebuilt.key_of(a)[0] == "?" and prebuilt.key_of(a) != prebuilt.key_of(b)
    assert prebuilt.key_of(_readonly()) != prebuilt.key_of(np.zeros(3))
    assert prebuilt.key_of("text")[0] == "?" and prebuilt.key_of(None)[0] == "?"


def test_every_kernel_version_has_a_name_of_its_own_in_a_module():
    """Two kernel modules each have an ``act`` and an ``observe`` (coagent, expected): a study running
    both must still build one module."""
    import importlib
    import pkgutil

    import distcoagent.kernels as package

    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{info.name}")
    kernels = [k for k in _jit.REGISTRY.values() if not k.options.get("inline")]
    names = [prebuilt.export_name(k, i) for k in kernels for i in range(2)]
    assert len(names) == len(set(names)) and len(kernels) > 10
    assert {"coagent__act_0", "expected__act_0"} <= set(names)


def test_a_study_that_cannot_reach_the_build_process_is_said_so(tmp_path, monkeypatch):
    """A workload that cannot be pickled for the build's process: one reason, nothing kept that would stop
    later studies from building (it is this study's, not the machine's)."""
    monkeypatch.setenv("DISTCOAGENT_PREBUILT_DIR", str(tmp_path))

    def local():  # a local function does not pickle
        pass

    why, lacking = prebuilt.build(local)
    assert "cannot be sent to the build's process" in why and not lacking
    assert [p.name for p in prebuilt.folder().iterdir()] == []  # its work folder is gone too


def test_a_call_of_other_types_goes_to_numba():
    """A prebuilt table is consulted by the arguments' types: a match runs it, anything else runs numba's
    version (or stops, while only prebuilt kernels may run)."""
    from distcoagent.kernels import coagent  # noqa: F401  (its kernels registered)

    kernel = _jit.REGISTRY["distcoagent.kernels.coagent._powers"]
    calls = []
    table = {prebuilt.key_of((0.5, np.empty(3))): lambda base, out: calls.append(out.shape)}
    prebuilt.run(kernel, table, (0.5, np.empty(3)))
    assert calls == [(3,)]
    out = np.empty(4, dtype=np.float64).reshape(2, 2)[:, 0]  # not contiguous: another type
    prebuilt.run(kernel, table, (0.5, out))
    assert calls == [(3,)] and out.tolist() == [1.0, 0.5]
    prebuilt._strict = True
    try:
        with pytest.raises(prebuilt.Missing):
            prebuilt.run(kernel, table, (0.5, out))
    finally:
        prebuilt._strict = False


def test_a_build_that_failed_is_not_tried_again_in_that_process(tmp_path, monkeypatch, capsys):
    """A study's own failure (not the machine's) writes no ``failed.txt``, so the next process tries again;
    within one process, a second study does not pay for a second failing build."""
    monkeypatch.setenv("DISTCOAGENT_PREBUILT_DIR", str(tmp_path))
    monkeypatch.setattr(prebuilt, "_failed_here", False)
    monkeypatch.setattr(prebuilt, "enabled", lambda: True)
    monkeypatch.setattr(prebuilt, "covers", lambda fn, *args: False)
    builds = []
    monkeypatch.setattr(prebuilt, "build", lambda fn, *args: builds.append(fn) or ("a reason of the study's", False))
    assert prebuilt.prepare(print) is False and prebuilt.prepare(print) is False
    assert builds == [print]
    err = capsys.readouterr().err
    assert err.count("not compiled ahead of time (a reason of the study's)") == 1 and "Delete" not in err
    assert not (prebuilt.folder() / prebuilt.FAILED).exists()
