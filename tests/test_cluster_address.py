"""Cluster addresses fail fast and say why; a custom environment's module reaches Ray's workers.

A real Ray head with token authentication is started with `ray start --head` under a
temporary HOME (the token lives in HOME/.ray/auth_token) and a temporary --temp-dir, on free
ports; it is torn down by killing only its own process group and the processes with its
HOME in their environment (never `ray stop`). Fake services (a silent TCP server, an HTTP
server) listen on 127.0.0.1 only. Every wait is bounded.
"""
from __future__ import annotations

import contextlib
import http.server
import os
import shutil
import socketserver
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from distcoagent.ray_engine.cluster import module_runtime_env, resolve_address, speaks_grpc
from test_two_node_cluster import _free_port_range, _free_ports, terminate

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT = 120  # seconds for `ray start`
FAIL_WITHIN = 10     # seconds: a refused address must be reported this fast (process start included)


@dataclass
class Head:
    base: Path
    env: dict      # HOME with the token, RAY_AUTH_MODE=token
    port: int
    group: int     # process group of `ray start`

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def _kill(head: Head) -> None:
    terminate([head.group], Path(head.env["HOME"]))


def _start_head(base: Path, env: dict, attempt: int) -> Head:
    gcs, *ports = _free_ports(9)
    low, high = _free_port_range(20)
    command = ["ray", "start", "--head", "--port", str(gcs), "--num-cpus", "1", "--disable-usage-stats",
               "--include-dashboard", "false", "--node-ip-address", "127.0.0.1",
               "--temp-dir", str(base / f"t{attempt}"), "--object-store-memory", "100000000",
               "--object-manager-port", str(ports[0]), "--node-manager-port", str(ports[1]),
               "--ray-client-server-port", str(ports[2]), "--metrics-export-port", str(ports[3]),
               "--dashboard-agent-listen-port", str(ports[4]), "--dashboard-agent-grpc-port", str(ports[5]),
               "--runtime-env-agent-port", str(ports[6]), "--min-worker-port", str(low), "--max-worker-port", str(high)]
    with open(base / f"head{attempt}.log", "w") as log:
        process = subprocess.Popen(command, env=env, cwd=base, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    head = Head(base, env, gcs, process.pid)
    try:
        code = process.wait(timeout=START_TIMEOUT)
    except subprocess.TimeoutExpired:
        code = None
    if code != 0:
        _kill(head)
        raise RuntimeError(f"ray start failed ({code}):\n{(base / f'head{attempt}.log').read_text()[-3000:]}")
    return head


@pytest.fixture(scope="module")
def head():
    base = Path(tempfile.mkdtemp(prefix="dcca", dir="/tmp"))  # short: Ray's unix sockets live under it
    home = base / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME=str(home), RAY_AUTH_MODE="token", PYTHONUNBUFFERED="1")
    started = None
    try:
        made = subprocess.run(["ray", "get-auth-token", "--generate"], env=env, capture_output=True, text=True,
                              timeout=60)
        assert made.returncode == 0 and (home / ".ray" / "auth_token").stat().st_size > 0, made.stderr
        for attempt in range(2):  # Ray gives a raylet 30 s to register: a busy machine may need a second try
            try:
                started = _start_head(base, env, attempt)
                break
            except RuntimeError as error:
                if attempt == 1:
                    raise AssertionError(str(error)) from None
        yield started
    finally:
        if started is not None:
            _kill(started)
        shutil.rmtree(base, ignore_errors=True)


def _cli(head: Head, env: dict, spec: Path) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "distcoagent.cli", "train", str(spec), "--engine", "ray",
                             "--address", head.address, "--out", tempfile.mkdtemp(dir=head.base), "--quiet"],
                            env=env, cwd=head.base, capture_output=True, text=True, timeout=FAIL_WITHIN + 50)
    return result, time.monotonic() - started


@pytest.fixture(scope="module")
def spec(head) -> Path:
    text = (ROOT / "examples" / "paper_gridworld.toml").read_text()
    text = text.replace("size = 5", "size = 3").replace("trials = 100", "trials = 2").replace("episodes = 200",
                                                                                          "episodes = 3")
    path = head.base / "tiny.toml"
    path.write_text(text)
    return path


def _assert_one_line(result, seconds, pattern: str) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and seconds < FAIL_WITHIN, (seconds, result.stderr[-3000:])
    assert len(lines) == 1 and lines[0].startswith("distcoagent train: error: --address "), result.stderr[-3000:]
    assert __import__("re").search(pattern, lines[0]), lines[0]
    return lines[0]


def test_no_token_mode_fails_within_seconds_naming_ray_auth_mode(head, spec):
    env = {k: v for k, v in head.env.items() if k != "RAY_AUTH_MODE"}  # the token file is there
    line = _assert_one_line(*_cli(head, env, spec), r"requires token authentication but RAY_AUTH_MODE is not "
                                                   r"'token'; set RAY_AUTH_MODE=token")
    assert "~/.ray/auth_token exists here" in line


def test_a_wrong_token_fails_within_seconds_naming_ray_auth_token(head, spec):
    env = {**head.env, "RAY_AUTH_TOKEN": "0" * 64}
    _assert_one_line(*_cli(head, env, spec), r"refused the token from RAY_AUTH_TOKEN \(RAY_AUTH_MODE=token\)")


def test_token_mode_without_any_token_fails_before_calling_ray(head, spec):
    empty = head.base / "empty-home"
    empty.mkdir(exist_ok=True)
    env = {**head.env, "HOME": str(empty)}
    _assert_one_line(*_cli(head, env, spec), r"RAY_AUTH_MODE=token but no token found: set RAY_AUTH_TOKEN")


def test_the_right_token_joins(head):
    probe = textwrap.dedent(f"""
        import ray
        from distcoagent.ray_engine.placement import connect
        assert connect({head.address!r}) is True
        print(int(ray.cluster_resources()["CPU"]))
        ray.shutdown()
        """)
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", probe], env=head.env, cwd=head.base, capture_output=True,
                            text=True, timeout=90)
    assert result.returncode == 0 and result.stdout.split()[-1] == "1", result.stderr[-3000:]
    assert time.monotonic() - started < 60


def test_the_gcs_port_answers_the_grpc_handshake(head):
    assert speaks_grpc("127.0.0.1", head.port, 3.0) is None
    assert speaks_grpc("127.0.0.1", _free_ports(1)[0], 1.0).startswith("it did not answer")  # nothing there


# ---------------------------------------------------------------------- something else listens there
class _Silent(socketserver.BaseRequestHandler):
    def handle(self):  # accept, say nothing, hold the connection a while
        self.request.settimeout(20)
        try:
            self.request.recv(1 << 16)
            time.sleep(10)
        except OSError:
            pass


@contextlib.contextmanager
def _serving(kind: str):
    """A silent TCP server or an HTTP server on 127.0.0.1; yields its address."""
    if kind == "silent":
        server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Silent)
    else:
        class Quiet(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args):
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture(params=["silent", "http"])
def listener(request):
    with _serving(request.param) as address:
        yield request.param, address


def test_a_port_where_something_else_listens_fails_within_seconds(listener):
    kind, address = listener
    started = time.monotonic()
    with pytest.raises(ConnectionError) as info:
        resolve_address(address, timeout=1.0)
    assert time.monotonic() - started < 5
    message = str(info.value)
    assert message.startswith(f"--address {address}: something listens at {address} but it is not a Ray cluster")
    assert ("an HTTP server answers there" if kind == "http" else "did not answer an HTTP/2 (gRPC) handshake "
            "within 1 s") in message
    assert "GCS port" in message


def test_the_cli_reports_a_silent_port_in_seconds(tmp_path):
    with _serving("silent") as address:
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "distcoagent.cli", "train",
                                 str(ROOT / "examples" / "paper_gridworld.toml"), "--engine", "ray", "--address",
                                 address, "--out", str(tmp_path / "run"), "--quiet"],
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and time.monotonic() - started < FAIL_WITHIN + 5, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [
        f"distcoagent train: error: --address {address}: something listens at {address} but it is not a Ray "
        "cluster (it accepts connections but did not answer an HTTP/2 (gRPC) handshake within 3 s); give the "
        "head's GCS port (`ray start --head --port`, default 6379; not the dashboard's 8265 or the Ray "
        "Client's 10001)"]


# ---------------------------------------------------------------------- custom environment modules
MODULE = '''
import gymnasium as gym
from distcoagent.envs.gridworld import GridWorldEnv


class Corridor(GridWorldEnv):
    """A 3 x 3 gridworld under another name, defined outside the package."""

    def __init__(self, **kwargs):
        super().__init__(size=3, max_steps=30, **kwargs)


gym.register(id="{env}", entry_point="{name}:Corridor")
'''


def test_module_runtime_env_ships_a_user_module_not_installed_packages(tmp_path, monkeypatch):
    name = "dc_user_env_a"
    (tmp_path / f"{name}.py").write_text(MODULE.format(name=name, env="CorridorA-v0"))
    monkeypatch.syspath_prepend(str(tmp_path))
    shipped = {"py_modules": [str((tmp_path / f"{name}.py").resolve())]}
    assert module_runtime_env(f"{name}:CorridorA-v0") == shipped
    assert module_runtime_env("CorridorA-v0") == shipped  # registered by the module: its entry point's module
    package = tmp_path / "dc_user_pkg"
    (package / "envs").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "envs" / "__init__.py").write_text(MODULE.format(name="dc_user_pkg.envs", env="PkgCorridor-v0"))
    assert module_runtime_env("dc_user_pkg.envs:PkgCorridor-v0") == {"py_modules": [str(package.resolve())]}
    for installed in ("CartPole-v1", "distcoagent/GridWorld-v0", "numpy:Nothing-v0", "no_such_module:X-v0"):
        assert module_runtime_env(installed) is None, installed


def test_a_custom_environment_module_reaches_the_ray_actors(tmp_path, monkeypatch):
    """The module lives outside the working directory and outside the package: without the
    runtime_env, its EnvironmentWorker dies with ModuleNotFoundError."""
    import ray

    from distcoagent.engine import InProcessEngine
    from distcoagent.examples import paper_network
    from distcoagent.ray_engine import RayEngine
    from distcoagent.ray_engine.placement import connect

    name = "dc_user_env_b"
    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / f"{name}.py").write_text(MODULE.format(name=name, env="CorridorB-v0"))
    monkeypatch.syspath_prepend(str(modules))
    monkeypatch.chdir(tmp_path)  # Ray puts the driver's working directory on the workers' path: not this one
    env_id = f"{name}:CorridorB-v0"
    expected = InProcessEngine(paper_network(), env_id, {}, trials=2, seed=3).train(3)
    assert not ray.is_initialized()
    try:
        assert connect(None, runtime_env=module_runtime_env(env_id)) is True  # what RayEngine's connect will do
        engine = RayEngine(paper_network(), env_id, {}, trials=2, seed=3, transport="actors", ready_timeout=120)
        try:
            result = engine.train(3)
        finally:
            engine.close()
    finally:
        ray.shutdown()
    np.testing.assert_array_equal(result.returns, expected.returns)
