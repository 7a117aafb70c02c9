"""Two Ray nodes on 127.0.0.1 (ray.cluster_utils.Cluster): coagents placed on both by custom resources,
the result is the in-process engine's, bit for bit."""
import pytest

ray = pytest.importorskip("ray")

from ray.cluster_utils import Cluster  # noqa: E402

from distcoagent.ray_engine import RayEngine  # noqa: E402
from distcoagent.ray_engine.cluster import raylet_pid, remove_semaphores_left_by  # noqa: E402
from ray_networks import GRID, assert_identical, in_process, paper  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"node_a": 1}})
    cluster.add_node(num_cpus=1, resources={"node_b": 1})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
    yield cluster
    raylets = [raylet_pid(node) for node in cluster.list_all_nodes()]
    ray.shutdown()
    cluster.shutdown()
    for pid in raylets:  # the named semaphores Ray 2.60's raylets leave in /dev/shm
        remove_semaphores_left_by(pid)


def _node_of(actor) -> str:
    return ray.get(actor.__ray_call__.remote(lambda self: ray.get_runtime_context().get_node_id()))


@pytest.mark.parametrize("transport", ["compiled", "actors"])
def test_coagents_on_two_nodes_agree_with_in_process(cluster, transport):
    resources = {"bit_a": {"node_a": 0.5}, "bit_b": {"node_b": 0.5}, "act": {"node_b": 0.5}}
    expected = in_process(paper(), GRID, {"size": 4}, trials=4, seed=7, micro_batches=2, episodes=3)
    engine = RayEngine(paper(), GRID, {"size": 4}, trials=4, seed=7, micro_batches=2, resources=resources,
                       env_resources={"node_a": 0.25}, transport=transport)
    try:
        nodes = [_node_of(a) for a in engine.actors]
        assert nodes[0] != nodes[1] == nodes[2]  # bit_a on the head, bit_b and act on the second node
        assert_identical(expected, engine.train(3))
    finally:
        engine.close()


def test_a_resource_only_one_node_has_too_little_of_fails(cluster):
    from distcoagent.ray_engine import PlacementError

    with pytest.raises(PlacementError, match="node_b"):
        RayEngine(paper(), GRID, {"size": 3}, resources={"bit_a": {"node_b": 1}, "act": {"node_b": 1}})


def test_a_removed_worker_node_loses_only_time(cluster):
    """The actors on a node that leaves the cluster come back on the surviving node; same result."""
    from distcoagent.contract import Observer

    worker = cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    gone = raylet_pid(worker)
    expected = in_process(paper(), GRID, {"size": 5}, trials=4, seed=9, micro_batches=2, episodes=5)

    class RemoveNode(Observer):
        metrics_every = 0.0
        calls, where = 0, None

        def on_start(self, engine, episodes):
            self.engine = engine

        def on_metrics(self, metrics):
            self.calls += 1
            if self.calls == 3:
                self.where = {name: p["node_id"] for name, p in self.engine.placement.items()}
                cluster.remove_node(worker)
                self.metrics_every = 3600.0  # done: metrics fetched every tick would cost most of the run

    observer = RemoveNode()
    engine = RayEngine(paper(), GRID, {"size": 5}, trials=4, seed=9, micro_batches=2, placement="SPREAD",
                       cpus_per_actor=0.2, snapshot_every=0.5)
    try:
        on_worker = {name for name, p in engine.placement.items() if p["node_id"] == worker.node_id}
        assert on_worker  # SPREAD put some actors on the node that will go
        result = engine.train(5, observers=[observer])
        survivors = {p["node_id"] for p in engine.placement.values()}
    finally:
        engine.close()
    remove_semaphores_left_by(gone)
    assert len(engine.recoveries) >= 1 and set(engine.recoveries[0]["dead"]) <= on_worker
    assert worker.node_id not in survivors
    assert_identical(expected, result)


# two replicas, one per node, by default; one (the plain placement, checked above) and three (two on
# one node) with -m slow
@pytest.mark.parametrize("replicas", [pytest.param(1, marks=pytest.mark.slow), 2,
                                      pytest.param(3, marks=pytest.mark.slow)])
def test_replicas_on_two_nodes_are_bit_identical_to_in_process(cluster, replicas):
    """R copies of the coagent actors, each serving its own shard of trials, pinned to nodes by
    custom resources; any R gives the in-process engine's numbers."""
    nodes = [{"node_a": 0.05}, {"node_b": 0.05}, {"node_a": 0.05}][:replicas]
    expected = in_process(paper(), GRID, {"size": 4}, trials=6, envs_per_trial=2, seed=5, micro_batches=3,
                          episodes=4)
    engine = RayEngine(paper(), GRID, {"size": 4}, trials=6, envs_per_trial=2, seed=5, micro_batches=3,
                       replicas=replicas, replica_resources=nodes, cpus_per_actor=0.05)
    try:
        result = engine.train(4)
        where = {name: p["node_id"] for name, p in engine.placement.items()}
    finally:
        engine.close()
    assert_identical(expected, result)
    coagent_actors = [n for n in where if n.startswith("coagent:")]
    assert len(coagent_actors) == 3 * replicas and result.extra["replicas"] == replicas
    if replicas > 1:
        assert where["coagent:bit_a/0"] != where["coagent:bit_a/1"]  # replica 0 on node_a, 1 on node_b


def test_replicas_that_cannot_be_placed_name_the_missing_resource(cluster):
    from distcoagent.network import SpecError
    from distcoagent.ray_engine import PlacementError

    with pytest.raises(PlacementError, match="node_c"):
        RayEngine(paper(), GRID, {"size": 3}, trials=2, micro_batches=2, replicas=2,
                  replica_resources=[{"node_a": 0.1}, {"node_c": 0.1}])
    with pytest.raises(SpecError, match="replicas: 3 replicas need at least 3 micro-batches"):
        RayEngine(paper(), GRID, {"size": 3}, trials=4, micro_batches=2, replicas=3)


def test_free_running_replicas_on_two_nodes_replay_bit_for_bit(cluster, tmp_path):
    """--clock free with the same placement options: two replicas, one per node, each with its own
    environment actors; the record replays in-process to the same parameters."""
    from distcoagent.replay import replay
    from distcoagent.training import train

    out = tmp_path / "free"
    result = train(paper(), GRID, env_kwargs={"size": 4}, episodes=4, trials=4, seed=2, micro_batches=2,
                   engine="ray", clock="free", free_options={"env_rate": 60}, out=out, checkpoint_every="never",
                   ray_options={"replicas": 2, "replica_resources": [{"node_a": 0.05}, {"node_b": 0.05}],
                                "cpus_per_actor": 0.05})
    assert result.finished and result.extra["replicas"] == 2
    where = {name: p["node_id"] for name, p in result.extra["placement"].items()}
    assert where["coagent:bit_a/0"] != where["coagent:bit_a/1"] and where["env:0"] != where["env:1"]
    assert all(c["executions"] > 0 for c in result.counters.values()), result.counters
    report = replay(out, network=paper())
    assert report.identical, (report.parameter_differences, report.output_mismatches)
