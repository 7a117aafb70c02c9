"""A real two-node Ray cluster on this machine, started as a user would start one: the head with
cluster/bare-metal/start-head.sh, a worker with start-worker.sh (token authentication on), then
`distcoagent train --engine ray --address HOST:PORT` and `ray job submit` against it.

Everything runs in subprocesses with a temporary HOME (the token lives in HOME/.ray/auth_token)
and temporary --temp-dir's, on free ports, so other Ray clusters on the machine are untouched.
Teardown kills only what this module started: the two process groups of the `ray start`
calls and any process with this module's HOME in its environment (`ray stop` is not used: it
kills every Ray process on the machine).
"""
from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from test_deploy_files import EXPORTED_METRICS

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "cluster" / "bare-metal"
START_TIMEOUT = 120      # seconds for one `ray start`
RUN_TIMEOUT = 240        # seconds for one training or job
AUTH_ERROR_WITHIN = 10   # seconds: a refused token must be reported this fast


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("", port))
        except OSError:
            return False
    return True


def _free_ports(count: int) -> list[int]:
    ports: list[int] = []
    sockets = []
    try:
        while len(ports) < count:
            s = socket.socket()
            s.bind(("", 0))
            sockets.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in sockets:
            s.close()
    return ports


def _free_port_range(size: int) -> tuple[int, int]:
    """A run of ``size`` consecutive free ports (Ray's worker ports), away from the ephemeral range."""
    for start in range(20000 + (os.getpid() % 50) * 200, 32000, 200):
        if all(_port_is_free(p) for p in range(start, start + size)):
            return start, start + size - 1
    raise RuntimeError(f"no {size} consecutive free ports between 20000 and 32000")


def _cli() -> list[str]:
    script = shutil.which("distcoagent")
    return [script] if script else [sys.executable, "-m", "distcoagent.cli"]


@dataclass
class TwoNodes:
    base: Path
    env: dict                       # HOME with the token, RAY_AUTH_MODE=token
    gcs_port: int
    dashboard_port: int
    metrics_ports: dict             # "head"/"worker" -> metrics export port
    temp_dirs: dict                 # "head"/"worker" -> --temp-dir
    process_groups: list = field(default_factory=list)
    nodes: dict = field(default_factory=dict)  # "head"/"worker" -> node id

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def run(self, command: list[str], timeout: float = RUN_TIMEOUT, env: dict | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(command, env=env or self.env, cwd=cwd or self.base, capture_output=True,
                              text=True, timeout=timeout)

    def state(self, kind: str) -> list[dict]:
        result = self.run(["ray", "list", kind, "--address", self.address, "--format", "json", "--detail",
                           "--limit", "1000"], timeout=60)
        assert result.returncode == 0, result.stderr[-2000:]
        if result.stdout.startswith("No resource"):  # what `ray list` prints for an empty list
            return []
        return json.loads(result.stdout)


def _start(script: str, env: dict, extra: list[str], cluster: TwoNodes, log: Path) -> None:
    """Run a bare-metal script in a new session: the Ray daemons it starts share its process group."""
    with open(log, "w") as out:
        process = subprocess.Popen(["bash", str(SCRIPTS / script), *extra], env=env, cwd=cluster.base,
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    cluster.process_groups.append(process.pid)
    try:
        code = process.wait(timeout=START_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{script} did not finish within {START_TIMEOUT} s:\n{log.read_text()[-3000:]}")
    assert code == 0, f"{script} failed ({code}):\n{log.read_text()[-3000:]}"


def _ours(home: Path) -> list[int]:
    """Processes with this module's HOME in their environment (Linux /proc)."""
    marker = f"HOME={home}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def terminate(groups, home: Path) -> None:
    """Stop our Ray processes: their process groups, then any process whose environment holds our
    temporary HOME (Ray's workers run in groups of their own); SIGTERM, then SIGKILL.

    The grace after SIGTERM is short: the gcs_server, the raylet and a Python daemon of a Ray 2.60
    `ray start` head were all still running 40 s after it here, so a longer grace only delayed
    the SIGKILL; nothing of these clusters is kept, not even the named semaphores their raylets leave
    in /dev/shm."""
    from distcoagent.ray_engine.cluster import remove_semaphores_left_by

    raylets = [pid for pid in _ours(home) if _is_raylet(pid)]
    for sig, grace in ((signal.SIGTERM, 1.0), (signal.SIGKILL, 3.0)):
        for group in groups:
            try:
                os.killpg(group, sig)
            except ProcessLookupError:
                pass
        for pid in _ours(home):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and _ours(home):
            time.sleep(0.25)
    for pid in raylets:
        remove_semaphores_left_by(pid)


def _is_raylet(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == "raylet"
    except OSError:
        return False


def _stop(cluster: TwoNodes) -> None:
    terminate(cluster.process_groups, Path(cluster.env["HOME"]))


@pytest.fixture(scope="module")
def cluster():
    base = Path(tempfile.mkdtemp(prefix="dc2n", dir="/tmp"))  # short: Ray's unix sockets live under it
    home = base / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME=str(home), RAY_AUTH_MODE="token", PYTHONUNBUFFERED="1")
    gcs, dashboard, head_metrics, worker_metrics, *spare = _free_ports(15)
    low, high = _free_port_range(80)  # worker ports: the head's half, then the worker's
    head_workers, worker_workers = (low, low + 39), (low + 40, high)
    cluster = TwoNodes(base, env, gcs, dashboard, {"head": head_metrics, "worker": worker_metrics},
                       {"head": base / "h", "worker": base / "w"})
    try:
        head_env = {**env, "RAY_PORT": str(gcs), "DASHBOARD_PORT": str(dashboard), "NUM_CPUS": "2",
                    "RESOURCES": '{"node_a": 1}', "METRICS_EXPORT_PORT": str(head_metrics),
                    "OBJECT_MANAGER_PORT": str(spare[0]), "NODE_MANAGER_PORT": str(spare[1]),
                    "DASHBOARD_AGENT_PORT": str(spare[2]),
                    "MIN_WORKER_PORT": str(head_workers[0]), "MAX_WORKER_PORT": str(head_workers[1])}
        head_env.pop("RAY_AUTH_MODE")  # the script must turn token auth on by itself
        _start("start-head.sh", head_env,
               ["--temp-dir", str(cluster.temp_dirs["head"]), "--object-store-memory", "200000000",
                "--ray-client-server-port", str(spare[3]), "--runtime-env-agent-port", str(spare[4]),
                "--dashboard-agent-grpc-port", str(spare[5])], cluster, base / "head.log")
        assert (home / ".ray" / "auth_token").stat().st_size > 0, "start-head.sh did not create the token"
        worker_env = {**env, "HEAD_ADDRESS": cluster.address, "NUM_CPUS": "1", "RESOURCES": '{"node_b": 1}',
                      "METRICS_EXPORT_PORT": str(worker_metrics), "OBJECT_MANAGER_PORT": str(spare[6]),
                      "NODE_MANAGER_PORT": str(spare[7]), "DASHBOARD_AGENT_PORT": str(spare[8]),
                      "MIN_WORKER_PORT": str(worker_workers[0]), "MAX_WORKER_PORT": str(worker_workers[1])}
        worker_env.pop("RAY_AUTH_MODE")
        _start("start-worker.sh", worker_env,
               ["--temp-dir", str(cluster.temp_dirs["worker"]), "--object-store-memory", "200000000",
                "--runtime-env-agent-port", str(spare[9]), "--dashboard-agent-grpc-port", str(spare[10])],
               cluster, base / "worker.log")
        deadline = time.monotonic() + 60
        while True:
            alive = [n for n in cluster.state("nodes") if n["state"] == "ALIVE"]
            if len(alive) == 2 or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert len(alive) == 2, f"expected 2 alive nodes within 60 s, got {alive}"
        cluster.nodes = {("head" if n["is_head_node"] else "worker"): n["node_id"] for n in alive}
        yield cluster
    finally:
        _stop(cluster)
        shutil.rmtree(base, ignore_errors=True)


def test_the_compose_healthcheck_passes_on_a_token_cluster(cluster):
    """docker-compose.yml's ray-head healthcheck is `ray health-check --address=127.0.0.1:6379`."""
    result = cluster.run(["ray", "health-check", f"--address={cluster.address}"], timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]


def _tiny_spec(directory: Path) -> Path:
    """examples/paper_gridworld.toml at size 3, 2 trials, 3 episodes; bit_a on the head, act on the worker."""
    text = (ROOT / "examples" / "paper_gridworld.toml").read_text()
    for key, value in (("size", 3), ("trials", 2), ("episodes", 3)):
        text, count = re.subn(rf"(?m)^{key} = \d+$", f"{key} = {value}", text)
        assert count == 1, key
    text += textwrap.dedent("""
        [ray]
        resources = { bit_a = { node_a = 1 }, act = { node_b = 1 } }
        """)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "tiny.toml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def in_process(cluster) -> Path:
    spec = _tiny_spec(cluster.base / "spec")
    out = cluster.base / "run-inprocess"
    result = cluster.run(_cli() + ["train", str(spec), "--engine", "inprocess", "--out", str(out), "--quiet"])
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def ray_run(cluster):
    """One training through the CLI against the cluster, as a user runs it; (run dir, its actors)."""
    spec = _tiny_spec(cluster.base / "spec")
    out = cluster.base / "run-ray"
    before = {a["actor_id"] for a in cluster.state("actors")}
    started = time.monotonic()
    result = cluster.run(_cli() + ["train", str(spec), "--engine", "ray", "--address", cluster.address,
                                   "--out", str(out), "--quiet"])
    seconds = time.monotonic() - started
    assert result.returncode == 0, f"distcoagent train failed after {seconds:.1f} s:\n{result.stderr[-4000:]}"
    actors = [a for a in cluster.state("actors") if a["actor_id"] not in before]
    return out, actors


def test_training_on_two_nodes_gives_the_in_process_result(cluster, ray_run, in_process):
    out, _ = ray_run
    for name in ("returns.csv", "counters.json", "params.msgpack"):
        assert (out / name).read_bytes() == (in_process / name).read_bytes(), f"{name} differs between engines"


def test_coagents_ran_on_both_nodes(cluster, ray_run):
    _, actors = ray_run
    coagents = [a for a in actors if a["class_name"] == "CoagentWorker"]
    assert len(coagents) == 3, actors
    by_resource = {key: a["node_id"] for a in coagents for key in a["required_resources"] if key.startswith("node_")}
    assert by_resource == {"node_a": cluster.nodes["head"], "node_b": cluster.nodes["worker"]}
    assert {a["node_id"] for a in actors if a["class_name"] in ("CoagentWorker", "EnvironmentWorker")} == \
        set(cluster.nodes.values())


def test_compiled_graph_channels_crossed_nodes_through_the_raylets(cluster, ray_run):
    """Ray 2.60 pushes a compiled-graph channel's value to a reader on another node with the raylet
    RPC NodeManagerService.PushMutableObject; each raylet counts its RPCs in debug_state.txt."""
    deadline = time.monotonic() + 30  # the raylet rewrites the file every 10 s
    counts = {}
    while time.monotonic() < deadline:
        for node in ("head", "worker"):
            state = cluster.temp_dirs[node] / "session_latest" / "logs" / "debug_state.txt"
            text = state.read_text() if state.exists() else ""
            match = re.search(r"NodeManagerService\.grpc_server\.PushMutableObject - (\d+) total", text)
            counts[node] = int(match.group(1)) if match else 0
        if all(counts.values()):
            break
        time.sleep(2)
    assert all(counts.values()), f"PushMutableObject RPCs per node: {counts}"


def test_the_run_directory_records_where_each_coagent_ran(cluster, ray_run):
    out, _ = ray_run
    placement = json.loads((out / "placement.json").read_text())
    actors = placement["actors"]
    assert {"coagent:bit_a", "coagent:bit_b", "coagent:act"} <= set(actors)
    assert actors["coagent:bit_a"]["node_id"] == cluster.nodes["head"]
    assert actors["coagent:act"]["node_id"] == cluster.nodes["worker"]
    assert all(entry["node_ip"] for entry in actors.values())


def test_a_submitted_job_gives_the_same_result(cluster, in_process):
    job_dir = cluster.base / "job"
    _tiny_spec(job_dir)
    out = cluster.base / "run-job"
    result = cluster.run(["ray", "job", "submit", "--address", cluster.dashboard, "--working-dir", str(job_dir),
                          "--", "distcoagent", "train", "tiny.toml", "--engine", "ray", "--address", "auto",
                          "--out", str(out), "--quiet"])
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert "succeeded" in result.stdout + result.stderr
    assert (out / "returns.csv").read_bytes() == (in_process / "returns.csv").read_bytes()


def test_ray_exports_the_metric_names_the_dashboard_queries(cluster):
    """Record each kind of ray.util.metrics metric with the engine's names and tags in an actor on
    the worker node, and read that node's Prometheus endpoint, as Prometheus would."""
    probe = textwrap.dedent(f"""
        import ray
        from ray.util.metrics import Counter, Gauge, Histogram
        ray.init(address={cluster.address!r}, logging_level="ERROR", log_to_driver=False)

        @ray.remote(num_cpus=0, resources={{"node_b": 0.01}})
        class Probe:
            def record(self):
                tags, run = {{"coagent": "bit_a", "run": "probe"}}, {{"run": "probe"}}
                for name in ("executions", "ticks", "updates"):
                    Counter(f"distcoagent_coagent_{{name}}", tag_keys=("coagent", "run")).inc(1, tags=tags)
                for name in ("execution_rate", "param_norm", "last_update"):
                    Gauge(f"distcoagent_coagent_{{name}}", tag_keys=("coagent", "run")).set(0.5, tags=tags)
                Counter("distcoagent_run_episodes", tag_keys=("run",)).inc(1, tags=run)
                Gauge("distcoagent_run_ticks_per_second", tag_keys=("run",)).set(10.0, tags=run)
                Histogram("distcoagent_coagent_ticks_between_executions", boundaries=[1, 2, 4, 8],
                          tag_keys=("coagent", "run")).observe(2, tags=tags)
                return ray.get_runtime_context().get_node_id()

        probe = Probe.remote()
        print(ray.get(probe.record.remote()))
        import time; time.sleep(30)  # keep the actor (and its metrics) alive while the test reads them
        """)
    process = subprocess.Popen([sys.executable, "-c", probe], env=cluster.env, cwd=cluster.base,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([process.stdout], [], [], 60)
        node = process.stdout.readline().strip() if ready else "(no answer within 60 s)"
        assert node == cluster.nodes["worker"], process.stderr.read() if process.poll() is not None else node
        url = f"http://127.0.0.1:{cluster.metrics_ports['worker']}/metrics"
        names: set[str] = set()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            text = urllib.request.urlopen(url, timeout=5).read().decode()
            names = set(re.findall(r"(?m)^(ray_distcoagent_\w+)\{", text))
            if names >= EXPORTED_METRICS:
                break
            time.sleep(2)
        assert names == EXPORTED_METRICS
        assert re.search(r'ray_distcoagent_coagent_ticks_total\{[^}]*coagent="bit_a"[^}]*run="probe"', text)
    finally:
        process.kill()
        process.wait(timeout=10)
    # Prometheus finds both nodes through the head's service-discovery file (deploy/prometheus).
    discovery = cluster.temp_dirs["head"] / "prom_metrics_service_discovery.json"
    targets = {t for group in json.loads(discovery.read_text()) for t in group["targets"]}
    ports = {int(t.rpartition(":")[2]) for t in targets}
    assert {cluster.metrics_ports["head"], cluster.metrics_ports["worker"]} <= ports, targets


def _refused(cluster, env: dict) -> tuple[subprocess.CompletedProcess | None, float, str]:
    spec = _tiny_spec(cluster.base / "spec")
    started = time.monotonic()
    try:
        result = cluster.run(_cli() + ["train", str(spec), "--engine", "ray", "--address", cluster.address,
                                       "--out", str(cluster.base / "run-refused"), "--quiet"],
                             env=env, timeout=AUTH_ERROR_WITHIN + 5)
        return result, time.monotonic() - started, result.stdout + result.stderr
    except subprocess.TimeoutExpired as error:
        output = "".join(part.decode(errors="replace") if isinstance(part, bytes) else part
                         for part in (error.stdout or "", error.stderr or ""))
        return None, time.monotonic() - started, output


def _assert_clear_auth_error(result, seconds, output):
    last = output.strip().splitlines()[-1] if output.strip() else ""
    assert result is not None and seconds <= AUTH_ERROR_WITHIN, \
        f"no answer within {AUTH_ERROR_WITHIN} s ({seconds:.1f} s); last line: {last!r}"
    assert result.returncode != 0
    assert re.search(r"RAY_AUTH_(TOKEN|MODE)", last), f"the error does not name the token settings: {last!r}"


def test_joining_without_token_mode_fails_fast_and_says_why(cluster):
    env = {k: v for k, v in cluster.env.items() if k != "RAY_AUTH_MODE"}  # the token file is there
    _assert_clear_auth_error(*_refused(cluster, env))


def test_joining_with_a_wrong_token_fails_fast_and_says_why(cluster):
    env = {**cluster.env, "RAY_AUTH_TOKEN": "0" * 64}
    _assert_clear_auth_error(*_refused(cluster, env))
