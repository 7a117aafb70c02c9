"""Scaling out: throughput against replicas on a local multi-node Ray cluster, the in-process engine
in the same run, plus the message sizes a tick moves (for the model in docs/scaling-out.md).

Starts a ``ray.cluster_utils.Cluster`` of ``--nodes`` nodes on this machine (each with its own
raylet and object store, talking over 127.0.0.1), runs the paper network with R = 1 .. nodes
replicas (replica r pinned to node r by a custom resource), and reports per-tick latency and
environment-ticks per second beside the in-process engine.  On a 2-core machine this shows the
overhead of going distributed, not a speed-up: the model in docs/scaling-out.md carries the
numbers to N real nodes.  Prints a table and writes benchmarks/results/scaling.json.

    python benchmarks/scaling.py                      # 2 nodes, B = 4096
    python benchmarks/scaling.py --trials 1024 --episodes 5
"""
from __future__ import annotations

import argparse
import json
import pickle
import platform
import time
from pathlib import Path

from distcoagent.engine import InProcessEngine
from distcoagent.examples import paper_network
from distcoagent.tick import CoagentSide, EnvironmentSide
from distcoagent.ray_engine.cluster import raylet_pid, remove_semaphores_left_by

ROOT = Path(__file__).resolve().parents[1]
GRID = "distcoagent/GridWorld-v0"


def message_bytes(trials: int) -> dict:
    """Pickled sizes of one tick's messages for a micro-batch of ``trials`` (what crosses actors)."""
    net = paper_network()
    env = EnvironmentSide(net, GRID, {"size": 5}, 0, 0, trials, 1)
    side = CoagentSide(net, net.order, env.env.observation_space, env.env.action_space, trials, 1, 0)
    side.receive(env.begin(10, 0))
    start = env.start()
    side.receive(start)
    outputs = side.act()
    env.finish(outputs)
    after = env.start()  # carries the feedback of the first tick
    return {"tick_start_after_a_step": len(pickle.dumps(after, protocol=5)),
            "coagent_output": len(pickle.dumps({"act": outputs["act"]}, protocol=5)),
            "status": len(pickle.dumps(env.status(), protocol=5))}


def main() -> None:
    import ray
    from ray.cluster_utils import Cluster

    from distcoagent.ray_engine import RayEngine

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--trials", type=int, default=4096)
    parser.add_argument("--episodes", type=int, default=5)
    args = parser.parse_args()
    rows = []
    engine = InProcessEngine(paper_network(), GRID, {"size": 5}, trials=args.trials, seed=0)
    start = time.perf_counter()
    reference = engine.train(args.episodes)
    seconds = time.perf_counter() - start
    rows.append({"variant": "in-process", "replicas": 0, "seconds": seconds, "ticks": reference.ticks,
                 "ms_per_tick": 1000 * seconds / reference.ticks,
                 "env_ticks_per_second": reference.ticks * args.trials / seconds})
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"node_0": 1}})
    for n in range(1, args.nodes):
        cluster.add_node(num_cpus=1, resources={f"node_{n}": 1})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
    try:
        for replicas in range(1, args.nodes + 1):
            where = [{f"node_{r}": 0.01} for r in range(replicas)]
            engine = RayEngine(paper_network(), GRID, {"size": 5}, trials=args.trials, seed=0,
                               micro_batches=max(2, replicas), replicas=replicas, replica_resources=where,
                               cpus_per_actor=0.01, export_metrics=False)
            try:
                engine.train(1)  # warm: actors, graph, first channel writes
                start = time.perf_counter()
                result = engine.train(args.episodes)
                seconds = time.perf_counter() - start
            finally:
                engine.close()
            rows.append({"variant": f"Ray, {replicas} replica(s) on {replicas} node(s)", "replicas": replicas,
                         "seconds": seconds, "ticks": result.ticks, "ms_per_tick": 1000 * seconds / result.ticks,
                         "env_ticks_per_second": result.ticks * args.trials / seconds})
    finally:
        raylets = [raylet_pid(node) for node in cluster.list_all_nodes()]
        ray.shutdown()
        cluster.shutdown()
        for raylet in raylets:  # the semaphores each node's raylet leaves in /dev/shm
            remove_semaphores_left_by(raylet)
    sizes = message_bytes(args.trials // 2)
    base = rows[0]["env_ticks_per_second"]
    print(f"paper network, B = {args.trials}, {args.episodes} episodes, {args.nodes} local nodes (1 CPU each)")
    print(f"{'variant':<34}{'ms/tick':>9}{'env-ticks/s':>14}{'vs in-process':>15}")
    for row in rows:
        print(f"{row['variant']:<34}{row['ms_per_tick']:>9.2f}{row['env_ticks_per_second']:>14,.0f}"
              f"{row['env_ticks_per_second'] / base:>14.2f}x")
    print(f"bytes per tick for a micro-batch of {args.trials // 2} trials: {sizes}")
    out = ROOT / "benchmarks" / "results" / "scaling.json"
    out.write_text(json.dumps({"trials": args.trials, "episodes": args.episodes, "nodes": args.nodes,
                               "rows": rows, "message_bytes": sizes, "machine": platform.platform(),
                               "when": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
