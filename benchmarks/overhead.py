"""What watching a run costs, and what the one-tick refactor cost: side by side, in one run.

At a batch of B trials of the paper network on the in-process engine, times the same training
(interleaved rounds, best of each, so that load from other processes hits every variant alike):

- ``engine``: ``InProcessEngine.train`` as it is;
- ``recorded``: the same with the run-directory recording on (``metrics.jsonl`` every 2 s with
  the execution raster, and checkpoints every 300 s), as ``distcoagent train`` runs;
- ``other checkout`` (``--compare PATH``): the plain engine of another source tree (say the
  commit before a refactor), run in a subprocess with ``PYTHONPATH=PATH``.

Prints a table and writes benchmarks/results/overhead.json.

    python benchmarks/overhead.py                           # B = 16384
    python benchmarks/overhead.py --compare /tmp/baseline   # and against an older checkout
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIMED = """
import json, sys, time
from distcoagent import InProcessEngine
from distcoagent.examples import paper_network
B, episodes, recorded = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
warm = InProcessEngine(paper_network(), "distcoagent/GridWorld-v0", {"size": 5}, trials=64, seed=1)
warm.train(3)
if recorded:  # what a run directory records, as distcoagent train does it
    import tempfile
    from pathlib import Path
    from distcoagent import checkpoint
    from distcoagent.recording import MetricsLog
    from distcoagent.tick import RasterSpec
    from distcoagent.training import Checkpointer
    out = Path(tempfile.mkdtemp())
    raster = RasterSpec((0, 1, 2, 3))
    engine = InProcessEngine(paper_network(), "distcoagent/GridWorld-v0", {"size": 5}, trials=B, seed=0,
                             raster=raster)
    observers = [MetricsLog(out / "metrics.jsonl", run="bench", network=paper_network().to_config(), trials=B,
                            envs_per_trial=1, raster_envs=list(raster.env_ids)),
                 Checkpointer(out, "bench", None, 300.0)]
    start = time.perf_counter()
    result = engine.train(episodes, observers=observers)
    seconds = time.perf_counter() - start
else:
    engine = InProcessEngine(paper_network(), "distcoagent/GridWorld-v0", {"size": 5}, trials=B, seed=0)
    start = time.perf_counter()
    result = engine.train(episodes)
    seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "ticks": int(result.ticks), "env_ticks": int(result.ticks) * B,
                  "sum_returns": float(result.returns.sum())}))
"""


def run(variant: str, path: Path, batch: int, episodes: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(path)}
    proc = subprocess.run([sys.executable, "-c", TIMED, str(batch), str(episodes), "1" if variant == "recorded" else "0"],
                          capture_output=True, text=True, env=env, cwd=tempfile.gettempdir(), timeout=3600)
    if proc.returncode != 0:
        raise SystemExit(f"{variant} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16384)
    parser.add_argument("--episodes", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compare", type=Path, help="another source tree to time the plain engine of")
    args = parser.parse_args()
    variants = [("engine", ROOT), ("recorded", ROOT)] + ([("other checkout", args.compare)] if args.compare else [])
    times = {name: [] for name, _ in variants}
    runs = {}
    for _ in range(args.rounds):
        for name, path in variants:
            runs[name] = run("recorded" if name == "recorded" else "engine", path, args.batch, args.episodes)
            times[name].append(runs[name]["seconds"])
    sums = {name: r["sum_returns"] for name, r in runs.items()}
    base = min(times["engine"])
    rows = []
    print(f"B = {args.batch}, {args.episodes} episodes, best of {args.rounds} interleaved rounds")
    print(f"{'variant':<16}{'best s':>9}{'env-ticks/s':>14}{'vs engine':>11}   returns sum")
    for name, _ in variants:
        best = min(times[name])
        rate = runs[name]["env_ticks"] / best
        rows.append({"variant": name, "best_seconds": best, "all_seconds": times[name], "env_ticks_per_second": rate,
                     "ratio_to_engine": best / base, "sum_returns": sums[name]})
        print(f"{name:<16}{best:>9.3f}{rate:>14,.0f}{best / base:>10.3f}x   {sums[name]:.1f}")
    results = {"batch": args.batch, "episodes": args.episodes, "rounds": args.rounds, "rows": rows,
               "compare": str(args.compare) if args.compare else None, "machine": platform.platform(),
               "cpus": os.cpu_count(), "when": time.strftime("%Y-%m-%d %H:%M:%S")}
    out = ROOT / "benchmarks" / "results" / "overhead.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
