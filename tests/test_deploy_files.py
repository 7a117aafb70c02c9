"""The files that take distcoagent from a laptop to a cluster, checked without a Docker engine or a
cloud account: docker-compose.yml (by docker-compose itself), deploy/Dockerfile, the Ray cluster
launcher configs (by Ray's own schema), the KubeRay manifests, Prometheus, Grafana, the scripts."""
from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
RAY_VERSION = importlib.metadata.version("ray")
TOKEN_ENV = "deploy/ray-token.env"
TRAIN_COMMAND = "distcoagent train examples/paper_gridworld.toml --engine ray --address auto"

# How the Ray engine's ray.util.metrics appear on a node's Prometheus endpoint in Ray 2.60.0,
# measured (tests/test_two_node_cluster.py measures them again on every run): Ray prefixes
# "ray_", counters end in "_total", a histogram gives "_bucket" (label le), "_sum" and "_count".
EXPORTED_METRICS = {
    "ray_distcoagent_coagent_executions_total",
    "ray_distcoagent_coagent_ticks_total",
    "ray_distcoagent_coagent_updates_total",
    "ray_distcoagent_run_episodes_total",
    "ray_distcoagent_coagent_execution_rate",
    "ray_distcoagent_coagent_param_norm",
    "ray_distcoagent_coagent_last_update",
    "ray_distcoagent_run_ticks_per_second",
    "ray_distcoagent_coagent_ticks_between_executions_bucket",
    "ray_distcoagent_coagent_ticks_between_executions_sum",
    "ray_distcoagent_coagent_ticks_between_executions_count",
}
RAY_SERVICES = ("ray-head", "ray-worker", "train")


def _yaml(relative: str):
    return yaml.safe_load((ROOT / relative).read_text())


def _yaml_documents(relative: str) -> list:
    return [d for d in yaml.safe_load_all((ROOT / relative).read_text()) if d is not None]


# ---------------------------------------------------------------------------------------- compose
def _docker_compose() -> str:
    tool = shutil.which("docker-compose")
    assert tool is not None, ("docker-compose is not installed, so docker-compose.yml cannot be checked: "
                              "apt-get install -y docker-compose (Debian/Ubuntu), or pip install docker-compose")
    return tool


@pytest.fixture(scope="module")
def compose() -> dict:
    """docker-compose.yml as docker-compose resolves it (the token env file: the committed example)."""
    env = {**os.environ, "RAY_TOKEN_ENV_FILE": f"{TOKEN_ENV}.example"}
    command = [_docker_compose(), "-f", str(ROOT / "docker-compose.yml"), "--project-directory", str(ROOT)]
    quiet = subprocess.run(command + ["config", "-q"], env=env, capture_output=True, text=True, timeout=60)
    assert quiet.returncode == 0, f"docker-compose config -q failed:\n{quiet.stdout}\n{quiet.stderr}"
    full = subprocess.run(command + ["config"], env=env, capture_output=True, text=True, timeout=60)
    assert full.returncode == 0, full.stderr
    return yaml.safe_load(full.stdout)


def test_compose_has_the_cluster_monitoring_and_train_services(compose):
    services = compose["services"]
    assert set(RAY_SERVICES) | {"prometheus", "grafana"} <= set(services)
    worker = services["ray-worker"]
    assert "container_name" not in worker and not worker.get("ports"), \
        "ray-worker must scale (--scale ray-worker=N): no container_name, no published port"
    assert "--address=ray-head:6379" in worker["command"]
    train = services["train"]["command"]
    assert "ray job submit" in train and "--address=http://ray-head:8265" in train
    assert train.endswith(f"-- {TRAIN_COMMAND}")


def _host_ip(port) -> str | None:
    if isinstance(port, dict):  # long syntax (docker compose v2)
        return port.get("host_ip")
    parts = str(port).split(":")
    return parts[0] if len(parts) == 3 else None


def test_compose_publishes_every_port_on_localhost_only(compose):
    published = {name: service.get("ports", []) for name, service in compose["services"].items()}
    assert any(published.values())
    for name, ports in published.items():
        for port in ports:
            assert _host_ip(port) == "127.0.0.1", f"{name}: port {port} is not bound to 127.0.0.1"


def test_compose_ray_services_have_shared_memory_and_token_auth(compose):
    for name in RAY_SERVICES:
        service = compose["services"][name]
        assert service.get("shm_size"), f"{name}: set shm_size (Ray's object store lives in /dev/shm)"
        environment = service.get("environment", {})
        assert environment.get("RAY_AUTH_MODE") == "token", f"{name}: RAY_AUTH_MODE=token must come from the env file"
        assert environment.get("RAY_AUTH_TOKEN"), f"{name}: RAY_AUTH_TOKEN must come from the env file"
    raw = _yaml("docker-compose.yml")
    for name in RAY_SERVICES:
        env_files = raw["services"][name]["env_file"]
        assert env_files == [f"${{RAY_TOKEN_ENV_FILE:-{TOKEN_ENV}}}"], env_files


def test_the_token_env_file_is_ignored_and_only_its_example_is_committed():
    if not (ROOT / ".git").exists():
        pytest.fail("not a git checkout: cannot check that deploy/ray-token.env is ignored")
    ignored = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", TOKEN_ENV], timeout=30)
    assert ignored.returncode == 0, f"{TOKEN_ENV} is not in .gitignore"
    tracked = subprocess.run(["git", "-C", str(ROOT), "ls-files", "--", TOKEN_ENV],
                             capture_output=True, text=True, timeout=30)
    assert tracked.stdout.strip() == "", f"{TOKEN_ENV} is committed: remove it and rotate the token"
    example = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", f"{TOKEN_ENV}.example"], timeout=30)
    assert example.returncode == 1, "the example env file must not be ignored"
    lines = dict(line.split("=", 1) for line in (ROOT / f"{TOKEN_ENV}.example").read_text().splitlines()
                 if line and not line.startswith("#"))
    assert lines["RAY_AUTH_MODE"] == "token" and "RAY_AUTH_TOKEN" in lines


def test_prometheus_reads_the_heads_tmp_ray_and_grafana_is_provisioned(compose):
    services = compose["services"]

    def volume_at(service: str, target: str) -> str:
        for volume in services[service].get("volumes", []):
            source, _, rest = str(volume).partition(":")
            if rest.split(":")[0] == target:
                return source
        raise AssertionError(f"{service}: nothing mounted at {target}")

    assert volume_at("prometheus", "/tmp/ray") == volume_at("ray-head", "/tmp/ray")
    assert volume_at("prometheus", "/etc/prometheus/prometheus.yml").endswith("deploy/prometheus/prometheus.yml")
    assert volume_at("grafana", "/etc/grafana/provisioning").endswith("deploy/grafana/provisioning")
    assert volume_at("grafana", "/var/lib/grafana/dashboards").endswith("deploy/grafana/dashboards")


# ---------------------------------------------------------------------------------------- image
def test_dockerfile_is_slim_non_root_and_pins_the_installed_ray():
    from dockerfile_parse import DockerfileParser

    parser = DockerfileParser(path=str(ROOT / "deploy" / "Dockerfile"))
    assert re.fullmatch(r"python:3\.11[\w.-]*-slim[\w.-]*", parser.baseimage), parser.baseimage
    users = [i["value"].strip() for i in parser.structure if i["instruction"] == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image must end as a non-root user"
    runs = [i["value"] for i in parser.structure if i["instruction"] == "RUN"]
    pins = [m for run in runs for m in re.findall(r'ray\[default\]==([\w.]+)', run)]
    assert pins == [RAY_VERSION], f"deploy/Dockerfile pins ray {pins}, installed here: {RAY_VERSION}"
    for run in runs:
        if "pip install" in run:
            assert "--no-cache-dir" in run, f"pip without --no-cache-dir: {run}"
        assert not re.search(r"\b(build-essential|gcc|g\+\+|clang|make)\b", run), f"build tools in: {run}"
        if "apt-get install" in run:
            assert "--no-install-recommends" in run and "rm -rf /var/lib/apt/lists" in run
    assert any(re.search(r"pip install --no-cache-dir \.(\s|$)", run) for run in runs), \
        "the image must install the package from the repository"
    copied = " ".join(i["value"] for i in parser.structure if i["instruction"] == "COPY")
    assert "distcoagent" in copied and "examples" in copied
    ignore = (ROOT / "deploy" / "Dockerfile.dockerignore").read_text().split()
    assert TOKEN_ENV in ignore, "the token env file must never enter the build context"


# ---------------------------------------------------------------------------------------- ray up
@pytest.fixture(scope="module")
def ray_schema() -> dict:
    import ray

    return json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())


@pytest.mark.parametrize("config", ["cluster/aws.yaml", "cluster/gcp.yaml"])
def test_cluster_launcher_config_is_valid_and_authenticated(config, ray_schema):
    from ray.autoscaler._private.util import prepare_config, validate_config

    cluster = _yaml(config)
    jsonschema.validate(cluster, ray_schema)
    validate_config(prepare_config(cluster))  # what `ray up` does before it touches the cloud
    assert cluster["head_node_type"] in cluster["available_node_types"]
    workers = [t for name, t in cluster["available_node_types"].items() if name != cluster["head_node_type"]]
    assert workers and all(t.get("min_workers", 0) < t["max_workers"] for t in workers), "workers must autoscale"
    assert cluster["docker"]["image"]
    assert "~/.ray/auth_token" in cluster["file_mounts"], "the token file must reach every node"
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in cluster[key] if "ray start" in c]
        assert starts, key
        for command in starts:
            auth = command.find("export RAY_AUTH_MODE=token")
            assert 0 <= auth < command.find("ray start"), f"{config} {key}: export RAY_AUTH_MODE=token first"
            assert "RAY_AUTH_TOKEN" in command[:command.find("ray start")]
    assert "--dashboard-host=127.0.0.1" in " ".join(cluster["head_start_ray_commands"])
    assert RAY_VERSION in " ".join(cluster["setup_commands"])


# ---------------------------------------------------------------------------------------- KubeRay
def _check_ray_cluster_spec(spec: dict, where: str):
    assert spec["rayVersion"] == RAY_VERSION, f"{where}: rayVersion {spec['rayVersion']} != ray {RAY_VERSION}"
    assert spec["authOptions"]["mode"] == "token", f"{where}: token authentication"
    assert spec["headGroupSpec"]["template"]["spec"]["containers"], where
    assert spec["workerGroupSpecs"], where
    for group in spec["workerGroupSpecs"]:
        for key in ("groupName", "minReplicas", "maxReplicas", "template"):
            assert key in group, f"{where}: workerGroupSpecs item without {key}"
        assert group["minReplicas"] <= group["maxReplicas"]


def test_kuberay_raycluster_and_rayjob():
    (cluster,) = _yaml_documents("cluster/kuberay/raycluster.yaml")
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    _check_ray_cluster_spec(cluster["spec"], "raycluster.yaml")
    (job,) = _yaml_documents("cluster/kuberay/rayjob.yaml")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    assert job["spec"]["entrypoint"] == TRAIN_COMMAND
    assert "rayClusterSpec" in job["spec"] or "clusterSelector" in job["spec"]
    _check_ray_cluster_spec(job["spec"]["rayClusterSpec"], "rayjob.yaml")


def test_every_deployment_uses_one_image():
    images = {_yaml("cluster/aws.yaml")["docker"]["image"], _yaml("cluster/gcp.yaml")["docker"]["image"]}
    for manifest in ("cluster/kuberay/raycluster.yaml", "cluster/kuberay/rayjob.yaml"):
        images |= set(re.findall(r"image: (\S+)", (ROOT / manifest).read_text()))
    assert len(images) == 1, images


# ---------------------------------------------------------------------------------------- monitoring
def test_prometheus_discovers_ray_nodes_through_rays_file():
    from ray._private.ray_constants import PROMETHEUS_SERVICE_DISCOVERY_FILE

    config = _yaml("deploy/prometheus/prometheus.yml")
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "ray"]
    files = [f for sd in job["file_sd_configs"] for f in sd["files"]]
    assert files == [f"/tmp/ray/{PROMETHEUS_SERVICE_DISCOVERY_FILE}"]


def _queried_metrics(dashboard: dict) -> set[str]:
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    queries += [v["definition"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return {name for q in queries for name in re.findall(r"\b(ray_distcoagent_\w+)", q)}


def test_grafana_dashboard_queries_only_exported_metrics():
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "dashboards" / "distcoagent.json").read_text())
    queried = _queried_metrics(dashboard)
    assert queried <= EXPORTED_METRICS, f"not exported by Ray: {sorted(queried - EXPORTED_METRICS)}"
    families = {re.sub(r"_(bucket|sum|count)$", "", n) for n in EXPORTED_METRICS}
    shown = {re.sub(r"_(bucket|sum|count)$", "", n) for n in queried}
    assert families == shown, f"metrics without a panel: {sorted(families - shown)}"
    assert "run" in {v["name"] for v in dashboard["templating"]["list"]}
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    (datasource,) = _yaml("deploy/grafana/provisioning/datasources/prometheus.yml")["datasources"]
    uids = {t["datasource"]["uid"] for p in dashboard["panels"] for t in p["targets"]}
    assert uids == {datasource["uid"]}
    (provider,) = _yaml("deploy/grafana/provisioning/dashboards/distcoagent.yml")["providers"]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    # every environment actor (one per micro-batch) exports the run's whole tick rate: a sum would count it
    # once per micro-batch
    rates = [t["expr"] for p in dashboard["panels"] for t in p["targets"] if "run_ticks_per_second" in t["expr"]]
    assert rates and all(not re.match(r"\s*sum\b", expr) for expr in rates), rates


# ---------------------------------------------------------------------------------------- scripts, docs
@pytest.mark.parametrize("script", ["start-head.sh", "start-worker.sh"])
def test_bare_metal_scripts_parse_and_turn_token_auth_on(script):
    path = ROOT / "cluster" / "bare-metal" / script
    result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert os.access(path, os.X_OK), f"{script} is not executable"
    text = path.read_text()
    assert text.index("export RAY_AUTH_MODE=token") < text.index("exec ray start")


def test_cluster_readme_gives_the_commands():
    readme = (ROOT / "cluster" / "README.md").read_text()
    for command in ("ray up cluster/aws.yaml", "ray down cluster/aws.yaml", "ray dashboard cluster/aws.yaml",
                    f"ray job submit --address http://127.0.0.1:8265 --working-dir . -- {TRAIN_COMMAND}",
                    "ray get-auth-token --generate", "RAY_AUTH_MODE=token"):
        assert command in readme, command
