"""Time `distcoagent reproduce option-critic` at full scale (3 agents x 20 runs x 2000 episodes,
batched across runs) and print a table; writes benchmarks/results/option_critic.json (and the
figures into --out).

    PYTHONPATH=. python3 benchmarks/option_critic.py                       # full scale, 2 workers
    PYTHONPATH=. python3 benchmarks/option_critic.py --runs 4 --episodes 200 --workers 1
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from distcoagent.reproduce_option_critic import reproduce


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--episodes", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/option_critic")
    parser.add_argument("--json", default="benchmarks/results/option_critic.json")
    args = parser.parse_args()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    start = time.perf_counter()
    summary = reproduce(args.runs, args.episodes, args.seed, args.out, args.workers)
    wall = time.perf_counter() - start
    rows = []
    for name, entry in summary["agents"].items():
        steps = entry["steps"]  # batch steps (ticks): every run advances one step per batch step
        rows.append({"agent": name, "seconds": entry["seconds"], "batch_steps": steps,
                     "ms_per_batch_step": 1000 * entry["seconds"] / max(steps, 1),
                     "run_steps_per_second": round(args.runs * steps / entry["seconds"]),
                     "before_move": entry.get("before_move"), "after_move": entry.get("after_move")})
    report = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "processor": platform.processor() or platform.machine(), "load_at_start": load},
              "runs": args.runs, "episodes": args.episodes, "workers": args.workers, "seed": args.seed,
              "wall_seconds": wall, "optimal_steps_before_move": summary["optimal_steps_before_move"],
              "optimal_steps_after_move": summary["optimal_steps_after_move"], "agents": rows}
    print(f"{args.runs} runs x {args.episodes} episodes per agent, {args.workers} worker(s): {wall:.1f} s wall "
          f"(load {load:.1f} at start)" if load is not None else f"{wall:.1f} s wall")
    print(f"{'agent':<24}{'seconds':>9}{'batch steps':>13}{'ms/step':>9}{'run-steps/s':>13}"
          f"{'before move':>13}{'after move':>12}")
    for r in rows:
        b, a = r["before_move"] or {}, r["after_move"] or {}
        print(f"{r['agent']:<24}{r['seconds']:>9.1f}{r['batch_steps']:>13,}{r['ms_per_batch_step']:>9.2f}"
              f"{r['run_steps_per_second']:>13,}{b.get('mean', float('nan')):>13.2f}{a.get('mean', float('nan')):>12.2f}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
